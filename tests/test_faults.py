"""The fault-injection suite's quick variant, one test per part (tests/faults/): kills, corruptions, bad inputs.

Each part counts what it injected and what held; the session's total is printed at the end of `make test`
(tests/conftest.py), the line the README quotes from `python -m tests.faults --full`.
"""

from __future__ import annotations

import importlib

import pytest

from tests.faults import PARTS, SESSION, Tally
from tests.helpers import needs_data


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize("part", PARTS)
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
