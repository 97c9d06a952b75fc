"""The one training loop. It knows no method: a method is a model whose forward returns (loss, logs).

Each optimiser step: set lr / weight decay / the method's scheduled values from precomputed arrays -> forward
under autocast -> backward (accumulating over micro-batches, DDP syncing only on the last) -> method hook -> clip ->
step -> method hook (DINO's EMA). Nothing in the step waits for the device: logged values and the non-finite flag
stay on it until the logging interval or the next checkpoint.

A run folder is resumable at any time: `last.pt` (every `log.checkpoint_every` steps and at each epoch end, once
when both fall on one step) holds the model, optimiser, scaler, step, elapsed time, RNG states, the logging interval's
partial sums and the config; the data order and augmentations are a function of (seed, epoch, index) (see
loader.py), so a resumed run logs the same losses as an uninterrupted one. One process trains in a run folder at a
time (`checkpoint.lock_run_dir`). The preemption signal is handled at the next step boundary (see `Preemption`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import threading
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
from harness.train import RESULT_FILE, TrainingError, checkpoint, distributed, schedules
from harness.train.build import amp_dtype, build_datasets, build_model, build_optimizer, fit_tokenizer, save_encoder
from harness.train.frozen import FrozenProbe, frozen_knn
from harness.train.loader import EpochSampler, build_loader, shard_indices
from harness.train.logging import MetricsLog, Progress, write_env
from model.heads import frozen_features
from model.registry import DENSE_TASKS

__all__ = ["RESULT_FILE", "NonFiniteLossError", "Preempted", "Trainer", "evaluate", "train"]


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; the last checkpoint written before it is intact."""


class Preempted(TrainingError):
    """Stopped by the preemption signal with no submitit to requeue the job: resumable from its checkpoint."""


def train(cfg: DictConfig, run_dir: str | Path) -> dict | None:
    """Run (or resume) the job in `run_dir`; returns result.json's content, or None when stopped early."""
    ctx = distributed.setup(cfg.run.device)
    with _exclusive(Path(run_dir), ctx):
        if cfg.task in DENSE_TASKS:  # the same loop, with the dense tasks' data, evaluation and results
            from harness.train.dense import DenseTrainer

            return DenseTrainer(cfg, Path(run_dir), ctx).run()
        if cfg.task == "linear" and cfg.linear.solver == "lbfgs":  # solved on frozen features: no training loop
            return FrozenProbe(cfg, Path(run_dir), ctx).run()
        if cfg.task == "linear" and cfg.linear.solver != "sgd":
            raise ConfigError(f"linear.solver must be sgd or lbfgs, got {cfg.linear.solver!r}")
        return Trainer(cfg, Path(run_dir), ctx).run()


@contextlib.contextmanager
def _exclusive(run_dir: Path, ctx: distributed.Dist):
    """The run folder's lock for the job's lifetime, taken by the main process (every rank works in one folder); when
    it is held elsewhere, every rank stops with RunLockedError (none is left waiting in a collective)."""
    lock, refused = None, None
    if ctx.is_main:
        try:
            lock = checkpoint.lock_run_dir(run_dir)
        except checkpoint.RunLockedError as err:
            refused = err
    if dist.is_available() and dist.is_initialized():
        flag = torch.tensor([refused is not None], dtype=torch.int32, device=ctx.device)
        dist.broadcast(flag, src=0)
        if flag.item() and refused is None:
            refused = checkpoint.RunLockedError(
                f"run folder {run_dir} is in use by another job (rank 0 found it locked)"
            )
    if refused is not None:
        raise refused
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


# submitit's preemption and time-out signal (SLURM sends it to every task `signal_delay_s` before the end).
PREEMPT_SIGNAL = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)


