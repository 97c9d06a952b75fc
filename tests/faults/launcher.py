"""Launcher part: kill -9 `harness run` at seeded random points, run it again until the sweep is done, then check.

Each try takes a fresh results folder and a two-stage sweep (two pre-trainings, each fine-tuned: 4 jobs), starts
`harness run` in a driver process and kills it with SIGKILL at one of these points:
- `time`: a random moment (seeded) while its jobs run;
- `journal`: between the journal's intent and the record of the job's id: the driver's `Journal.submitted` kills
  its own process on its N-th call (`FAULT_AT=N`), before the id is written. Under SLURM that is between `sbatch`
  and the journal write; under the local executor, between the job's fork and its start (it waits for the journal).
Then it runs `harness run` again, plainly, as a user would, until it exits 0 (SLURM: until nothing is in flight and
all is done). Afterwards, for the try to hold:
- no process of the results folder is left a few seconds after the kill (the jobs die with their launcher);
- no job ran twice at once or to completion twice, and no run folder's metrics.jsonl holds a step twice
  (`tally.duplicates`);
- every result that existed after the kill exists at the end, and every job is done (`tally.lost`).

Quick (`make test`): 3 tries of the local executor with a stand-in job (`steps` below: 8 resumable steps of 0.1 s,
no torch), one of them at the `journal` point. Full: 10 such tries, 2 with the real training (TINY jobs), and 3 on
SLURM with the real training when `sinfo` answers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tests.faults import Tally
from tests.helpers import TWO_BY_TWO

ROOT = Path(__file__).resolve().parents[2]
STEPS, STEP_S = 8, 0.1  # `steps`: a job's steps and how long each takes
GUARD_S = 300.0  # how long a try may wait for its sweep (a hang guard, not a timing)
RERUNS = 6  # plain reruns allowed before a try counts as not finished

SWEEP = TWO_BY_TWO  # two pre-trainings (seeds 1 and 2) and the fine-tuning of each

# `harness run` with the fault hooks: FAULT_AT=N kills it on the N-th Journal.submitted, before it writes;
# FAULT_TARGET replaces the local executor's job (`module:callable`).
DRIVER = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
at = int(os.environ.get("FAULT_AT") or 0)
if at:
    from harness.launch.journal import Journal
    original, calls = Journal.submitted, []
    def submitted(self, token, ids):
        calls.append(token)
        if len(calls) == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, token, ids)
    Journal.submitted = submitted
if os.environ.get("FAULT_TARGET"):
    from harness.launch import pool
    pool.DEFAULT_TARGET = os.environ["FAULT_TARGET"]
from harness.cli import main
sys.exit(main(sys.argv[1:]))
"""


def steps(config: dict, run_dir: str) -> None:
    """The stand-in job, resumable as the training is: metrics.jsonl gets a line per step, state.json (atomic) the
    last step done, and a resumed job drops the metrics after it, then goes on. It holds a lock on its run folder:
    a second process there at once is recorded in `<results>/duplicates.jsonl`; `<results>/completions.jsonl` gets
    a line each time it writes its result."""
    from harness.io import atomic_write_text

    run_dir = Path(run_dir)
    results = run_dir.parents[1]
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "steps.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _append(results / "duplicates.jsonl", {"job": run_dir.name, "pid": os.getpid()})
            fcntl.flock(lock, fcntl.LOCK_EX)
        state = run_dir / "state.json"
        done = json.loads(state.read_text())["it"] if state.exists() else 0
        metrics = run_dir / "metrics.jsonl"
        kept = [r for r in _records(metrics) if r["it"] <= done]
        atomic_write_text(metrics, "".join(json.dumps(r) + "\n" for r in kept))
        for it in range(done + 1, STEPS + 1):
            time.sleep(STEP_S)
            _append(metrics, {"it": it, "loss": 1.0 / it})
            atomic_write_text(state, json.dumps({"it": it}))
        result = {"task": config["task"], "wall_clock_s": STEPS * STEP_S, "final_loss": 1.0 / STEPS}
        if config["task"] != "pretrain":
            result["top1"] = 50.0
        _append(results / "completions.jsonl", {"job": run_dir.name, "pid": os.getpid()})
        atomic_write_text(run_dir / "result.json", json.dumps(result))


