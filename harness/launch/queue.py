"""What the scheduler is doing with our jobs: one `squeue` call for all of them, never `sacct`.

Jobs are named `harness-<token>`; an array's tasks share the name and are told apart by their index. Local jobs
(the local executor) are processes: in flight while their pid lives and names this results folder. A debug job runs
in its `harness run`'s process, which its id names (`debug-<pid>-<ms>-<n>`).
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness.launch.journal import JOB_NAME_PREFIX

__all__ = ["Queue", "QueueError", "QueueRow", "SubmitError", "debug_alive", "debug_id", "local_alive"]

# squeue rows in these states are finished (shown for MinJobAge seconds); anything else is in flight.
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}


class QueueError(RuntimeError):
    """The scheduler could not be asked (no squeue on the PATH, or it failed)."""


class SubmitError(QueueError):
    """The scheduler refused a submission, or is not there (its error in one line, and what to change)."""


@dataclass(frozen=True)
class QueueRow:
    job_id: str  # "123", or "123_4" for an array task
    name: str
    state: str  # PENDING, RUNNING, ...
    elapsed: str
    reason: str

    @property
    def array_index(self) -> int:
        return int(self.job_id.split("_")[1]) if "_" in self.job_id else 0


class Queue:
    """Our jobs in the SLURM queue, read once (`refresh()` to read again)."""

    def __init__(self) -> None:
        self.rows: dict[str, QueueRow] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("squeue") is not None

    def _squeue(self) -> dict[str, QueueRow]:
        if not self.available():
            raise QueueError("squeue is not on the PATH: is this a SLURM login node? (--executor local runs here)")
        cmd = ["squeue", "--noheader", "--array", "--user", getpass.getuser(), "--format=%i|%j|%T|%M|%r"]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
            raise QueueError(f"`{' '.join(cmd)}` failed: {getattr(err, 'stderr', '') or err}") from err
        rows = {}
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 5 or not parts[1].startswith(JOB_NAME_PREFIX) or parts[2] in FINISHED:
                continue
            rows[parts[0]] = QueueRow(*parts)
        return rows

    def refresh(self) -> dict[str, QueueRow]:
        self.rows = self._squeue()
        return self.rows

    def get(self, job_id: str) -> QueueRow | None:
        if self.rows is None:
            self.refresh()
        return self.rows.get(job_id)

    def by_name(self, name: str) -> list[QueueRow]:
        if self.rows is None:
            self.refresh()
        return [row for row in self.rows.values() if row.name == name]

    @staticmethod
    def cancel(job_ids: list[str]) -> None:
        if job_ids:
            subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=60, check=False)


def local_alive(pid: str, folder: str | Path | None = None) -> bool:
    """A local-executor job (its id is the pid) still running: the process exists, is not a zombie, and is a job of
    submitit's log folder `folder` (any such folder when None): its command line names it (a recycled pid does not)."""
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
        state = Path(f"/proc/{int(pid)}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, ValueError, IndexError):
        return False
    if state in ("Z", "X"):
        return False
    if folder is None:
        return b"submitit" in cmdline
    return str(Path(folder).resolve()).encode() in cmdline.split(b"\0")


def debug_id(number: int) -> str:
    """A debug-executor job id, unique and naming this process: `debug-<pid>-<start, ms since the epoch>-<number>`."""
    return f"debug-{os.getpid()}-{int(time.time() * 1000)}-{number}"


def debug_alive(job_id: str) -> bool:
    """A debug job still running: the `harness run` process named by its id lives and started before the job did
    (a process that took the pid over later started after)."""
    try:
        _, pid, started_ms, _ = job_id.split("-")
        stat = Path(f"/proc/{int(pid)}/stat").read_text().rpartition(")")[2].split()
        btime = [line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")]
        boot = float(btime[0].split()[1])  # when the machine started, in seconds since the epoch
    except (OSError, ValueError, IndexError):
        return False
    born = boot + int(stat[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of /proc/PID/stat: start time in ticks
    return stat[0] not in ("Z", "X") and born <= int(started_ms) / 1000 + 1.0
