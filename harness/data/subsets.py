"""Class-balanced subsets (ImageNet-1%/10% as in PAWS) and the iteration-parity rule for their epochs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset, Subset

from harness.catalog import DatasetError, iteration_parity_epochs

__all__ = ["class_balanced_subset", "iteration_parity_epochs", "sample_paths", "targets_of"]


def targets_of(dataset: Dataset) -> np.ndarray:
    """int64 [N] labels of a dataset (or of a `Subset` of one) from its `targets`, without loading an image."""
    if isinstance(dataset, Subset):
        return targets_of(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise TypeError(f"{type(dataset).__name__} has no `targets`; a class-balanced subset needs labels")
    return np.asarray(targets, dtype=np.int64).reshape(-1)


def sample_paths(dataset: Dataset) -> list[str] | None:
    """The file of each sample (`paths`, or ImageFolder's `samples`), or None for an in-memory dataset."""
    if isinstance(dataset, Subset):
        paths = sample_paths(dataset.dataset)
        return None if paths is None else [paths[i] for i in dataset.indices]
    if hasattr(dataset, "paths"):
        return list(dataset.paths)
    if hasattr(dataset, "samples"):
        return [str(s[0]) for s in dataset.samples]
    return None


def _indices_from_file(dataset: Dataset, split_file: Path) -> list[int]:
    """Indices named by a split file: one sample index per line, or one file name / relative path per line."""
    try:
        lines = split_file.read_text().splitlines()
    except OSError as e:
        raise DatasetError(f"split file {split_file} cannot be read: {e}") from e
    # The first token of each non-empty line, so that `path label` lists (DomainNet's) work as well.
    entries = [(number, line.split()[0]) for number, line in enumerate(lines, 1) if line.strip()]
    if not entries:
        raise DatasetError(f"split file {split_file} is empty")
    size = len(dataset)
    if all(entry.isdigit() for _, entry in entries):
        for number, entry in entries:
            if int(entry) >= size:
                raise DatasetError(f"split file {split_file} line {number}: index {entry} is out of range [0, {size})")
        return sorted({int(entry) for _, entry in entries})

    paths = sample_paths(dataset)
    if paths is None:
        raise DatasetError(
            f"split file {split_file} lists file names, but {type(dataset).__name__} has no sample paths; "
            "use one integer index per line"
        )
    # PAWS/SimCLR subset files list bare file names (`n01440764_10026.JPEG`); a line with a folder part must match
    # the end of a path. Index by base name, then check the longer suffix.
    by_name: dict[str, list[int]] = {}
    for i, path in enumerate(paths):
        by_name.setdefault(os.path.basename(path), []).append(i)
    indices = set()
    for number, entry in entries:
        suffix = "/" + entry.replace("\\", "/").lstrip("/")
        found = [
            i for i in by_name.get(os.path.basename(entry), []) if ("/" + paths[i].replace("\\", "/")).endswith(suffix)
        ]
        if not found:
            raise DatasetError(
                f"split file {split_file} line {number}: {entry!r} is not in the dataset ({size} images)"
            )
        if len(found) > 1:
            raise DatasetError(
                f"split file {split_file} line {number}: {entry!r} matches {len(found)} images "
                f"(e.g. {paths[found[0]]} and {paths[found[1]]}); give a longer relative path"
            )
        indices.add(found[0])
    return sorted(indices)


def class_balanced_subset(
    dataset: Dataset,
    fraction: float | None = None,
    per_class: int | None = None,
    seed: int = 0,
    split_file: str | Path | None = None,
) -> Subset:
    """A deterministic class-balanced subset of a labelled dataset (indices sorted).

    Exactly one of:
        split_file: the samples a file lists (PAWS/SimCLR ImageNet subsets: one file name per line, matched against
            the dataset's sample paths; or one integer index per line). An unknown name is an error naming the line.
        fraction: round(fraction * class size) images of each class, at least 1 (ImageNet-1% -> about 13 a class).
        per_class: exactly that many images of each class.

    The sampled variants draw each class's images without replacement with `numpy.random.default_rng(seed)`, class
    by class in label order: the same seed gives the same subset, different seeds different ones. An unlabelled
    dataset (all targets 0) gives a uniform random subset.
    """
    if sum(x is not None for x in (fraction, per_class, split_file)) != 1:
        raise ValueError("give exactly one of fraction, per_class and split_file")
    if split_file is not None:
        return Subset(dataset, _indices_from_file(dataset, Path(split_file)))
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")

    targets = targets_of(dataset)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        count = per_class if per_class is not None else max(1, round(fraction * len(members)))
        if count > len(members):
            raise ValueError(f"class {label} has {len(members)} images, fewer than per_class={per_class}")
        chosen.append(rng.choice(members, count, replace=False))
    return Subset(dataset, np.sort(np.concatenate(chosen)).tolist())
