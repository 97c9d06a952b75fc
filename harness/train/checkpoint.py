"""A run folder's state: checkpoints (atomic, two deep, loadable with `torch.load(weights_only=True)`) and its lock.

`last.pt` is replaced atomically; the one it replaces is kept as `prev.pt`. A `last.pt` that does not load
(truncated, or garbled: every record's CRC-32 is checked) is set aside as `last.pt.corrupt` with a warning, and the
run resumes from `prev.pt`; so the next save never rotates an unreadable file over the good backup. A checkpoint of
the iteration `last.pt` already holds replaces it without rotating (the backup stays an older iteration). A
checkpoint holds plain tensors and containers only (RNG states included), so loading never unpickles code. Files get
the usual permissions (0666 less the umask, `harness.io.atomic_write`), so colleagues can read them.

One process trains in a run folder at a time: `lock_run_dir` holds a POSIX lock on `<run_dir>/.lock` (which names
the holder) for the job's lifetime; the kernel releases it when the process ends, however it ends (kill -9 included),
so a requeued or resumed job gets it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import platform
import random
import warnings
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from harness.io import atomic_write
from harness.train import TrainingError

__all__ = [
    "CHECKPOINT_NAMES",
    "LOCK_FILE",
    "RunLockedError",
    "get_rng_state",
    "load_latest",
    "lock_run_dir",
    "read_checked",
    "save",
    "set_rng_state",
]  # fmt: skip

log = logging.getLogger(__name__)
CHECKPOINT_NAMES = ("last.pt", "prev.pt")
CORRUPT_SUFFIX = ".corrupt"  # an unreadable checkpoint, kept aside for a post-mortem
LOCK_FILE = ".lock"


class RunLockedError(TrainingError):
    """Another process trains in this run folder."""


def save(run_dir: str | Path, state: dict[str, Any], rotate: bool = True) -> Path:
    """Write `state` as `last.pt` (atomically), keeping the previous one as `prev.pt` (`rotate`), or replacing it
    (not `rotate`: a second checkpoint of the same iteration)."""
    run_dir = Path(run_dir)
    last, prev = (run_dir / name for name in CHECKPOINT_NAMES)
    staged = run_dir / ".next.pt"  # whole before it is renamed: a crash in between leaves last.pt or prev.pt
    atomic_write(staged, lambda f: torch.save(state, f))
    if rotate and last.exists():
        os.replace(last, prev)
    os.replace(staged, last)
    return last


def load_latest(
    run_dir: str | Path, map_location: str | torch.device = "cpu", set_aside: bool = True
) -> tuple[str, dict[str, Any]] | None:
    """(name, state) of the newest readable checkpoint of a run folder, or None if it has none. An unreadable one is
    renamed `<name>.corrupt` (`set_aside`: by the one process that saves) with a warning, and the older one tried."""
    for name in CHECKPOINT_NAMES:
        path = Path(run_dir) / name
        if not path.exists():
            continue
        try:
            return name, read_checked(path, map_location)
        except Exception as err:  # truncated zip, bad pickle, garbled tensor data...: try the older one
            aside = path.with_name(name + CORRUPT_SUFFIX)
            if set_aside:
                with contextlib.suppress(FileNotFoundError):  # another process set it aside first
                    os.replace(path, aside)
            moved = f"; moved to {aside.name}" if set_aside else ""
            warnings.warn(
                f"checkpoint {path} is unreadable ({type(err).__name__}: {err}){moved}; trying an older one",
                stacklevel=2,
            )
    return None


def read_checked(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(path, weights_only=True)` after checking that every record of the file (a zip) matches its
    CRC-32: `torch.load` reads garbled tensor data without a complaint. Raises on a damaged file."""
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
    if bad is not None:
        raise ValueError(f"record {bad} does not match its CRC-32 (garbled)")
    return torch.load(path, map_location=map_location, weights_only=True)


class RunLock:
    """The lock of one run folder, held from `lock_run_dir` until `release` (or the process's end)."""

    def __init__(self, path: Path, file: IO[str]) -> None:
        self.path, self.file = path, file

    def release(self) -> None:
        if not self.file.closed:
            fcntl.lockf(self.file, fcntl.LOCK_UN)
            self.file.close()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_run_dir(run_dir: str | Path) -> RunLock:
    """Lock `run_dir` for this process, or raise RunLockedError naming the holder (pid, host).

    A POSIX record lock (`lockf`), not `flock`: a fork (data-loader workers) does not inherit it, so the lock ends
    with the process that trains, and it works across nodes on NFS."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    file = open(path, "a+")  # noqa: SIM115 (held open for the job's lifetime)
    try:
        fcntl.lockf(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        file.seek(0)
        holder = file.read().strip() or "another process"
        file.close()
        raise RunLockedError(
            f"run folder {run_dir} is in use by {holder} (lock {path}): one job trains in a folder at a time; "
            "wait for it to end, or stop it (the lock goes with the process)"
        ) from None
    file.seek(0)
    file.truncate()
    file.write(f"pid {os.getpid()} on {platform.node()}\n")
    file.flush()
    return RunLock(path, file)


def get_rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU, CUDA) global generator states, as tensors and plain containers."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            **np_state,
            "state": {**np_state["state"], "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64))},
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = dict(state["numpy"])
    np_state["state"] = {**np_state["state"], "key": np_state["state"]["key"].numpy().astype(np.uint32)}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
