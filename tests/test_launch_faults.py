"""The launcher under faults (issue 15): corrupt results, damaged journals, the debug executor's failures, SLURM's
refusals, the cause of a failure, orphans and kills, held jobs, Ctrl-C, results deleted by hand, read-only commands;
then the quick variants of the fault-injection suite's launcher parts (tests/faults/launcher.py, corrupt_launch.py).

Jobs are stand-ins: `tests.faults.launcher:steps` (resumable, no torch: a worker starts in a second) or
`tests.pool_jobs:record` (told by `instructions.json` to fail, block or be interrupted).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.launch import commands, pool
from harness.launch.journal import Journal
from harness.launch.state import State, cause, log_paths, observe, submitit_folder
from tests.faults.launcher import DRIVER, _ours
from tests.helpers import TWO_STAGES, write_sweep
from tests.test_launch_pool import ROOT, graph_of, instruct, wait_until

STEPS = "tests.faults.launcher:steps"
RECORD = "tests.pool_jobs:record"
DEAD_PID = 4194999  # above Linux's largest pid (2**22): a process that has ended


@pytest.fixture
def steps_jobs(monkeypatch):
    """`harness run --executor local` runs the resumable stand-in."""
    monkeypatch.setattr(pool, "DEFAULT_TARGET", STEPS)


def finished(job, results: Path, verdict: str | None = "job completed successfully", result: str | None = "{}"):
    """The job as a local run leaves it: journalled under an ended pid, its logs (ending with `verdict`), its run
    folder and (unless None) its result.json."""
    journal = Journal(results)
    pid = str(DEAD_PID - len(journal.latest()))
    journal.submitted(journal.intent([job.id], "local"), [pid])
    out, err = log_paths(results, pid)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"harness local job {job.id}: process {pid}\n")
    failed = verdict not in (None, "job completed successfully")
    err.write_text(
        ("Traceback (most recent call last):\nRuntimeError: boom\n" if failed else "")
        + (f"harness: {verdict}\n" if verdict else "")
    )
    job.run_dir.mkdir(parents=True, exist_ok=True)
    if result is not None:
        (job.run_dir / "result.json").write_text(result)
    return pid


def cli(*argv: str) -> int:
    return main(list(argv))


# ---------------------------------------------------------------------------------------------------------------
# 4. Corrupt results.
@pytest.mark.parametrize(
    "text, why",
    [("[1, 2]", "not a JSON object"), ('{"top1": "abc"}', "'top1' is \"abc\", not a number"),
     ('{"top1": 71', "not JSON"), ("", "empty")],
    ids=["list", "text-metric", "truncated", "empty"],
)  # fmt: skip
def test_a_corrupt_result_is_corrupt_everywhere_and_a_plain_run_redoes_it(tmp_path, capsys, text, why):
    sweep, results, graph, (up, down) = graph_of(tmp_path, TWO_STAGES)
    finished(up, results, result='{"task": "pretrain", "final_loss": 1.0}')
    finished(down, results, result=text)  # its log says it completed: still corrupt, not failed
    st = observe(graph, results)[down.id]
    assert st.state is State.CORRUPT and why in st.detail and "`harness run` runs it again" in st.detail
    base = [sweep, "--results", str(results)]
    assert cli("status", *base) == 1
    out, err = capsys.readouterr()
    assert "corrupt" in out and str(down.run_dir / "result.json") in out and "Traceback" not in out + err
    assert cli("plan", *base) == 0
    assert cli("run", *base, "--dry-run", "--executor", "local") == 0  # plain: no --retry-failed needed
    assert f"would submit finetune method=beit ({down.id})" in capsys.readouterr().out


def test_report_skips_a_corrupt_result_with_a_warning_naming_it(tmp_path, capsys):
    cells = "cells:\n  - {stage: finetune, keys: {method: beit}, metric: top1}\n"
    sweep, results, _, (up, down) = graph_of(tmp_path, TWO_STAGES + cells)
    finished(up, results, result='{"task": "pretrain", "final_loss": 1.0}')
    finished(down, results, result='{"top1": "abc"}')
    with pytest.warns(UserWarning, match=r"skipping .*finetune.*result.json: corrupt result \('top1' is \"abc\""):
        assert cli("report", sweep, "--results", str(results), "--out", str(tmp_path / "reports")) == 0
    assert "corrupt" in (tmp_path / "reports" / "sweep" / "table.md").read_text()


def test_a_corrupt_result_is_run_again(tmp_path, capsys, steps_jobs):
    sweep, results, graph, (up, down) = graph_of(tmp_path, TWO_STAGES)
    finished(up, results, result='{"task": "pretrain", "final_loss": 1.0}')
    finished(down, results, result='{"top1": 71')
    assert cli("run", sweep, "--executor", "local", "--results", str(results)) == 0
    assert "1 to submit (local)" in capsys.readouterr().out
    assert observe(graph, results)[down.id].state is State.DONE


# ---------------------------------------------------------------------------------------------------------------
# 7 and 16. The debug executor: a failure is one line and the sweep goes on; ids are unique; Ctrl-C interrupts.
class InProcess:
    """TrainJob's place in the debug executor: the pool's stand-in job, called in this process."""

    def __call__(self, config: dict, run_dir: str) -> None:
        from tests.pool_jobs import record

        record(config, run_dir)


@pytest.fixture
def debug_jobs(monkeypatch):
    import pdb

    import harness.train.entry as entry

    monkeypatch.setattr(entry, "TrainJob", InProcess)
    monkeypatch.setattr(pdb, "post_mortem", lambda *a, **k: pytest.fail("the debug executor entered pdb"))


def test_the_debug_executor_reports_a_failure_in_one_line_and_goes_on(tmp_path, capsys, debug_jobs):
    sweep, results, graph, jobs = graph_of(tmp_path)
    bad, good, bad_fine, good_fine = jobs
    instruct(results, **{bad.id: "raise"})
    args = ["run", sweep, "--executor", "debug", "--results", str(results)]
    assert cli(*args) == 1
    out, err = capsys.readouterr()
    assert f"({bad.id}): FAILED after" in err and f"RuntimeError: boom in {bad.id}" in err and "Traceback" not in err
    assert f"({bad_fine.id}): skipped" in out and f"({good_fine.id}): done in" in out  # the rest went on
    states = observe(graph, results)
    assert [states[j.id].state for j in jobs] == [State.FAILED, State.DONE, State.NOT_SUBMITTED, State.DONE]
    first = states[bad.id].job_id
    assert first.startswith("debug-") and len({states[j.id].job_id for j in (bad, good, good_fine)}) == 3
    assert f"RuntimeError: boom in {bad.id}" in states[bad.id].error_tail  # status shows this job's own log

    instruct(results)
    assert cli(*args, "--retry-failed") == 0
    again = observe(graph, results)
    assert all(s.state is State.DONE for s in again.values()) and again[bad.id].job_id != first
    assert "boom" in log_paths(results, first)[1].read_text()  # the failed run's log is its own, not reused


def test_ctrl_c_in_the_debug_executor_interrupts_and_a_plain_run_resumes(tmp_path, capsys, debug_jobs):
    sweep, results, graph, (up, _) = graph_of(tmp_path, TWO_STAGES)
    instruct(results, **{up.id: "interrupt"})
    args = ["run", sweep, "--executor", "debug", "--results", str(results)]
    assert cli(*args) == 130
    err = capsys.readouterr().err
    assert "interrupted: 1 running job(s) stopped" in err and "Traceback" not in err
    assert [s.state for s in observe(graph, results).values()] == [State.INTERRUPTED, State.NOT_SUBMITTED]
    instruct(results)
    assert cli(*args) == 0
    assert all(s.state is State.DONE for s in observe(graph, results).values())


def test_ctrl_c_anywhere_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "plan", interrupted)
    assert cli("plan", write_sweep(tmp_path, TWO_STAGES)) == 130
    assert capsys.readouterr().err == "harness plan: interrupted\n"


# ---------------------------------------------------------------------------------------------------------------
# 9. SLURM's refusals, in one line with what to pass.
@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sbatch answering `error` (exit 1), srun and an squeue listing nothing, first on the PATH."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}:/usr/bin:/bin")

    def sbatch(error: str) -> None:
        for name, body in {"sbatch": f"echo '{error}' >&2\nexit 1", "srun": "exit 0", "squeue": "exit 0"}.items():
            (folder / name).write_text(f"#!/bin/sh\n{body}\n")
            (folder / name).chmod(0o755)

    return sbatch


def test_executor_slurm_without_slurm_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    sweep = write_sweep(tmp_path, "stages: {pretrain: {}}")
    assert cli("run", sweep, "--executor", "slurm", "--results", str(tmp_path / "results")) == 2
    err = capsys.readouterr().err
    assert "SLURM is not installed here (no `sbatch` or `srun` on the PATH)" in err and "--executor local" in err
    assert len(err.splitlines()) == 1


def test_sbatch_refusing_gpus_says_what_to_pass(tmp_path, capsys, fake_slurm):
    fake_slurm("sbatch: error: Batch job submission failed: Invalid generic resource (gres) specification")
    sweep, results, graph, _ = graph_of(tmp_path, "stages: {pretrain: {}}")
    assert cli("run", sweep, "--executor", "slurm", "--results", str(results)) == 2  # the default: 8 GPUs a node
    err = capsys.readouterr().err
    assert "sbatch refused 1 pretrain job(s) (pretrain): sbatch: error: Batch job submission failed: Invalid" in err
    assert "8 GPU(s) per node" in err and "`--cluster workstation` or `cluster.gpus_per_node=0`" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert [s.state for s in observe(graph, results).values()] == [State.NOT_SUBMITTED]  # nothing reached the queue


# ---------------------------------------------------------------------------------------------------------------
# 10. The cause of a failure: the exception line, not the hint after it.
def test_cause_is_the_exception_line_of_the_last_traceback(tmp_path):
    log = tmp_path / "err"
    log.write_text(
        "loading...\nTraceback (most recent call last):\n  File \"a.py\", line 1, in <module>\nKeyError: 'x'\n\n"
        "During handling of the above exception, another exception occurred:\n\n"
        'Traceback (most recent call last):\n  File "b.py", line 2, in f\n    raise NonFiniteLossError(msg)\n'
        "harness.train.loop.NonFiniteLossError: loss is nan at iteration 3\nhint: lower optim.lr\n"
        "harness: its process exited with code 1\n"
    )
    assert cause(log) == "harness.train.loop.NonFiniteLossError: loss is nan at iteration 3"
    log.write_text("Fatal Python error: Segmentation fault\n\nharness: its process was killed by SIGSEGV\n")
    assert cause(log) == "Fatal Python error: Segmentation fault"  # no traceback: the last line
    assert cause(tmp_path / "none") == ""


def test_the_local_failed_line_names_the_cause(tmp_path, capsys):
    _, results, graph, jobs = graph_of(tmp_path, "stages: {pretrain: {}}")
    instruct(results, **{jobs[0].id: "raise_hint"})
    assert pool.Pool(results, Journal(results), slots=1, target=RECORD).run(jobs, set()) == {jobs[0].id: "failed"}
    failed = [line for line in capsys.readouterr().err.splitlines() if "FAILED" in line]
    assert failed and failed[0].endswith(f"TrainingError: loss is nan at iteration 3 of {jobs[0].id}")
    assert observe(graph, results)[jobs[0].id].state is State.FAILED


# ---------------------------------------------------------------------------------------------------------------
# 13. The journal: a damaged record is skipped with a warning naming its line; a torn line never eats the next.
def test_a_damaged_journal_record_is_skipped_with_a_warning_naming_its_line(tmp_path, capsys):
    journal = Journal(tmp_path)
    first = journal.intent(["a"], "slurm")
    with journal.path.open("a") as f:
        f.write('{"event": "intent", "jobs": ["b"]}\n[1, 2]\n{"event": "submitted", "token": "x", "ids": 3}\n')
    journal.submitted(first, ["10"])
    latest = journal.latest()
    assert list(latest) == ["a"] and latest["a"].job_id == "10"
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"harness: warning: {journal.path}:2: skipped a damaged journal record (no 'token')",
        f"harness: warning: {journal.path}:3: skipped a damaged journal record (not a JSON object)",
        f"harness: warning: {journal.path}:4: skipped a damaged journal record ('ids' is not a list)",
    ]
    journal.latest()
    assert capsys.readouterr().err == ""  # once per journal read by one command


def test_a_record_after_a_torn_line_is_kept(tmp_path, capsys):
    """A crash mid-write leaves a line without its end: the next record starts on a line of its own."""
    journal = Journal(tmp_path)
    journal.dir.mkdir()
    journal.path.write_text('{"event": "submitted", "tok')
    assert journal.latest() == {} and capsys.readouterr().err == ""  # a torn last line: expected, said nothing
    token = journal.intent(["a"], "slurm")
    journal.submitted(token, ["10"])
    assert journal.latest()["a"].job_id == "10"
    assert f"{journal.path}:1: skipped a damaged journal record (not JSON)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# 14. After kill -9: nothing runs unknown to the journal, and a rerun adopts what still runs.
ORPHAN = """
import json, sys, time
from pathlib import Path
run_dir, results, writes = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "result"
while not (results / ".harness" / "workers").exists():  # until the new `harness run` has started its workers
    time.sleep(0.05)
