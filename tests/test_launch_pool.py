"""The local executor's pool (harness.launch.pool): order, concurrency, failures that stay alone, crashes, Ctrl-C.

Most tests swap the training job for `tests.pool_jobs:record`, a stand-in that records where and when it ran and can
be told to fail, crash, kill its worker or block; the last ones train for real at tiny scale. Concurrency is shown by
two jobs that wait for each other, and by the intervals the jobs recorded, never by a timing threshold.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.launch import pool
from harness.launch.journal import Journal
from harness.launch.state import State, log_paths, observe
from harness.sweep import Request, compile_request
from tests.helpers import TWO_BY_TWO, needs_data, write_sweep

TARGET = "tests.pool_jobs:record"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def stand_in(monkeypatch):
    """`harness run --executor local` runs the stand-in job instead of the training."""
    monkeypatch.setattr(pool, "DEFAULT_TARGET", TARGET)


def graph_of(tmp_path: Path, body: str = TWO_BY_TWO):
    sweep = write_sweep(tmp_path, body)
    results = tmp_path / "results"
    req = Request([sweep], [], results=str(results))
    graph = compile_request(req)
    return sweep, results, graph, list(graph.jobs.values())


def instruct(results: Path, **what: str) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / "instructions.json").write_text(json.dumps(what))


def runs(results: Path) -> dict[str, dict]:
    lines = (results / "runs.jsonl").read_text().splitlines() if (results / "runs.jsonl").exists() else []
    records = [json.loads(line) for line in lines]
    by_job = {r["job"]: r for r in records}
    assert len(by_job) == len(records), "a job ran twice"
    return by_job


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for a reaper counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status


def wait_until(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------------------------
def test_jobs_run_once_in_dependency_order_side_by_side_and_workers_import_once(tmp_path):
    _, results, graph, jobs = graph_of(tmp_path)
    pre_a, pre_b, fine_a, fine_b = jobs
    instruct(results, **{pre_a.id: "meet:2", pre_b.id: "meet:2"})  # each waits until the other has started
    outcome = pool.Pool(results, Journal(results), slots=2, target=TARGET).run(jobs, set())
    assert outcome == {j.id: "done" for j in jobs}
    seen = runs(results)
    assert set(seen) == {j.id for j in jobs}  # each once
    # Side by side: the two pre-trainings' [start, end] overlap.
    assert max(seen[pre_a.id]["start"], seen[pre_b.id]["start"]) < min(seen[pre_a.id]["end"], seen[pre_b.id]["end"])
    for fine in (fine_a, fine_b):  # after its upstream ended
        assert seen[fine.id]["start"] >= seen[fine.upstream]["end"]
    # One process per job, forked by a worker that had imported torch and the job's code before: at most 2
    # workers for 4 jobs, so one of them ran two jobs without importing anything again.
    assert len({r["pid"] for r in seen.values()}) == 4
    assert all(r["torch_loaded"] and r["imported_in"] == r["ppid"] for r in seen.values())
    workers = [r["ppid"] for r in seen.values()]
    assert len(set(workers)) <= 2 and len(set(workers)) < len(workers)
    # The journal names each job's process, and the state is done.
    latest = Journal(results).latest()
    assert {j.id: latest[j.id].job_id for j in jobs} == {j.id: str(seen[j.id]["pid"]) for j in jobs}
    assert all(s.state is State.DONE for s in observe(graph, results).values())
    assert all(gone(w) for w in workers)


def test_status_from_another_process_sees_a_pool_job_running(tmp_path):
    sweep, results, _, jobs = graph_of(tmp_path, "stages: {pretrain: {}}")
    (job,) = jobs
    instruct(results, **{job.id: f"observe:{sweep}"})
    assert pool.Pool(results, Journal(results), slots=1, target=TARGET).run(jobs, set()) == {job.id: "done"}
    seen = runs(results)[job.id]
    (row,) = [line.split() for line in seen["status"].splitlines() if line.startswith("pretrain")]
    assert row[2:4] == ["running", str(seen["pid"])]


def test_a_failing_job_fails_alone_with_its_own_log_and_a_retry_runs_it(tmp_path, capsys, stand_in):
    sweep, results, graph, jobs = graph_of(tmp_path)
    bad, good, bad_fine, good_fine = jobs
    instruct(results, **{bad.id: "raise"})
    args = [sweep, "--executor", "local", "--results", str(results), "--jobs", "2"]
    assert main(["run", *args]) == 1
    out, err = capsys.readouterr()
    assert f"({bad.id}): FAILED after" in err and f"boom in {bad.id}" in err
    assert f"({bad_fine.id}): skipped, its upstream {bad.id} did not finish" in out
    assert set(runs(results)) == {good.id, good_fine.id}  # the dependent never started; the rest went on
    states = observe(graph, results)
    assert [states[j.id].state for j in jobs] == [State.FAILED, State.DONE, State.NOT_SUBMITTED, State.DONE]
    own_err = log_paths(results, states[bad.id].job_id)[1].read_text()
    assert "RuntimeError: boom in" in own_err and bad.id in own_err
    assert "boom" not in log_paths(results, states[good.id].job_id)[1].read_text()  # logs are per job

    assert main(["status", sweep, "--results", str(results)]) == 1
    status = capsys.readouterr().out
    assert f"failed, job {states[bad.id].job_id}; last lines of its log" in status and "| RuntimeError: boom" in status
    assert main(["run", *args]) == 1  # held, not retried: scripts see that the sweep is not done
    out, err = capsys.readouterr()
    assert "failed: --retry-failed resubmits it" in out
    assert "2 job(s) held back, not run (1 failed, 1 waiting" in err and len(err.splitlines()) == 1

    instruct(results)  # fixed
    assert main(["run", *args, "--retry-failed"]) == 0
    assert "2 to submit (local)" in capsys.readouterr().out
    assert all(s.state is State.DONE for s in observe(graph, results).values())


def test_a_job_that_crashes_its_process_or_kills_its_worker_fails_and_the_rest_completes(tmp_path, capsys):
    body = "stages: {pretrain: {grid: {seed: [1, 2, 3, 4]}}}"
    _, results, graph, jobs = graph_of(tmp_path, body)
    exits, segv, kills, fine = jobs
    instruct(results, **{exits.id: "exit", segv.id: "segv", kills.id: "kill_worker"})
    outcome = pool.Pool(results, Journal(results), slots=1, target=TARGET).run(jobs, set())
    assert outcome == {exits.id: "failed", segv.id: "failed", kills.id: "failed", fine.id: "done"}
    err = capsys.readouterr().err
    assert "its process exited with code 3" in err and "killed by SIGSEGV" in err
    assert "its worker process was killed by SIGKILL" in err
    states = observe(graph, results)
    assert [states[j.id].state for j in jobs] == [State.FAILED] * 3 + [State.DONE]
    assert "harness: its process exited with code 3" in states[exits.id].error_tail
    assert any("Segmentation fault" in line for line in states[segv.id].error_tail)  # faulthandler's
    started = {j.id: int((results / "started" / j.id).read_text()) for j in jobs}
    assert runs(results)[fine.id]["pid"] == started[fine.id]
    # One slot: the job after the worker's death ran in a new worker.
    first_worker = int(log_paths(results, str(started[exits.id]))[0].read_text().split("of worker ")[1].split(",")[0])
    assert runs(results)[fine.id]["ppid"] != first_worker
    assert all(gone(pid) for pid in [*started.values(), first_worker])


# ---------------------------------------------------------------------------------------------------------------
# Stopping `harness run`: a driver process runs it with the stand-in job.
DRIVER = """
import faulthandler, os, signal, sys, threading
faulthandler.register(signal.SIGUSR1)  # the test asks for every thread's stack when the driver hangs
signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's Ctrl-C finds it (`pytest &` ignores it)
if os.environ.get("OFF_MAIN"):  # signals reach another thread (as torch's threads may take them), never the main one
    threading.Thread(target=threading.Event().wait, daemon=True).start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
