"""Each job's state, from disk first and the scheduler second.

done           result.json exists in the run folder (written last, atomically) and reads as a result
not runnable   its stage (or its upstream's) cannot run yet: `Job.blocked` says why
not submitted  never submitted, or an intent whose submission never reached the queue
running        in the queue and running (SLURM), or its local process lives
pending        in the queue, waiting (resources, or its upstream: `afterok`)
unknown        submitted to SLURM, no result, and the queue could not be read (squeue missing or failing)
corrupt        result.json exists but is not a result (truncated, not an object, a metric that is not a number)
missing        it finished once (its log says so) or its run folder is gone, and there is no result: deleted by hand
interrupted    a job of this machine whose `harness run` was stopped (Ctrl-C, kill) while it ran
failed         submitted, left the queue, ran (a log exists), no result: the log's tail says why
cancelled      submitted, left the queue without ever starting (e.g. its upstream failed: kill-on-invalid-dep)

`harness run` submits not submitted, cancelled, corrupt, missing and interrupted jobs again (they resume from their
last checkpoint); failed ones only with --retry-failed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from harness.launch.journal import Journal, Submission
from harness.launch.queue import Queue, QueueError, debug_alive, local_alive
from harness.sweep.graph import Graph, Job
from harness.train import RESULT_FILE, read_result

__all__ = [
    "IN_FLIGHT",
    "VERDICT",
    "JobState",
    "State",
    "cause",
    "headline",
    "log_paths",
    "observe",
    "read_result",
    "submitit_folder",
    "tail",
]


class State(str, Enum):
    """Where a job stands (the table above). Printed as its value: `done`, `not submitted`..."""

    DONE = "done"
    NOT_RUNNABLE = "not runnable"
    NOT_SUBMITTED = "not submitted"
    RUNNING = "running"
    PENDING = "pending"
    UNKNOWN = "unknown"
    CORRUPT = "corrupt"
    MISSING = "missing"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


IN_FLIGHT = (State.RUNNING, State.PENDING)
RUNNING_SLURM = ("RUNNING", "COMPLETING", "CONFIGURING")  # squeue states that count as running; others wait
# The launcher's last word on a job of this machine, appended to its error log (`harness: <verdict>`): a job that
# ended without one, or with an interrupted or stopped one, was stopped with its `harness run`, not failed.
VERDICT = "harness: "
NOT_FAILED = ("interrupted", "stopped", "job completed successfully")
COMPLETED = "job completed successfully"  # submitit's words at a job's end (and the local executor's verdict)


@dataclass
class JobState:
    state: State
    job_id: str | None = None
    executor: str | None = None
    elapsed: str = ""
    detail: str = ""  # squeue's reason, why a job cannot run, or what is wrong with its result
    last_metric: str = ""
    error_tail: list[str] = field(default_factory=list)
    result: dict | None = None


def submitit_folder(results: Path) -> Path:
    return Path(results) / ".submitit"


def log_paths(results: Path, job_id: str) -> tuple[Path, Path]:
    """submitit's stdout and stderr of a job's first task (folder `.submitit/%j`)."""
    folder = submitit_folder(results) / job_id
    return folder / f"{job_id}_0_log.out", folder / f"{job_id}_0_log.err"


# The numbers a finished job is announced with, by what its result.json holds (classification, COCO, ADE20k).
HEADLINES = (("top1",), ("box_ap", "mask_ap"), ("miou",))


def headline(result: dict | None) -> str:
    """A finished job in a few words: its main metrics (`top1 61.20`, `box_ap 30.10, mask_ap 27.90`, `miou 40.20`),
    or `encoder saved` for a pre-training without an evaluation."""
    for keys in HEADLINES:
        if result and all(result.get(k) is not None for k in keys):
            return ", ".join(f"{k} {result[k]:.2f}" for k in keys)
    return "encoder saved" if result and result.get("task") == "pretrain" else "done"


def tail(path: Path, lines: int) -> list[str]:
    if not path.exists():
        return []
    with path.open("rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 16384))
        text = f.read().decode(errors="replace")
    return [line for line in text.splitlines() if line.strip()][-lines:]


# The exception line of a Python traceback: `SomeError: message` or `package.module.SomeError: message`.
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(: |$)")


def cause(path: Path) -> str:
    """Why a job failed, in one line, from its error log: the exception line of the last traceback in it
    (`SomeError: the first line of its message`), else the log's last line ('' when there is none). The launcher's
    own `harness: ...` lines are left out. (harness.train.TrainingError puts the cause on its first line.)"""
    lines = [line for line in tail(path, 400) if not line.startswith(VERDICT)]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if starts:
        for line in lines[starts[-1] + 1 :]:
            if not line[:1].isspace() and EXCEPTION_LINE.match(line):
                return line
    return lines[-1] if lines else ""


def _verdict(err: Path) -> str | None:
    """The launcher's last word on a local or debug job (`harness: ...` as its error log's last line), or None."""
    last = tail(err, 1)
    return last[0].removeprefix(VERDICT) if last and last[0].startswith(VERDICT) else None


def _number(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _last_metric(run_dir: Path) -> str:
    """The last record of metrics.jsonl, in a few words: `it 120 loss 4.21` or `epoch 9 top1 71.2`."""
    for line in reversed(tail(run_dir / "metrics.jsonl", 3)):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            continue
        if "top1" in record:
            return f"epoch {record.get('epoch')} top1 {_number(record['top1'], '.2f')}"
        if "loss" in record:
            return f"it {record.get('it')} loss {_number(record['loss'], '.4g')}"
    return ""


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, s = divmod(int(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h}:{m:02d}:{s:02d}"


def observe(graph: Graph, results: str | Path, queue: Queue | None = None, journal: Journal | None = None) -> dict:
    """`{job id: JobState}` for every job of the graph: one read of the journal, at most one `squeue`."""
    results = Path(results)
    journal = journal or Journal(results)
    submissions = journal.latest()
    queue = queue or Queue()
    found = {job.id: read_result(job.run_dir / RESULT_FILE) for job in graph.jobs.values()}  # each read once
    need_queue = any(s.executor == "slurm" and found[j][0] is None for j, s in submissions.items() if j in graph.jobs)
    queue_error = None
    if need_queue:
        try:
            queue.refresh()
        except QueueError as err:
            queue_error = str(err)
    states = {}
    for job in graph.jobs.values():
        result, corrupt = found[job.id]
        states[job.id] = _state(job, result, corrupt, submissions.get(job.id), queue, queue_error, results)
    for job in graph.jobs.values():  # cancelled because the upstream failed: say so
        st, up = states[job.id], states.get(job.upstream)
        if st.state is State.CANCELLED and up is not None and up.state in (State.FAILED, State.CANCELLED):
            st.detail = f"upstream {job.upstream} {up.state}"
    return states


def _state(
    job: Job,
    result: dict | None,
    corrupt: str | None,
    sub: Submission | None,
    queue: Queue,
    queue_error: str | None,
    results: Path,
) -> JobState:
    if result is not None:
        return JobState(
            State.DONE,
            job_id=sub.job_id if sub else None,
            executor=sub.executor if sub else None,
            elapsed=_format_seconds(result.get("wall_clock_s")),
            last_metric=(
                f"top1 {result['top1']:.2f}"
                if result.get("top1") is not None
                else f"loss {result['final_loss']:.4g}"
                if result.get("final_loss") is not None
                else ""
            ),
            result=result,
        )
    if job.blocked is not None:
        return JobState(State.NOT_RUNNABLE, detail=job.blocked)
    # A corrupt result.json counts once the job is not in flight (a resubmitted job moves it aside when it starts).
    bad = None
    if corrupt:
        bad = JobState(
            State.CORRUPT,
            sub.job_id if sub else None,
            sub.executor if sub else None,
            detail=f"{RESULT_FILE} is corrupt ({corrupt}): `harness run` runs it again",
        )
    if sub is None:
        return bad or JobState(State.NOT_SUBMITTED)
    if sub.executor == "slurm":
        if queue_error:
            return JobState(State.UNKNOWN, job_id=sub.job_id, executor="slurm", detail=queue_error)
        if sub.job_id is None:  # crashed between sbatch and the journal: find it by name
            rows = [r for r in queue.by_name(sub.name) if r.array_index == sub.index]
            if not rows:
                return bad or JobState(State.NOT_SUBMITTED, detail=f"intent {sub.token} never reached the queue")
            sub.job_id = rows[0].job_id
        row = queue.get(sub.job_id)
        if row is not None:
            state = State.RUNNING if row.state in RUNNING_SLURM else State.PENDING
            return JobState(
                state,
                sub.job_id,
                "slurm",
                row.elapsed,
                row.reason if state is State.PENDING else "",
                _last_metric(job.run_dir),
            )
    elif sub.job_id is not None and (
        (sub.executor == "local" and local_alive(sub.job_id, submitit_folder(results)))
        or (sub.executor == "debug" and debug_alive(sub.job_id) and _verdict(log_paths(results, sub.job_id)[1]) is None)
    ):  # a debug job runs in its `harness run`'s process until the verdict ends its log
        return JobState(State.RUNNING, sub.job_id, sub.executor, last_metric=_last_metric(job.run_dir))
    if bad is not None:
        return bad
    if sub.job_id is None:
        return JobState(State.NOT_SUBMITTED, detail=f"intent {sub.token} never reached the scheduler")
    out, err = log_paths(results, sub.job_id)
    if not out.exists() and not err.exists():
        return JobState(State.CANCELLED, sub.job_id, sub.executor, detail="left the queue without starting")
    said = tail(err, 12) + tail(out, 12)
    if not job.run_dir.exists() or any(COMPLETED in line.lower() for line in said):
        gone = "its run folder is gone" if not job.run_dir.exists() else "it completed once"
        return JobState(
            State.MISSING,
            sub.job_id,
            sub.executor,
            detail=f"no {RESULT_FILE} although {gone} (deleted?): `harness run` runs it again",
        )
    if sub.executor in ("local", "debug"):
        verdict = _verdict(err)
        if verdict is None or verdict.startswith(NOT_FAILED):
            return JobState(
                State.INTERRUPTED,
                sub.job_id,
                sub.executor,
                last_metric=_last_metric(job.run_dir),
                detail="stopped with its `harness run`: `harness run` resumes it",
            )
    return JobState(
        State.FAILED,
        sub.job_id,
        sub.executor,
        last_metric=_last_metric(job.run_dir),
        error_tail=tail(err, 12) or tail(out, 12),
    )
