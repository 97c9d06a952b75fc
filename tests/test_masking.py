"""Mask generators: exact counts, complement, block contiguity, BEiT's shapes, determinism."""

import math
import random

import numpy as np
import pytest
from scipy import ndimage

from model.masking import BlockMasking, RandomMasking, SplitMasking, _grow_from_border, generate, num_masked_for


def _components(mask2d: np.ndarray) -> int:
    """Number of 4-connected components of True cells."""
    seen = np.zeros_like(mask2d)
    count = 0
    for start in zip(*np.nonzero(mask2d)):
        if seen[start]:
            continue
        count += 1
        stack = [start]
        while stack:
            i, j = stack.pop()
            if not (0 <= i < mask2d.shape[0] and 0 <= j < mask2d.shape[1]) or seen[i, j] or not mask2d[i, j]:
                continue
            seen[i, j] = True
            stack += [(i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)]
    return count


@pytest.mark.parametrize("num_masked", [16, 75, 98, 150])
@pytest.mark.parametrize("max_block", [None, 75])
def test_block_masking_exact_count(num_masked, max_block):
    masks = generate(BlockMasking((14, 14), num_masked, max_block=max_block), 200, seed=0)
    assert masks.shape == (200, 196) and masks.dtype == bool
    assert (masks.sum(1) == num_masked).all()


def test_block_masking_exact_count_on_the_micro_grid():
    """The demo's 7x7 grid with 4-patch blocks (blocks must stay strictly inside the grid, at most 6x6)."""
    masks = generate(BlockMasking((7, 7), 24, min_block=4), 300, seed=0)
    assert (masks.sum(1) == 24).all()


def _beit_reference_mask(rng: random.Random, grid, num_masking_patches, min_num_patches, max_num_patches, min_aspect):
    """BEiT's MaskingGenerator (unilm/beit/masking_generator.py), written from its published algorithm: no top-up,
    so it may mask a few patches too few."""
    height, width = grid
    max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    mask = np.zeros(grid, dtype=int)
    mask_count = 0
    while mask_count < num_masking_patches:
        max_mask_patches = min(num_masking_patches - mask_count, max_num_patches)
        delta = 0
        for _ in range(10):
            target_area = rng.uniform(min_num_patches, max_mask_patches)
            aspect = math.exp(rng.uniform(*log_aspect))
            h = round(math.sqrt(target_area * aspect))
            w = round(math.sqrt(target_area / aspect))
            if w < width and h < height:
                top, left = rng.randint(0, height - h), rng.randint(0, width - w)
                if 0 < h * w - mask[top : top + h, left : left + w].sum() <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
            if delta > 0:
                break
        if delta == 0:
            break
        mask_count += delta
    return mask.astype(bool)


def _shape_stats(masks: np.ndarray) -> np.ndarray:
    """Per mask [n, H, W]: (number of 4-connected components, size of the largest one), as [n, 2]."""
    out = []
    for m in masks:
        labels, count = ndimage.label(m)  # the default structure is 4-connectivity
        out.append((count, np.bincount(labels.ravel())[1:].max()))
    return np.array(out, dtype=float)


@pytest.mark.parametrize(
    "num_masked, max_block",
    [(98, 75), (75, None)],  # SplitMask's 50 % (blocks of 16-75 patches), BEiT's 75 of 196 (no maximum)
)
def test_block_masking_has_beits_shapes(num_masked, max_block):
    """Mean number of connected regions and mean largest region agree with BEiT's own generator within noise.

    The reference may stop a few patches short (BEiT has no top-up); ours grows those from the mask's border, which
    adds them to an existing region (0.4-0.6 patches on average) and leaves the number of regions unchanged. A
    uniformly random top-up (the earlier behaviour) gives 1.58 regions at 98/196 and 1.75 at 75/196 against the
    reference's 1.31 and 1.44 with these seeds: about 16 standard errors off.
    """
    n = 3000
    rng = random.Random(0)
    reference = np.stack([_beit_reference_mask(rng, (14, 14), num_masked, 16, max_block, 0.3) for _ in range(n)])
    ours = generate(BlockMasking((14, 14), num_masked, min_block=16, max_block=max_block), n, seed=1)
    ref_stats, our_stats = _shape_stats(reference), _shape_stats(ours.reshape(n, 14, 14))
    se = np.sqrt(ref_stats.var(0, ddof=1) / n + our_stats.var(0, ddof=1) / n)  # of the difference of the means
    diff = our_stats.mean(0) - ref_stats.mean(0)
    assert (np.abs(diff) <= 4 * se).all(), (our_stats.mean(0), ref_stats.mean(0), se)
    assert (ours.sum(1) == num_masked).all()


