"""kill -9 a micro training run at seeded random points, resume it each time, and compare with one uninterrupted run.

A `harness train pretrain` of 30 steps (80 Fashion-MNIST images, batches of 8, the micro ViT) that logs every 2
steps and checkpoints every 3, so kills land mid-step, mid-interval, mid-checkpoint. Each run is killed (SIGKILL,
its own run folder) at a random delay after it has printed progress, restarted, killed again..., then left to
finish. It must end exactly as the uninterrupted run of the same config: the same final loss (bit for bit), the same
loss at every logged iteration, each logged once (`metrics.jsonl` contiguous, no duplicates).

Quick: 1 run, 3 kills (~30 s on 2 cores: torch's import costs ~4 s a process). Full: 20 kills, up to 4 a run, a
quarter of them before the first progress line (in set-up, restore, the rewrite of metrics.jsonl).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.faults import Tally

OVERRIDES = [
    "model=micro",
    "data=fashion_mnist",
    "data.subset.per_class=8",
    "optim.batch_size=8",
    "optim.epochs=3",
    "optim.warmup_epochs=1",
    "loader.workers=0",
    "log.every=2",
    "log.checkpoint_every=3",
    "log.progress=plain",
    "knn.after_pretrain=false",
]
HANG_S = 300.0  # a guard against a hung process, not a timing
SEED = 15


def command(run_dir: Path, overrides=OVERRIDES) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "train", "pretrain", *overrides, f"run_dir={run_dir}"]


def environment(workdir: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HARNESS_RESULTS": str(workdir / "results")}


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """A process whose stdout and stderr go to `log`.out / `log`.err (files: nothing to drain)."""
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        return subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=log.parent, start_new_session=True)


def wait_for_progress(proc: subprocess.Popen, log: Path) -> bool:
    """Until the run prints a progress line (True) or ends (False)."""
    deadline = time.monotonic() + HANG_S
    while proc.poll() is None and time.monotonic() < deadline:
        if " it " in log.with_suffix(".out").read_text():
            return True
        time.sleep(0.02)
    return False


def segment(cmd: list[str], env: dict, log: Path, delay: float, after_progress: bool) -> str:
    """Run until killed `delay` s after its first progress line (or its start): 'killed', 'finished' or an error."""
    proc = start(cmd, env, log)
    try:
        if after_progress and not wait_for_progress(proc, log):
            return _ended(proc, log)
        try:
            proc.wait(timeout=delay)
            return _ended(proc, log)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return "killed"
    finally:
        if proc.poll() is None:  # hung: never leave it running
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def _ended(proc: subprocess.Popen, log: Path) -> str:
    try:
        rc = proc.wait(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        return f"hung for {HANG_S:.0f} s"
    if rc == 0:
        return "finished"
    lines = log.with_suffix(".err").read_text().strip().splitlines()
    return f"exit {rc}: {lines[-1] if lines else '(no stderr)'}"


def read_run(run_dir: Path) -> tuple[dict | None, list[dict]]:
    """result.json (None if absent or unreadable) and the training records of metrics.jsonl."""
    try:
        result = json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        result = None
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return result, [r for r in map(json.loads, lines) if not r.get("eval")]


def compare(run_dir: Path, reference: tuple[dict, list[dict]], tally: Tally, what: str) -> bool:
    """Count duplicated and missing iterations; True when the run ended as the reference did."""
    (ref_result, ref_records), (result, records) = reference, read_run(run_dir)
    its, want = [r["it"] for r in records], [r["it"] for r in ref_records]
    tally.duplicates += len(its) - len(set(its))
    tally.lost += len(set(want) - set(its)) + (result is None)
    problems = []
    if result is None:
        problems.append("no readable result.json")
    elif result.get("final_loss") != ref_result["final_loss"]:
        problems.append(f"final loss {result.get('final_loss')!r} != {ref_result['final_loss']!r}")
    if its != want:
        problems.append(f"logged iterations {its} != {want}")
    losses = {r["it"]: r.get("loss") for r in records}
    wrong = [it for it in want if it in losses and losses[it] != next(r["loss"] for r in ref_records if r["it"] == it)]
    if wrong:
        problems.append(f"losses differ at iterations {wrong}")
    if problems:
        tally.failures.append(f"training: {what}: {'; '.join(problems)}")
    return not problems


def run(tally: Tally, workdir: Path, full: bool) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    env = environment(workdir)
    straight = workdir / "straight"
    outcome = segment(command(straight), env, workdir / "straight.log", HANG_S, after_progress=False)
    if outcome != "finished":
        tally.failures.append(f"training: the uninterrupted run did not finish ({outcome})")
        return
    reference = read_run(straight)
    rng = random.Random(SEED)
    target, per_run = (20, 4) if full else (3, 3)
    for r in range(target):  # runs until `target` kills (a segment may finish before its kill: that one is no kill)
        if tally.kills >= target:
            break
        run_dir, kills, points = workdir / f"killed{r}", 0, []
        for attempt in range(3 * per_run):
            if kills == min(per_run, target - tally.kills):
                break
            after_progress = not full or rng.random() > 0.25
            delay = rng.uniform(0.0, 1.2) if after_progress else rng.uniform(0.5, 4.0)
            log = workdir / f"killed{r}.{attempt}.log"
            outcome = segment(command(run_dir), env, log, delay, after_progress)
            if outcome == "finished":  # killed too late: it is done, the last segment below only reads it
                break
            if outcome == "killed":
                kills += 1
                points.append(f"{delay:.2f}s after {'progress' if after_progress else 'start'}")
            else:
                tally.failures.append(f"training: run {r}, after kills at {points}: {outcome}")
                break
        tally.kills += kills
        outcome = segment(command(run_dir), env, workdir / f"killed{r}.end.log", HANG_S, after_progress=False)
        if outcome != "finished":
            tally.failures.append(f"training: run {r} did not finish after kills at {points}: {outcome}")
        elif compare(run_dir, reference, tally, f"run {r}, killed at {points}"):
            tally.kills_survived += kills