time.sleep(0.5)
if writes:
    (run_dir / "result.json").write_text(json.dumps({"task": "pretrain", "final_loss": 1.0}))
"""


@pytest.mark.parametrize("ends_with", ["result", "nothing"])
def test_a_rerun_waits_for_a_job_that_outlived_its_harness_run(tmp_path, capsys, steps_jobs, ends_with):
    """The pre-training's process outlived its `harness run` (an orphan): the rerun waits for it, then runs the
    fine-tuning (or, when it ended without a result, the pre-training again first)."""
    sweep, results, graph, (up, down) = graph_of(tmp_path, TWO_STAGES)
    up.run_dir.mkdir(parents=True)
    folder = str(submitit_folder(results).resolve())
    orphan = subprocess.Popen(
        [sys.executable, "-c", ORPHAN, str(up.run_dir), str(results), ends_with, "--log-folder", folder]
    )
    try:
        journal = Journal(results)
        journal.submitted(journal.intent([up.id], "local"), [str(orphan.pid)])
        assert observe(graph, results)[up.id].state is State.RUNNING
        assert cli("run", sweep, "--executor", "local", "--results", str(results)) == 0
    finally:
        orphan.kill()
        orphan.wait()
    out = capsys.readouterr().out
    assert f"({up.id}): still running from an earlier `harness run` (process {orphan.pid})" in out
    assert f"({down.id}): done in" in out and "skipped" not in out
    ran = {r["job"] for r in map(json.loads, (results / "completions.jsonl").read_text().splitlines())}
    assert ran == ({down.id} if ends_with == "result" else {up.id, down.id})
    assert all(s.state is State.DONE for s in observe(graph, results).values())


def test_a_kill_before_the_journal_knows_the_pid_leaves_no_job_running(tmp_path, capsys):
    """Killed between a job's intent and the record of its pid: the job never starts (it waits for the journal)."""
    sweep, results, graph, (up, _) = graph_of(tmp_path, TWO_STAGES)
    args = ["run", sweep, "--executor", "local", "--results", str(results)]
    env = {**os.environ, "FAULT_AT": "1", "FAULT_TARGET": STEPS}
    driver = subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=ROOT, env=env, capture_output=True)
    assert driver.returncode == -signal.SIGKILL
    wait_until(lambda: not _ours(results), "the worker and its job ended")
    assert not (up.run_dir / "steps.lock").exists()  # the job never started
    assert observe(graph, results)[up.id].state is State.NOT_SUBMITTED
    env.pop("FAULT_AT")
    assert subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=ROOT, env=env).returncode == 0
    assert all(s.state is State.DONE for s in observe(graph, results).values())