def _append(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _records(path: Path) -> list[dict]:
    """metrics.jsonl's records with an iteration (a line torn by a kill is left out)."""
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and isinstance(record.get("it"), int):
                records.append(record)
    return records


# ---------------------------------------------------------------------------------------------------------------
def run(tally: Tally, workdir: Path, full: bool) -> None:
    rng = random.Random(15)
    tries = [("local", "stand-in", "journal")] + [("local", "stand-in", "time")] * (9 if full else 2)
    if full:
        tries += [("local", "training", "time"), ("local", "training", "journal")]
        if _slurm_answers():
            tries += [("slurm", "training", "journal"), ("slurm", "training", "time"), ("slurm", "training", "time")]
    for n, (executor, job, point) in enumerate(tries):
        folder = workdir / f"try{n}-{executor}-{job}-{point}"
        folder.mkdir(parents=True)
        _one_try(tally, folder, executor, job, point, rng)


def _slurm_answers() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _one_try(tally: Tally, folder: Path, executor: str, job: str, point: str, rng: random.Random) -> None:
    from tests.helpers import write_sweep

    sweep = write_sweep(folder, SWEEP)
    results = folder / "results"
    args = ["run", sweep, "--executor", executor, "--results", str(results)]
    if executor == "slurm":
        args += ["--cluster", "workstation"]
    env = {**os.environ, "FAULT_TARGET": "tests.faults.launcher:steps" if job == "stand-in" else ""}
    env.pop("FAULT_AT", None)
    fault = {"FAULT_AT": str(rng.randint(1, 3))} if point == "journal" else {}
    # The moment: anywhere in the first run of the sweep (~1 s of start, then 2 x 0.8 s of stand-in steps; the
    # training's imports and jobs take longer; under SLURM, `harness run` returns once it has submitted). A run that
    # ends before it is tried again (its SLURM jobs cancelled), killed sooner.
    delay = rng.uniform(0.3, {"stand-in": 2.5, "training": 20.0}[job] if executor == "local" else 2.0)
    log = (folder / "driver.log").open("ab")
    for _ in range(4):
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, *args], cwd=ROOT, env=env | fault, stdout=log, stderr=log
        )
        if point == "time":
            with contextlib.suppress(subprocess.TimeoutExpired):
                driver.wait(timeout=delay)
            if driver.poll() is None:
                driver.kill()
        driver.wait()
        if driver.returncode == -signal.SIGKILL or point != "time":
            break
        _cancel(results)  # it finished before the moment: nothing was injected; again, sooner
        shutil.rmtree(results)
        delay /= 2
    if driver.returncode != -signal.SIGKILL:
        tally.failures.append(f"launcher {folder.name}: `harness run` ended ({driver.returncode}), never killed")
        return
    tally.launcher_kills += 1
    orphans = _wait_no_process(results)
    if orphans:
        tally.failures.append(f"launcher {folder.name}: processes of the results folder outlived the kill: {orphans}")
    seen = _done(results)
    finished = _finish(executor, args, env, results, log, seen, tally, folder.name)
    log.close()
    if not finished:
        tally.failures.append(f"launcher {folder.name}: the sweep did not finish after {RERUNS} plain reruns")
    _count(tally, results, seen, folder.name)


def _cancel(results: Path) -> None:
    """Cancel the SLURM jobs journalled in `results` (none for a local run)."""
    from harness.launch.journal import Journal
    from harness.launch.queue import Queue

    ids = [s.job_id for s in Journal(results).latest().values() if s.executor == "slurm" and s.job_id]
    Queue.cancel(ids)


