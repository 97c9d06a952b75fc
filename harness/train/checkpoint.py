"""Checkpoints: atomic, two deep, loadable with `torch.load(weights_only=True)`.

`last.pt` is replaced atomically; the one it replaces is kept as `prev.pt`, so a corrupt or truncated `last.pt`
falls back to `prev.pt` with a warning. A checkpoint holds plain tensors and containers only (RNG states included),
so loading never unpickles code.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CHECKPOINT_NAMES", "get_rng_state", "load_latest", "save", "set_rng_state"]

log = logging.getLogger(__name__)
CHECKPOINT_NAMES = ("last.pt", "prev.pt")


def save(run_dir: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` as `last.pt` (atomically), keeping the previous one as `prev.pt`."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    last, prev = (run_dir / name for name in CHECKPOINT_NAMES)
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".last.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if last.exists():
            os.replace(last, prev)
        os.replace(tmp, last)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return last


def load_latest(run_dir: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The newest readable checkpoint of a run folder, or None if it has none."""
    for name in CHECKPOINT_NAMES:
        path = Path(run_dir) / name
        if not path.exists():
            continue
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # truncated zip, bad pickle, ...: try the older one
            warnings.warn(
                f"checkpoint {path} is unreadable ({type(err).__name__}: {err}); trying an older one", stacklevel=2
            )
    return None


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
