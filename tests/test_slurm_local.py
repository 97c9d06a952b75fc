"""submitit against a real SLURM cluster: one job, a job array, a dependency. Each test takes seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import cloudpickle
import pytest
import submitit

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(120)]

# The jobs unpickle these functions in a fresh interpreter that cannot import this test module: ship them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _square(x: int) -> dict:
    return {"value": x * x, "pid": os.getpid(), "job_id": os.environ.get("SLURM_JOB_ID")}


def _stamped(label: str, seconds: float) -> dict:
    """Runs `seconds` and says when it started and ended, by this machine's clock."""
    start = time.time()
    time.sleep(seconds)
    return {
        "label": label,
        "start": start,
        "end": time.time(),
        "task": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "array_job": os.environ.get("SLURM_ARRAY_JOB_ID"),
    }


def _executor(folder, slurm) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder)
    assert executor.cluster == "slurm"
    # Not timeout_min=2: submitit asks for SIGUSR2 90 s before the time limit (`--signal=USR2@90`), and SLURM may send
    # it up to 60 s early, i.e. at any time in the first 30 s of a 2-minute job; submitit takes it for a timeout and
    # fails a job that is not checkpointable. With 5 minutes the signal comes 150 s in at the earliest.
    executor.update_parameters(timeout_min=5, cpus_per_task=1, slurm_mem="200M", slurm_partition=slurm.partition)
    return executor


def _results(jobs: list, limit_s: float = 90) -> list:
    """The jobs' results. Without accounting submitit cannot tell that a job died without writing its result (it
    would wait forever), so this fails once squeue has not known a job without a result for 3 s, or after limit_s
    (guards against hanging, not timing assertions)."""
    deadline = time.monotonic() + limit_s
    gone_since: dict[str, float] = {}
    while True:
        waiting = [job for job in jobs if not job.done()]
        if not waiting:
            return [job.result() for job in jobs]
        now = time.monotonic()
        for job in waiting:
            if _squeue(job.job_id) is None:
                gone_since.setdefault(job.job_id, now)
            else:
                gone_since.pop(job.job_id, None)
        dead = [job_id for job_id, since in gone_since.items() if now - since > 3]
        if dead or now > deadline:
            queue = subprocess.run(["squeue", "-t", "all", "-o", "%i %j %T %r"], capture_output=True, text=True).stdout
            logs = "\n".join(f"--- {job.job_id} stderr:\n{job.stderr() or ''}" for job in jobs)
            why = f"{dead} ended without a result" if dead else f"not done after {limit_s} s"
            pytest.fail(f"jobs {why}\nsqueue -t all:\n{queue}\n{logs}")
        time.sleep(0.5)


def _squeue(job_id: str) -> tuple[str, str] | None:
    """(state, reason) of a pending or running job; None once it ended (or when squeue never knew it)."""
    done = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"], capture_output=True, text=True)
    if done.returncode != 0:  # purged after MinJobAge, or squeue could not ask (then say so, not "ended")
        return None if "Invalid job id" in done.stderr else ("UNKNOWN", done.stderr.strip())
    if not done.stdout.strip():
        return None
    state, reason = done.stdout.splitlines()[0].split("|")
    return state, reason


def test_one_job_returns_its_result(slurm, tmp_path):
    job = _executor(tmp_path, slurm).submit(_square, 7)
    (result,) = _results([job])
    assert result["value"] == 49
    assert result["job_id"] == job.job_id  # it ran as that SLURM job, in another process
    assert result["pid"] != os.getpid()


def test_array_then_dependent_job(slurm, tmp_path):
    executor = _executor(tmp_path, slurm)
    with executor.batch():
        array = [executor.submit(_stamped, f"task{i}", 2.0) for i in range(2)]
    array_id = array[0].job_id.split("_")[0]
    assert [job.job_id for job in array] == [f"{array_id}_0", f"{array_id}_1"]

    # afterok on the array's id: after every task of it ended with exit code 0; cancelled if it can never be met.
    executor.update_parameters(
        slurm_additional_parameters={"dependency": f"afterok:{array_id}", "kill-on-invalid-dep": "yes"}
    )
    after = executor.submit(_stamped, "after", 0.0)
    # While the tasks sleep, the dependency is what holds the job back (not, say, a node without free CPUs).
    assert _squeue(after.job_id) == ("PENDING", "Dependency")

    *tasks, last = _results([*array, after])
    assert sorted(t["task"] for t in tasks) == ["0", "1"]
    assert {t["array_job"] for t in tasks} == {array_id}
    assert last["start"] >= max(t["end"] for t in tasks)
