"""The one training loop and what it needs: schedules, checkpoints, logging, distributed set-up, entry points.

What "done" means is here, importable without torch: the launcher, the reports and the jobs read a result alike.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["RESULT_FILE", "RESULT_NUMBERS", "TrainingError", "read_result"]

# Written last, atomically, by a finished job.
RESULT_FILE = "result.json"
# The numbers a result.json may hold (or null): a result where one of them is anything else is corrupt.
RESULT_NUMBERS = (
    "top1", "top5", "best_top1", "best_top5", "final_loss", "wall_clock_s", "gpu_hours", "device_hours", "iterations",
    "epochs_run", "knn_top1", "knn_top5", "box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50", "mask_ap75",
    "miou", "pixel_acc",
)  # fmt: skip


def read_result(path: str | Path) -> tuple[dict | None, str | None]:
    """A result.json: `(result, None)`; `(None, None)` when there is none; `(None, what is wrong)` when it is corrupt:
    unreadable, not JSON (a truncated file), not an object, or one of `RESULT_NUMBERS` neither a number nor null."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as err:
        return None, f"unreadable ({err})"
    try:
        value = json.loads(text)
    except ValueError as err:
        return None, "empty" if not text.strip() else f"not JSON, truncated? ({err})"
    if not isinstance(value, dict):
        return None, f"not a JSON object but {json.dumps(value)[:40]}"
    for key in RESULT_NUMBERS:
        number = value.get(key)
        if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float))):
            return None, f"'{key}' is {json.dumps(number)[:40]}, not a number"
    return value, None


class TrainingError(RuntimeError):
    """A job that cannot go on, for a reason its one-line message states (a non-finite loss, a run folder in use by
    another process). `harness train` prints the message, not a traceback; the launcher shows it as the cause."""
