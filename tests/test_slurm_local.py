"""The harness's own SLURM path against a real one-node SLURM (scripts/slurm-local.sh): reading the queue with
`squeue`, submitting arrays with their `afterok` dependencies through the journal, and telling each job's state.

The jobs are held (`--hold`) and cancelled, so nothing trains and each test takes seconds; the waits are hang guards,
not timings. tests/test_launch_slurm.py runs jobs to the end (slow).
"""

from __future__ import annotations

import secrets
import subprocess
import time

import pytest

from harness.launch import commands
from harness.launch.journal import JOB_NAME_PREFIX, Journal
from harness.launch.queue import Queue
from harness.launch.state import State, observe
from harness.sweep import Request, compile_request
from tests.helpers import wait_for, write_sweep

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(120)]

TWO_STAGES = """
stages:
  pretrain:
    grid:
      method: {beit: [method=beit], splitmask: [method=splitmask]}
  finetune:
    grid: {from: pretrain}
"""


def sbatch(*args: str) -> str:
    """Submit with sbatch; the job id."""
    done = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def until(condition, what: str, limit_s: float = 60.0):
    """Poll `condition()` until it returns something true (a hang guard: fails with `what` after limit_s)."""
    deadline = time.monotonic() + limit_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {limit_s:.0f} s")
        time.sleep(0.5)
    return value


def test_queue_reads_our_held_array_task_by_task_and_nothing_else(slurm):
    name = JOB_NAME_PREFIX + secrets.token_hex(4)
    hold = ["--hold", f"--partition={slurm.partition}", "--mem=100M", "--wrap", "sleep 60"]
    array = sbatch("--array=0-2", f"--job-name={name}", *hold)
    other = sbatch("--job-name=not-a-harness-job", *hold)
    try:
        queue = Queue()
        rows = sorted(queue.by_name(name), key=lambda r: r.array_index)
        assert [(r.job_id, r.array_index) for r in rows] == [(f"{array}_{i}", i) for i in range(3)]
        assert {r.state for r in rows} == {"PENDING"} and all(r.reason.startswith("JobHeld") for r in rows)
        assert queue.get(f"{array}_1") == rows[1]
        assert other not in queue.rows and all(r.name.startswith(JOB_NAME_PREFIX) for r in queue.rows.values())
        Queue.cancel([array])  # the array's id cancels each of its tasks
        until(lambda: not Queue().by_name(name), "the cancelled array still listed as in flight")
    finally:
        subprocess.run(["scancel", array, other], check=False)


def test_run_submits_arrays_with_afterok_and_observes_them_until_cancelled(slurm, tmp_path, capsys):
    """One array for the pre-trainings, one per fine-tuning `afterok` its own upstream task; a second `run`
    submits nothing while they wait; cancelled, each is `cancelled` and a third `run` submits them again."""
    sweep = write_sweep(tmp_path, TWO_STAGES)
    req = Request([sweep], ["cluster.additional={hold: true}"], cluster="workstation", results=str(tmp_path / "r"))
    graph = compile_request(req)
    journal = Journal(req.results_dir)
    submitted: list[str] = []
    try:
        assert commands.run(req, "slurm") == 0
        out = capsys.readouterr().out
        assert "4 jobs: 0 done, 0 in flight, 4 to submit (slurm)" in out and "submitted 2 pretrain job(s)" in out
        latest = journal.latest()
        submitted = [latest[j].job_id for j in graph.jobs]
        pretrain = [j for j in graph.jobs.values() if j.task == "pretrain"]
        finetune = [j for j in graph.jobs.values() if j.task == "finetune"]
        assert len({latest[j.id].job_id.split("_")[0] for j in pretrain}) == 1  # one array
        for job in finetune:
            show = subprocess.run(["scontrol", "show", "job", "-o", latest[job.id].job_id], capture_output=True,
                                  text=True, check=True).stdout  # fmt: skip
            assert f"Dependency=afterok:{latest[job.upstream].job_id}" in show, show

        states = observe(graph, req.results_dir)
        assert {s.state for s in states.values()} == {State.PENDING}
        assert [states[j].job_id for j in graph.jobs] == submitted
        intents = journal.path.read_text()
        assert commands.run(req, "slurm") == 0
        assert "4 jobs: 0 done, 4 in flight, 0 to submit" in capsys.readouterr().out
        assert journal.path.read_text() == intents  # nothing submitted twice

        Queue.cancel(submitted)
        states = wait_for(req, lambda s: all(st.state is State.CANCELLED for st in s.values()), timeout=60, poll=0.5)
        for job in finetune:
            assert states[job.id].detail == f"upstream {job.upstream} cancelled"
        assert commands.status(req) == 0  # cancelled is not failed
        assert "4 cancelled" in capsys.readouterr().out

        assert commands.run(req, "slurm") == 0  # a cancelled job never started: submitted again
        assert "4 jobs: 0 done, 0 in flight, 4 to submit (slurm)" in capsys.readouterr().out
        again = journal.latest()
        submitted += [again[j].job_id for j in graph.jobs]
        assert not {again[j].job_id for j in graph.jobs} & set(submitted[:4])
        assert {s.state for s in observe(graph, req.results_dir).values()} == {State.PENDING}
    finally:
        if submitted:
            subprocess.run(["scancel", *submitted], check=False)
