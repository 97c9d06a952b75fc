"""Where each job stands, branch by branch, without a cluster: a fake queue (rows handed to `Queue`) or a fake
`squeue` / `scancel` on the PATH stands in for SLURM.

The branches of `harness.launch.state._state`, in its order: a result (done), blocked (not runnable), never submitted,
SLURM with an unreadable queue (unknown), SLURM without a job id (found by name, or the intent never reached the
queue), SLURM in the queue (running or pending by squeue's state), a live local process (running), an intent without
an id (not submitted), a log (failed) or none (cancelled, with the upstream's failure named).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.cli import main
from harness.launch import commands
from harness.launch.journal import Journal
from harness.launch.queue import FINISHED, Queue, QueueError, QueueRow
from harness.launch.state import IN_FLIGHT, RUNNING_SLURM, State, log_paths, observe, submitit_folder
from harness.sweep import Request, compile_request, compile_sweeps, load_sweep
from tests.helpers import TWO_STAGES, write_sweep


class FakeQueue(Queue):
    """`Queue` whose squeue answers with `rows` (or raises `error`); counts how often it was asked."""

    def __init__(self, rows: list[QueueRow] = (), error: str | None = None) -> None:
        super().__init__()
        self.answer = {row.job_id: row for row in rows}
        self.error = error
        self.calls = 0

    def _squeue(self) -> dict[str, QueueRow]:
        self.calls += 1
        if self.error:
            raise QueueError(self.error)
        return dict(self.answer)


@pytest.fixture
def setup(tmp_path):
    """The two-job graph (pretrain -> finetune), its results folder and its journal."""
    graph = compile_sweeps([load_sweep(write_sweep(tmp_path, TWO_STAGES))], tmp_path / "results")
    up, down = graph.jobs.values()
    return graph, up, down, tmp_path / "results", Journal(tmp_path / "results")


def submitted(journal: Journal, jobs: list, ids: list[str | None] | None, executor: str = "slurm") -> str:
    """Journal an intent for `jobs` (one array, in this order) and, unless `ids` is None, their scheduler ids."""
    token = journal.intent([j.id for j in jobs], executor)
    if ids is not None:
        journal.submitted(token, ids)
    return token


def write_result(job, **result) -> None:
    job.run_dir.mkdir(parents=True, exist_ok=True)
    (job.run_dir / "result.json").write_text(json.dumps(result))


def write_log(results: Path, job_id: str, err: str = "", out: str = "", job=None) -> None:
    """A job's logs (and, given `job`, its run folder: a job that ran has one)."""
    if job is not None:
        job.run_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_paths(results, job_id)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(out)
    err_path.write_text(err)


# ---------------------------------------------------------------------------------------------------------------
def test_a_result_on_disk_is_done_and_the_queue_is_not_asked(setup):
    graph, up, down, results, journal = setup
    submitted(journal, [up, down], ["10_0", "10_1"])
    write_result(up, wall_clock_s=3725.0, final_loss=4.2134)
    write_result(down, wall_clock_s=65.0, top1=71.2)
    queue = FakeQueue(error="squeue must not be called")
    states = observe(graph, results, queue, journal)
    assert queue.calls == 0  # every submitted job has its result: nothing to ask the scheduler
    assert [s.state for s in states.values()] == [State.DONE, State.DONE]
    assert (states[up.id].job_id, states[up.id].elapsed, states[up.id].last_metric) == ("10_0", "1:02:05", "loss 4.213")
    assert (states[down.id].executor, states[down.id].last_metric, states[down.id].result["top1"]) == (
        "slurm",
        "top1 71.20",
        71.2,
    )


def test_never_submitted_and_blocked_jobs_need_no_queue(tmp_path):
    sweep = write_sweep(tmp_path, TWO_STAGES.replace("  finetune:", "  finetune:\n    runnable: waits for a recipe"))
    graph = compile_sweeps([load_sweep(sweep)], tmp_path / "results")
    up, down = graph.jobs.values()
    queue = FakeQueue(error="squeue must not be called")
    states = observe(graph, tmp_path / "results", queue)
    assert queue.calls == 0
    assert (states[up.id].state, states[up.id].detail) == (State.NOT_SUBMITTED, "")
    assert (states[down.id].state, states[down.id].detail) == (State.NOT_RUNNABLE, "waits for a recipe")
    write_result(down, top1=1.0)  # a result counts whatever the sweep says now
    assert observe(graph, tmp_path / "results", queue)[down.id].state is State.DONE


