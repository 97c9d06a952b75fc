"""Frozen-feature evaluations in jobs (converged probes, k-NN, the pixel baseline), epoch_scale, and the stand-ins."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harness.config import ConfigError, compose
from harness.data import build_dataset
from harness.data.standins import STYLES, Mosaic, stand_in
from harness.train.loop import train
from harness.train.probe import fit_logistic, knn_classify
from tests.helpers import needs_data

QUICK = ["loader.workers=0", "log.progress=none", "eval.per_class=20", "data.subset.per_class=20"]
GRID = "linear.l2_grid=[1e-3,1e-2,1e-1,1.0]"


def _result(run_dir) -> dict:
    return json.loads((run_dir / "result.json").read_text())


@needs_data
def test_the_pixel_baseline_is_the_logistic_regression_a_reader_knows(tmp_path):
    """Raw pixels, 200 labels: a converged probe well above chance (DESIGN: 76-80 % with 600), its k-NN beside it."""
    result = train(compose(["task=linear", "method=pixels", "linear.solver=lbfgs", GRID, *QUICK]), tmp_path)
    assert result["converged"] and result["final_loss"] > 0 and result["top1"] > 60, result
    assert 40 < result["knn_top1"] <= 100 and result["knn_k"] == 20
    assert result == _result(tmp_path) and (tmp_path / "config.yaml").is_file()
    assert train(compose(["task=linear", "method=pixels", "linear.solver=lbfgs", GRID, *QUICK]), tmp_path) == result


@needs_data
def test_a_converged_probe_is_the_optimum_of_its_features(tmp_path):
    """The job's probe equals a logistic regression fitted directly on the same features with the chosen l2."""
    from harness.train import distributed
    from harness.train.build import build_model
    from harness.train.frozen import extract_both

    cfg = compose(["task=linear", "linear.solver=lbfgs", GRID, "method.args.pool=cls_avg", *QUICK])
    result = train(cfg, tmp_path)
    assert result["converged"] and result["grad_norm"] <= cfg.linear.tol
    distributed.seed_everything(cfg.seed)  # the job's seed builds the job's random encoder
    net = build_model(cfg).eval()
    train_x, train_y, test_x, test_y = extract_both(net.features, cfg, distributed.setup("cpu"), None, "test")
    fit = fit_logistic(train_x, train_y, 10, result["l2"])
    ours = (fit.weight @ ((test_x.double() - fit.mean) / fit.std).T).T + fit.bias
    top1 = 100.0 * float((ours.argmax(1) == test_y).float().mean())
    assert abs(top1 - result["top1"]) <= 1.0
    assert knn_classify(train_x, train_y, test_x, test_y, 10)["top1"] == pytest.approx(result["knn_top1"])


@needs_data
def test_sgd_probes_and_labelled_pre_trainings_report_their_k_nn(tmp_path):
    """knn.train_per_class bounds the memory bank of a pre-training, and of a probe of a whole set, not a subset's."""
    sgd = ["task=linear", "optim.epochs=1", "optim.batch_size=50", "knn.train_per_class=5"]
    lin = train(compose([*sgd, *QUICK]), tmp_path / "lin")
    assert lin["protocol"] == "linear" and "knn_top1" in lin and lin["solver"] == "sgd" and lin["converged"] is None
    assert lin["knn_bank"] == 200  # the probe's 20 labels a class
    whole = train(compose([*sgd, *QUICK[:3], "data.stand_in.per_class=20"]), tmp_path / "whole")  # no subset
    assert whole["knn_bank"] == 50
    pre = compose(["optim.max_iters=2", "optim.batch_size=50", "knn.train_per_class=5", *QUICK])
    result = train(pre, tmp_path / "pre")
    assert 0 <= result["knn_top1"] <= 100 and result["knn_bank"] == 50
    coco_like = compose([*QUICK[:2], "optim.max_iters=1", "optim.batch_size=50", "data.stand_in.mosaic=2",
                         "data.stand_in.per_class=10"])  # fmt: skip
    assert coco_like.data.num_classes == 0  # mosaics are unlabelled: no k-NN
    assert "knn_top1" not in train(coco_like, tmp_path / "mosaic")


