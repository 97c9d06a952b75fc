"""ADE20k for UperNet: the dataset on a tiny official-layout split, the train transforms, slide inference vs a
brute-force reference, and the metrics vs a numpy port of mmseg's `intersect_and_union`."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import tv_tensors

from harness.catalog import DatasetError
from harness.data.ade20k import (
    ade20k_segmentation,
    resize_short_side,
    segmentation_metrics,
    slide_inference,
    train_transforms,
    write_tiny_ade20k,
)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    """Tests must not see the machine's dataset configuration."""
    monkeypatch.delenv("HARNESS_DATA_ROOT", raising=False)
    monkeypatch.delenv("HARNESS_DATASETS_FILE", raising=False)


# ---------------------------------------------------------------------------------------------------------------------
# The dataset


def test_fixture_reads_back_with_reduce_zero_label(tmp_path):
    root = write_tiny_ade20k(tmp_path / "ADEChallengeData2016", images=3, size=(24, 32), seed=0)
    # A stray annotation without an image is not listed; a stored 255 stays 255 (mmseg's uint8 arithmetic).
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "annotations" / "validation" / "ADE_val_00000000.png")
    raw = np.array(Image.open(root / "annotations" / "validation" / "ADE_val_00000002.png"))
    raw[0, :3] = 255
    Image.fromarray(raw).save(root / "annotations" / "validation" / "ADE_val_00000002.png")
    for split, folder, where in (("train", "training", tmp_path), ("val", "validation", root)):
        ds = ade20k_segmentation(where, split)  # the folder holding ADEChallengeData2016, or that folder itself
        assert len(ds) == 3 and [p.stem for p in ds.images] == [p.stem for p in ds.annotations]
        seen = set()
        for i in range(len(ds)):
            image, mask = ds[i]
            stem = f"ADE_{split}_{i + 1:08d}"
            assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, 32, 24)
            assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64 and mask.shape == (32, 24)
            jpg = np.array(Image.open(root / "images" / folder / f"{stem}.jpg"))
            np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), jpg)
            label = np.array(Image.open(root / "annotations" / folder / f"{stem}.png")).astype(np.int64)
            expected = np.where((label == 0) | (label == 255), 255, label - 1)
            np.testing.assert_array_equal(mask.numpy(), expected)
            assert (label == 0).any() and (mask.numpy()[label == 0] == 255).all()
            seen |= set(label.flat)
        assert 0 in seen and 150 in seen and max(int(m[m < 255].max()) for _, m in ds) <= 149
    assert (ds[1][1][0, :3] == 255).all()
    again = write_tiny_ade20k(tmp_path / "again", images=3, size=(24, 32), seed=0)  # deterministic
    a = np.array(Image.open(again / "annotations" / "training" / "ADE_train_00000001.png"))
    np.testing.assert_array_equal(a, np.array(Image.open(root / "annotations" / "training" / "ADE_train_00000001.png")))


def test_missing_files_name_path_and_layout(tmp_path):
    with pytest.raises(DatasetError) as e:
        ade20k_segmentation(tmp_path, "train")
    message = str(e.value)
    assert str(tmp_path / "images" / "training") in message and "Expected layout" in message
    root = write_tiny_ade20k(tmp_path, images=2)
    missing = root / "annotations" / "validation" / "ADE_val_00000002.png"
    missing.unlink()
    with pytest.raises(DatasetError, match="have no annotation") as e:
        ade20k_segmentation(root, "val")
    assert str(missing) in str(e.value)
    with pytest.raises(ValueError, match="split"):
        ade20k_segmentation(root, "test")


# ---------------------------------------------------------------------------------------------------------------------
# Transforms


def _blocks(height: int, width: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """A grey image of 8x8 blocks whose level is a function of the block's label (0..3); adjacent blocks differ."""
    by, bx = np.meshgrid(np.arange(height) // 8, np.arange(width) // 8, indexing="ij")
    label = (2 * by + bx) % 4
    grey = (50 + 50 * label).astype(np.uint8)
    image = tv_tensors.Image(torch.from_numpy(np.stack([grey] * 3)))
    return image, tv_tensors.Mask(torch.from_numpy(label))


def test_resize_follows_mmseg_whatever_the_orientation():
    t = train_transforms(crop=4000, scale=(512, 2048), ratio=(1.0, 1.0), mean=(0, 0, 0), std=(1, 1, 1))
    resize = t.transforms[0]
    for (h, w), expected in (((300, 400), (512, 683)), ((400, 300), (683, 512)), ((100, 1000), (205, 2048))):
        image = tv_tensors.Image(torch.zeros(3, h, w, dtype=torch.uint8))
        mask = tv_tensors.Mask(torch.zeros(h, w, dtype=torch.int64))
        out_image, out_mask = resize(image, mask)
        assert out_image.shape[1:] == out_mask.shape == expected
        assert resize_short_side(torch.zeros(1, 3, h, w)).shape[2:] == expected


def test_train_transforms_keep_image_and_mask_aligned_and_pad_with_255():
    image, mask = _blocks(48, 64)
    mean = (0.5, 0.4, 0.3)  # the padding's colour, not grey
    t = train_transforms(crop=40, scale=(40, 256), ratio=(0.75, 1.5), mean=mean, std=(1, 1, 1))
    padded = 0
    for seed in range(12):
        torch.manual_seed(seed)
        out, m = t(image, mask)
        assert isinstance(m, tv_tensors.Mask) and m.dtype == torch.int64 and m.shape == (40, 40)
        assert out.dtype == torch.float32 and out.shape == (3, 40, 40)
        out = out + torch.tensor(mean)[:, None, None]  # back to [0, 1]
        assert set(m.unique().tolist()) <= {0, 1, 2, 3, 255}
        # Colour jitter keeps grey pixels grey; the padding (mean colour) is not grey: 255 exactly there.
        grey = ((out[0] - out[1]).abs() < 1e-5) & ((out[1] - out[2]).abs() < 1e-5)
        assert torch.equal(m == 255, ~grey)
        padded += int((m == 255).any())
        # Inside each block (a 5x5 neighbourhood of one label), the image level is that label's, rising with it.
        windows = F.unfold(m[None, None].double(), 5)[0]  # [25, 36 * 36]
        inside = (windows == windows[12]).all(0).reshape(36, 36) & (m[2:-2, 2:-2] != 255)
        levels = []
        for label in range(4):
            values = out[0, 2:-2, 2:-2][inside & (m[2:-2, 2:-2] == label)]
            assert values.numel() > 0 and (values - values[0]).abs().max() < 1e-6, (seed, label)
            levels.append(float(values[0]))
        assert all(b - a > 1e-3 for a, b in itertools.pairwise(levels)), (seed, levels)
    assert 2 <= padded < 12  # the short side is 30..60 before the 40 crop: some draws pad, some do not


# ---------------------------------------------------------------------------------------------------------------------
# Slide inference


class _Model(torch.nn.Module):
    """Half-resolution logits that depend on the input and on the position inside the window (so overlaps differ)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x, 2, ceil_mode=True)  # [B, 3, h, w]
        h, w = pooled.shape[2:]
        ramp_y = torch.linspace(0, 1, h, dtype=x.dtype)[:, None]
        ramp_x = torch.linspace(0, 1, w, dtype=x.dtype)[None, :]
        c = torch.arange(self.num_classes, dtype=x.dtype)[None, :, None, None]
        return pooled[:, c.long().flatten() % 3] * (c + 1) + ramp_y * c - ramp_x * (c - 2) ** 2


def _brute_force(model, image, num_classes, crop, stride, size):
    """Every window listed independently, then each pixel's average over the windows holding it, in float64."""
    batch, _, height, width = image.shape

    def starts(n):
        s = list(range(0, max(n - crop, 0) + 1, stride))
        return [*s, n - crop] if s[-1] + crop < n else s

    windows = []
    for y in starts(height):
        for x in starts(width):
            hh, ww = min(crop, height), min(crop, width)
            out = F.interpolate(model(image[:, :, y : y + hh, x : x + ww]), (hh, ww), mode="bilinear")
            windows.append((y, x, hh, ww, out.double().numpy()))
    logits = np.zeros((batch, num_classes, height, width))
    for i in range(height):
        for j in range(width):
            hits = [out[:, :, i - y, j - x] for y, x, hh, ww, out in windows if y <= i < y + hh and x <= j < x + ww]
            logits[:, :, i, j] = np.mean(hits, axis=0)
    logits = torch.from_numpy(logits).float()
    return F.interpolate(logits, size, mode="bilinear", align_corners=False) if size else logits


@pytest.mark.parametrize(
    ("height", "width", "size"), [(13, 17, None), (13, 17, (20, 26)), (5, 6, None), (5, 12, (7, 15)), (8, 8, None)]
)
def test_slide_inference_equals_brute_force(height, width, size):
    torch.manual_seed(0)
    image, model = torch.randn(2, 3, height, width), _Model(7)
    ours = slide_inference(model, image, 7, crop=8, stride=5, size=size)
    reference = _brute_force(model, image, 7, crop=8, stride=5, size=size)
    assert ours.shape == (2, 7, *(size or (height, width)))
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)
    assert torch.equal(ours.argmax(1), reference.argmax(1))
    # Overlapping windows really disagree here, so a wrong count or placement would show.
    if (height, width) == (13, 17):
        single = F.interpolate(model(image), (height, width), mode="bilinear")
        assert (ours - F.interpolate(single, size or (height, width), mode="bilinear")).abs().max() > 0.1


# ---------------------------------------------------------------------------------------------------------------------
# Metrics


def _mmseg_miou_aacc(preds, labels, num_classes, ignore_index=255):
    """mmseg's `intersect_and_union` per image, summed over images, then IoU = I / U (nan for 0 / 0) and nanmean."""
    total = np.zeros((3, num_classes))
    for pred, label in zip(preds, labels):
        keep = label != ignore_index
        pred, label = pred[keep], label[keep]
        intersect = pred[pred == label]
        area_i, area_p, area_l = (np.bincount(a, minlength=num_classes)[:num_classes] for a in (intersect, pred, label))
        total += [area_i, area_p + area_l - area_i, area_l]
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = total[0] / total[1]
    return 100 * np.nanmean(iou), 100 * total[0].sum() / total[2].sum(), iou


def test_metrics_equal_mmseg():
    rng = np.random.default_rng(0)
    # Class 5 is absent from both predictions and labels of the set (nan, dropped), class 4 only predicted (IoU 0),
    # class 3 only in the labels of image 2 (IoU 0); ignored pixels carry predictions of every class, 5 included.
    labels = [rng.integers(0, 3, size=(6, 9)), rng.integers(0, 4, size=(5, 7))]
    preds = [np.where(rng.random(lab.shape) < 0.6, lab, rng.integers(0, 5, size=lab.shape)) for lab in labels]
    preds[1][preds[1] == 3] = 2
    for pred, label in zip(preds, labels):
        ignored = rng.random(label.shape) < 0.2
        label[ignored] = 255
        pred[ignored] = rng.integers(0, 6, size=int(ignored.sum()))
    assert (np.concatenate([p.ravel() for p in preds]) == 5).any()
    miou, aacc, iou = _mmseg_miou_aacc(preds, labels, 6)
    assert np.isnan(iou[5]) and iou[4] == 0 and iou[3] == 0 and 0 < aacc < 100

    metrics = segmentation_metrics(num_classes=6)
    for pred, label in zip(preds, labels):
        metrics.update(torch.from_numpy(pred)[None], torch.from_numpy(label)[None])
    out = metrics.compute()
    assert set(out) == {"miou", "pixel_acc"}
    np.testing.assert_allclose([float(out["miou"]), float(out["pixel_acc"])], [miou, aacc], atol=1e-4, rtol=0)
    # Counting the absent class as 0, or averaging per image, would give something else.
    assert abs(miou - 100 * np.nan_to_num(iou).mean()) > 1
    per_image = np.mean([_mmseg_miou_aacc([p], [lab], 6)[0] for p, lab in zip(preds, labels)])
    assert abs(miou - per_image) > 1e-3
