"""GPU-hours before running: epochs x images x seconds per image, calibrated by finished runs (their iterations x
batch size over their GPU-hours).

The reference point is FACTS T6: BEiT pre-training of ViT-B/16 on ImageNet (1,281,167 images, 300 epochs) took
32.5 h on 16 GPUs, i.e. 16 x 32.5 x 3600 / (300 x 1,281,167) = 4.9 ms of one GPU per image. Other models scale with
embed_dim^2 x depth x tokens (the blocks' FLOPs), other methods and tasks by a factor (below: SplitMask from T6,
the others assumptions). Once runs of the same kind (task, method, size) have finished, their measured seconds per
image replace the model.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from harness.catalog import DATASETS

__all__ = ["CostModel", "Estimate"]

REFERENCE_S_PER_IMAGE = 16 * 32.5 * 3600 / (300 * 1_281_167)  # BEiT, ViT-B/16 at 224 (FACTS T6)
REFERENCE_WORK = 768**2 * 12 * 196
# Per-image cost relative to BEiT pre-training at equal model size and tokens.
METHOD_FACTOR = {
    "beit": 1.0,
    "splitmask": 34.0 / 32.5,  # FACTS T6: 34.0 h vs BEiT's 32.5 h
    "dino": 4.5,  # assumption: student on 2x224 + 10x96 crops, teacher forward on the 2 global crops
    "supervised": 1.0,  # assumption: DeiT, one forward and backward over all tokens, as BEiT
    "classifier": 1.0,  # fine-tuning: one forward and backward over all tokens
    "linear": 0.35,  # assumption: a forward pass of the frozen encoder, about a third of forward + backward
    # Dense tasks at their own resolution (the config's img_size is the classification one). Assumptions: Mask R-CNN
    # at ~1333x800 is ~21x the tokens of 224x224, plus the heads; UperNet at 512x512 is ~5x, plus its decoder.
    "mask_rcnn": 25.0,
    "upernet": 8.0,
}


@dataclass(frozen=True)
class Estimate:
    hours: float  # device-hours (GPU-hours on GPUs)
    source: str  # "model" or "measured (n)"


def images_per_epoch(cfg: DictConfig) -> int:
    info = DATASETS.get(cfg.data.name)
    total = info.train_size if info else 1_000_000
    subset = cfg.data.subset
    if subset.per_class is not None and info is not None and info.num_classes:
        return min(total, subset.per_class * info.num_classes)
    if subset.fraction is not None:
        return max(1, round(total * subset.fraction))
    return total


def _kind(cfg: DictConfig) -> tuple[str, str, str, int]:
    return (cfg.task, cfg.method.name, cfg.model.size, int(cfg.data.img_size))


def _model_s_per_image(cfg: DictConfig) -> float:
    args = cfg.model.args  # a job's config holds its ViT's shape (harness/conf/model/<size>.yaml)
    dim, depth = args.embed_dim, args.depth
    tokens = (int(cfg.data.img_size) // args.patch_size) ** 2
    factor = METHOD_FACTOR.get(cfg.method.name, 1.0)
    return REFERENCE_S_PER_IMAGE * factor * dim**2 * depth * tokens / REFERENCE_WORK


class CostModel:
    """Estimates per job; `calibrate` with finished run folders to use measured seconds per image instead."""

    def __init__(self) -> None:
        self.measured: dict[tuple, list[float]] = {}

    def calibrate(self, results: Path, configs: dict[Path, DictConfig]) -> None:
        """Read result.json of finished runs (`{run_dir: config}`): GPU-hours per image and epoch, by kind. Runs
        on CPUs (gpu_hours 0) say nothing about GPUs and are left out."""
        for run_dir, cfg in configs.items():
            try:
                result = json.loads((run_dir / "result.json").read_text())
                hours, images = float(result["gpu_hours"]), float(result["iterations"]) * cfg.optim.batch_size
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if hours > 0 and images > 0:
                self.measured.setdefault(_kind(cfg), []).append(hours * 3600 / images)

    def estimate(self, cfg: DictConfig) -> Estimate:
        work = float(cfg.optim.epochs) * images_per_epoch(cfg)  # evaluation passes are left out: small
        if cfg.optim.get("max_iters") is not None:  # a capped run (--profile smoke)
            work = min(work, float(cfg.optim.max_iters) * cfg.optim.batch_size)
        samples = self.measured.get(_kind(cfg))
        if samples:
            return Estimate(work * statistics.median(samples) / 3600, f"measured ({len(samples)})")
        return Estimate(work * _model_s_per_image(cfg) / 3600, "model")
