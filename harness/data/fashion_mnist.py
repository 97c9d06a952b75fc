"""Fashion-MNIST from its gzip IDX files (the default data of the demo, the tests and the smoke profile).

The four files `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz` are parsed once into uint8 tensors (47 MB for the
training set); items are then cut from memory, which is what keeps a 2-core demo at ~200 images/s.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from harness.catalog import DatasetError, dataset_error

__all__ = ["IDX_IMAGES", "IDX_LABELS", "FashionMNIST", "read_idx"]

IDX_IMAGES = 2051  # magic number of an IDX file of uint8 images: 0x00000803 (type 0x08 = ubyte, 3 dimensions)
IDX_LABELS = 2049  # magic number of an IDX file of uint8 labels: 0x00000801 (1 dimension)
_FILE_PREFIX = {"train": "train", "val": "t10k"}


def read_idx(path: str | Path, magic: int | None = None) -> np.ndarray:
    """Parse a (gzipped or plain) IDX file of uint8 data: images [N, rows, cols] (magic 2051) or labels [N] (2049).

    Raises `DatasetError` naming the file when it is unreadable, truncated, too long, or has an unexpected magic
    number (`magic`, if given, is the one required).
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as e:
        raise DatasetError(f"IDX file {path} does not exist") from e
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; a cut gzip stream an EOFError
        raise DatasetError(f"IDX file {path} is not a readable gzip/IDX file: {e}") from e
    if len(raw) < 4:
        raise DatasetError(f"IDX file {path} is truncated: {len(raw)} bytes, not even a header")
    (found,) = struct.unpack(">i", raw[:4])
    if found not in (IDX_IMAGES, IDX_LABELS) or (magic is not None and found != magic):
        wanted = magic if magic is not None else f"{IDX_IMAGES} or {IDX_LABELS}"
        raise DatasetError(f"IDX file {path} has magic number {found}, expected {wanted} (uint8 images or labels)")
    ndim = found & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"IDX file {path} is truncated inside its {header}-byte header")
    shape = struct.unpack(f">{ndim}i", raw[4:header])
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DatasetError(
            f"IDX file {path} has {len(raw)} bytes, but its header {shape} implies {expected}"
            + (" (truncated)" if len(raw) < expected else " (trailing data)")
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


_CACHE: dict[tuple, np.ndarray] = {}


def _read_cached(path: Path, magic: int) -> np.ndarray:
    """`read_idx` as a writable array (torch wants one), once per file version in a process: gunzipping the training
    images costs ~0.4 s and copying them ~13 ms, and many small jobs in one process (`harness run --executor debug`)
    read the same files. Datasets share the array and never write to it."""
    try:
        stat = path.stat()
    except OSError:
        return read_idx(path, magic)  # read_idx names the missing file
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, magic)
    if key not in _CACHE:
        _CACHE[key] = read_idx(path, magic).copy()  # frombuffer's array is read-only
    return _CACHE[key]


def _find(root: Path, stem: str) -> Path:
    """`stem.gz` if present (Debian's files), else the uncompressed `stem`."""
    gz = root / f"{stem}.gz"
    return gz if gz.exists() or not (root / stem).exists() else root / stem


class FashionMNIST(Dataset):
    """Fashion-MNIST (Xiao et al. 2017): 60,000 training and 10,000 test images, 28x28 grey, 10 classes.

    Attributes:
        data: uint8 [N, 28, 28].
        targets: long [N], in 0..9.
        classes: the 10 class names.

    Items are `(PIL.Image "L" 28x28, int label)`, passed through `transform` if given.
    """

    classes: ClassVar[list[str]] = [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ]

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None) -> None:
        if split not in _FILE_PREFIX:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        root, prefix = Path(root), _FILE_PREFIX[split]
        try:
            images = _read_cached(_find(root, f"{prefix}-images-idx3-ubyte"), IDX_IMAGES)
            labels = _read_cached(_find(root, f"{prefix}-labels-idx1-ubyte"), IDX_LABELS)
        except DatasetError as e:
            raise dataset_error("fashion_mnist", root, str(e)) from e
        if images.shape[1:] != (28, 28) or len(images) != len(labels) or labels.max(initial=0) >= len(self.classes):
            raise dataset_error(
                "fashion_mnist",
                root,
                f"inconsistent files: images {images.shape}, labels {labels.shape} with max {labels.max(initial=0)}",
            )
        self.split, self.transform = split, transform
        self.data = torch.from_numpy(images)  # shared with the other datasets of this file (never written)
        self.targets = torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image | object, int]:
        img = Image.fromarray(self.data[index].numpy())  # a 2-D uint8 array becomes mode "L"
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])

    def __repr__(self) -> str:
        return f"FashionMNIST(split={self.split!r}, {len(self)} images)"
