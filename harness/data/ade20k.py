"""ADE20k semantic segmentation for UperNet fine-tuning: the dataset, the transforms, slide inference, the metrics.

    from harness.data.ade20k import ade20k_segmentation, resize_short_side, segmentation_metrics, slide_inference
    from harness.data.ade20k import train_transforms
    train = ade20k_segmentation("/data/ADEChallengeData2016", "train", transforms=train_transforms())
    val = ade20k_segmentation("/data/ADEChallengeData2016", "val")  # items: (Image uint8 [3, H, W], Mask [H, W])
    metrics = segmentation_metrics().to(device)
    for image, mask in val:  # mean, std: the ImageNet statistics train_transforms normalizes with
        x = v2.functional.normalize(resize_short_side(image).float()[None] / 255, mean, std)
        metrics.update(slide_inference(model, x.to(device), 150, size=mask.shape).argmax(1), mask[None].to(device))
    metrics.compute()  # {"miou": 47.1, "pixel_acc": 82.3} in percent

This is the recipe of BEiT's `upernet_beit_base_12_512_slide_160k_ade20k` (an mmseg config; FACTS §3.4), rebuilt
with torchvision v2 and torchmetrics. The files are read from the official `ADEChallengeData2016` layout,
`images/{training,validation}/*.jpg` with `annotations/{training,validation}/*.png` of the same stem (`root` is
resolved like every dataset, see `harness.data.datasets.dataset_root("ade20k", ...)`, and may be the
ADEChallengeData2016 folder or the folder holding it). Labels are stored as uint8 0..150 with 0 = "other"; items
carry them after mmseg's `reduce_zero_label`: 0 -> 255 (ignored), k -> k - 1, so the 150 classes are 0..149.

Where this departs from mmseg (all in `train_transforms`): mmseg's RandomCrop retries up to 10 crops until no class
covers more than 75% of it (`cat_max_ratio=0.75`), ours takes the first; PhotoMetricDistortion is approximated by
ColorJitter (see `train_transforms`); mmseg pads a small crop at the bottom/right after Normalize, ours pads before
the colour jitter at a random offset (with the mean colour, i.e. ~0 after Normalize, as mmseg). Test time, slide
inference and the metrics match mmseg's `whole`-dataset mIoU and aAcc exactly (up to resize rounding: mmseg resizes
uint8 images with OpenCV, `resize_short_side` resizes tensors with torch's bilinear kernel, no antialiasing either).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex
from torchvision import tv_tensors
from torchvision.transforms import v2

from harness.catalog import DATASETS, dataset_error
from harness.data.datasets import dataset_root

__all__ = [
    "ADE20kSegmentation",
    "SegmentationMetrics",
    "ade20k_segmentation",
    "reduce_zero_label",
    "resize_short_side",
    "segmentation_metrics",
    "slide_inference",
    "train_transforms",
    "write_tiny_ade20k",
]

NUM_CLASSES = 150
IGNORE_INDEX = 255
_FOLDERS = {"train": "training", "val": "validation"}


def reduce_zero_label(label: torch.Tensor) -> torch.Tensor:
    """mmseg's `reduce_zero_label` on stored uint8 labels, as int64: 0 -> 255, 255 -> 255, k -> k - 1 otherwise.

    mmseg does `gt[gt == 0] = 255; gt = gt - 1; gt[gt == 254] = 255` on uint8, so a 255 already present stays 255.
    """
    label = label.to(torch.int64)
    return torch.where((label == 0) | (label == 255), IGNORE_INDEX, label - 1)


class ADE20kSegmentation(Dataset):
    """One ADE20k split as (image, mask) pairs; build it with `ade20k_segmentation`.

    Item i is `(tv_tensors.Image uint8 [3, H, W], tv_tensors.Mask int64 [H, W])`, the mask after `reduce_zero_label`,
    then `transforms(image, mask)` if given. Images are listed in sorted file-name order.
    """

    def __init__(self, images: Sequence[Path], annotations: Sequence[Path], transforms: Callable | None = None):
        self.images, self.annotations, self.transforms = list(images), list(annotations), transforms

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        with Image.open(self.images[index]) as im:
            image = tv_tensors.Image(torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1))
        with Image.open(self.annotations[index]) as im:
            label = torch.from_numpy(np.array(im))
        if label.shape != image.shape[1:]:
            raise ValueError(f"{self.annotations[index]} is {tuple(label.shape)}, its image {tuple(image.shape[1:])}")
        mask = tv_tensors.Mask(reduce_zero_label(label))
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return f"ADE20kSegmentation({len(self)} images, {NUM_CLASSES} classes)"


def ade20k_segmentation(root: str | Path | None, split: str, transforms: Callable | None = None) -> ADE20kSegmentation:
    """ADE20k `split` ("train" or "val") under `root` (None: resolved by `dataset_root("ade20k")`).

    `transforms` is a v2 transform called as `transforms(image, mask)`. A missing folder, an empty image folder or an
    image without its annotation PNG raises `DatasetError`.
    """
    if split not in _FOLDERS:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = dataset_root("ade20k", root)
    if not (root / "images").is_dir() and (root / "ADEChallengeData2016" / "images").is_dir():
        root = root / "ADEChallengeData2016"
    folder = _FOLDERS[split]
    images, annotations = root / "images" / folder, root / "annotations" / folder
    needs = f"segmentation needs images/{folder}/*.jpg and annotations/{folder}/*.png"
    for path in (images, annotations):
        if not path.is_dir():
            raise dataset_error("ade20k", root, f"missing folder {path} ({needs})")
    image_files = sorted(images.glob("*.jpg"))
    if not image_files:
        raise dataset_error("ade20k", root, f"no *.jpg in {images} ({needs})")
    annotation_files = [annotations / f"{p.stem}.png" for p in image_files]
    missing = [p for p in annotation_files if not p.is_file()]
    if missing:
        raise dataset_error(
            "ade20k", root, f"{len(missing)} images have no annotation, the first: {missing[0]} is missing ({needs})"
        )
    return ADE20kSegmentation(image_files, annotation_files, transforms)


# ---------------------------------------------------------------------------------------------------------------------
# Transforms


def _keep_ratio_size(height: int, width: int, long: float, short: float) -> tuple[int, int]:
    """mmcv's `rescale_size`: the largest scale that fits the long side in `long` and the short side in `short`."""
    factor = min(long / max(height, width), short / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


class _RatioRangeResize(v2.ScaleJitter):
    """mmseg's `Resize(img_scale=(long, short), ratio_range=ratio, keep_ratio=True)`.

    v2's ScaleJitter fits the image in `target_size` (width, height) with the orientation fixed, so a portrait image
    would get its long side at `short * ratio`; mmseg fits the long side in `long * ratio` and the short side in
    `short * ratio` whatever the orientation. Only the size rule is changed; images are resized bilinearly without
    antialiasing (as OpenCV's INTER_LINEAR), masks with nearest (v2 resizes masks with nearest always).
    """

    def __init__(self, scale: tuple[int, int], ratio: tuple[float, float]):
        super().__init__(target_size=(max(scale), min(scale)), scale_range=ratio, antialias=False)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = next(x.shape[-2:] for x in flat_inputs if isinstance(x, tv_tensors.Image))
        low, high = self.scale_range
        ratio = low + float(torch.rand(())) * (high - low)
        long, short = int(self.target_size[0] * ratio), int(self.target_size[1] * ratio)  # mmseg rounds so too
        return {"size": _keep_ratio_size(height, width, long, short)}


def train_transforms(
    crop: int = 512,
    scale: tuple[int, int] = (512, 2048),
    ratio: tuple[float, float] = (0.5, 2.0),
    mean: Sequence[float] = DATASETS["ade20k"].mean,
    std: Sequence[float] = DATASETS["ade20k"].std,
) -> v2.Compose:
    """BEiT's ADE20k training pipeline on `(Image uint8, Mask)`: returns `(float32 normalized [3, crop, crop], Mask)`.

    1. Resize keeping the aspect ratio so that the sides fit `scale` (short, long) times a ratio drawn uniformly in
       `ratio` (mmseg's `Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0))`, exactly; see `_RatioRangeResize`).
    2. `RandomCrop(crop)`, padding a side smaller than `crop`: the mask with 255 (ignored, never a real label, and
       never interpolated since masks are resized with nearest), the image with the mean colour (what mmseg's Pad of
       0 after Normalize is). mmseg's `cat_max_ratio=0.75` retry is not reproduced.
    3. Horizontal flip with probability 0.5.
    4. ColorJitter(brightness=32/255, contrast=0.5, saturation=0.5, hue=0.1) for mmseg's PhotoMetricDistortion, whose
       ranges are brightness delta +-32 (added; here a factor 1 +- 32/255), contrast x[0.5, 1.5] (mmseg multiplies
       the pixels; ColorJitter blends with the mean grey), saturation x[0.5, 1.5], hue +-18 of OpenCV's 180 (= 0.1
       of the circle, the same). mmseg applies each with probability 0.5 in a fixed order (contrast first or last);
       ColorJitter applies all four, in random order.
    5. The image only: to float32 in [0, 1], then Normalize(mean, std).
    """
    fill = tuple(round(255 * m) for m in mean)
    return v2.Compose(
        [
            _RatioRangeResize(scale, ratio),
            v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: fill, tv_tensors.Mask: IGNORE_INDEX}),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=32 / 255, contrast=0.5, saturation=0.5, hue=0.1),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(mean, std),
        ]
    )


