"""Mask generators: BEiT block-wise masking, uniform random masking, and SplitMask's two disjoint subsets.

Every generator is a small picklable object that runs in numpy on the CPU, so it belongs in the data-loader workers
(one call per sample, no tensor ever touches the GPU) and its output is collated into the batch. Each call returns
*exactly* the configured number of masked patches, so batches stay rectangular and the model can index them
without a host synchronisation.

`rng` is a `numpy.random.Generator`; the same seed gives the same masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["BlockMasking", "RandomMasking", "SplitMasking", "generate", "num_masked_for"]


def num_masked_for(num_patches: int, ratio: float) -> int:
    """Number of masked patches for a masking ratio, rounded to the nearest integer (75/196 -> 75)."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    return max(1, min(num_patches - 1, round(ratio * num_patches)))


@dataclass(frozen=True)
class RandomMasking:
    """Uniform random masking (MAE): `num_masked` patches drawn without replacement."""

    grid: tuple[int, int]
    num_masked: int

    def __post_init__(self):
        _check_count(self.grid, self.num_masked)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        """bool [H*W], exactly `num_masked` True."""
        mask = np.zeros(self.num_patches, dtype=bool)
        mask[rng.choice(self.num_patches, self.num_masked, replace=False)] = True
        return mask


@dataclass(frozen=True)
class BlockMasking:
    """BEiT's block-wise masking with an exact count.

    Rectangular blocks are drawn one after another until `num_masked` patches are covered, as BEiT's
    `MaskingGenerator` (unilm/beit/masking_generator.py) does: each block covers a target area drawn uniformly
    between `min_block` and min(max_block, still missing) patches (once fewer than `min_block` are missing, between
    that number and `min_block`, so late blocks mostly grow the existing ones), with an aspect ratio drawn
    log-uniformly in [min_aspect, 1/min_aspect], and must be strictly narrower and lower than the grid (BEiT's
    `w < width and h < height`); a block is kept only if it adds between 1 and "still missing" new patches, with ten
    tries per block. BEiT stops there and may mask a few patches too few. Here the remainder, if any, is **grown from
    the mask's border**: one at a time, a random unmasked patch 4-adjacent to the mask is added (any patch if the
    mask is still empty), so the count is always exact and the mask keeps BEiT's shapes (a uniformly random top-up
    would add isolated patches: 1.58 connected regions on average instead of BEiT's 1.31 at 98 of 196). With the
    paper's settings on a 14x14 grid (75 or 98 of 196 patches) about a third of the masks need a top-up, of 1.5
    patches on average.

    Args:
        grid: patch grid (H, W).
        num_masked: patches to mask per sample (BEiT: 75 of 196; SplitMask: 98 of 196).
        min_block: smallest block area in patches (16 in BEiT and SplitMask).
        max_block: largest block area (SplitMask: 75); None means `num_masked` (BEiT's default).
        min_aspect: smallest aspect ratio (0.3 in BEiT); the largest is its inverse.
    """

    grid: tuple[int, int]
    num_masked: int
    min_block: int = 16
    max_block: int | None = None
    min_aspect: float = 0.3

    def __post_init__(self):
        _check_count(self.grid, self.num_masked)
        if self.min_block < 1:
            raise ValueError(f"min_block must be >= 1, got {self.min_block}")
        if self.max_block is not None and self.max_block < self.min_block:
            raise ValueError(f"max_block ({self.max_block}) is smaller than min_block ({self.min_block})")
        if not 0.0 < self.min_aspect <= 1.0:
            raise ValueError(f"min_aspect must be in (0, 1], got {self.min_aspect}")

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def _place_block(self, mask: np.ndarray, missing: int, rng: np.random.Generator) -> int:
        """Try to mask one block adding 1..missing new patches; returns how many it added (0 if none fit)."""
        height, width = mask.shape
        low, high = sorted((self.min_block, min(self.max_block or self.num_masked, missing)))
        log_aspect = (math.log(self.min_aspect), -math.log(self.min_aspect))
        for _ in range(10):
            area = rng.uniform(low, high)
            aspect = math.exp(rng.uniform(*log_aspect))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if not (0 < h < height and 0 < w < width):  # strictly inside the grid, as BEiT
                continue
            top = rng.integers(0, height - h + 1)
            left = rng.integers(0, width - w + 1)
            block = mask[top : top + h, left : left + w]
            added = h * w - int(block.sum())
            if 0 < added <= missing:
                block[...] = True
                return added
        return 0

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        """bool [H*W], exactly `num_masked` True."""
        mask = np.zeros(self.grid, dtype=bool)
        count = 0
        while (missing := self.num_masked - count) > 0:
            added = self._place_block(mask, missing, rng)
            if added == 0:
                break
            count += added
        _grow_from_border(mask, self.num_masked - count, rng)  # the few patches BEiT falls short by, if any
        return mask.reshape(-1)


