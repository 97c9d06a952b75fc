"""Transforms: shapes and dtypes on grey 28x28 and RGB 32x32 images, determinism under the global seeds, pickling."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import model
from harness.data import MaskedView, MultiCropTransform, eval_transform, finetune_transform, pretrain_transform
from harness.data.transforms import ColorJitter, RandomResizedCrop, ToNormalizedTensor, _posterize
from model.masking import BlockMasking, SplitMasking

GREY = (0.2860,), (0.3530,)
RGB = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _seed(seed: int) -> None:
    """What the data wrapper does per sample: seed all three global RNGs."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


@pytest.fixture(params=["grey", "rgb"])
def case(request) -> tuple[Image.Image, int, tuple, tuple]:
    """(image, size, mean, std): a grey 28x28 image or an RGB 32x32 one."""
    rng = np.random.default_rng(0)
    if request.param == "grey":
        return Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)), 28, *GREY
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), 32, *RGB


def _transforms(size: int, mean, std) -> dict:
    return {
        "pretrain": pretrain_transform(size, mean, std),
        "pretrain_strong": pretrain_transform(size, mean, std, strong=True),
        "finetune": finetune_transform(size, mean, std),
        "finetune_no_randaugment": finetune_transform(size, mean, std, auto_augment=None),
        "eval": eval_transform(size, mean, std),
    }


def test_single_view_shapes_and_pickling(case):
    img, size, mean, std = case
    for name, transform in _transforms(size, mean, std).items():
        for tf in (transform, pickle.loads(pickle.dumps(transform))):
            for _ in range(20):
                out = tf(img)
                assert out.shape == (len(mean), size, size) and out.dtype == torch.float32, name
                assert torch.isfinite(out).all(), name


def test_strong_augmentation_changes_pixels_but_keeps_mode(case):
    img, size, mean, std = case
    strong = pretrain_transform(size, mean, std, scale=(1.0, 1.0), strong=True, hflip=0.0, color_jitter_prob=1.0)
    plain = pretrain_transform(size, mean, std, scale=(1.0, 1.0), hflip=0.0)
    assert any(not torch.equal(strong(img), plain(img)) for _ in range(5))
    jitter = ColorJitter(0.4, 0.4, 0.2, 0.1)
    assert all(jitter(img).mode == img.mode for _ in range(10))


def test_same_seed_same_views(case):
    img, size, mean, std = case
    transforms = _transforms(size, mean, std)
    assert torch.equal(transforms.pop("eval")(img), eval_transform(size, mean, std)(img))  # no randomness at all
    transforms["multicrop"] = MultiCropTransform(size, 16, 2, 2, (0.4, 1), (0.05, 0.4), mean, std)
    for name, tf in transforms.items():
        views = []
        for seed in (3, 3, 4):
            _seed(seed)
            out = tf(img)
            views.append(torch.cat([v.flatten() for v in out]) if isinstance(out, list) else out)
        assert torch.equal(views[0], views[1]) and not torch.equal(views[0], views[2]), name


def test_masked_view_counts_and_determinism(case):
    img, size, mean, std = case
    grid = (size // 4, size // 4)
    split = SplitMasking(grid, min_block=4, max_block=None)
    view = MaskedView(pretrain_transform(size, mean, std), split)
    tensor, mask = view(img)
    assert tensor.shape == (len(mean), size, size)
    assert mask.shape == (grid[0] * grid[1],) and mask.dtype == torch.int8
    assert [(mask == k).sum().item() for k in (0, 1)] == list(split.num_visible)

    blocks = MaskedView(pretrain_transform(size, mean, std), BlockMasking(grid, 20, min_block=4))
    masks = {}
    for seed in (0, 0, 1):
        torch.manual_seed(seed)  # torch's global seed alone fixes the mask
        masks.setdefault(seed, []).append(blocks(img)[1])
    assert torch.equal(*masks[0]) and masks[0][0].sum() == 20 and masks[0][0].dtype == torch.bool
    assert not torch.equal(masks[0][0], masks[1][0])
    pickle.loads(pickle.dumps(view))


def test_multicrop_from_dino_micro():
    dino = model.create("dino_vit_micro_p4")
    multi = pickle.loads(pickle.dumps(MultiCropTransform.from_model(dino, *GREY)))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for _ in range(2)]
    crops = [multi(img) for img in images]
    assert len(crops[0]) == dino.num_global_crops + dino.num_local_crops == 10
    sizes = [c.shape for c in crops[0]]
    assert sizes == [(1, 28, 28)] * 2 + [(1, dino.local_crop_size, dino.local_crop_size)] * 8
    batch = [torch.stack(views) for views in zip(*crops)]  # what the default collate makes of a list per sample
    loss, _ = dino(batch)
    assert torch.isfinite(loss)


def test_multicrop_rgb():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    crops = MultiCropTransform(32, 16, 3, 4, (0.4, 1.0), (0.05, 0.4), *RGB)(img)
    assert [c.shape for c in crops] == [(3, 32, 32)] * 3 + [(3, 16, 16)] * 4


def test_random_resized_crop_matches_torchvision_contract():
    crop = RandomResizedCrop(16, scale=(0.08, 1.0))
    torch.manual_seed(0)
    params = np.array([crop.get_params(40, 28) for _ in range(2000)])
    top, left, h, w = params.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 28).all() and (left + w <= 40).all()
    assert 0.3 < (h * w).mean() / (40 * 28) < 0.55  # torchvision's mean area fraction here is ~0.42
    img = Image.new("RGB", (40, 28))
    assert crop(img).size == (16, 16) and crop(T.functional.to_tensor(img)).shape == (3, 16, 16)


def test_normalized_tensor_matches_torchvision(case):
    img, _, mean, std = case
    expected = T.Normalize(mean, std)(T.ToTensor()(img))
    torch.testing.assert_close(ToNormalizedTensor(mean, std)(img), expected)


def test_randaugment_posterize_never_raises(case):
    """timm asks Pillow for 0-bit posterize at high magnitudes; Pillow 13 raises there unless patched."""
    img, size, mean, std = case
    assert _posterize(img, 0).getextrema() in ((0, 0), ((0, 0),) * 3)
    tf = finetune_transform(size, mean, std, auto_augment="rand-m10-mstd0.5-inc1-n4")
    for seed in range(300):
        _seed(seed)
        tf(img)
