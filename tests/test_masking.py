"""Mask generators: exact counts, complement, block contiguity, determinism."""

import numpy as np
import pytest

from model.masking import BlockMasking, RandomMasking, SplitMasking, generate, num_masked_for


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
def test_block_masking_exact_count(num_masked):
    masks = generate(BlockMasking((14, 14), num_masked), 200, seed=0)
    assert masks.shape == (200, 196) and masks.dtype == bool
    assert (masks.sum(1) == num_masked).all()


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