from harness.launch import pool
pool.DEFAULT_TARGET = "tests.pool_jobs:record"
from harness.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    "how, off_main",
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGKILL, False), (signal.SIGINT, True),
     (signal.SIGTERM, True)],
    ids=["SIGINT", "SIGTERM", "SIGKILL", "SIGINT-to-another-thread", "SIGTERM-to-another-thread"],
)  # fmt: skip
def test_stopping_harness_run_leaves_no_process_and_the_job_can_run_again(tmp_path, how, off_main, capsys, stand_in):
    sweep, results, graph, jobs = graph_of(tmp_path, "stages: {pretrain: {grid: {seed: [1, 2]}}}")
    instruct(results, **{j.id: "block" for j in jobs})
    args = ["run", sweep, "--executor", "local", "--results", str(results), "--jobs", "2"]
    env = {**os.environ, "OFF_MAIN": "1"} if off_main else None
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, *args], cwd=ROOT, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        started = results / "started"
        wait_until(lambda: started.exists() and len(list(started.iterdir())) == 2, "both jobs started")
        wait_until(lambda: all(observe(graph, results)[j.id].state is State.RUNNING for j in jobs), "both running")
        pids = [int((started / j.id).read_text()) for j in jobs]
        workers = [int(Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[1]) for pid in pids]
        driver.send_signal(how)
        try:
            driver.wait(timeout=60)
        except subprocess.TimeoutExpired:  # keep the evidence
            driver.send_signal(signal.SIGUSR1)
            time.sleep(2)
            driver.kill()
            pytest.fail(f"harness run did not stop within 60 s of {how.name}; its stacks:\n{driver.stderr.read()}")
    finally:
        if driver.poll() is None:
            driver.kill()
    wait_until(lambda: all(gone(p) for p in [*pids, *workers]), "the workers and their jobs exited", timeout=30)
    states = observe(graph, results)
    assert all(states[j.id].state is State.INTERRUPTED for j in jobs)  # not failed: a plain rerun takes them
    if how is not signal.SIGKILL:  # SIGKILL: nothing could be said, the logs end without the launcher's verdict
        err = driver.stderr.read()
        assert driver.returncode == 130 and "interrupted: 2 running job(s) stopped" in err and "Traceback" not in err
        assert "harness: interrupted" in log_paths(results, str(pids[0]))[1].read_text()
    instruct(results)
    assert main(args) == 0
    assert "2 to submit (local)" in capsys.readouterr().out
    assert all(s.state is State.DONE for s in observe(graph, results).values())


