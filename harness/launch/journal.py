"""The submission journal and the lock: what was about to be submitted, and what was.

`results/.harness/journal.jsonl` gets one line before `sbatch` (the intent: a token and the job identities, in
array order) and one after (the scheduler's job ids for that token). A crash in between leaves an intent without
ids; the next `harness run` finds the jobs in the queue by their name, `harness-<token>`, instead of submitting
them again. `results/.harness/lock` is held by one `harness run` at a time. A damaged line (a crash mid-write, a
hand edit) is skipped, with a warning naming the line unless it is a torn last one.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sys
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
        self.warned: set[tuple[int, str]] = set()

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
        with self.path.open("ab+") as f:
            if f.seek(0, os.SEEK_END):  # a last line torn by a crash is ended first, or this record would join it
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write((json.dumps(record, sort_keys=True) + "\n").encode())
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
        """Per job identity, its latest submission. A torn last line (a crash mid-write) is ignored; any other line
        that is not a record of the journal is skipped with a warning naming the file and the line."""
        if not self.path.exists():
            return {}
        by_job: dict[str, Submission] = {}
        by_token: dict[str, list[Submission]] = {}
        lines = self.path.read_text(errors="replace").splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
                if record.get("event") == "intent":
                    jobs, token, executor, when = record["jobs"], record["token"], record["executor"], record["time"]
                    if not (isinstance(jobs, list) and all(isinstance(j, str) for j in jobs)):
                        raise ValueError("'jobs' is not a list of job ids")
                    subs = [Submission(str(token), i, str(executor), float(when)) for i in range(len(jobs))]
                    by_token[str(token)] = subs
                    by_job.update(zip(jobs, subs))
                elif record.get("event") == "submitted":
                    ids = record["ids"]
                    if not isinstance(ids, list):
                        raise ValueError("'ids' is not a list")
                    for sub, job_id in zip(by_token.get(str(record["token"]), []), ids):
                        sub.job_id = str(job_id) if job_id else sub.job_id  # a reconciled record may know only some
                else:
                    raise ValueError(f"unknown event {record.get('event')!r}")
            except json.JSONDecodeError:
                if number < len(lines):  # the last line torn by a crash is expected; one inside is damage
                    self._warn(number, "not JSON")
            except KeyError as err:
                self._warn(number, f"no {err}")
            except (TypeError, ValueError) as err:
                self._warn(number, str(err))
        return by_job

    def _warn(self, number: int, why: str) -> None:
        if (number, why) not in self.warned:  # once per Journal (a command reads it more than once)
            self.warned.add((number, why))
            print(f"harness: warning: {self.path}:{number}: skipped a damaged journal record ({why})", file=sys.stderr)
