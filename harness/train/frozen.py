"""Evaluations of a frozen encoder on its extracted features: the converged linear probe and DINO's k-NN.

    harness train linear pretrained=results/pretrain/<hash> linear.solver=lbfgs   # a FrozenProbe job
    knn = frozen_knn(features, cfg, ctx, amp=None)                                # {"knn_top1", "knn_top5"}

The features of the training and evaluation images are extracted once, with no augmentation (the evaluation
transform), in batches on the job's device; the solvers of `harness/train/probe.py` then work on them. A `linear`
job with `linear.solver=lbfgs` is only that (no SGD, no checkpoint: it is minutes at most); every other linear job,
and a pre-training on labelled images (`knn.after_pretrain`), gets the k-NN at its end. Extraction runs on the main
process; the other ranks of a distributed job wait at a barrier.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig
from torch import Tensor

from harness.config import config_hash, save_config
from harness.io import atomic_write_json
from harness.train import RESULT_FILE, distributed, read_result
from harness.train.build import amp_dtype, build_model, frozen_datasets
from harness.train.logging import MetricsLog, Progress, write_env
from harness.train.probe import extract_features, knn_classify, linear_probe

__all__ = ["FrozenProbe", "extract_both", "frozen_knn"]


def extract_both(
    features: Callable[[Tensor], Tensor], cfg: DictConfig, ctx: distributed.Dist, amp, what: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Features and labels of the training and evaluation images (no augmentation), on the CPU."""
    train, evaluation = frozen_datasets(cfg)
    batch = cfg.loader.get("eval_batch_size") or cfg.optim.batch_size // ctx.world_size
    out = []
    mode = "none" if cfg.log.progress == "plain" else cfg.log.progress  # a bar on a terminal; no line per batch
    for name, dataset in (("train", train), ("eval", evaluation)):
        bar = Progress(len(dataset), 0, mode, desc=f"{what}: {name} features")
        out += extract_features(
            features,
            dataset,
            batch,
            ctx.device,
            cfg.loader.workers,
            amp,
            lambda done, _, bar=bar: bar.update(done, {}),
        )
        bar.close()
    return tuple(out)


def frozen_knn(features: Callable[[Tensor], Tensor], cfg: DictConfig, ctx: distributed.Dist, amp) -> dict:
    """DINO's weighted k-NN of frozen features (k, T from `knn`), on the main process: {"knn_top1", "knn_top5",
    "knn_k", "knn_bank"} (the memory bank's size)."""
    result = {}
    if ctx.is_main:
        train_x, train_y, test_x, test_y = extract_both(features, cfg, ctx, amp, "k-NN")
        device = ctx.device
        result = _knn(train_x.to(device), train_y, test_x.to(device), test_y, cfg)
    distributed.barrier()
    return result


def _knn(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, cfg: DictConfig) -> dict:
    """The k-NN's entries of a result.json, from features already on the device."""
    knn = knn_classify(train_x, train_y, test_x, test_y, cfg.data.num_classes, cfg.knn.k, cfg.knn.temperature)
    return {"knn_top1": knn["top1"], "knn_top5": knn["top5"], "knn_k": cfg.knn.k, "knn_bank": len(train_y)}


class FrozenProbe:
    """A `linear` job solved on frozen features (`linear.solver=lbfgs`): extract once, fit a logistic regression to
    convergence, k-NN on the same features, then result.json. Rerun: it reads its result."""

    def __init__(self, cfg: DictConfig, run_dir: Path, ctx: distributed.Dist) -> None:
        self.cfg, self.run_dir, self.ctx = cfg, run_dir, ctx

    def run(self) -> dict:
        cfg, ctx = self.cfg, self.ctx
        done, _ = read_result(self.run_dir / RESULT_FILE)
        if done is not None:  # a rerun reads its result (TrainJob has set a corrupt one aside)
            return done
        started = time.perf_counter()
        distributed.seed_everything(cfg.seed)
        net = build_model(cfg).to(ctx.device).eval()
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            write_env(self.run_dir / "env.json", ctx.world_size, ctx.device)
        result = {}
        if ctx.is_main:
            features = extract_both(net.features, cfg, ctx, amp_dtype(cfg, ctx.device), "linear probe")
            train_x, train_y, test_x, test_y = features
            train_x, test_x = train_x.to(ctx.device), test_x.to(ctx.device)
            lin = cfg.linear
            probe = linear_probe(train_x, train_y, test_x, test_y, cfg.data.num_classes, grid=list(lin.l2_grid),
                                 folds=lin.folds, seed=cfg.seed, max_iter=lin.max_iter, tol=lin.tol)  # fmt: skip
            knn = _knn(train_x, train_y, test_x, test_y, cfg)
            wall = time.perf_counter() - started
            result = {
                "task": cfg.task,
                "protocol": cfg.task,
                "solver": "lbfgs",
                "method": cfg.method.name,
                "data": cfg.data.name,
                "epochs": cfg.optim.epochs,
                "iterations": probe["iterations"],
                "world_size": ctx.world_size,
                "wall_clock_s": wall,
                "gpu_hours": wall / 3600 if ctx.device.type == "cuda" else 0.0,
                "device_hours": wall / 3600,
                "config_hash": config_hash(cfg),
                "train_images": len(train_y),
                "eval_images": len(test_y),
                "top1": probe["top1"],
                "top5": probe["top5"],
                "best_top1": probe["top1"],  # one fit: its last is its best
                "best_top5": probe["top5"],
                "final_epoch": None,
                "final_loss": probe["final_loss"],
                "converged": probe["converged"],
                "grad_norm": probe["grad_norm"],
                "l2": probe["l2"],
                "cv_top1": {f"{k:g}": v for k, v in probe["cv_top1"].items()},
                **knn,
            }
            MetricsLog(self.run_dir / "metrics.jsonl").write({"it": probe["iterations"], "eval": True, **result})
            Progress(0, 0, cfg.log.progress).message(
                f"linear probe (L-BFGS, l2 {probe['l2']:g}, {'converged' if probe['converged'] else 'NOT converged'}"
                f" after {probe['iterations']} iterations): top-1 {probe['top1']:.2f}; k-NN top-1 {knn['knn_top1']:.2f}"
            )
            atomic_write_json(self.run_dir / RESULT_FILE, result)
        distributed.barrier()
        return result