# ---------------------------------------------------------------------------------------------------------------
# 15. Held jobs: exit 1 and why, in one line.
@pytest.mark.parametrize("dry", [True, False], ids=["dry-run", "run"])
def test_run_exits_1_when_every_job_is_held(tmp_path, capsys, dry):
    sweep, results, graph, (up, _) = graph_of(tmp_path, TWO_STAGES)
    finished(up, results, verdict="its process exited with code 1", result=None)
    assert observe(graph, results)[up.id].state is State.FAILED
    args = ["run", sweep, "--executor", "local", "--results", str(results)] + ["--dry-run"] * dry
    assert cli(*args) == 1
    out, err = capsys.readouterr()
    assert "0 to submit" in out
    assert err.splitlines() == [
        "harness run: 2 job(s) held back, not run (1 failed, 1 waiting on an upstream that is not done): "
        "`harness run --retry-failed` resubmits failed jobs and their dependents"
    ]


# ---------------------------------------------------------------------------------------------------------------
# 17. Results deleted by hand: missing, and run again.
def test_results_deleted_by_hand_are_missing_and_run_again(tmp_path, capsys, steps_jobs):
    sweep, results, graph, jobs = graph_of(tmp_path)
    args = ["run", sweep, "--executor", "local", "--results", str(results)]
    assert cli(*args) == 0
    for path in results.iterdir():  # `rm -rf results/*`: the dot folders stay
        if not path.name.startswith(".") and path.is_dir():
            subprocess.run(["rm", "-rf", str(path)], check=True)
    states = observe(graph, results)
    assert {s.state for s in states.values()} == {State.MISSING}
    assert "its run folder is gone" in states[jobs[0].id].detail
    assert cli("status", sweep, "--results", str(results)) == 0
    assert "4 missing" in capsys.readouterr().out
    assert cli(*args) == 0
    assert "4 to submit (local)" in capsys.readouterr().out
    (jobs[0].run_dir / "result.json").unlink()  # only the result: its log says it completed
    st = observe(graph, results)[jobs[0].id]
    assert st.state is State.MISSING and "it completed once" in st.detail