def _finish(executor, args, env, results, log, seen, tally, name) -> bool:
    """Plain `harness run` until it exits 0 with every job done (SLURM: wait for the queue between runs)."""
    for _ in range(RERUNS):
        rerun = subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=ROOT, env=env, stdout=log, stderr=log)
        code = rerun.returncode
        if executor == "slurm":
            _wait_slurm(args, results)
        lost = set(seen) - set(_done(results))
        if lost:
            tally.lost += len(lost)
            tally.failures.append(f"launcher {name}: results lost after a rerun: {sorted(lost)}")
            seen -= lost
        if code == 0 and _all_done(args, results):
            return True
    return False


def _request(args: list[str], results: Path):
    from harness.sweep import Request

    return Request([args[1]], [], cluster="workstation" if "--cluster" in args else None, results=str(results))


def _all_done(args, results) -> bool:
    from harness.launch.state import State, observe
    from harness.sweep import compile_request

    req = _request(args, results)
    return all(s.state is State.DONE for s in observe(compile_request(req), results).values())


def _wait_slurm(args, results) -> None:
    from harness.launch.state import IN_FLIGHT, observe
    from harness.sweep import compile_request

    graph = compile_request(_request(args, results))
    deadline = time.monotonic() + GUARD_S
    while any(s.state in IN_FLIGHT for s in observe(graph, results).values()) and time.monotonic() < deadline:
        time.sleep(2)


def _done(results: Path) -> set[str]:
    """Run folders with a result (`<stage>/<hash>`)."""
    from harness.launch.state import read_result

    if not results.exists():
        return set()
    return {f"{p.parent.parent.name}/{p.parent.name}" for p in results.glob("*/*/result.json") if read_result(p)[0]}


def _ours(results: Path) -> list[int]:
    """Live processes whose command line names this results folder's submitit folder (local workers and jobs)."""
    from harness.launch.queue import local_alive

    folder = results / ".submitit"
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and local_alive(p.name, folder)]


def _wait_no_process(results: Path, guard: float = 30.0) -> list[int]:
    """Poll until no process of the results folder is left; those left after `guard` seconds (then killed)."""
    deadline = time.monotonic() + guard
    while (left := _ours(results)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def _count(tally: Tally, results: Path, seen: set[str], name: str) -> None:
    """Duplicates: two processes on one run folder at once, a job completed twice, a metrics step written twice."""
    duplicates = []
    at_once = results / "duplicates.jsonl"
    duplicates += [f"two processes at once in {r['job']}" for r in map(json.loads, _lines(at_once))]
    completions = Counter(r["job"] for r in map(json.loads, _lines(results / "completions.jsonl")))
    completions += _completed_by_logs(results)
    duplicates += [f"{job} completed {n} times" for job, n in completions.items() if n > 1]
    for metrics in results.glob("*/*/metrics.jsonl"):
        keys = Counter((r["it"], bool(r.get("eval"))) for r in _records(metrics))
        twice = sorted(k for k, n in keys.items() if n > 1)
        if twice:
            duplicates.append(f"{metrics.parent.name}: metrics steps written twice {twice[:5]}")
    tally.duplicates += len(duplicates)
    for line in duplicates:
        tally.failures.append(f"launcher {name}: duplicate: {line}")


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _completed_by_logs(results: Path) -> Counter:
    """Real training: per run folder, the runs whose log ends `job completed successfully` (the local executor's
    verdict, submitit's line on SLURM). The stand-in's completions are counted from its own file instead."""
    from harness.launch.journal import Journal
    from harness.launch.state import log_paths

    if (results / "completions.jsonl").exists():
        return Counter()
    journal = Journal(results)
    ids: dict[str, str] = {}  # scheduler id -> job identity, over every submission (not only the latest)
    by_token: dict[str, list[str]] = {}
    for line in _lines(journal.path):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            record = json.loads(line)
            if record["event"] == "intent":
                by_token[record["token"]] = record["jobs"]
            else:
                ids.update({i: j for i, j in zip(record["ids"], by_token.get(record["token"], [])) if i})
    done = Counter()
    for job_id, job in ids.items():
        said = " ".join(_lines(log_paths(results, job_id)[1])[-5:]).lower()
        if "job completed successfully" in said:
            done[job] += 1
    return done