def _grow_from_border(mask: np.ndarray, num: int, rng: np.random.Generator) -> None:
    """Mask `num` more patches of the 2-D `mask` in place, one at a time, each a random unmasked patch 4-adjacent
    to the mask (any unmasked patch while the mask is empty): the mask grows, it never gains an isolated patch."""
    for _ in range(num):
        if mask.any():
            near = np.zeros_like(mask)
            near[1:] |= mask[:-1]
            near[:-1] |= mask[1:]
            near[:, 1:] |= mask[:, :-1]
            near[:, :-1] |= mask[:, 1:]
            candidates = np.flatnonzero(near & ~mask)
        else:
            candidates = np.flatnonzero(~mask)
        mask.flat[rng.choice(candidates)] = True


@dataclass(frozen=True)
class SplitMasking:
    """SplitMask's split of the patches into two disjoint subsets A and B (FACTS §1.1).

    The result is an int8 array over the patches: 0 = visible to branch A, 1 = visible to branch B, 2 = visible to
    neither. Each branch's encoder sees only its own visible patches and predicts every patch it did not see.

    Args:
        grid: patch grid (H, W).
        mask_ratio: fraction masked by the generator (paper: 0.5 by default, 0.75 on the smallest datasets).
        pattern: "block" (BEiT block-wise, the default) or "random" (uniform, MAE-like: the smallest datasets).
        subsets: how the two subsets come from the mask.
            "complement" (the paper's default): B = the mask, A = its complement. At ratio 0.5 the two halves have
            the same size; at 0.75 A sees 25% and B 75%.
            "disjoint" (assumption for the 75% setting, which the paper does not spell out): A and B are two
            disjoint visible sets of (1 - mask_ratio) of the patches each; the rest is hidden from both. At ratio
            0.5 this is the same split as "complement".
        min_block, max_block, min_aspect: block shape, as in `BlockMasking` (paper: 16 and 75 patches).
    """

    grid: tuple[int, int]
    mask_ratio: float = 0.5
    pattern: Literal["block", "random"] = "block"
    subsets: Literal["complement", "disjoint"] = "complement"
    min_block: int = 16
    max_block: int | None = 75
    min_aspect: float = 0.3

    def __post_init__(self):
        if self.pattern not in ("block", "random"):
            raise ValueError(f"pattern must be 'block' or 'random', got {self.pattern!r}")
        if self.subsets not in ("complement", "disjoint"):
            raise ValueError(f"subsets must be 'complement' or 'disjoint', got {self.subsets!r}")
        if self.subsets == "disjoint" and self.mask_ratio < 0.5:
            raise ValueError(
                f"subsets='disjoint' needs mask_ratio >= 0.5 (two disjoint visible sets), got {self.mask_ratio}"
            )
        _ = self.mask_generator  # validates the counts

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_masked(self) -> int:
        return num_masked_for(self.num_patches, self.mask_ratio)

    @property
    def mask_generator(self) -> BlockMasking | RandomMasking:
        if self.pattern == "random":
            return RandomMasking(self.grid, self.num_masked)
        return BlockMasking(self.grid, self.num_masked, self.min_block, self.max_block, self.min_aspect)

    @property
    def num_visible(self) -> tuple[int, int]:
        """Patches visible to branch A and to branch B."""
        visible = self.num_patches - self.num_masked
        if self.subsets == "complement":
            return visible, self.num_masked
        return visible, visible

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        """int8 [H*W]: 0 (A), 1 (B) or 2 (neither); exactly `num_visible` of each of 0 and 1."""
        mask = self.mask_generator(rng)
        split = mask.astype(np.int8)  # complement: A = ~mask, B = mask
        if self.subsets == "disjoint":
            # B is a random part of the masked region, of the size of A; the rest of the mask is hidden from both.
            masked = np.flatnonzero(mask)
            split[masked] = 2
            split[rng.choice(masked, self.num_visible[1], replace=False)] = 1
        return split


def _check_count(grid: tuple[int, int], num_masked: int) -> None:
    n = grid[0] * grid[1]
    if not 0 < num_masked < n:
        raise ValueError(f"num_masked must be in [1, {n - 1}] for a {grid[0]}x{grid[1]} grid, got {num_masked}")


def generate(generator, batch_size: int, seed: int | None = None) -> np.ndarray:
    """Stack `batch_size` samples of a generator (for tests and for callers outside a data loader)."""
    rng = np.random.default_rng(seed)
    return np.stack([generator(rng) for _ in range(batch_size)])
