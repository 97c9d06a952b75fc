"""`harness plan --measure`: this machine's FLOP rate for each kind of job a plan has no rate for yet.

    harness plan sweeps/*.yaml --profile micro --measure     # a few seconds per kind (task/method), then the plan

For each kind, one of the plan's own jobs runs for a few steps in a temporary folder, with the threads the local
executor would give it (`harness.launch.pool`), its batch capped at `MAX_BATCH`, random initialisation instead of
its upstream's encoder, and no evaluation (it stops after its steps, as if preempted). The training loop's img/s of
the steps after the first logging interval (data loading included), times the FLOP model's FLOPs per image
(harness.launch.cost), times the cores over the threads it had, is the kind's rate per machine-second. An L-BFGS
probe trains no steps: the whole job (on a random encoder) is timed instead, and its FLOPs over that time are the
rate. The rates go to
results/.harness/cpu_throughput.json under this host's name; finished local runs of the same kind take precedence.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

from harness.launch.cost import CpuModel, job_flops, step_flops
from harness.launch.pool import default_slots, usable_cores
from harness.sweep.graph import Job

__all__ = ["MAX_BATCH", "MEASURE_ITERS", "measure_cpu", "short_config"]

MEASURE_ITERS = 6  # steps per kind, logged every LOG_EVERY: the first interval (start-up) is left out
LOG_EVERY = 2
MAX_BATCH = 64  # per-image cost barely depends on the batch on a CPU; a smaller one measures sooner


def short_config(container: dict) -> dict:
    """A copy of a job's config that runs a few steps, on the CPU, alone (see the module's docstring). An L-BFGS
    probe, which takes no steps, is kept whole: its cost is its feature extraction and its solver's, all of it."""
    cfg = copy.deepcopy(container)
    cfg["pretrained"] = None
    cfg["run_dir"] = None
    cfg["run"] |= {"device": "cpu", "compile": False}
    cfg["log"]["progress"] = "none"
    if cfg["task"] == "linear" and cfg.get("linear", {}).get("solver") == "lbfgs":
        return cfg
    optim = cfg["optim"]
    optim["batch_size"] = min(int(optim["batch_size"]), MAX_BATCH)
    optim["accum_steps"] = 1
    optim["max_iters"] = MEASURE_ITERS
    # Stopped after its steps, as if preempted: no final evaluation (a dense job's would be all of COCO's val).
    cfg["log"] |= {"every": LOG_EVERY, "checkpoint_every": 10**9, "progress": "none", "stop_after": MEASURE_ITERS}
    cfg["eval"] |= {"per_class": 1, "every_epochs": 10**6}
    if "knn" in cfg:
        cfg["knn"]["after_pretrain"] = False
    tokenizer = cfg.get("method", {}).get("args", {}).get("tokenizer")
    if isinstance(tokenizer, dict) and tokenizer.get("name") == "dalle":
        tokenizer["allow_random_init"] = True  # the same FLOPs; the weights file may not be on this machine
    if isinstance(tokenizer, dict) and isinstance(tokenizer.get("fit"), dict):  # k-means: a token fit
        fit = tokenizer["fit"]
        fit |= {"num_patches": min(fit["num_patches"], 4096), "iters": min(fit["iters"], 3)}
        fit["batch_size"] = min(fit["batch_size"], 1024)
    return cfg


def measure_cpu(jobs: dict[str, Job], cpu: CpuModel, out) -> dict[str, dict]:
    """Measure one job of each kind (`{kind: job}`) and save the rates; returns them."""
    if not jobs:
        print("--measure: every kind of job in the plan has a rate on this machine already", file=out)
        return {}
    import torch

    from harness.train.entry import TrainJob

    cores = usable_cores()
    threads = max(1, cores // default_slots(cores))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    print(f"--measure: {len(jobs)} kinds of job, {MEASURE_ITERS} steps each, {threads} of {cores} cores", file=out)
    rates = {}
    try:
        for kind, job in jobs.items():
            cfg = short_config(job.container)
            with tempfile.TemporaryDirectory(prefix="harness-measure-") as tmp:
                start = time.perf_counter()
                try:
                    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                        TrainJob()(cfg, tmp)
                except Exception as err:  # one kind that cannot run here says why; the others go on
                    print(f"  {kind}: not measured ({type(err).__name__}: {err})", file=out)
                    continue
                wall = time.perf_counter() - start
                speeds = [r["img_s"] for r in _records(Path(tmp)) if "img_s" in r]
            if speeds:
                img_s = statistics.median(speeds[1:] or speeds)
                per_wall_s = step_flops(cfg).total * img_s
                how = f"{img_s:.0f} img/s"
            else:  # no steps (an L-BFGS probe): the whole run
                per_wall_s = job_flops(cfg) / wall
                how = f"{wall:.1f} s for the whole job"
            rate = per_wall_s * cores / threads  # per machine-second: the job had threads / cores of it
            rates[kind] = {"flops_per_s": rate, "threads": threads, "job": job.id, "time": time.time(), "how": how}
            print(f"  {kind}: {how}, {rate / 1e9:.3g} GFLOP per machine-second (job {job.id})", file=out)
    finally:
        torch.set_num_threads(previous)
    if rates:
        print(f"--measure: saved in {cpu.save_bench(rates, cores)}", file=out)
    return rates


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    records = []
    for line in lines:
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return records
