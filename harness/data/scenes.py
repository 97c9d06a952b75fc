"""Scenes of Fashion-MNIST items in COCO's and ADE20k's official layouts: the micro stand-ins of the dense tasks.

    from harness.data.ade20k import ade20k_segmentation
    from harness.data.coco import coco_detection
    from harness.data.scenes import scene_root
    coco = scene_root("coco", {"train": 5540, "val": 250}, "~/.cache/harness/scenes")    # built once, then reused
    train = coco_detection(coco, "train")                 # harness.data.coco reads it as it reads COCO
    ade = scene_root("ade20k", {"train": 950, "val": 250}, "~/.cache/harness/scenes")
    val = ade20k_segmentation(ade, "val")                 # harness.data.ade20k reads it as it reads ADE20k

A scene is a square grey canvas with a faint smooth texture, on which 2-4 Fashion-MNIST items are pasted, each
resized to a random side, at a random place fully inside, with its own pixels as its alpha (a later item occludes an
earlier one). Scene i of a split is drawn by `np.random.default_rng((seed, split code, i))` alone, so it is the same
whatever else is generated, and the COCO and ADE20k folders built with the same parameters hold the same scenes:
- COCO: one instance per item whose visible mask (its pixels above `ITEM_THRESHOLD`, minus those of the items pasted
  after it) has at least `MIN_AREA` pixels, as compressed RLE with its tight box and pixel area; category id =
  Fashion-MNIST label + 1, named as Fashion-MNIST names its classes.
- ADE20k: the stored label map has 1 for the background, 2 + label for the visible mask of each item kept above, and
  0 ("other", ignored by the reader's `reduce_zero_label`) for the soft rim of every item (its pixels above
  `RIM_THRESHOLD` not in a kept mask) and for the visible pixels of an item dropped as too small. After the reader,
  0 = background and 1..10 = the items, the COCO category ids.
Train scenes take their items from Fashion-MNIST's training split, val scenes from its test split.

Only numpy, PIL and pycocotools are imported here; the Fashion-MNIST reader (torch) is imported when a split is built.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

__all__ = [
    "FORMAT",
    "MARKER",
    "Instance",
    "Scene",
    "draw_scene",
    "scene_root",
    "write_ade_scenes",
    "write_coco_scenes",
]

# Bump when what a set of parameters produces changes: it is part of the cache key, so old folders are not reused.
FORMAT = 1
MARKER = "scenes.json"  # written last into a build's folder: its presence is what "finished" means
ITEM_THRESHOLD = 64  # a resized item pixel above this (of 255) is the item's mask
RIM_THRESHOLD = 16  # above this and not in a mask: the item's soft rim, ignored by segmentation
MIN_AREA = 16  # visible mask pixels below which an instance is dropped from the annotations
BACKGROUND = (6, 24)  # the texture's grey range: visible in the image, far below both thresholds
TEXTURE_GRID = 5  # the texture is random greys on a 5x5 grid, resized smoothly to the canvas
JPEG_QUALITY = 95
KINDS = ("coco", "ade20k")
_SPLIT_CODE = {"train": 0, "val": 1}  # the second entropy word of a scene's generator
_ADE_FOLDERS = {"train": "training", "val": "validation"}


@dataclass(frozen=True)
class Instance:
    """One annotated item of a scene: its Fashion-MNIST `label` (0..9) and its visible `mask` (bool [size, size])."""

    label: int
    mask: np.ndarray


@dataclass(frozen=True)
class Scene:
    """A drawn scene: the `image` (uint8 [size, size]), its kept `instances` in pasting order, and the ADE20k-style
    `label_map` (uint8 [size, size]: 0 rim/other, 1 background, 2 + label items)."""

    image: np.ndarray
    instances: list[Instance]
    label_map: np.ndarray


# ---------------------------------------------------------------------------------------------------------------------
# Arguments


def _check_range(name: str, value: Sequence[int], low: int) -> tuple[int, int]:
    """(min, max) of an inclusive integer range argument, both >= `low` and min <= max."""
    try:
        lo, hi = (int(v) for v in value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a (min, max) pair of integers, got {value!r}") from e
    if lo < low or hi < lo:
        raise ValueError(f"{name} must be (min, max) with {low} <= min <= max, got {value!r}")
    return lo, hi


def _check_params(
    size: int, per_scene: Sequence[int], item_size: Sequence[int], seed: int
) -> tuple[int, tuple[int, int], tuple[int, int], int]:
    """The generator's parameters, validated and normalised (ranges as tuples), or a ValueError naming the argument."""
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an integer >= 8 (pixels), got {size!r}")
    per_scene = _check_range("per_scene", per_scene, 1)
    item_size = _check_range("item_size", item_size, 4)
    if item_size[1] > size:
        raise ValueError(f"item_size's max must be <= size ({size}) so that items fit inside, got {item_size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return size, per_scene, item_size, seed


def _check_split(split: str) -> str:
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    return split


def _check_count(count: int, name: str = "count") -> int:
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {count!r}")
    return count


# ---------------------------------------------------------------------------------------------------------------------
# The generator


def _texture(rng: np.random.Generator, size: int) -> Image.Image:
    """A faint smooth background: random greys in `BACKGROUND` on a coarse grid, resized bilinearly (which stays
    within the grid's range, unlike bicubic, so the texture never reaches an item threshold)."""
    grid = rng.integers(BACKGROUND[0], BACKGROUND[1] + 1, size=(TEXTURE_GRID, TEXTURE_GRID), dtype=np.uint8)
    return Image.fromarray(grid).resize((size, size), Image.BILINEAR)


def draw_scene(
    source: Any,
    split: str,
    index: int,
    *,
    size: int = 64,
    per_scene: Sequence[int] = (2, 4),
    item_size: Sequence[int] = (20, 40),
    seed: int = 0,
) -> Scene:
    """Scene `index` of `split`, its items taken from `source` (a dataset of `(PIL.Image "L", int label)`, the
    Fashion-MNIST split of `split`). See the module docstring for what is drawn."""
    size, (n_lo, n_hi), (s_lo, s_hi), seed = _check_params(size, per_scene, item_size, seed)
    rng = np.random.default_rng((seed, _SPLIT_CODE[_check_split(split)], index))
    canvas = _texture(rng, size)
    masks, footprints, labels = [], [], []
    for _ in range(int(rng.integers(n_lo, n_hi + 1))):
        image, label = source[int(rng.integers(len(source)))]
        side = int(rng.integers(s_lo, s_hi + 1))
        x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        item = image.convert("L").resize((side, side), Image.BICUBIC)
        canvas.paste(item, (x, y), mask=item)  # the item's own pixels as alpha: white over, black see-through
        pixels = np.asarray(item)
        mask, footprint = np.zeros((size, size), bool), np.zeros((size, size), bool)
        mask[y : y + side, x : x + side] = pixels > ITEM_THRESHOLD
        footprint[y : y + side, x : x + side] = pixels > RIM_THRESHOLD
        masks.append(mask)
        footprints.append(footprint)
        labels.append(int(label))
    return _annotate(np.asarray(canvas), masks, footprints, labels)


def _annotate(image: np.ndarray, masks: list[np.ndarray], footprints: list[np.ndarray], labels: list[int]) -> Scene:
    """The scene's kept instances and label map from each pasted item's full mask and footprint, in pasting order."""
    covered = np.zeros(image.shape, bool)
    visible = [np.zeros(0)] * len(masks)
    for k in reversed(range(len(masks))):  # from the top item down: each is occluded by all those above it
        visible[k] = masks[k] & ~covered
        covered |= masks[k]
    instances = [Instance(label, v) for label, v in zip(labels, visible) if v.sum() >= MIN_AREA]
    label_map = np.ones(image.shape, np.uint8)
    label_map[np.logical_or.reduce(footprints)] = 0  # rims and dropped slivers: "other", until a kept mask claims it
    for instance in instances:  # visible masks are disjoint, so the order does not matter
        label_map[instance.mask] = 2 + instance.label
    return Scene(image, instances, label_map)


def _source(split: str, data_root: str | Path | None) -> Any:
    """The Fashion-MNIST split that scenes of `split` take their items from (built once per written split)."""
    from harness.data.datasets import build_dataset

    return build_dataset("fashion_mnist", split, root=data_root)


def _scenes(split: str, count: int, data_root: str | Path | None, params: dict[str, Any]) -> Iterator[Scene]:
    """Scenes 0..count-1 of `split`, lazily; the arguments are checked and the source built now, not at the first
    `next` (so a bad argument raises before any folder is made), and only once for all the scenes."""
    _check_count(count)
    _check_params(**params)
    source = _source(_check_split(split), data_root)
    return (draw_scene(source, split, i, **params) for i in range(count))


# ---------------------------------------------------------------------------------------------------------------------
# The two layouts


def _categories() -> list[dict[str, Any]]:
    """COCO categories 1..10: Fashion-MNIST's label + 1, with its class names."""
    from harness.data.fashion_mnist import FashionMNIST

    return [{"id": label + 1, "name": name} for label, name in enumerate(FashionMNIST.classes)]


def _coco_annotation(instance: Instance, image_id: int) -> dict[str, Any]:
    """COCO's fields for one instance (the id is set by the caller): compressed RLE, tight XYWH box, pixel area."""
    rle = mask_util.encode(np.asfortranarray(instance.mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")  # bytes -> str, for JSON
    ys, xs = np.nonzero(instance.mask)
    x0, y0 = int(xs.min()), int(ys.min())
    box = [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]
    return {
        "image_id": image_id,
        "category_id": instance.label + 1,
        "segmentation": rle,
        "bbox": box,
        "area": float(instance.mask.sum()),
        "iscrowd": 0,
    }


def write_coco_scenes(
    root: str | Path,
    split: str,
    count: int,
    *,
    size: int = 64,
    per_scene: Sequence[int] = (2, 4),
    item_size: Sequence[int] = (20, 40),
    seed: int = 0,
    data_root: str | Path | None = None,
) -> Path:
    """Write scenes 0..count-1 of `split` as `root/{split}2017/{i + 1:012d}.jpg` (image id i + 1) and
    `root/annotations/instances_{split}2017.json`; returns the annotation file (as `write_tiny_coco` does).

    `data_root` is the Fashion-MNIST folder (None: its default location, see `dataset_root`).
    """
    params = {"size": size, "per_scene": per_scene, "item_size": item_size, "seed": seed}
    scenes = _scenes(split, count, data_root, params)
    root = Path(root)
    images_dir, path = root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json"
    images_dir.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_list, annotations = [], []
    for i, scene in enumerate(scenes):
        image_id, name = i + 1, f"{i + 1:012d}.jpg"
        Image.fromarray(scene.image).save(images_dir / name, quality=JPEG_QUALITY)
        image_list.append({"id": image_id, "file_name": name, "width": size, "height": size})
        annotations.extend(_coco_annotation(instance, image_id) for instance in scene.instances)
    for k, annotation in enumerate(annotations):
        annotation["id"] = k + 1
    path.write_text(json.dumps({"images": image_list, "annotations": annotations, "categories": _categories()}))
    return path


def write_ade_scenes(
    root: str | Path,
    split: str,
    count: int,
    *,
    size: int = 64,
    per_scene: Sequence[int] = (2, 4),
    item_size: Sequence[int] = (20, 40),
    seed: int = 0,
    data_root: str | Path | None = None,
) -> Path:
    """Write scenes 0..count-1 of `split` as `root/images/{training,validation}/ADE_{train,val}_{i + 1:08d}.jpg` and
    their label maps as `root/annotations/.../ADE_..._{i + 1:08d}.png` (numbered from 1, as ADE20k's files); returns
    `root` (as `write_tiny_ade20k` does), which `ade20k_segmentation` reads.

    `data_root` is the Fashion-MNIST folder (None: its default location, see `dataset_root`).
    """
    params = {"size": size, "per_scene": per_scene, "item_size": item_size, "seed": seed}
    scenes = _scenes(split, count, data_root, params)
    root, folder = Path(root), _ADE_FOLDERS[split]
    images_dir, labels_dir = root / "images" / folder, root / "annotations" / folder
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(scenes):
        stem = f"ADE_{split}_{i + 1:08d}"
        Image.fromarray(scene.image).save(images_dir / f"{stem}.jpg", quality=JPEG_QUALITY)
        Image.fromarray(scene.label_map).save(labels_dir / f"{stem}.png")
    return root


# ---------------------------------------------------------------------------------------------------------------------
# The cache: one folder per set of parameters, built once


def _folder_name(kind: str, splits: Mapping[str, int], params: Mapping[str, Any]) -> str:
    """`<kind>-<12 hex digits>` of what decides the content; the Fashion-MNIST location does not (it is where the
    same files are, not other files)."""
    key = {"format": FORMAT, "kind": kind, "splits": dict(sorted(splits.items())), **params}
    return f"{kind}-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]}"


def _check_splits(splits: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(splits, Mapping) or not splits:
        raise ValueError(f"splits must be a non-empty mapping of split -> count, got {splits!r}")
    for split, count in splits.items():
        _check_split(split)
        _check_count(count, f"splits[{split!r}]")
    return dict(sorted(splits.items()))


def _build(kind: str, splits: Mapping[str, int], folder: Path, params: dict[str, Any], data_root: Any) -> None:
    """Write every split of `kind` into `folder`, then the marker (last: a folder without it is unfinished)."""
    writer = write_coco_scenes if kind == "coco" else write_ade_scenes  # looked up now, so that tests can patch them
    for split, count in splits.items():
        writer(folder, split, count, data_root=data_root, **params)
    marker = {"format": FORMAT, "kind": kind, "splits": dict(splits), **params}
    (folder / MARKER).write_text(json.dumps(marker, indent=1) + "\n")


def scene_root(
    kind: str,
    splits: Mapping[str, int],
    cache: str | Path,
    *,
    size: int = 64,
    per_scene: Sequence[int] = (2, 4),
    item_size: Sequence[int] = (20, 40),
    seed: int = 0,
    data_root: str | Path | None = None,
) -> Path:
    """The folder under `cache` holding `splits` ({"train": n, "val": m}) of `kind` ("coco" or "ade20k") scenes,
    in that dataset's layout; built on the first call, reused after.

    The build is atomic: it is written into a temporary sibling (`.<name>.tmp-<pid>-<random>`), finished by the
    `MARKER` file, then renamed into place; if another process renamed its own first, ours is discarded and theirs
    used. A temporary folder left by a crashed build is never read (and left where it is: it may be another
    process's build in progress). One line goes to stderr when a build starts and one when it ends.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    splits = _check_splits(splits)
    size, per_scene, item_size, seed = _check_params(size, per_scene, item_size, seed)
    params = {"size": size, "per_scene": list(per_scene), "item_size": list(item_size), "seed": seed}
    cache = Path(cache).expanduser()
    final = cache / _folder_name(kind, splits, params)
    if (final / MARKER).is_file():
        return final
    if final.exists() and any(final.iterdir()):
        raise RuntimeError(f"{final} exists but has no {MARKER}: not a finished build of this harness; delete it")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    total, started = sum(splits.values()), time.perf_counter()
    counts = ", ".join(f"{split} {count}" for split, count in splits.items())
    label = "COCO" if kind == "coco" else "ADE20k"
    print(f"building {total} {label} stand-in scenes ({counts}) in {final} ...", file=sys.stderr, flush=True)
    try:
        _build(kind, splits, tmp, params, data_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, final)  # atomic; fails if another build's folder got there first (a non-empty directory)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / MARKER).is_file():
            raise
        # Another process finished first: its folder holds the same scenes, so ours is discarded.
    print(f"built {total} {label} scenes in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return final
