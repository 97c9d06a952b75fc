"""What every benchmark shares: where its JSON goes, the machine it ran on, a plain table, and a target's verdict."""

from __future__ import annotations

import datetime
import os
import platform
import sys
import tempfile
from pathlib import Path

from harness.io import atomic_write_json
from harness.launch.commands import text_table as table  # the tables `harness plan` prints
from harness.launch.pool import usable_cores
from harness.provenance import git_sha

__all__ = ["default_out", "machine", "table", "verdict", "write_result"]

OUT_ENV = "OUT"  # bench/gpu_check.sh (and the device machine) collect results there


def default_out() -> Path:
    """Where results go without `--out`: $OUT/bench, else $HARNESS_RESULTS/bench, else <tmp>/splitmask-bench. Never
    into the checkout unless asked."""
    for env in (OUT_ENV, "HARNESS_RESULTS"):
        if os.environ.get(env):
            return Path(os.environ[env]) / "bench"
    return Path(tempfile.gettempdir()) / "splitmask-bench"


def machine(device: str = "cpu") -> dict:
    """The host, its cores, the Python and (when torch is loaded) torch versions, and the accelerator's name."""
    info = {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": usable_cores(),
        "python": platform.python_version(),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info |= {"torch": torch.__version__, "threads": torch.get_num_threads()}
        if device.startswith("cuda") and torch.cuda.is_available():
            info["device"] = torch.cuda.get_device_name(torch.device(device))
    info.setdefault("device", f"cpu ({info['cores']} cores)")
    return info


def write_result(
    out: str | Path, name: str, payload: dict, command: str | None = None, path: Path | None = None
) -> Path:
    """`payload` with the command, date and commit as `<out>/<name>-<date>.json` (atomically), or over `path` (a
    result saved again as it grows)."""
    now = datetime.datetime.now().astimezone()
    record = {
        "benchmark": name,
        "command": command,
        "date": now.isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        **payload,
    }
    path = path or Path(out) / f"{name}-{now:%Y%m%d-%H%M%S-%f}.json"
    atomic_write_json(path, record)
    return path


def verdict(ok: bool | None) -> str:
    """How a target reads beside its figure."""
    return "-" if ok is None else "met" if ok else "MISSED"
