"""The one training loop. It knows no method: a method is a model whose forward returns (loss, logs).

Each optimiser step: set lr / weight decay / the method's scheduled values from precomputed arrays -> forward
under autocast -> backward (accumulating over micro-batches, DDP syncing only on the last) -> method hook -> clip ->
step -> method hook (DINO's EMA). Nothing in the step waits for the device: logged values and the non-finite flag
stay on it until the logging interval or the next checkpoint.

A run folder is resumable at any time: `last.pt` (every `log.checkpoint_every` steps and at each epoch end) holds
the model, optimiser, scaler, step, elapsed time, RNG states and the config; the data order and augmentations are a
function of (seed, epoch, index) (see loader.py), so a resumed run logs the same losses as an uninterrupted one.
"""

from __future__ import annotations

import functools
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from harness.config import ConfigError, config_hash, derived, save_config
from harness.io import atomic_write_json
from harness.train import RESULT_FILE, checkpoint, distributed, schedules
from harness.train.build import amp_dtype, build_datasets, build_model, build_optimizer, fit_tokenizer, save_encoder
from harness.train.frozen import FrozenProbe, frozen_knn
from harness.train.loader import EpochSampler, build_loader, shard_indices
from harness.train.logging import MetricsLog, Progress, write_env
from model.heads import frozen_features
from model.registry import DENSE_TASKS

