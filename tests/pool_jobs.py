"""Stand-in jobs for the local pool's tests (`harness.launch.pool` target `tests.pool_jobs:record`).

Each job appends what it saw to `<results>/runs.jsonl` (its pid, its parent's, when it started and ended,
whether torch was already imported) and writes a result.json, unless `<results>/instructions.json` tells it, by job
id, to do otherwise: `raise`, `raise_hint` (a TrainingError whose message ends with a hint), `interrupt` (raise
KeyboardInterrupt, as Ctrl-C in the debug executor's process does), `exit` (os._exit(3)), `segv`, `kill_worker`,
`block` (until killed), `meet:N` (wait until N jobs have arrived: two jobs that meet ran side by side) or `observe`
(record `harness status` as seen from this process once the journal names it).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch  # noqa: F401  (imported once by the worker, as the training code imports it)

from harness.io import atomic_write_text
from harness.train import TrainingError

IMPORTED_IN = os.getpid()  # the process that imported this module: the worker, not the job
GUARD_S = 120.0  # how long a job waits for another before it gives up (a guard, not a timing)


def record(config: dict, run_dir: str) -> None:
    run_dir = Path(run_dir)
    results = run_dir.parents[1]
    job = run_dir.name
    entry = {"job": job, "task": config["task"], "pid": os.getpid(), "ppid": os.getppid(), "start": time.time()}
    entry |= {"imported_in": IMPORTED_IN, "torch_loaded": "torch" in sys.modules}
    told = results / "instructions.json"
    what = json.loads(told.read_text()).get(job, "") if told.exists() else ""
    (results / "started").mkdir(exist_ok=True)
    (results / "started" / job).write_text(str(os.getpid()))
    if what == "raise":
        raise RuntimeError(f"boom in {job}")
    if what == "raise_hint":
        raise TrainingError(f"loss is nan at iteration 3 of {job}\nhint: lower optim.lr, or set optim.clip_grad")
    if what == "interrupt":
        raise KeyboardInterrupt
    if what == "exit":
        os._exit(3)
    if what == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if what == "kill_worker":
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(GUARD_S)  # the kernel ends this process when its worker is gone (PR_SET_PDEATHSIG)
    if what == "block":
        time.sleep(3600)
    if what.startswith("meet:"):
        deadline = time.monotonic() + GUARD_S
        while len(list((results / "started").iterdir())) < int(what.split(":")[1]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{job}: the other jobs never started while this one ran")
            time.sleep(0.05)
    if what.startswith("observe:"):
        entry["status"] = _status_seen_from_here(results, job, what.split(":", 1)[1])
    entry["end"] = time.time()
    with (results / "runs.jsonl").open("a") as f:
        f.write(json.dumps(entry) + "\n")
    run_dir.mkdir(parents=True, exist_ok=True)
    result = {"wall_clock_s": entry["end"] - entry["start"], "final_loss": 1.0}
    if config["task"] != "pretrain":
        result["top1"] = 50.0
    atomic_write_text(run_dir / "result.json", json.dumps(result))


def _status_seen_from_here(results: Path, job: str, sweep: str) -> str:
    """`harness status` as another shell would print it while this job runs (once its pid is journalled)."""
    from harness.cli import main
    from harness.launch.journal import Journal

    deadline = time.monotonic() + GUARD_S
    while (sub := Journal(results).latest().get(job)) is None or sub.job_id != str(os.getpid()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{job}: the journal never named process {os.getpid()}")
        time.sleep(0.05)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["status", sweep, "--results", str(results)])
    return out.getvalue()
