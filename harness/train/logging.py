"""What a run leaves behind besides checkpoints: `metrics.jsonl`, `env.json`, and what a person watches.

`metrics.jsonl` holds one JSON object per logged step or evaluation; it is the only interface to the reports, which
never parse stdout. On a terminal the progress is a tqdm bar; in a SLURM log (stdout not a terminal) it is one plain
line per logging interval.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import torch

from harness.io import atomic_write_json, atomic_write_text
from harness.provenance import git_sha

__all__ = ["MetricsLog", "Progress", "write_env"]


class MetricsLog:
    """Append-only JSON lines; on resume, records past the checkpoint's iteration are dropped (they will be redone)."""

    def __init__(self, path: str | Path, resume_iteration: int | None = None) -> None:
        self.path = Path(path)
        if resume_iteration is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if _iteration(line) <= resume_iteration]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        elif resume_iteration is None:
            self.path.unlink(missing_ok=True)

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")


def _iteration(line: str) -> float:
    try:
        return json.loads(line).get("it", -1)
    except json.JSONDecodeError:
        return float("inf")  # a torn last line: drop it


class Progress:
    """A tqdm bar on a terminal, plain periodic lines otherwise; `mode` none prints nothing."""

    def __init__(self, total: int, start: int, mode: str = "auto", desc: str = "") -> None:
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "plain"
        self.mode, self.total, self.desc = mode, total, desc
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True)

    def update(self, it: int, values: dict[str, float]) -> None:
        """Called at each logging interval with the iteration reached and the interval's averages."""
        shown = {k: v for k, v in values.items() if k in ("loss", "img_s", "lr", "acc", "top1")}
        if self.bar is not None:
            self.bar.n = it
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=True)
        elif self.mode == "plain":
            text = "  ".join(f"{k} {v:.4g}" for k, v in shown.items())
            print(f"{self.desc} it {it}/{self.total}  {text}", flush=True)

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        elif self.mode != "none":
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_env(path: str | Path, world_size: int, device: torch.device) -> None:
    """git sha, package versions, device and world size of this (latest) start of the run."""
    versions = {}
    for name in ("torch", "torchvision", "timm", "submitit", "hydra-core", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    atomic_write_json(
        path,
        {
            "git_sha": git_sha(),
            "python": platform.python_version(),
            "packages": versions,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "device_type": device.type,
            "world_size": world_size,
            "hostname": platform.node(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        },
    )