def test_a_worker_that_cannot_start_is_one_clear_error(tmp_path):
    _, results, _, jobs = graph_of(tmp_path, "stages: {pretrain: {}}")
    with pytest.raises(pool.PoolError, match=r"(?s)before it was ready.*No module named 'tests.no_such_module'"):
        pool.Pool(results, Journal(results), slots=1, target="tests.no_such_module:job").run(jobs, set())


def test_the_default_slots_follow_the_cores():
    if Path("/dev/nvidia0").exists():
        pytest.skip("a GPU machine runs one job at a time by default")
    assert [pool.default_slots(c) for c in (1, 2, 4, 16, 64)] == [1, 2, 2, 8, 8]


# ---------------------------------------------------------------------------------------------------------------
@needs_data
@pytest.mark.slow  # four tiny trainings in two workers (~15 s on 2 cores)
def test_real_jobs_a_failure_stays_alone_and_the_rest_trains(tmp_path, capsys):
    """The training code in the pool: a job that fails at run time (a batch larger than its data) fails alone."""
    body = """
    stages:
      pretrain:
        grid:
          method: {beit: [method=beit], bad: [method=beit, optim.batch_size=1000]}
      finetune:
        grid: {from: pretrain}
    """
    sweep, results, graph, jobs = graph_of(tmp_path, body)
    _, bad, good_fine, bad_fine = jobs
    assert main(["run", sweep, "--executor", "local", "--results", str(results), "--jobs", "2"]) == 1
    out, err = capsys.readouterr()
    assert f"({bad_fine.id}): skipped" in out and f"({good_fine.id}): done in" in out and "top1" in out
    assert "fewer than one batch" in err
    states = observe(graph, results)
    assert [states[j.id].state for j in jobs] == [State.DONE, State.FAILED, State.DONE, State.NOT_SUBMITTED]
    assert any("fewer than one batch" in line for line in states[bad.id].error_tail)
    assert main(["status", sweep, "--results", str(results)]) == 1
    assert "fewer than one batch" in capsys.readouterr().out