def resize_short_side(image: torch.Tensor, short: int = 512, long: int = 2048) -> torch.Tensor:
    """The test-time resize [..., H, W] -> [..., h, w]: mmseg's `Resize(img_scale=(long, short), keep_ratio=True)`,
    the short side to `short` unless the long side would pass `long`; bilinear, no antialiasing."""
    size = _keep_ratio_size(*image.shape[-2:], long, short)
    return v2.functional.resize(image, list(size), interpolation=v2.InterpolationMode.BILINEAR, antialias=False)


# ---------------------------------------------------------------------------------------------------------------------
# Inference


@torch.no_grad()
def slide_inference(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    num_classes: int,
    crop: int = 512,
    stride: int = 341,
    size: Sequence[int] | None = None,
) -> torch.Tensor:
    """mmseg's `slide` test mode: logits float32 [B, num_classes, *size] of a normalized image [B, 3, H, W].

    Windows of `crop` x `crop` every `stride` pixels, the last one of each row and column moved back to end at the
    border (a side shorter than `crop` gets one window of its length, not padded); `model(window)` returns logits
    [B, num_classes, h, w] at any resolution, resized bilinearly (align_corners=False) to the window. The logits are
    summed and divided by the number of windows covering each pixel, resized bilinearly to `size` (the original
    image's (H, W) before `resize_short_side`; None: the input's). `.argmax(1)` of them is mmseg's prediction.
    """
    batch, _, height, width = image.shape
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    logits = image.new_zeros((batch, num_classes, height, width), dtype=torch.float32)
    count = image.new_zeros((1, 1, height, width), dtype=torch.float32)
    for row in range(rows):
        for col in range(cols):
            y2, x2 = min(row * stride + crop, height), min(col * stride + crop, width)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            out = model(image[:, :, y1:y2, x1:x2]).float()
            logits[:, :, y1:y2, x1:x2] += F.interpolate(
                out, size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False
            )
            count[:, :, y1:y2, x1:x2] += 1
    logits /= count
    if size is not None and tuple(size) != (height, width):
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    return logits


