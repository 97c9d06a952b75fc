"""Entry points: `pretrain`, `finetune` and `linear` jobs, each resumable, each a submitit Checkpointable.

    harness train pretrain method=splitmask data=fashion_mnist model=micro optim.epochs=2
    harness train finetune pretrained=results/pretrain/3f2a... data.subset.per_class=60

The same `TrainJob` runs in this process, under the local executor and on a SLURM node. On preemption or timeout,
submitit calls `checkpoint()`, which requeues the same job; it finds its run folder's `last.pt` and resumes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import submitit
from omegaconf import DictConfig, OmegaConf

from harness.config import compose, config_hash, encoder_overrides, load_config
from harness.train.loop import RESULT_FILE, train

__all__ = ["TrainJob", "default_run_dir", "main"]


def default_run_dir(cfg: DictConfig, results: str | Path | None = None) -> Path:
    """`results/<task>/<config hash>/`: identical jobs share a folder (the results root: $HARNESS_RESULTS)."""
    root = Path(results or os.environ.get("HARNESS_RESULTS", "results"))
    return root / cfg.task / config_hash(cfg)


class TrainJob(submitit.helpers.Checkpointable):
    """A picklable training job: `TrainJob()(config_dict, run_dir)`; resubmitted as is on preemption."""

    def __call__(self, config: dict, run_dir: str) -> dict | None:
        cfg = OmegaConf.create(config)
        if (Path(run_dir) / RESULT_FILE).exists():  # already done (e.g. a requeue racing the end)
            import json

            return json.loads((Path(run_dir) / RESULT_FILE).read_text())
        return train(cfg, run_dir)


def main(task: str, overrides: Sequence[str]) -> int:
    """`harness train <task> [overrides]`: compose, then run in this process (torchrun for several). A fine-tuning or
    probe of a pre-training run folder takes that run's encoder shape (`encoder_overrides`)."""
    inherited = []
    for item in overrides:
        if item.startswith("pretrained=") and (Path(item.split("=", 1)[1]) / "config.yaml").is_file():
            inherited = encoder_overrides(load_config(Path(item.split("=", 1)[1]) / "config.yaml"))
    cfg = compose([f"task={task}", *inherited, *overrides])
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    print(f"run folder: {run_dir}", flush=True)
    result = TrainJob()(OmegaConf.to_container(cfg, resolve=True), str(run_dir))
    if result is None:
        return 0
    shown = {k: result[k] for k in ("top1", "top5", "best_top1", "final_loss", "wall_clock_s") if k in result}
    print("result: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items() if v is not None), flush=True)
    return 0