# ---------------------------------------------------------------------------------------------------------------
# 18. Read-only commands create nothing; a results folder that is not there is said in one line.
def test_read_only_commands_create_no_folder_and_say_when_the_results_are_not_there(tmp_path, capsys):
    sweep = write_sweep(tmp_path, TWO_STAGES)
    typo = tmp_path / "resluts"
    assert cli("status", sweep, "--results", str(typo)) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"harness status: results folder {typo} does not exist (--results, else $HARNESS_RESULTS, else "
        "./results): nothing has run there"
    ]
    assert cli("report", sweep, "--results", str(typo), "--out", str(tmp_path / "reports")) == 2
    assert "harness report: results folder" in capsys.readouterr().err
    assert cli("plan", sweep, "--results", str(typo)) == 0
    assert f"results folder {typo} does not exist yet: nothing done" in capsys.readouterr().out
    assert not typo.exists() and not (tmp_path / "reports").exists()


# ---------------------------------------------------------------------------------------------------------------
def test_harness_train_prints_a_training_error_in_one_line(monkeypatch, capsys):
    import harness.train.entry as entry
    from harness.train import TrainingError

    def fails(task, overrides):
        raise TrainingError("loss is nan at iteration 3 (run folder results/pretrain/abc)")

    monkeypatch.setattr(entry, "main", fails)
    assert cli("train", "pretrain") == 2
    assert capsys.readouterr().err == "harness train: loss is nan at iteration 3 (run folder results/pretrain/abc)\n"
