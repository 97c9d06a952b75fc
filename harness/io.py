"""Atomic file writes (a reader sees the old file or the new one, never half of one), and paths kept under a root.

    atomic_write_json(under(out, sweep.name, "cells.json"), data)   # ValueError if the name leaves `out`

A user string that becomes a path (a sweep's name, a figure's) is joined with `under`, never with `/` alone.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["CACHE_ENV", "atomic_write", "atomic_write_json", "atomic_write_text", "cache_dir", "under"]

CACHE_ENV = "HARNESS_CACHE"


def cache_dir() -> Path:
    """What the harness builds once and reads again (the stand-ins' scenes, compiled job graphs): $HARNESS_CACHE, else
    ~/.cache/splitmask-harness. Shared by every sweep of a user, like torch's and timm's caches; a location, not part
    of any job's identity, and never the results folder (commands that only read create nothing there)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "splitmask-harness").expanduser()


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(f)` on a temporary file next to `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # Mode 0666 less the process umask, as open() would make the file (mkstemp's 0600 would hide results and reports
    # from colleagues); O_EXCL: a name taken by another writer is an error, never a shared file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: str | Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def under(root: str | Path, *parts: str | Path) -> Path:
    """`root / parts...`, or ValueError when the result is not `root` or below it: a part that is absolute or climbs
    out with `..`. The check is on the resolved paths, so a symbolic link inside `root` that points out of it is
    refused too. Returns the joined path as written (not resolved), so messages show what the caller passed."""
    path = Path(root).joinpath(*parts)
    real_root, real = Path(root).resolve(), path.resolve()
    if real != real_root and real_root not in real.parents:
        raise ValueError(f"'{Path(*parts)}' leads to {real}, outside {real_root}")
    return path
