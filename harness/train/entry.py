"""Entry points: `pretrain`, `finetune` and `linear` jobs, each resumable, each a submitit Checkpointable.

    harness train pretrain method=splitmask data=fashion_mnist model=micro optim.epochs=2
    harness train finetune pretrained=results/pretrain/3f2a... data.subset.per_class=60

The same `TrainJob` runs in this process, under the local executor and on a SLURM node, in its run folder.

What a run folder guarantees (the contract):
- One job at a time. The main process locks `<run_dir>/.lock` for the job's lifetime (and writes its pid and host
  there); a second job on the folder stops at once with a one-line `RunLockedError` naming the holder, on every rank.
  The kernel drops the lock when the holder dies (kill -9 included), so a requeued or resumed job takes it over.
- Done is `result.json`, written last and atomically. One that is not a JSON object of numbers where metrics go
  (truncated, garbled) is moved aside to `result.json.corrupt` with a warning, and the job is done again: it resumes
  from its last checkpoint, and one that had finished only evaluates (if needed) and writes its result again.
- Checkpoints are whole or absent (`last.pt`, `prev.pt`: harness/train/checkpoint.py); an unreadable `last.pt` is
  set aside (`last.pt.corrupt`) and the job resumes from `prev.pt`; with neither readable it starts afresh. A resumed
  job logs "resuming from iteration N" and goes on exactly (same losses as an uninterrupted run; `metrics.jsonl` has
  every iteration once).

Preemption and time-out (SLURM through submitit). SLURM sends USR2 (`cluster.signal_delay_s` before the end) to every
task of the job; submitit's handler is installed in each before the job starts.
- Rank 0, during training steps: the handler only notes the signal (`loop.Preemption`). At the next step boundary
  (the optimiser step done, nothing half-updated) it writes `last.pt` of that step, then hands over to submitit's
  handler, which calls `TrainJob.checkpoint` (the same job, same arguments), requeues the job (`scontrol requeue`)
  and exits. No checkpoint is ever written from inside the signal handler.
- Rank 0, outside the steps (set-up, an evaluation, writing results): handed over at once; the requeued job resumes
  from the last checkpoint (always whole: atomic writes), so at most the steps since it are redone.
- Other ranks: submitit's handler only logs (it must not exit: a rank that leaves blocks the others' collectives).
  They stop when SLURM ends the requeued job, which signals every task of it (SIGTERM, which submitit logs, then
  SIGKILL after the cluster's KillWait). They write nothing, so how they end does not matter.
- Without submitit (`harness train` by hand), the same signal writes the step's checkpoint at the boundary and stops
  with `Preempted`; running the same command again resumes.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import submitit
from omegaconf import DictConfig, OmegaConf

from harness.config import (
    ConfigError,
    check_values,
    compose,
    config_hash,
    encoder_overrides,
    load_config,
    save_config,
)
from harness.train import RESULT_FILE, read_result
from harness.train.loop import train

__all__ = ["TrainJob", "default_run_dir", "finished_result", "main"]


def default_run_dir(cfg: DictConfig, results: str | Path | None = None) -> Path:
    """`results/<task>/<config hash>/`: identical jobs share a folder (the results root: $HARNESS_RESULTS)."""
    root = Path(results or os.environ.get("HARNESS_RESULTS", "results"))
    return root / cfg.task / config_hash(cfg)


def finished_result(run_dir: str | Path) -> dict | None:
    """result.json of a finished job, or None. A corrupt one (not JSON, not an object, a metric not a number) is moved
    aside to `result.json.corrupt`, with a warning, so that the job is done again."""
    path = Path(run_dir) / RESULT_FILE
    result, problem = read_result(path)
    if problem is None:
        return result
    aside = path.with_name(RESULT_FILE + ".corrupt")
    with contextlib.suppress(FileNotFoundError):  # another rank of the job moved it first
        os.replace(path, aside)
    print(f"warning: {path} is corrupt: {problem}; moved to {aside.name}, doing the job again", file=sys.stderr)
    return None


class TrainJob(submitit.helpers.Checkpointable):
    """A picklable training job: `TrainJob()(config_dict, run_dir)`; resubmitted as is on preemption."""

    def __call__(self, config: dict, run_dir: str) -> dict | None:
        cfg = OmegaConf.create(config)
        check_values(cfg)  # composed and checked when planned; a graph cached before a check was added is not
        done = finished_result(run_dir)  # already done (e.g. a requeue racing the end)
        if done is None:
            return train(cfg, run_dir)
        try:  # what downstream jobs started by hand read (`pretrained=`): rewritten if it was damaged
            load_config(Path(run_dir) / "config.yaml")
        except ConfigError as err:
            print(f"warning: {err}; writing it again", file=sys.stderr)
            save_config(cfg, Path(run_dir) / "config.yaml")
        return done


def main(task: str, overrides: Sequence[str]) -> int:
    """`harness train <task> [overrides]`: compose, then run in this process (torchrun for several). A fine-tuning or
    probe of a pre-training run folder takes that run's encoder shape (`encoder_overrides`)."""
    inherited = []
    for item in overrides:
        upstream = Path(item.removeprefix("pretrained=")) / "config.yaml"
        if item.startswith("pretrained=") and upstream.is_file():
            try:
                inherited = encoder_overrides(load_config(upstream))
            except ConfigError as err:
                raise ConfigError(f"pretrained={upstream.parent}: {err}") from err
    cfg = compose([f"task={task}", *inherited, *overrides])
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    print(f"run folder: {run_dir}", flush=True)
    result = TrainJob()(OmegaConf.to_container(cfg, resolve=True), str(run_dir))
    if result is None:
        return 0
    shown = {k: result[k] for k in ("top1", "top5", "best_top1", "final_loss", "wall_clock_s") if k in result}
    print("result: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items() if v is not None), flush=True)
    return 0
