"""The fault-injection suite's quick variant, one test per part (tests/faults/): kills, corruptions, bad inputs.

Each part counts what it injected and what held; the session's total is printed at the end of `make test`
(tests/conftest.py), the line the README quotes from `python -m tests.faults --full`.
"""

from __future__ import annotations

import importlib

import pytest

from tests.faults import PARTS, SESSION, Tally
from tests.helpers import needs_data

# The bad-input corpus takes seconds and needs no training: it runs in `make test-quick` too.
QUICK = ("inputs",)


@needs_data
@pytest.mark.parametrize("part", [p if p in QUICK else pytest.param(p, marks=pytest.mark.slow) for p in PARTS])
def test_fault_part_survives(part, tmp_path):
    tally = Tally()
    importlib.import_module(f"tests.faults.{part}").run(tally, tmp_path, full=False)
    SESSION.add(tally)
    assert tally.failures == []
    injected = tally.kills + tally.launcher_kills + tally.corruptions + tally.bad_inputs
    assert injected > 0, f"the {part} part injected nothing"
    assert (tally.duplicates, tally.lost) == (0, 0)
    assert tally.kills_survived == tally.kills
    assert tally.corruptions_recovered == tally.corruptions
    assert tally.clear_errors == tally.bad_inputs