# ---------------------------------------------------------------------------------------------------------------------
# Metrics


class SegmentationMetrics(MetricCollection):
    """A `MetricCollection` whose `compute()` is in percent; build it with `segmentation_metrics`."""

    def compute(self) -> dict[str, Any]:
        return {name: 100 * value for name, value in super().compute().items()}


def segmentation_metrics(num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX) -> SegmentationMetrics:
    """mmseg's ADE20k metrics, `update(preds [B, H, W], target [B, H, W])` then `compute()` in percent.

    - `miou`: per class, intersection / union of pixels summed over every update (one dataset-wide confusion
      matrix), then the mean over classes. A class absent from both predictions and ground truth of the whole set
      has union 0: mmseg gets nan and drops it with nanmean; torchmetrics' macro average gives it weight 0, which is
      the same. A class predicted but absent from the ground truth counts with IoU 0 in both.
    - `pixel_acc`: mmseg's aAcc, correct pixels / labelled pixels (micro accuracy).
    Pixels whose target is `ignore_index` are left out of both, whatever their prediction.
    """
    return SegmentationMetrics(
        {
            "miou": MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index),
            "pixel_acc": MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index),
        }
    )


# ---------------------------------------------------------------------------------------------------------------------
# A tiny dataset in the official layout


def write_tiny_ade20k(root: str | Path, images: int = 3, size: tuple[int, int] = (24, 32), seed: int = 0) -> Path:
    """Write `images` JPEGs and label PNGs per split to `root/{images,annotations}/{training,validation}/`.

    `size` is (width, height). Each label map is made of 8x8 blocks of random labels in 0..150 (0 = "other", present
    in every image; 150 in the first); each image is the block's colour (a function of its label) plus noise, saved
    as ADE_{train,val}_{i:08d}.jpg with ADE_..._{i:08d}.png. Deterministic for a given seed. Returns `root`, which
    `ade20k_segmentation` reads.
    """
    root, (width, height) = Path(root), size
    rng = np.random.default_rng(seed)
    for split, folder in _FOLDERS.items():
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / folder).mkdir(parents=True, exist_ok=True)
        for i in range(images):
            blocks = rng.integers(0, NUM_CLASSES + 1, size=(-(-height // 8), -(-width // 8)))
            blocks.flat[rng.integers(blocks.size)] = 0
            if i == 0:
                blocks.flat[-1] = NUM_CLASSES
            label = np.kron(blocks, np.ones((8, 8), dtype=np.int64))[:height, :width]
            colour = np.stack([label * 37 % 256, label * 91 % 256, label * 13 % 256], axis=-1)
            pixels = np.clip(colour + rng.integers(-10, 11, size=colour.shape), 0, 255).astype(np.uint8)
            stem = f"ADE_{split}_{i + 1:08d}"
            Image.fromarray(pixels).save(root / "images" / folder / f"{stem}.jpg", quality=95)
            Image.fromarray(label.astype(np.uint8)).save(root / "annotations" / folder / f"{stem}.png")
    return root
