"""The submission journal and the lock: what was about to be submitted, and what was.

`results/.harness/journal.jsonl` gets one line before `sbatch` (the intent: a token and the job identities, in
array order) and one after (the scheduler's job ids for that token). A crash in between leaves an intent without
ids; the next `harness run` finds the jobs in the queue by their name, `harness-<token>`, instead of submitting
them again. `results/.harness/lock` is held by one `harness run` at a time.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["JOB_NAME_PREFIX", "Journal", "LockedError", "Submission"]

JOB_NAME_PREFIX = "harness-"


class LockedError(RuntimeError):
    """Another `harness run` holds the results folder's lock."""


@dataclass
class Submission:
    """The latest submission of one job: its token and place in the array, and the job id once known."""

    token: str
    index: int
    executor: str
    time: float
    job_id: str | None = None

    @property
    def name(self) -> str:
        return JOB_NAME_PREFIX + self.token


class Journal:
    def __init__(self, results: str | Path) -> None:
        self.dir = Path(results) / ".harness"
        self.path = self.dir / "journal.jsonl"

    @contextmanager
    def lock(self):
        """Exclusive for the duration of a `harness run`; released by the OS if the process dies."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / "lock").open("a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise LockedError(
                    f"another `harness run` is submitting to {self.dir.parent} ({holder}); "
                    f"wait for it to return (the lock is {self.dir / 'lock'})"
                ) from None
            f.truncate(0)
            f.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            f.flush()
            try:
                yield self
            finally:
                f.truncate(0)
                fcntl.flock(f, fcntl.LOCK_UN)

    def _append(self, record: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def intent(self, job_ids: list[str], executor: str) -> str:
        """Record that `job_ids` (one array, in this order) are about to be submitted; returns the token."""
        token = secrets.token_hex(4)
        self._append({"event": "intent", "token": token, "executor": executor, "jobs": job_ids, "time": time.time()})
        return token

    def submitted(self, token: str, scheduler_ids: list[str | None]) -> None:
        """The scheduler's ids for the token's jobs (same order as the intent; None where not known)."""
        self._append({"event": "submitted", "token": token, "ids": scheduler_ids, "time": time.time()})

    def latest(self) -> dict[str, Submission]:
        """Per job identity, its latest submission. Torn lines (a crash mid-write) are ignored."""
        if not self.path.exists():
            return {}
        by_job: dict[str, Submission] = {}
        by_token: dict[str, list[Submission]] = {}
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("event") == "intent":
                subs = [
                    Submission(record["token"], i, record["executor"], record["time"])
                    for i in range(len(record["jobs"]))
                ]
                by_token[record["token"]] = subs
                by_job.update(zip(record["jobs"], subs))
            elif record.get("event") == "submitted":
                for sub, job_id in zip(by_token.get(record["token"], []), record["ids"]):
                    sub.job_id = job_id or sub.job_id  # a reconciled record may know only some of them
        return by_job