def test_queue_unknown_when_squeue_fails_and_run_refuses_to_submit_blind(setup, capsys):
    graph, up, down, results, journal = setup
    submitted(journal, [up], ["10_0"])
    queue = FakeQueue(error="`squeue ...` failed: Unable to contact slurm controller")
    states = observe(graph, results, queue, journal)
    assert queue.calls == 1  # one call for the whole graph
    st = states[up.id]
    assert (st.state, st.job_id, st.executor) == (State.UNKNOWN, "10_0", "slurm")
    assert "Unable to contact slurm controller" in st.detail
    assert states[down.id].state is State.NOT_SUBMITTED  # never submitted: known without the queue


def test_found_by_name_when_the_journal_lost_the_ids(setup):
    """A crash between sbatch and the journal: the array is found by its name, each task by its index."""
    graph, up, down, results, journal = setup
    token = submitted(journal, [up, down], None)
    rows = [
        QueueRow("555_1", f"harness-{token}", "PENDING", "0:00", "Dependency"),
        QueueRow("555_0", f"harness-{token}", "RUNNING", "1:23", "None"),
        QueueRow("556_0", "harness-0ther000", "RUNNING", "9:99", "None"),  # another array of ours
    ]
    states = observe(graph, results, FakeQueue(rows), journal)
    assert (states[up.id].state, states[up.id].job_id, states[up.id].elapsed) == (State.RUNNING, "555_0", "1:23")
    assert (states[down.id].state, states[down.id].job_id) == (State.PENDING, "555_1")
    assert states[down.id].detail == "Dependency" and states[up.id].detail == ""


def test_an_intent_that_never_reached_the_queue_is_not_submitted(setup):
    graph, up, _, results, journal = setup
    token = submitted(journal, [up], None)
    states = observe(graph, results, FakeQueue([]), journal)
    assert states[up.id].state is State.NOT_SUBMITTED
    assert states[up.id].detail == f"intent {token} never reached the queue"


@pytest.mark.parametrize("squeue_state", ["RUNNING", "COMPLETING", "CONFIGURING", "PENDING", "REQUEUED", "SUSPENDED"])
def test_in_the_queue_running_or_pending_by_squeues_state(setup, squeue_state):
    graph, up, _, results, journal = setup
    submitted(journal, [up], ["42"])
    up.run_dir.mkdir(parents=True)
    (up.run_dir / "metrics.jsonl").write_text('{"it": 119, "loss": 4.3}\n{"it": 120, "loss": 4.2134}\n{"torn')
    row = QueueRow("42", "harness-x", squeue_state, "0:42", "Resources")
    st = observe(graph, results, FakeQueue([row]), journal)[up.id]
    expected = State.RUNNING if squeue_state in RUNNING_SLURM else State.PENDING
    assert (st.state, st.job_id, st.elapsed, st.last_metric) == (expected, "42", "0:42", "it 120 loss 4.213")
    assert st.detail == ("" if expected is State.RUNNING else "Resources")
    assert st.state in IN_FLIGHT


def test_the_latest_submission_of_a_job_is_the_one_asked_about(setup):
    graph, up, _, results, journal = setup
    submitted(journal, [up], ["10_0"])
    submitted(journal, [up], ["11_0"])  # resubmitted (--retry-failed)
    st = observe(graph, results, FakeQueue([QueueRow("11_0", "harness-y", "RUNNING", "0:01", "None")]), journal)[up.id]
    assert (st.state, st.job_id) == (State.RUNNING, "11_0")


def test_left_the_queue_after_running_is_failed_with_its_logs_tail(setup):
    graph, up, down, results, journal = setup
    submitted(journal, [up, down], ["20_0", "20_1"])
    write_log(results, "20_0", err="".join(f"line {i}\n" for i in range(30)) + "RuntimeError: out of memory\n", job=up)
    write_log(results, "20_1", out="started\nKilled\n", job=down)  # nothing on stderr: stdout's tail instead
    states = observe(graph, results, FakeQueue([]), journal)
    assert states[up.id].state is State.FAILED and states[down.id].state is State.FAILED
    assert len(states[up.id].error_tail) == 12 and states[up.id].error_tail[-1] == "RuntimeError: out of memory"
    assert states[down.id].error_tail == ["started", "Killed"]