def test_an_unknown_solver_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"linear\.solver"):
        train(compose(["task=linear", "linear.solver=adam", *QUICK]), tmp_path)


@needs_data
def test_epoch_scale_runs_a_fraction_of_the_epochs_and_keeps_the_protocol(tmp_path):
    """epoch_scale 0.25 of 4 epochs of 4 steps: 4 steps, warm-up scaled alike, evaluated at the end, epochs 4."""
    overrides = ["task=finetune", *QUICK, "optim.batch_size=50", "optim.epochs=4", "optim.warmup_epochs=2",
                 "optim.epoch_scale=0.25", "eval.every_epochs=100", "log.every=1"]  # fmt: skip
    result = train(compose(overrides), tmp_path)
    assert result["iterations"] == 4 and result["epochs"] == 4 and result["epochs_run"] == 1.0
    assert result["final_epoch"] == 1 and result["top1"] is not None
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"lr"' in line]
    assert lrs[0] < lrs[1] < lrs[2] == max(lrs) > lrs[3]  # 2 of the 4 steps warm up (2 of 4 epochs x 0.25)


# ---------------------------------------------------------------------------------------------------------------
# stand-ins
@needs_data
def test_a_class_subset_is_relabelled_and_sized_per_class():
    data = stand_in(build_dataset("fashion_mnist", "train"), classes=[5, 7, 9], per_class=12, seed=1)
    labels = [data[i][1] for i in range(len(data))]
    assert len(data) == 36 and sorted(set(labels)) == [0, 1, 2] and labels.count(0) == 12
    again = stand_in(build_dataset("fashion_mnist", "train"), classes=[5, 7, 9], per_class=12, seed=1)
    assert all(np.array_equal(np.asarray(data[i][0]), np.asarray(again[i][0])) for i in (0, 17, 35))
    evaluation = stand_in(build_dataset("fashion_mnist", "val"), classes=[5, 7, 9], per_class=12, split="val")
    assert len(evaluation) == 3000  # per_class sizes the training split only
    cfg = compose(["task=finetune", "data.stand_in.classes=[5,7,9]"])
    assert cfg.data.num_classes == 3 and cfg.method.args.num_classes == 3


@needs_data
def test_styles_are_fixed_filters_and_mosaics_are_fixed_scenes():
    base = stand_in(build_dataset("fashion_mnist", "train"), per_class=5)
    image = np.asarray(base[0][0], dtype=float)
    for style in STYLES:
        styled = stand_in(build_dataset("fashion_mnist", "train"), per_class=5, style=style)
        a, b = np.asarray(styled[0][0], dtype=float), np.asarray(styled[0][0], dtype=float)
        assert np.array_equal(a, b) and np.abs(a - image).mean() > 5, style
    mosaic = Mosaic(base, grid=2, seed=3)
    first, label = mosaic[7]
    assert label == 0 and first.size == (28, 28)
    assert np.array_equal(np.asarray(first), np.asarray(Mosaic(base, grid=2, seed=3)[7][0]))
    assert not np.array_equal(np.asarray(first), np.asarray(mosaic[8][0]))
    # four items at half size: each quadrant holds an item's mass, not one centred object
    quadrants = np.asarray(first, dtype=float).reshape(2, 14, 2, 14).mean(axis=(1, 3))
    assert (quadrants > 5).sum() >= 3


def test_a_stand_in_class_that_does_not_exist_is_an_error():
    with pytest.raises(ValueError, match=r"classes \[12\]"):
        stand_in(_Toy(), classes=[1, 12])


class _Toy(torch.utils.data.Dataset):
    targets = np.array([0, 1, 2, 1])

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i):
        return torch.zeros(1), int(self.targets[i])