def test_top_up_grows_from_the_border():
    rng = np.random.default_rng(0)
    empty = np.zeros((5, 5), dtype=bool)
    _grow_from_border(empty, 7, rng)  # from nothing: one region of 7 patches
    assert empty.sum() == 7 and ndimage.label(empty)[1] == 1

    two_blocks = np.zeros((14, 14), dtype=bool)
    two_blocks[1:4, 1:4] = two_blocks[9:13, 8:12] = True
    for seed in range(20):
        grown = two_blocks.copy()
        _grow_from_border(grown, 3, np.random.default_rng(seed))
        assert grown.sum() == two_blocks.sum() + 3 and (grown >= two_blocks).all()
        assert ndimage.label(grown)[1] == 2  # every added patch touches a block: no new region


def test_block_masking_is_blockwise():
    """BEiT blocks: few connected regions, unlike uniform masking of the same size."""
    block = generate(BlockMasking((14, 14), 75), 100, seed=1)
    rand = generate(RandomMasking((14, 14), 75), 100, seed=1)
    block_regions = np.mean([_components(m.reshape(14, 14)) for m in block])
    rand_regions = np.mean([_components(m.reshape(14, 14)) for m in rand])
    assert block_regions < 4 < 20 < rand_regions
    # most masks are one or two blocks (later blocks grow the earlier ones, as in BEiT)
    assert np.median([_components(m.reshape(14, 14)) for m in block]) <= 2


def test_block_size_limits_respected():
    g = BlockMasking((14, 14), 120, min_block=16, max_block=20)
    rng = np.random.default_rng(0)
    mask = np.zeros((14, 14), dtype=bool)
    added = [g._place_block(mask, 120, rng) for _ in range(5)]
    assert all(0 < a <= 20 for a in added)


def test_determinism_under_seed():
    for g in (BlockMasking((14, 14), 75), RandomMasking((7, 7), 24), SplitMasking((14, 14))):
        assert np.array_equal(generate(g, 8, seed=3), generate(g, 8, seed=3))
        assert not np.array_equal(generate(g, 8, seed=3), generate(g, 8, seed=4))


def test_random_masking_exact_count():
    masks = generate(RandomMasking((7, 7), 37), 50, seed=0)
    assert (masks.sum(1) == 37).all()


def test_splitmask_complement_subsets():
    g = SplitMasking((14, 14), mask_ratio=0.5)
    splits = generate(g, 100, seed=0)
    assert set(np.unique(splits)) == {0, 1}  # every patch is in A or B: disjoint and covering
    assert ((splits == 0).sum(1) == 98).all() and ((splits == 1).sum(1) == 98).all()
    assert g.num_visible == (98, 98)


def test_splitmask_75_percent_uniform_variants():
    complement = SplitMasking((14, 14), mask_ratio=0.75, pattern="random")
    assert complement.num_visible == (49, 147)
    s = generate(complement, 20, seed=0)
    assert ((s == 0).sum(1) == 49).all() and ((s == 1).sum(1) == 147).all()

    disjoint = SplitMasking((14, 14), mask_ratio=0.75, pattern="random", subsets="disjoint")
    assert disjoint.num_visible == (49, 49)
    s = generate(disjoint, 20, seed=0)
    assert ((s == 0).sum(1) == 49).all() and ((s == 1).sum(1) == 49).all() and ((s == 2).sum(1) == 98).all()


def test_disjoint_equals_complement_at_half():
    a = generate(SplitMasking((14, 14), subsets="disjoint"), 10, seed=5)
    b = generate(SplitMasking((14, 14), subsets="complement"), 10, seed=5)
    assert set(np.unique(a)) == {0, 1} and ((a == 1).sum(1) == (b == 1).sum(1)).all()


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="num_masked"):
        BlockMasking((7, 7), 49)
    with pytest.raises(ValueError, match="max_block"):
        BlockMasking((14, 14), 75, min_block=16, max_block=8)
    with pytest.raises(ValueError, match="pattern"):
        SplitMasking((14, 14), pattern="grid")
    with pytest.raises(ValueError, match="disjoint"):
        SplitMasking((14, 14), mask_ratio=0.3, subsets="disjoint")
    assert num_masked_for(196, 75 / 196) == 75
    with pytest.raises(ValueError):
        num_masked_for(196, 1.0)
