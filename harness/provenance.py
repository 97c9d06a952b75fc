"""Where a run or a report came from: the code's git commit (importable without torch)."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["git_sha"]


def git_sha() -> str | None:
    """The commit of the checkout this code runs from; None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
