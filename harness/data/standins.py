"""Stand-ins: a paper dataset replaced by images that keep what its claims are about (`--profile micro`).

Fashion-MNIST stands in for every classification set of the paper, but not as one and the same set: a stand-in may
keep only some of its classes (a fine-grained target: Stanford Cars becomes the three kinds of footwear), draw its
size from the paper set's (Cars' 8k images become a few hundred), wear a fixed style (a DomainNet domain: sketch,
clipart, painting), or be made of mosaics of several items (a scene without one centred object: COCO, ADE20k).

    train = stand_in(build_dataset("fashion_mnist", "train"), classes=[5, 7, 9], per_class=127, split="train")

The profile file (`harness/conf/profile/micro.yaml`) says which stand-in each paper dataset gets, and why.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter, ImageOps
from torch.utils.data import Dataset

from harness.data.subsets import class_balanced_subset, targets_of

__all__ = ["STYLES", "Mosaic", "Relabelled", "Styled", "stand_in"]


def _sketch(img: Image.Image) -> Image.Image:
    """Dark strokes on white: the edges of the item, as a line drawing."""
    return ImageOps.invert(ImageOps.autocontrast(img.filter(ImageFilter.FIND_EDGES)))


def _clipart(img: Image.Image) -> Image.Image:
    """Flat colours and hard outlines: a few grey levels with the edges drawn in."""
    flat = ImageOps.posterize(ImageOps.autocontrast(img), 2)
    edges = img.convert("L").filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v > 64 else 0)
    return Image.composite(Image.new(img.mode, img.size, 0), flat, edges)


def _painting(img: Image.Image) -> Image.Image:
    """Soft, smeared strokes: a median filter after a blur, with the contrast lifted."""
    return ImageOps.autocontrast(img.filter(ImageFilter.GaussianBlur(0.8)).filter(ImageFilter.ModeFilter(3)))


# A DomainNet domain as a fixed, deterministic filter on every image (train and eval alike).
STYLES = {"sketch": _sketch, "clipart": _clipart, "painting": _painting}


class Relabelled(Dataset):
    """The items of `classes` only, their labels renumbered 0..k-1 in the order given."""

    def __init__(self, dataset: Dataset, classes: Sequence[int]) -> None:
        targets = targets_of(dataset)
        self.mapping = {int(c): i for i, c in enumerate(classes)}
        missing = set(self.mapping) - set(np.unique(targets).tolist())
        if missing:
            raise ValueError(f"stand-in classes {sorted(missing)} are not classes of the dataset")
        self.dataset = dataset
        self.indices = np.flatnonzero(np.isin(targets, list(self.mapping)))
        self.targets = np.array([self.mapping[int(t)] for t in targets[self.indices]], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        image, label = self.dataset[int(self.indices[index])]
        return image, self.mapping[int(label)]


class Styled(Dataset):
    """Every image through one of `STYLES`; the labels are kept."""

    def __init__(self, dataset: Dataset, style: str) -> None:
        if style not in STYLES:
            raise ValueError(f"unknown stand-in style {style!r}; valid: {', '.join(STYLES)}")
        self.dataset, self.style, self.targets = dataset, style, targets_of(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return STYLES[self.style](image), label


class Mosaic(Dataset):
    """Item i is an m x m grid of items of `dataset`, each shrunk to 1/m of the side: item i and m*m - 1 others drawn
    by a generator seeded with (seed, i), so the same index is always the same scene. Unlabelled (label 0)."""

    def __init__(self, dataset: Dataset, grid: int, seed: int = 0) -> None:
        if grid < 2:
            raise ValueError(f"a mosaic needs a grid of at least 2 x 2, got {grid}")
        self.dataset, self.grid, self.seed = dataset, grid, seed
        self.targets = np.zeros(len(dataset), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        rng = np.random.default_rng((self.seed, index))
        others = rng.choice(len(self.dataset), self.grid**2 - 1, replace=len(self.dataset) < self.grid**2)
        items = [self.dataset[int(i)][0] for i in (index, *others)]
        order = rng.permutation(len(items))  # the indexed item is not always top-left
        width, height = items[0].size
        tile = (width // self.grid, height // self.grid)
        canvas = Image.new(items[0].mode, (tile[0] * self.grid, tile[1] * self.grid))
        for slot, k in enumerate(order):
            row, col = divmod(slot, self.grid)
            canvas.paste(items[k].resize(tile, Image.BICUBIC), (col * tile[0], row * tile[1]))
        return canvas.resize((width, height), Image.BICUBIC) if canvas.size != (width, height) else canvas, 0


def stand_in(
    dataset: Dataset,
    classes: Sequence[int] | None = None,
    per_class: int | None = None,
    style: str | None = None,
    mosaic: int = 1,
    seed: int = 0,
    split: str = "train",
) -> Dataset:
    """`dataset` as a stand-in: its `classes` relabelled, `per_class` images of each (training split only), a
    `style`, mosaics of `mosaic` x `mosaic` items. Nothing set: the dataset itself."""
    if classes:
        dataset = Relabelled(dataset, classes)
    if per_class is not None and split == "train":
        dataset = class_balanced_subset(dataset, per_class=per_class, seed=seed)
    if style is not None:
        dataset = Styled(dataset, style)
    if mosaic > 1:
        dataset = Mosaic(dataset, mosaic, seed=seed)
    return dataset
