"""The bad-input corpus (tests/bad_inputs/): each sweep file and override refused with its one clear line."""

from __future__ import annotations

from tests.faults import Tally
from tests.faults.inputs import run


def test_every_bad_input_gets_its_clear_error_and_writes_nothing_outside(tmp_path):
    tally = Tally()
    run(tally, tmp_path, full=False)
    assert tally.failures == []
    assert tally.bad_inputs == tally.clear_errors > 0
