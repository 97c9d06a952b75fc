"""Per-iteration schedules (lr, weight decay, DINO's teacher temperature and momentum): pure arrays."""

import numpy as np
import pytest

from model.method import CosineSchedule


class TestWarmup:
    def test_linear_ramp_to_base(self):
        lr = CosineSchedule(base=1e-3, final=1e-5, warmup_epochs=2).array(epochs=10, iters_per_epoch=100)
        assert lr[0] == 0.0
        assert lr[100] == pytest.approx(0.5e-3)  # half-way through the warm-up
        assert lr[200] == pytest.approx(1e-3)  # warm-up over: the peak
        assert np.all(np.diff(lr[:200]) > 0)

    def test_warmup_longer_than_the_run(self):
        lr = CosineSchedule(base=1.0, final=0.0, warmup_epochs=10).array(epochs=1, iters_per_epoch=10)
        assert len(lr) == 10 and np.all(np.diff(lr) > 0) and lr[-1] < 1.0


class TestCosine:
    def test_ends_at_final_and_decreases(self):
        lr = CosineSchedule(base=1e-3, final=1e-5, warmup_epochs=1).array(epochs=5, iters_per_epoch=50)
        assert len(lr) == 250
        assert lr[-1] == pytest.approx(1e-5)
        assert np.all(np.diff(lr[50:]) <= 0)

    def test_increasing_cosine_for_dino_momentum_and_weight_decay(self):
        m = CosineSchedule(base=0.996, final=1.0).array(epochs=3, iters_per_epoch=10)
        assert m[0] == pytest.approx(0.996) and m[-1] == pytest.approx(1.0) and np.all(np.diff(m) >= 0)

    def test_constant_after_warmup(self):
        t = CosineSchedule(base=0.07, final=0.07, warmup_epochs=30, warmup_start=0.04).array(100, 4)
        assert t[0] == pytest.approx(0.04) and t[120] == pytest.approx(0.07) and t[-1] == pytest.approx(0.07)

    def test_fractional_epochs(self):
        assert len(CosineSchedule(1.0, 0.0, warmup_epochs=0.5).array(epochs=1.5, iters_per_epoch=10)) == 15

    @pytest.mark.parametrize("length", [0, 3, 150, 250, 400])
    def test_the_first_values_alone_are_the_full_schedules_first_values(self, length):
        """A run capped at `length` steps (optim.max_iters) computes only those, the same as the full schedule's."""
        schedule = CosineSchedule(base=1e-3, final=1e-5, warmup_epochs=1)
        full = schedule.array(epochs=5, iters_per_epoch=50)
        np.testing.assert_array_equal(schedule.array(5, 50, length), full[:length])
