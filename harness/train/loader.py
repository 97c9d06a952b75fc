"""Training data loaders whose order and augmentations are a pure function of (seed, epoch, index).

That is what makes a resumed run exact: the sampler's permutation depends only on (seed, epoch), and every random
draw of a sample's transform (crops, flips, RandAugment, masks) is seeded from (seed, epoch, index), whichever worker
process happens to load it. A run resumed mid-epoch skips the batches already seen without loading them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

__all__ = ["EpochSampler", "SeededTransformDataset", "build_loader", "shard_indices"]


@contextmanager
def _seeded(seed: int, epoch: int, index: int):
    """Seed the python, numpy and torch CPU generators for one sample.

    In a worker process nothing else draws from them, so they are simply re-seeded. In the main process
    (`loader.workers=0`) they are the model's generators too (drop path, mixup), so they are restored afterwards.
    """
    in_main = get_worker_info() is None
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state()) if in_main else None
    sample_seed = hash((seed, epoch, index)) & (2**63 - 1)  # tuples of ints hash deterministically
    random.seed(sample_seed)
    np.random.seed(sample_seed % 2**32)
    torch.default_generator.manual_seed(sample_seed)  # CPU only: torch.manual_seed also seeds every device
    try:
        yield
    finally:
        if states is not None:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])


class SeededTransformDataset(Dataset):
    """(image, label) items -> `output(transform(image), label)`, every draw seeded by (seed, epoch, index).

    Args:
        dataset: items `(image, label)`.
        transform: image -> a tensor, or a tuple (image, mask), or a list of crops.
        output: how to build the batch item: "image_label" -> (x, label); "views" -> the transform's tuple
            without the label (MIM: (image, mask)); "crops" -> (list_of_crops,) (DINO); "pair" -> `transform(image,
            label)`, which transforms both (v2 transforms of an image and its boxes and masks, or its label map).
    """

    def __init__(self, dataset: Dataset, transform: Callable, seed: int, output: str = "image_label") -> None:
        if output not in ("image_label", "views", "crops", "pair"):
            raise ValueError(f"output must be image_label, views, crops or pair, got {output!r}")
        self.dataset, self.transform, self.seed, self.output = dataset, transform, seed, output
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        with _seeded(self.seed, self.epoch, index):
            x = self.transform(image, label) if self.output == "pair" else self.transform(image)
        if self.output in ("views", "pair"):
            return tuple(x)
        if self.output == "crops":
            return (list(x),)
        return x, label


def shard_indices(indices: torch.Tensor, rank: int, world_size: int, count: int) -> torch.Tensor:
    """This rank's `count` indices, taken round-robin so that consecutive (repeated) samples land on other ranks."""
    return indices[rank : rank + world_size * count : world_size]


class EpochSampler(Sampler[int]):
    """A fixed number of indices per rank and epoch, in an order that depends only on (seed, epoch).

    Args:
        size: dataset length.
        samples_per_rank: indices yielded per epoch by each rank (whole steps only; the rest of the data waits for
            the next permutation, as with drop_last).
        repeats: DeiT's repeated augmentation: each index appears `repeats` times in a row before sharding, so its
            copies go to different ranks with different augmentations; the epoch length stays the same.
    """

    def __init__(
        self,
        size: int,
        samples_per_rank: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        repeats: int = 1,
    ) -> None:
        if samples_per_rank * world_size > size * repeats:
            raise ValueError(f"{samples_per_rank} samples x {world_size} ranks exceed the dataset ({size} images)")
        self.size, self.samples_per_rank, self.seed = size, samples_per_rank, seed
        self.rank, self.world_size, self.shuffle, self.repeats = rank, world_size, shuffle, repeats
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch to draw, and how many of this rank's indices to skip (resuming mid-epoch)."""
        self.epoch, self.start = epoch, start

    def indices(self) -> torch.Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=g)
        else:
            order = torch.arange(self.size)
        if self.repeats > 1:
            order = order.repeat_interleave(self.repeats)
        return shard_indices(order, self.rank, self.world_size, self.samples_per_rank)[self.start :]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.samples_per_rank - self.start


def build_loader(
    dataset: Dataset,
    sampler: Sampler,
    batch_size: int,
    workers: int,
    pin_memory: bool,
    seed: int = 0,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """Batches of `sampler`'s indices. The loader draws its worker seeds from its own generator, never from the
    global one, so creating it does not shift the model's random stream (drop path) and a resumed run stays exact.
    `collate_fn`: None stacks tensors (the default); detection batches are lists (`harness.train.dense`)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=True,
        collate_fn=collate_fn,
        persistent_workers=False,  # re-created each epoch, so each worker sees the dataset's current epoch
        prefetch_factor=4 if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )
