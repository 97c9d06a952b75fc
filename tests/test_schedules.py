"""Per-iteration schedules (lr, weight decay, DINO's teacher temperature and momentum): pure arrays."""

import numpy as np
import pytest

from harness.train.schedules import array, cosine, lr_schedule, poly, steps
from model.method import Schedule


class TestWarmup:
    def test_linear_ramp_to_base(self):
        lr = cosine(1e-3, 1e-5, epochs=10, iters_per_epoch=100, warmup_epochs=2)
        assert lr[0] == 0.0
        assert lr[100] == pytest.approx(0.5e-3)  # half-way through the warm-up
        assert lr[200] == pytest.approx(1e-3)  # warm-up over: the peak
        assert np.all(np.diff(lr[:200]) > 0)

    def test_warmup_longer_than_the_run(self):
        lr = cosine(1.0, 0.0, epochs=1, iters_per_epoch=10, warmup_epochs=10)
        assert len(lr) == 10 and np.all(np.diff(lr) > 0) and lr[-1] < 1.0


class TestCosine:
    def test_ends_at_final_and_decreases(self):
        lr = cosine(1e-3, 1e-5, epochs=5, iters_per_epoch=50, warmup_epochs=1)
        assert len(lr) == 250
        assert lr[-1] == pytest.approx(1e-5)
        assert np.all(np.diff(lr[50:]) <= 0)

    def test_increasing_cosine_for_dino_momentum_and_weight_decay(self):
        m = array(Schedule(base=0.996, final=1.0), epochs=3, iters_per_epoch=10)
        assert m[0] == pytest.approx(0.996) and m[-1] == pytest.approx(1.0) and np.all(np.diff(m) >= 0)

    def test_fractional_epochs(self):
        assert len(cosine(1.0, 0.0, epochs=1.5, iters_per_epoch=10, warmup_epochs=0.5)) == 15

    @pytest.mark.parametrize("length", [0, 3, 150, 250, 400])
    def test_the_first_values_alone_are_the_full_schedules_first_values(self, length):
        """A run capped at `length` steps (optim.max_iters) computes only those, the same as the full schedule's."""
        full = cosine(1e-3, 1e-5, 5, 50, warmup_epochs=1)
        np.testing.assert_array_equal(cosine(1e-3, 1e-5, 5, 50, warmup_epochs=1, length=length), full[:length])


class TestPerEpoch:
    """DINO's teacher temperature: `np.linspace(warmup, temp, W)` then `temp`, indexed by epoch (main_dino.py)."""

    @staticmethod
    def dino_reference(warmup_temp, temp, warmup_epochs, epochs):
        # Written from DINO's DINOLoss.__init__: the schedule is an array over epochs.
        return np.concatenate((np.linspace(warmup_temp, temp, warmup_epochs), np.ones(epochs - warmup_epochs) * temp))

    def test_equals_dinos_epoch_schedule_at_every_iteration(self):
        spec = Schedule(base=0.07, final=0.07, warmup_epochs=30, warmup_start=0.04, per_epoch=True)
        values = array(spec, epochs=100, iters_per_epoch=4)
        reference = self.dino_reference(0.04, 0.07, 30, 100)
        assert len(values) == 400
        np.testing.assert_allclose(values, np.repeat(reference, 4))
        assert values[29 * 4] == pytest.approx(0.07)  # the last warm-up epoch is already at the target

    def test_constant_within_an_epoch(self):
        spec = Schedule(base=0.07, final=0.07, warmup_epochs=3, warmup_start=0.04, per_epoch=True)
        values = array(spec, epochs=5, iters_per_epoch=7).reshape(5, 7)
        assert np.all(values == values[:, :1]) and np.all(np.diff(values[:, 0]) >= 0)

    def test_capped_and_fractional_runs(self):
        spec = Schedule(base=0.07, final=0.07, warmup_epochs=3, warmup_start=0.04, per_epoch=True)
        full = array(spec, epochs=2.5, iters_per_epoch=4)
        assert len(full) == 10
        np.testing.assert_array_equal(array(spec, 2.5, 4, length=6), full[:6])


class TestDenseSchedules:
    """mmcv's step and poly policies with its linear warm-up (the Mask R-CNN 3x and BEiT UperNet recipes)."""

    def test_steps_after_milestone_epochs_with_warmup(self):
        lr = steps(1e-4, epochs=36, iters_per_epoch=10, milestones=[27, 33], warmup_iters=5, warmup_factor=0.001)
        assert len(lr) == 360
        assert lr[0] == pytest.approx(1e-7)  # warmup_factor x lr
        assert lr[4] == pytest.approx(1e-4 * (1 - 0.2 * 0.999))  # mmcv: lr x (1 - (1 - i / warmup) x (1 - ratio))
        assert lr[5] == lr[269] == pytest.approx(1e-4)  # epochs 0..26
        assert lr[270] == lr[329] == pytest.approx(1e-5)  # epochs 27..32
        assert lr[330] == lr[-1] == pytest.approx(1e-6)  # epochs 33..35

    def test_poly_decays_linearly_to_min_lr(self):
        lr = poly(7e-4, 0.0, epochs=10, iters_per_epoch=100, power=1.0, warmup_iters=100, warmup_factor=1e-6)
        assert lr[0] == pytest.approx(7e-4 * 1e-6)
        assert lr[500] == pytest.approx(7e-4 * 0.5)  # (1 - 500 / 1000)^1
        assert lr[-1] == pytest.approx(7e-4 / 1000) and np.all(np.diff(lr[100:]) < 0)

    def test_a_micro_run_keeps_the_recipes_shape(self):
        """epoch_scale shrinks the run, its milestones and its warm-up together."""
        spec = {"name": "step", "milestones": [27, 33], "factor": 0.1, "warmup_iters": 500, "warmup_factor": 0.001}
        full = lr_schedule(spec, 1e-4, 0.0, 36, 100, 0.0)
        micro = lr_schedule(spec, 1e-4, 0.0, 36 * 0.1, 100, 0.0, epoch_scale=0.1)
        assert len(micro) * 10 == len(full)
        assert np.allclose(micro, full[::10], rtol=0, atol=1e-7)
        assert lr_schedule(None, 1e-3, 0.0, 2, 10, 1.0)[10] == pytest.approx(1e-3)  # no spec: the cosine
        with pytest.raises(ValueError, match=r"optim\.schedule\.name must be step or poly"):
            lr_schedule({"name": "cosine"}, 1e-3, 0.0, 2, 10, 0.0)