@pytest.mark.parametrize("upstream", [State.FAILED, State.CANCELLED])
def test_left_the_queue_without_starting_is_cancelled_naming_the_upstream(setup, upstream):
    graph, up, down, results, journal = setup
    submitted(journal, [up], ["30_0"])
    submitted(journal, [down], ["31_0"])
    if upstream is State.FAILED:
        write_log(results, "30_0", err="boom\n", job=up)
    states = observe(graph, results, FakeQueue([]), journal)
    assert states[up.id].state is upstream
    assert states[up.id].detail == ("" if upstream is State.FAILED else "left the queue without starting")
    assert states[down.id].state is State.CANCELLED
    assert states[down.id].detail == f"upstream {up.id} {upstream}"


def test_local_jobs_run_while_their_submitit_process_lives(setup):
    """A local job's process names its results folder's submitit folder (the worker's `--log-folder`)."""
    graph, up, down, results, journal = setup
    folder = str(submitit_folder(results).resolve())
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "--log-folder", folder])
    try:
        ended = subprocess.Popen([sys.executable, "-c", "pass", "--log-folder", folder])
        ended.wait()
        submitted(journal, [up], [str(alive.pid)], executor="local")
        submitted(journal, [down], [str(ended.pid)], executor="local")
        queue = FakeQueue(error="squeue must not be called")
        states = observe(graph, results, queue, journal)
        assert queue.calls == 0  # local jobs are processes, not queue rows
        assert (states[up.id].state, states[up.id].executor) == (State.RUNNING, "local")
        assert states[down.id].state is State.CANCELLED  # the process is gone and left no log
    finally:
        alive.kill()
        alive.wait()


def test_a_live_process_of_another_program_is_not_our_job(setup):
    """A recycled pid: a process lives under the journalled id, but it is not a job of this results folder's (another
    program, or a job of another results folder)."""
    graph, up, _, results, journal = setup
    elsewhere = str(submitit_folder(results.parent / "other").resolve())
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "--log-folder", elsewhere])
    try:
        submitted(journal, [up], [str(other.pid)], executor="local")
        write_log(results, str(other.pid), err="Traceback\nharness: its process exited with code 1\n", job=up)
        assert observe(graph, results, FakeQueue([]), journal)[up.id].state is State.FAILED
    finally:
        other.kill()
        other.wait()


def test_a_local_intent_without_a_pid_never_reached_the_scheduler(setup):
    graph, up, _, results, journal = setup
    token = submitted(journal, [up], None, executor="local")
    st = observe(graph, results, FakeQueue(error="squeue must not be called"), journal)[up.id]
    assert (st.state, st.detail) == (State.NOT_SUBMITTED, f"intent {token} never reached the scheduler")


