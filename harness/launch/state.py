"""Each job's state, from disk first and the scheduler second.

done           result.json exists in the run folder (written last, atomically)
not runnable   its stage (or its upstream's) cannot run yet: `Job.blocked` says why
not submitted  never submitted, or an intent whose submission never reached the queue
running        in the queue and running (SLURM), or its local process lives
pending        in the queue, waiting (resources, or its upstream: `afterok`)
unknown        submitted to SLURM, no result, and the queue could not be read (squeue missing or failing)
failed         submitted, left the queue, ran (a log exists), no result: the log's tail says why
cancelled      submitted, left the queue without ever starting (e.g. its upstream failed: kill-on-invalid-dep)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from harness.launch.journal import Journal, Submission
from harness.launch.queue import Queue, QueueError, local_alive
from harness.sweep.graph import Graph, Job
from harness.train import RESULT_FILE

__all__ = ["IN_FLIGHT", "JobState", "State", "headline", "log_paths", "observe", "submitit_folder", "tail"]


class State(str, Enum):
    """Where a job stands (the table above). Printed as its value: `done`, `not submitted`..."""

    DONE = "done"
    NOT_RUNNABLE = "not runnable"
    NOT_SUBMITTED = "not submitted"
    RUNNING = "running"
    PENDING = "pending"
    UNKNOWN = "unknown"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


IN_FLIGHT = (State.RUNNING, State.PENDING)
RUNNING_SLURM = ("RUNNING", "COMPLETING", "CONFIGURING")  # squeue states that count as running; others wait


@dataclass
class JobState:
    state: State
    job_id: str | None = None
    executor: str | None = None
    elapsed: str = ""
    detail: str = ""  # squeue's reason, or why a job cannot run
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


def _last_metric(run_dir: Path) -> str:
    """The last record of metrics.jsonl, in a few words: `it 120 loss 4.21` or `epoch 9 top1 71.2`."""
    for line in reversed(tail(run_dir / "metrics.jsonl", 3)):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "top1" in record:
            return f"epoch {record.get('epoch')} top1 {record['top1']:.2f}"
        if "loss" in record:
            return f"it {record.get('it')} loss {record['loss']:.4g}"
    return ""


def _format_seconds(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _read_result(job: Job) -> dict | None:
    try:
        return json.loads((job.run_dir / RESULT_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def observe(graph: Graph, results: str | Path, queue: Queue | None = None, journal: Journal | None = None) -> dict:
    """`{job id: JobState}` for every job of the graph: one read of the journal, at most one `squeue`."""
    results = Path(results)
    journal = journal or Journal(results)
    submissions = journal.latest()
    queue = queue or Queue()
    found = {job.id: _read_result(job) for job in graph.jobs.values()}  # each result.json read once
    need_queue = any(s.executor == "slurm" and found.get(j) is None for j, s in submissions.items() if j in graph.jobs)
    queue_error = None
    if need_queue:
        try:
            queue.refresh()
        except QueueError as err:
            queue_error = str(err)
    states = {}
    for job in graph.jobs.values():
        states[job.id] = _state(job, found[job.id], submissions.get(job.id), queue, queue_error, results)
    for job in graph.jobs.values():  # cancelled because the upstream failed: say so
        st, up = states[job.id], states.get(job.upstream)
        if st.state is State.CANCELLED and up is not None and up.state in (State.FAILED, State.CANCELLED):
            st.detail = f"upstream {job.upstream} {up.state}"
    return states


def _state(
    job: Job, result: dict | None, sub: Submission | None, queue: Queue, queue_error: str | None, results: Path
) -> JobState:
    if result is not None:
        return JobState(
            State.DONE,
            job_id=sub.job_id if sub else None,
            executor=sub.executor if sub else None,
            elapsed=_format_seconds(result.get("wall_clock_s", 0.0)),
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
    if sub is None:
        return JobState(State.NOT_SUBMITTED)
    if sub.executor == "slurm":
        if queue_error:
            return JobState(State.UNKNOWN, job_id=sub.job_id, executor="slurm", detail=queue_error)
        if sub.job_id is None:  # crashed between sbatch and the journal: find it by name
            rows = [r for r in queue.by_name(sub.name) if r.array_index == sub.index]
            if not rows:
                return JobState(State.NOT_SUBMITTED, detail=f"intent {sub.token} never reached the queue")
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
    elif sub.job_id is not None and sub.executor == "local" and local_alive(sub.job_id):
        return JobState(State.RUNNING, sub.job_id, "local", last_metric=_last_metric(job.run_dir))
    if sub.job_id is None:
        return JobState(State.NOT_SUBMITTED, detail=f"intent {sub.token} never reached the scheduler")
    out, err = log_paths(results, sub.job_id)
    if not out.exists() and not err.exists():
        return JobState(State.CANCELLED, sub.job_id, sub.executor, detail="left the queue without starting")
    return JobState(
        State.FAILED,
        sub.job_id,
        sub.executor,
        last_metric=_last_metric(job.run_dir),
        error_tail=tail(err, 12) or tail(out, 12),
    )