__all__ = ["RESULT_FILE", "NonFiniteLossError", "Trainer", "evaluate", "train"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint written before it is intact."""


def train(cfg: DictConfig, run_dir: str | Path) -> dict | None:
    """Run (or resume) the job in `run_dir`; returns result.json's content, or None when stopped early."""
    ctx = distributed.setup(cfg.run.device)
    if cfg.task in DENSE_TASKS:  # the same loop, with the dense tasks' data, evaluation and results
        from harness.train.dense import DenseTrainer

        return DenseTrainer(cfg, Path(run_dir), ctx).run()
    if cfg.task == "linear" and cfg.linear.solver == "lbfgs":  # solved on frozen features: no training loop
        return FrozenProbe(cfg, Path(run_dir), ctx).run()
    if cfg.task == "linear" and cfg.linear.solver != "sgd":
        raise ConfigError(f"linear.solver must be sgd or lbfgs, got {cfg.linear.solver!r}")
    return Trainer(cfg, Path(run_dir), ctx).run()


def _to(batch, device: torch.device):
    """A batch on the device: tensors, and the tensors inside tuples, lists and dicts (detection targets)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(b, device) for b in batch)
    return batch  # plain values (a detection target's image_id)


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path, ctx: distributed.Dist) -> None:
        self.cfg, self.run_dir, self.ctx = cfg, run_dir, ctx
        self.device = ctx.device

    # -----------------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        distributed.seed_everything(cfg.seed + ctx.rank)
        self.net = self.build_net().to(self.device)
        self.collate = None  # the DataLoader's default: a batch of tensors
        self.train_set, self.eval_set = self.build_data()
        self.d = derived(cfg, ctx.world_size)
        self.iters_per_epoch = len(self.train_set) // cfg.optim.batch_size
        if self.iters_per_epoch == 0:
            raise ValueError(
                f"data={cfg.data.name} has {len(self.train_set)} training images, fewer than one batch "
                f"(optim.batch_size={cfg.optim.batch_size})"
            )
        o = cfg.optim
        # The epochs run: the protocol's, times epoch_scale (--profile micro), warm-up included; maybe fractional.
        self.epochs = o.epochs * o.epoch_scale
        self.total = max(1, round(self.iters_per_epoch * self.epochs))
        if o.max_iters is not None:  # a capped run (--profile smoke): the schedules still span `epochs`
            self.total = min(self.total, o.max_iters)
        schedule = (self.epochs, self.iters_per_epoch, self.total)  # the values of the steps this run takes
        warmup = o.warmup_epochs * o.epoch_scale
        # The classification tasks' lr is a cosine; a dense task's recipe names its own (optim.schedule).
        self.lr = schedules.lr_schedule(
            o.get("schedule"), self.d.lr, o.min_lr, *schedule[:2], warmup, o.epoch_scale, length=self.total
        )
        wd_end = o.weight_decay if o.weight_decay_end is None else o.weight_decay_end
        self.wd = schedules.cosine(o.weight_decay, wd_end, *schedule[:2], length=self.total)
        self.method_values = {name: schedules.array(spec, *schedule) for name, spec in self.net.schedules().items()}
        self.optimizer = build_optimizer(self.net, cfg, self.d.lr, self.device)
        # Groups built without weight decay (norms, biases, embeddings) never get any.
        self.decayed_groups = [g for g in self.optimizer.param_groups if g["weight_decay"] > 0]
        self.amp_dtype = amp_dtype(cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        self.trainable = [p for p in self.net.parameters() if p.requires_grad]
        self.mixup = self._mixup()

    def build_net(self) -> nn.Module:
        return build_model(self.cfg)

    def build_data(self):
        """(training set, evaluation set or None)."""
        return build_datasets(self.cfg, self.net)

    def _mixup(self):
        a = self.cfg.aug
        if a.mixup <= 0 and a.cutmix <= 0:  # off; check_options has refused mixup for a pipeline without labels
            return None
        from timm.data import Mixup

        return Mixup(
            mixup_alpha=a.mixup,
            cutmix_alpha=a.cutmix,
            label_smoothing=a.label_smoothing,
            num_classes=self.net.num_classes,
        )

    # -----------------------------------------------------------------------------------------------------------
    def restore(self) -> int:
        """Load the latest checkpoint if there is one; returns the step to start from."""
        state = checkpoint.load_latest(self.run_dir)
        self.elapsed_before, self.evals, self.pending_rng = 0.0, [], None
        if state is None:
            fit_tokenizer(self.net, self.train_set, self.cfg)
            tokenizer = getattr(self.net, "tokenizer", None)
            if tokenizer is not None and dist.is_available() and dist.is_initialized():
                for buffer in tokenizer.buffers():  # one codebook for all ranks, whatever the fit's numerics
                    if buffer.is_floating_point():
                        dist.broadcast(buffer, src=0)
            return 0
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.elapsed_before, self.evals = state["elapsed"], list(state["evals"])
        self.pending_rng = state["rng"]
        return int(state["it"])

    def save(self, it: int) -> None:
        """`last` checkpoint after `it` optimiser steps (main process), never of a non-finite state."""
        self.check_finite()
        if not self.ctx.is_main:
            return
        checkpoint.save(
            self.run_dir,
            {
                "model": self.net.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "it": it,
                "elapsed": self.elapsed(),
                "evals": self.evals,
                "rng": checkpoint.get_rng_state(),
                "config": OmegaConf.to_container(self.cfg, resolve=True),
            },
        )

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def check_finite(self) -> None:
        first_bad = int(self.first_bad)  # a host sync: only at logging intervals and checkpoints
        if first_bad >= 0:
            raise NonFiniteLossError(
                f"non-finite loss at iteration {first_bad + 1} of {self.run_dir}; "
                f"the last checkpoint before it is kept in {self.run_dir / checkpoint.CHECKPOINT_NAMES[0]}"
            )

    # -----------------------------------------------------------------------------------------------------------
    def run(self) -> dict | None:
        cfg, ctx = self.cfg, self.ctx
        self.setup()
        start = self.restore()
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            write_env(self.run_dir / "env.json", ctx.world_size, self.device)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", start if start else None) if ctx.is_main else None
        core = self.net
        model = core
        if ctx.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Buffers (tokenizer codebooks, DINO's centre) are identical or all-reduced: no per-step broadcast.
            model = DistributedDataParallel(core, device_ids=ids, broadcast_buffers=False)
        self.forward = torch.compile(model) if cfg.run.compile else model
        self.ddp = model if ctx.world_size > 1 else None

        if self.pending_rng is not None:  # last, after everything that draws at build time
            checkpoint.set_rng_state(self.pending_rng)
        self.first_bad = torch.tensor(-1, device=self.device)
        self.last_record: dict = {}
        self.it_on_device = torch.tensor(start, device=self.device)
        self.started = time.perf_counter()
        progress = Progress(self.total, start, cfg.log.progress, desc=f"{cfg.task} {cfg.method.name}")
        if start == 0:
            progress.message(
                f"{cfg.task} {cfg.method.name} on {cfg.data.name}: {len(self.train_set)} images, "
                f"{self.iters_per_epoch} it/epoch x {self.epochs:g} epochs; batch {cfg.optim.batch_size} = "
                f"{self.d.batch_per_device} x {ctx.world_size} processes x {self.d.accum_steps} accum; "
                f"lr {self.d.lr:.3g} (optim.lr={cfg.optim.lr}, blr={cfg.optim.blr})"
            )
        try:
            stopped = self.train_epochs(start, progress)
        finally:
            progress.close()
        if stopped:
            return None
        return self.finish()

    def train_epochs(self, start: int, progress: Progress) -> bool:
        """Train from step `start` to the end; True when stopped early (log.stop_after)."""
        cfg, accum = self.cfg, self.d.accum_steps
        samples_per_rank = self.iters_per_epoch * accum * self.d.batch_per_device
        sampler = EpochSampler(
            len(self.train_set),
            samples_per_rank,
            seed=cfg.seed,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            repeats=3 if cfg.aug.repeated_aug else 1,  # DeiT's; only labelled pipelines take it (check_options)
        )
        sums: dict[str, torch.Tensor] = {}
        window = (start, time.perf_counter())
        it = start
        if start >= self.total:  # stopped after its last step, maybe before its last evaluation
            epoch = self._epoch_at(start)
            if self.eval_set is not None and not any(e["epoch"] == epoch for e in self.evals):
                self.end_epoch(epoch, start, progress, final=True)
            return False
        done_epochs = start // self.iters_per_epoch
        at_epoch_end = start and start % self.iters_per_epoch == 0
        if at_epoch_end and self.eval_due(done_epochs) and done_epochs not in {e["epoch"] for e in self.evals}:
            self.end_epoch(done_epochs, it, progress)  # stopped between an epoch's last step and its evaluation
        for epoch in range(start // self.iters_per_epoch, math.ceil(self.total / self.iters_per_epoch)):
            step_in_epoch = it - epoch * self.iters_per_epoch
            self.train_set.set_epoch(epoch)
            sampler.set_epoch(epoch, start=step_in_epoch * accum * self.d.batch_per_device)
            loader = build_loader(
                self.train_set,
                sampler,
                self.d.batch_per_device,
                cfg.loader.workers,
                cfg.loader.pin_memory and self.device.type == "cuda",
                seed=cfg.seed,
                collate_fn=self.collate,
            )
            self.net.train()
            for micro, batch in enumerate(loader):
                last_micro = micro % accum == accum - 1
                if micro % accum == 0:
                    self.set_step_values(it)
                logs = self.micro_step(_to(batch, self.device), last_micro)
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v.float() / accum
                if not last_micro:
                    continue
                self.optimizer_step(epoch)
                it += 1
                if it % cfg.log.every == 0 or it == self.total:
                    window = self.log(it, sums, window, progress)
                    sums = {}
                if cfg.log.stop_after is not None and it - start >= cfg.log.stop_after:
                    self.save(it)
                    progress.message(f"stopped after {it} iterations (log.stop_after); resumable from {self.run_dir}")
                    return True
                if it % cfg.log.checkpoint_every == 0:
                    self.save(it)
                if it == self.total:  # the last step (maybe mid-epoch): always evaluated
                    self.end_epoch(self._epoch_at(it), it, progress, final=True)
                    return False
            self.end_epoch(epoch + 1, it, progress)
        return False

    def _epoch_at(self, it: int) -> float:
        """Epochs done after `it` steps: a whole number at an epoch's end."""
        whole, rest = divmod(it, self.iters_per_epoch)
        return whole if rest == 0 else it / self.iters_per_epoch

    def set_step_values(self, it: int) -> None:
        lr, wd = float(self.lr[it]), float(self.wd[it])
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        for group in self.decayed_groups:
            group["weight_decay"] = wd
        if self.method_values:
            self.net.set_schedule_values(**{k: float(v[it]) for k, v in self.method_values.items()})

    def micro_step(self, batch, sync: bool) -> dict[str, torch.Tensor]:
        if self.mixup is not None:
            batch = self.mixup(*batch)
        no_sync = self.ddp.no_sync() if self.ddp is not None and not sync else nullcontext()
        autocast = torch.autocast(self.device.type, self.amp_dtype) if self.amp_dtype else nullcontext()
        with no_sync:
            with autocast:
                loss, logs = self.forward(*batch)
            scaled = loss / self.d.accum_steps
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        # Remember the first non-finite step on the device; it is read at the next log or checkpoint.
        bad = ~torch.isfinite(loss.detach())
        self.first_bad = torch.where(bad & (self.first_bad < 0), self.it_on_device, self.first_bad)
        return logs

    def optimizer_step(self, epoch: int) -> None:
        self.net.after_backward(epoch)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.optim.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.optim.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.net.after_step()
        self.it_on_device += 1

    # -----------------------------------------------------------------------------------------------------------
    def log(self, it: int, sums: dict, window: tuple[int, float], progress: Progress) -> tuple[int, float]:
        self.check_finite()
        start_it, start_time = window
        now = time.perf_counter()
        steps = max(1, it - start_it)
        values = {k: float(v) / steps for k, v in sums.items()}  # the interval's mean of each logged value
        images = steps * self.cfg.optim.batch_size
        record = {
            "it": it,
            "epoch": it / self.iters_per_epoch,
            "lr": float(self.lr[it - 1]),
            "wd": float(self.wd[it - 1]),
            "img_s": images / max(now - start_time, 1e-9),
            "elapsed_s": self.elapsed(),
            **values,
        }
        record |= {k: float(v[it - 1]) for k, v in self.method_values.items()}
        if self.metrics is not None:
            self.metrics.write(record)
        self.last_record = record
        progress.update(it, record)
        return it, now

    def eval_due(self, epoch: int) -> bool:
        return self.eval_set is not None and epoch % self.cfg.eval.every_epochs == 0

    def end_epoch(self, epoch: float, it: int, progress: Progress, final: bool = False) -> None:
        """Evaluate when due (or `final`), then checkpoint (so the checkpoint knows the evaluation)."""
        if self.eval_set is not None and (final or self.eval_due(epoch)):
            scores = self.evaluate()
            self.evals.append({"epoch": epoch, **scores})
            if self.metrics is not None:
                self.metrics.write({"it": it, "epoch": epoch, "eval": True, **scores})
            progress.message(f"epoch {epoch:.4g}: " + "  ".join(f"{k} {v:.2f}" for k, v in scores.items()))
        self.save(it)

    def evaluate(self) -> dict[str, float]:
        """The evaluation's metrics: top-1 and top-5 accuracy (%)."""
        batch = self.cfg.loader.get("eval_batch_size") or self.d.batch_per_device  # get: older saved configs
        top1, top5 = evaluate(self.net, self.eval_set, self.ctx, batch, self.cfg, self.amp_dtype)
        return {"top1": top1, "top5": top5}

    def summary(self) -> dict:
        """What result.json says of the evaluations: the last one, and the best of each metric with its epoch."""
        if not self.evals:
            return {}
        last = self.evals[-1]
        best1 = max(self.evals, key=lambda e: e["top1"])
        best5 = max(self.evals, key=lambda e: e["top5"])
        return {
            "top1": last["top1"],
            "top5": last["top5"],
            "final_epoch": last["epoch"],
            "best_top1": best1["top1"],
            "best_top1_epoch": best1["epoch"],
            "best_top5": best5["top5"],
            "best_top5_epoch": best5["epoch"],
        }

    # -----------------------------------------------------------------------------------------------------------
    def finish(self) -> dict:
        """Write what downstream jobs and reports read: encoder.pt (pre-training), then result.json, last."""
        wall = self.elapsed()
        result = {
            "task": self.cfg.task,
            "protocol": self.cfg.task,
            "method": self.cfg.method.name,
            "data": self.cfg.data.name,
            "epochs": self.cfg.optim.epochs,  # the protocol's; `epochs_run` of them ran (epoch_scale)
            "epochs_run": self.epochs,
            "iterations": self.total,
            "world_size": self.ctx.world_size,
            "wall_clock_s": wall,
            "gpu_hours": wall * self.ctx.world_size / 3600 if self.device.type == "cuda" else 0.0,
            "device_hours": wall * self.ctx.world_size / 3600,
            "config_hash": config_hash(self.cfg),
        }
        result |= self.summary()
        result["final_loss"] = self.last_record.get("loss")  # the last logging interval's mean
        if self.cfg.task == "linear":  # a fixed SGD schedule (the paper-scale protocol): convergence not checked
            result |= {"solver": "sgd", "converged": None}
        result |= self.knn()
        if self.ctx.is_main:
            if self.cfg.task == "pretrain":
                save_encoder(self.net.export_encoder, self.run_dir)
            atomic_write_json(self.run_dir / RESULT_FILE, result)
        distributed.barrier()
        return result

    def knn(self) -> dict:
        """DINO's k-NN at the end: of a linear job's frozen features, or of a pre-trained encoder on labelled data."""
        cfg = self.cfg
        subset = cfg.data.subset
        if cfg.task == "linear":
            features = self.net.features
            whole = subset.fraction is None and subset.per_class is None and subset.split_file is None
        elif cfg.task == "pretrain" and cfg.knn.after_pretrain and cfg.data.num_classes > 0:
            encoder, pool, layer = self.net.export_encoder, cfg.knn.pool, len(self.net.export_encoder.blocks)
            features = functools.partial(frozen_features, encoder, layer=layer, pool=pool)
            whole = True  # the pre-training's images are not the point: any labelled part of them will do
        else:
            return {}
        if whole and cfg.knn.train_per_class is not None:  # a smaller memory bank: a class-balanced part
            bank = {"per_class": cfg.knn.train_per_class, "fraction": None, "split_file": None}
            cfg = _with(cfg, {"data": {"subset": bank}})
        self.net.eval()
        try:
            return frozen_knn(features, cfg, self.ctx, self.amp_dtype)
        finally:
            self.net.train()


def _with(cfg: DictConfig, changes: dict) -> DictConfig:
    """A copy of a read-only config with some values changed."""
    out = OmegaConf.merge(OmegaConf.to_container(cfg, resolve=True), changes)
    OmegaConf.set_readonly(out, True)
    return out


@torch.no_grad()
def evaluate(
    net: nn.Module, dataset, ctx: distributed.Dist, batch_size: int, cfg: DictConfig, amp: torch.dtype | None
) -> tuple[float, float]:
    """Top-1 / top-5 accuracy (%) of `net.predict` on `dataset`, each rank on its own shard, summed over ranks."""
    net.eval()
    n = len(dataset)
    indices = shard_indices(torch.arange(n), ctx.rank, ctx.world_size, math.ceil(n / ctx.world_size))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices.tolist()),
        batch_size=batch_size,
        num_workers=cfg.loader.workers,
        pin_memory=ctx.device.type == "cuda",
    )
    counts = torch.zeros(3, device=ctx.device)  # top-1 hits, top-5 hits, samples
    for images, labels in loader:
        images, labels = images.to(ctx.device, non_blocking=True), labels.to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, amp) if amp else nullcontext():
            logits = net.predict(images)
        top = logits.float().topk(min(5, logits.shape[-1]), dim=-1).indices
        hits = top == labels[:, None]
        counts[0] += hits[:, 0].sum()
        counts[1] += hits.any(-1).sum()
        counts[2] += len(labels)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts)
    net.train()
    top1, top5, total = counts.tolist()
    return 100.0 * top1 / total, 100.0 * top5 / total