class Preemption:
    """The preemption signal, deferred to the next step boundary while the main process trains steps.

    Installed over submitit's handler (or the default action) on the main process's main thread. While `deferring`
    (the training steps), the signal is only noted; the loop then checkpoints the finished step and calls `hand_over`:
    submitit's handler (it requeues the job and exits), or without one, raises `Preempted`. Outside the steps (set-up,
    evaluations, which may outlast the signal's notice) it is handed over at once: the requeued job resumes from the
    last checkpoint, which is always whole. Data-loader workers, forked with the handler, ignore the signal. Other
    ranks keep submitit's handler, which leaves them running until SLURM ends the requeued job's tasks (entry.py)."""

    def __init__(self, is_main: bool) -> None:
        self.active = is_main and threading.current_thread() is threading.main_thread()
        self.deferring = False
        self.pending: tuple[int, object] | None = None
        self.previous = None

    def __enter__(self) -> Preemption:
        if self.active:
            self.previous = signal.getsignal(PREEMPT_SIGNAL)
            self.active = self.previous is not signal.SIG_IGN and self.previous is not None
        if self.active:
            self.pid = os.getpid()
            signal.signal(PREEMPT_SIGNAL, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            signal.signal(PREEMPT_SIGNAL, self.previous)

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self.pid:  # a data-loader worker (forked with this handler): the main process handles it
            return
        if self.deferring:
            self.pending = signum, frame
        else:
            self.hand_over(signum, frame)

    @contextlib.contextmanager
    def now(self):
        """A signal inside this block is handed over at once (an evaluation: its length is not bounded by a step)."""
        deferring, self.deferring = self.deferring, False
        try:
            yield
        finally:
            self.deferring = deferring

    def hand_over(self, signum: int | None = None, frame=None, where: str = "") -> None:
        if signum is None:
            signum, frame = self.pending
        self.pending = None
        if callable(self.previous):  # submitit's: requeue and exit (or raise, when the job may not be requeued)
            self.previous(signum, frame)
        else:
            raise Preempted(f"stopped by {signal.Signals(signum).name}{where}; rerun the same job to resume")


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
        found = checkpoint.load_latest(self.run_dir, set_aside=self.ctx.is_main)
        self.elapsed_before, self.evals, self.pending_rng = 0.0, [], None
        self.saved_it, self.resumed_from = None, None  # the iteration last.pt holds; the file resumed from
        self.last_record, self.log_sums, self.log_since = {}, {}, 0
        if found is None:
            fit_tokenizer(self.net, self.train_set, self.cfg)
            tokenizer = getattr(self.net, "tokenizer", None)
            if tokenizer is not None and dist.is_available() and dist.is_initialized():
                for buffer in tokenizer.buffers():  # one codebook for all ranks, whatever the fit's numerics
                    if buffer.is_floating_point():
                        dist.broadcast(buffer, src=0)
            return 0
        self.resumed_from, state = found
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.elapsed_before, self.evals = state["elapsed"], list(state["evals"])
        self.pending_rng = state["rng"]
        self.saved_it = int(state["it"])
        # The last logged record (result.json's final_loss) and the open logging interval (.get: older checkpoints).
        self.last_record = dict(state.get("last_record", {}))
        self.log_sums = {k: v.to(self.device) for k, v in state.get("log_sums", {}).items()}
        self.log_since = int(state.get("log_since", self.saved_it))
        return self.saved_it

    def save(self, it: int) -> None:
        """`last` checkpoint after `it` optimiser steps (main process), never of a non-finite state. A second one of
        the same step (its evaluation added after a resume) replaces `last` and keeps `prev`."""
        self.check_finite()
        if self.ctx.is_main:
            checkpoint.save(self.run_dir, self.state(it), rotate=it != self.saved_it)
        self.saved_it = it

    def state(self, it: int) -> dict:
        """Everything a resumed run needs to go on exactly as this one would."""
        return {
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "it": it,
            "elapsed": self.elapsed(),
            "evals": self.evals,
            "rng": checkpoint.get_rng_state(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "last_record": self.last_record,
            "log_sums": {k: v.detach().cpu() for k, v in self.log_sums.items()},
            "log_since": self.log_since,
        }

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def check_finite(self) -> None:
        first_bad = int(self.first_bad)  # a host sync: only at logging intervals and checkpoints
        if first_bad < 0:
            return
        logged = self.last_record.get("loss")
        before = (
            f", after a logged loss of {logged:.4g} at iteration {self.last_record['it']}" if logged is not None else ""
        )
        if self.saved_it:
            kept = f"the last checkpoint before it is {self.run_dir / 'last.pt'} (iteration {self.saved_it})"
        else:
            kept = "no checkpoint was written before it (a rerun starts afresh)"
        raise NonFiniteLossError(
            f"non-finite loss ({float(self.bad_loss)}) at iteration {first_bad + 1} of {self.run_dir}{before}; {kept}\n"
            f"  hint: this config diverges (a rerun meets the same loss): lower optim.lr (now {self.d.lr:.3g}), "
            "set optim.clip_grad, or train in run.amp=fp32 (each a new job)"
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
        self.bad_loss = torch.tensor(0.0, device=self.device)
        self.it_on_device = torch.tensor(start, device=self.device)
        self.started = time.perf_counter()
        progress = Progress(self.total, start, cfg.log.progress, desc=f"{cfg.task} {cfg.method.name}")
        if start:
            progress.message(f"resuming from iteration {start} of {self.total} ({self.run_dir / self.resumed_from})")
        else:
            progress.message(
                f"{cfg.task} {cfg.method.name} on {cfg.data.name}: {len(self.train_set)} images, "
                f"{self.iters_per_epoch} it/epoch x {self.epochs:g} epochs; batch {cfg.optim.batch_size} = "
                f"{self.d.batch_per_device} x {ctx.world_size} processes x {self.d.accum_steps} accum; "
                f"lr {self.d.lr:.3g} (optim.lr={cfg.optim.lr}, blr={cfg.optim.blr})"
            )
        try:
            with Preemption(ctx.is_main) as self.preemption:
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
        window = (self.log_since, time.perf_counter())  # the logging interval open at `start` (its sums restored)
        it = start
        self.preemption.deferring = True
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
                    self.log_sums[k] = self.log_sums.get(k, 0.0) + v.float() / accum
                if not last_micro:
                    continue
                self.optimizer_step(epoch)
                it += 1  # a step boundary: the model, optimiser and RNGs are those of `it` whole steps
                if it % cfg.log.every == 0 or it == self.total:
                    window = self.log(it, self.log_sums, window, progress)
                    self.log_sums, self.log_since = {}, it
                if cfg.log.stop_after is not None and it - start >= cfg.log.stop_after:
                    self.save(it)
                    progress.message(f"stopped after {it} iterations (log.stop_after); resumable from {self.run_dir}")
                    return True
                if self.preemption.pending is not None:
                    self.save(it)
                    progress.message(f"preempted: checkpoint of iteration {it} written; resumable from {self.run_dir}")
                    self.preemption.hand_over(where=f" after iteration {it} (checkpoint written)")
                epoch_end = it % self.iters_per_epoch == 0 or it == self.total  # end_epoch checkpoints those
                if it % cfg.log.checkpoint_every == 0 and not epoch_end:
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
        first = ~torch.isfinite(loss.detach()) & (self.first_bad < 0)
        self.first_bad = torch.where(first, self.it_on_device, self.first_bad)
        self.bad_loss = torch.where(first, loss.detach().float(), self.bad_loss)
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
        with self.preemption.now():
            self._end_epoch(epoch, it, progress, final)

    def _end_epoch(self, epoch: float, it: int, progress: Progress, final: bool) -> None:
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