# ---------------------------------------------------------------------------------------------------------------
# The queue through a fake squeue on the PATH: how it is called, what of its output counts.
@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    """A folder first on the PATH; `tool(name, stdout, rc, stderr)` puts a script there that records its arguments
    (one call per line in `<name>.calls`) and answers as given."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}:/usr/bin:/bin")

    def tool(name: str, stdout: str = "", rc: int = 0, stderr: str = "") -> Path:
        (folder / f"{name}.out").write_text(stdout)
        (folder / f"{name}.err").write_text(stderr)
        script = folder / name
        script.write_text(
            textwrap.dedent(
                f"""\
                #!/bin/sh
                echo "$@" >> {folder / name}.calls
                cat {folder / name}.out
                cat {folder / name}.err >&2
                exit {rc}
                """
            )
        )
        script.chmod(0o755)
        return folder / f"{name}.calls"

    return tool


def test_queue_reads_our_in_flight_rows_from_one_squeue_call(fake_bin):
    calls = fake_bin(
        "squeue",
        "\n".join(
            [
                "101|harness-aa11|RUNNING|0:10|None",
                "102_3|harness-bb22|PENDING|0:00|Dependency",
                "103|someone-elses-job|RUNNING|1:00|None",  # not ours: not a harness- name
                "104|harness-cc33|COMPLETED|0:30|None",  # finished: shown for MinJobAge, not in flight
                "105|harness-dd44|TIMEOUT|0:30|None",
                "garbage without separators",
                "",
            ]
        ),
    )
    queue = Queue()
    assert Queue.available()
    rows = queue.refresh()
    assert sorted(rows) == ["101", "102_3"]
    assert rows["102_3"] == QueueRow("102_3", "harness-bb22", "PENDING", "0:00", "Dependency")
    assert rows["102_3"].array_index == 3 and rows["101"].array_index == 0
    assert [r.job_id for r in queue.by_name("harness-bb22")] == ["102_3"] and queue.get("104") is None
    (call,) = calls.read_text().splitlines()  # get / by_name reuse the rows read once
    assert call.split()[:4] == ["--noheader", "--array", "--user", call.split()[3]]
    assert call.endswith("--format=%i|%j|%T|%M|%r")
    assert {"COMPLETED", "TIMEOUT", "CANCELLED", "FAILED"} <= FINISHED


def test_queue_errors_say_what_failed(fake_bin, tmp_path, monkeypatch):
    fake_bin("squeue", rc=1, stderr="slurm_load_jobs error: Unable to contact slurm controller")
    with pytest.raises(QueueError, match="Unable to contact slurm controller"):
        Queue().refresh()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert not Queue.available()
    with pytest.raises(QueueError, match="squeue is not on the PATH"):
        Queue().refresh()


def test_cancel_calls_scancel_once_with_every_id(fake_bin):
    calls = fake_bin("scancel")
    Queue.cancel([])
    assert not calls.exists()  # nothing to cancel: no call
    Queue.cancel(["7_0", "8"])
    assert calls.read_text().splitlines() == ["7_0 8"]


def test_run_and_status_when_squeue_fails(fake_bin, tmp_path, capsys):
    """`run` refuses to submit blind (it could duplicate jobs in the queue); `status` shows the jobs as unknown."""
    sweep = write_sweep(tmp_path, TWO_STAGES)
    results = str(tmp_path / "results")
    graph = compile_request(Request([sweep], results=results))
    up = next(iter(graph.jobs.values()))
    journal = Journal(results)
    submitted(journal, [up], ["10_0"])
    before = journal.path.read_text()
    fake_bin("squeue", rc=1, stderr="slurm_load_jobs error: Socket timed out")
    assert main(["run", sweep, "--results", results, "--executor", "slurm"]) == 2
    err = capsys.readouterr().err
    assert "cannot tell which jobs are in flight" in err and "Socket timed out" in err
    assert journal.path.read_text() == before  # nothing submitted, nothing journalled
    assert main(["status", sweep, "--results", results]) == 0
    out = capsys.readouterr().out
    assert "unknown" in out and "1 unknown, 1 not submitted" in out


def test_run_records_the_ids_it_found_by_name(fake_bin, tmp_path, capsys):
    """After a crash between sbatch and the journal, `run` submits nothing again and writes the ids it found."""
    sweep = write_sweep(tmp_path, TWO_STAGES)
    req = Request([sweep], results=str(tmp_path / "results"))
    up, down = compile_request(req).jobs.values()
    journal = Journal(req.results_dir)
    token = submitted(journal, [up, down], None)
    fake_bin("squeue", f"77_0|harness-{token}|RUNNING|0:05|None\n77_1|harness-{token}|PENDING|0:00|Dependency\n")
    assert commands.run(req, "slurm") == 0
    assert "2 jobs: 0 done, 2 in flight, 0 to submit" in capsys.readouterr().out
    latest = journal.latest()
    assert (latest[up.id].job_id, latest[down.id].job_id) == ("77_0", "77_1")
    records = [json.loads(line) for line in journal.path.read_text().splitlines()]
    assert [r["event"] for r in records] == ["intent", "submitted"] and records[1]["ids"] == ["77_0", "77_1"]


def test_the_default_executor_is_slurm_where_squeue_exists(fake_bin, tmp_path, monkeypatch, capsys):
    sweep = write_sweep(tmp_path, "stages: {pretrain: {}}")
    results = str(tmp_path / "results")
    fake_bin("squeue")
    assert main(["run", sweep, "--results", results, "--dry-run"]) == 0
    assert "1 to submit (slurm)" in capsys.readouterr().out
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["run", sweep, "--results", results, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 to submit (local)" in out and "would submit pretrain" in out
    assert not (Path(results) / ".harness" / "journal.jsonl").exists()  # a dry run journals nothing
