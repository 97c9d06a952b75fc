"""The fault-injection suite: kill, corrupt and mistype, then check that nothing is lost and every failure is clear.

    python -m tests.faults            # the quick variant (what `make test` runs), then one summary line
    python -m tests.faults --full     # the counts the README quotes (20 training kills, 10 launcher kills, ...)

Each part is a module with `run(tally, workdir, full)`: it injects its faults into a scratch folder, counts what it
injected and what held, and appends one line to `tally.failures` for every fault that was not survived. The tests
(tests/test_faults.py) run each part and fail on any such line; the session prints `Tally.line()` at its end.

    training     kill -9 a micro training run at seeded random points, resume, compare with an uninterrupted run
    launcher     kill -9 `harness run` (local executor and SLURM) at random points, rerun until the sweep finishes
    corrupt_run  truncate or garble a run folder's files (last.pt, prev.pt, result.json, config.yaml)
    corrupt_launch  the same for the launcher's files (the journal, the graph cache, result.json as status reads it)
    inputs       tests/bad_inputs/: sweep files and overrides, one per error, each with the text it must produce
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["PARTS", "SESSION", "Tally"]

PARTS = ("training", "launcher", "corrupt_run", "corrupt_launch", "inputs")


@dataclass
class Tally:
    kills: int = 0  # training runs killed with SIGKILL
    kills_survived: int = 0  # ... that resumed to the uninterrupted run's final loss, metrics contiguous
    launcher_kills: int = 0  # `harness run` killed with SIGKILL
    duplicates: int = 0  # jobs that ran twice, or metrics lines written twice
    lost: int = 0  # results that a finished job wrote and that are gone
    corruptions: int = 0  # files truncated or garbled
    corruptions_recovered: int = 0  # ... that gave their documented recovery or a clear error, never a traceback
    bad_inputs: int = 0  # sweep files and overrides of tests/bad_inputs/
    clear_errors: int = 0  # ... refused with the expected text and no traceback
    failures: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        for f in dataclasses.fields(self):
            if f.name == "failures":
                self.failures += other.failures
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def line(self) -> str:
        return (
            f"faults: {self.kills_survived}/{self.kills} kills survived, {self.launcher_kills} launcher kills, "
            f"{self.duplicates} duplicates, {self.lost} lost; "
            f"{self.corruptions_recovered}/{self.corruptions} corruptions recovered; "
            f"{self.bad_inputs} bad inputs, {self.clear_errors} clear errors"
        )


SESSION = Tally()  # what this pytest session's fault tests counted: printed at its end (tests/conftest.py)
