"""COCO instance segmentation for Mask R-CNN fine-tuning: the dataset, the evaluation, and a tiny fixture writer.

    from harness.data.coco import coco_detection, coco_evaluate
    train = coco_detection("/data/coco", "train", transforms=v2_train_transforms)  # items: (image, target dict)
    val = coco_detection("/data/coco", "val", train=False)                         # every val image, in COCO's order
    # ... run torchvision's MaskRCNN in eval mode on val, gather {image_id: output} on the main process ...
    metrics = coco_evaluate(val.coco, predictions, val.label_to_category)         # {"box_ap": 41.2, ...} in percent

The files are read from COCO's official layout, `root/{split}2017/*.jpg` and `root/annotations/instances_{split}2017
.json` (`root` is resolved like every dataset, see `harness.data.datasets.dataset_root("coco", ...)`). A target is
`{"boxes": BoundingBoxes XYXY [N, 4], "labels": int64 [N] in 1..K, "masks": Mask uint8 [N, H, W], "image_id": int}`,
what torchvision's `MaskRCNN` takes in training mode. `write_tiny_coco` writes a few-image split in the same layout
for tests and the micro profile.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from harness.catalog import dataset_error
from harness.data.datasets import dataset_root

__all__ = [
    "METRICS",
    "CocoInstances",
    "coco_detection",
    "coco_evaluate",
    "coco_evaluate_results",
    "coco_result_lists",
    "coco_results",
    "write_tiny_coco",
]

METRICS = ("box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50", "mask_ap75")


class CocoInstances(Dataset):
    """One COCO split as Mask R-CNN targets; build it with `coco_detection`.

    What each step is for:
    - torchvision's `CocoDetection` wrapped by `wrap_dataset_for_transforms_v2` reads the image and decodes every
      annotation's polygon or RLE into a mask, and gives boxes as XYXY `BoundingBoxes`, so v2 transforms move boxes
      and masks with the image. The wrapper keeps crowd annotations and raw category ids, and returns only
      `{"image_id"}` for an image without annotations; the three steps below fix that.
    - Crowd annotations (iscrowd=1) and boxes of zero width or height are dropped from every target: a crowd region
      is not one object (COCOeval reads crowds from the annotation file and ignores detections that fall on them),
      and MaskRCNN refuses a degenerate box in training.
    - An image left with no annotation gets empty `boxes` [0, 4], `labels` [0] and `masks` [0, H, W], so that every
      item has the same keys and v2 transforms (which look for the boxes) and MaskRCNN (which accepts empty targets)
      run on it. With `train=True` such images are dropped all the same, as torchvision's detection references do
      (they only add background-only batches); with `train=False` every image of the split is kept, since COCO's
      protocol evaluates on all of them and false positives on an empty image count.
    - COCO's category ids (1..90 with gaps, 80 used) become contiguous labels 1..K in ascending id order, because
      MaskRCNN's classifier has K+1 outputs with 0 for the background; `label_to_category` is the inverse map for
      the evaluation.

    Attributes:
        coco: the split's annotations (a pycocotools `COCO`), the ground truth for `coco_evaluate`.
        ids: the image id of each item.
        category_to_label, label_to_category: COCO category id <-> contiguous label.
    """

    def __init__(self, images: Path, annotations: Path, transforms: Callable | None = None, train: bool = True):
        from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints four lines of progress per file
            base = CocoDetection(str(images), str(annotations))
        self.coco = base.coco
        self.transforms, self.train = transforms, train
        self.category_to_label = {c: i + 1 for i, c in enumerate(sorted(self.coco.getCatIds()))}
        self.label_to_category = {label: c for c, label in self.category_to_label.items()}
        self._positions = list(range(len(base.ids)))  # indices into `base`, in the file's image order
        if train:
            self._positions = [i for i, image_id in enumerate(base.ids) if self._has_objects(image_id)]
        self.ids = [base.ids[i] for i in self._positions]
        # `iscrowd` is asked for as well: the wrapper does not filter crowds, so we need it to drop them.
        self._wrapped = wrap_dataset_for_transforms_v2(
            base, target_keys=("boxes", "labels", "masks", "image_id", "iscrowd")
        )

    def _has_objects(self, image_id: int) -> bool:
        """Whether an image has one annotation that survives the target filter (not crowd, positive size)."""
        anns = self.coco.imgToAnns.get(image_id, [])
        return any(not a.get("iscrowd", 0) and a["bbox"][2] > 0 and a["bbox"][3] > 0 for a in anns)

    def __len__(self) -> int:
        return len(self._positions)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        image, raw = self._wrapped[self._positions[index]]
        height, width = F.get_size(image)
        if "boxes" in raw:
            boxes = raw["boxes"]
            keep = ~torch.tensor(raw["iscrowd"], dtype=torch.bool)
            keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            # Indexing a tv_tensor returns a plain tensor: wrap again so that transforms know what it is.
            boxes = tv_tensors.wrap(boxes[keep], like=boxes)
            masks = tv_tensors.Mask(raw["masks"][keep])
            labels = torch.tensor([self.category_to_label[int(c)] for c in raw["labels"][keep]], dtype=torch.int64)
        else:  # the wrapper's answer for an image without annotations
            boxes = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(height, width))
            masks = tv_tensors.Mask(torch.zeros(0, height, width, dtype=torch.uint8))
            labels = torch.zeros(0, dtype=torch.int64)
        target = {"boxes": boxes, "labels": labels, "masks": masks, "image_id": raw["image_id"]}
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        kind = "train" if self.train else "eval"
        return f"CocoInstances({len(self)} images, {len(self.category_to_label)} categories, {kind})"


def coco_detection(
    root: str | Path | None, split: str, transforms: Callable | None = None, train: bool = True
) -> CocoInstances:
    """COCO `split` ("train" or "val") under `root` (None: resolved by `dataset_root("coco")`) as Mask R-CNN data.

    `transforms` is a v2 transform called as `transforms(image, target)`; `train` drops the images that have no
    non-crowd annotation (see `CocoInstances`). A missing annotation file or image folder raises `DatasetError`.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = dataset_root("coco", root)
    images, annotations = root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json"
    needs = f"detection fine-tuning needs {split}2017/ and annotations/instances_{split}2017.json"
    if not annotations.is_file():
        raise dataset_error("coco", root, f"missing annotation file {annotations} ({needs})")
    if not images.is_dir():
        raise dataset_error("coco", root, f"missing image folder {images} ({needs})")
    return CocoInstances(images, annotations, transforms, train)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation


def coco_results(
    image_id: int, output: Mapping[str, torch.Tensor], label_to_category: Mapping[int, int]
) -> tuple[list[dict], list[dict]]:
    """COCO result lists (boxes, masks) of one image's MaskRCNN output, masks as RLE. One list per IoU type, as a
    result that has both a bbox and a segmentation is read as a box result by COCO's `loadRes` (its area would be the
    box's). Convert each image as its output arrives: the RLEs are small, the [N, 1, H, W] probabilities are not."""
    from pycocotools import mask as mask_util

    scores = output["scores"].detach().cpu().tolist()
    if not scores:
        return [], []
    categories = [label_to_category[int(label)] for label in output["labels"].detach().cpu()]
    xywh = output["boxes"].detach().cpu().double().clone()
    xywh[:, 2:] -= xywh[:, :2]
    binary = (output["masks"].detach()[:, 0] > 0.5).cpu().numpy().astype(np.uint8)  # [N, H, W]
    rles = mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0)))  # encode wants [H, W, N], Fortran
    boxes, masks = [], []
    for box, rle, category, score in zip(xywh.tolist(), rles, categories, scores):
        rle["counts"] = rle["counts"].decode("ascii")  # bytes -> str, so that results are also valid JSON
        common = {"image_id": int(image_id), "category_id": category, "score": float(score)}
        boxes.append({**common, "bbox": box})
        masks.append({**common, "segmentation": rle})
    return boxes, masks


def coco_evaluate(
    coco_gt: Any, predictions: Mapping[int, Mapping[str, torch.Tensor]], label_to_category: Mapping[int, int]
) -> dict[str, float]:
    """COCO box and mask AP, AP50 and AP75 in percent, computed with faster-coco-eval.

    Run it on the main process only, after gathering every rank's predictions: COCOeval needs all of them at once.

    Args:
        coco_gt: the ground truth: a pycocotools or faster-coco-eval `COCO` (e.g. `dataset.coco`), or the path of
            an `instances_*.json` file.
        predictions: `{image_id: output}` with torchvision MaskRCNN's eval-mode output (boxes XYXY [N, 4] in the
            original image's pixels, labels [N], scores [N], masks [N, 1, H, W] probabilities). The images evaluated
            are the keys, so a subset of the split can be evaluated; an image with no detections must still appear
            (with N = 0), or its ground truth is not counted. No images at all gives 0 for every metric.
        label_to_category: contiguous label -> COCO category id (`CocoInstances.label_to_category`).
    """
    return coco_evaluate_results(coco_gt, list(predictions), *coco_result_lists(predictions, label_to_category))


def coco_result_lists(
    predictions: Mapping[int, Mapping[str, torch.Tensor]], label_to_category: Mapping[int, int]
) -> tuple[list[dict], list[dict]]:
    """`coco_results` of every image of `predictions`, concatenated: (box results, mask results)."""
    boxes, masks = [], []
    for image_id, output in predictions.items():
        b, m = coco_results(image_id, output, label_to_category)
        boxes += b
        masks += m
    return boxes, masks


def coco_evaluate_results(coco_gt: Any, image_ids: list[int], boxes: list[dict], masks: list[dict]) -> dict[str, float]:
    """`coco_evaluate` from result lists already converted (`coco_results`) for the images `image_ids`."""
    from faster_coco_eval import COCO, COCOeval_faster

    if not image_ids:
        return dict.fromkeys(METRICS, 0.0)
    if isinstance(coco_gt, (str, Path)):
        gt = COCO(str(coco_gt))
    elif isinstance(coco_gt, COCO):
        gt = coco_gt
    else:  # pycocotools' COCO: copied, as evaluation writes fields into the ground-truth annotations
        gt = COCO(coco_gt.dataset, use_deepcopy=True)
    out = {}
    for prefix, iou_type, results in zip(("box", "mask"), ("bbox", "segm"), (boxes, masks)):
        if not results:  # no detection above the score threshold in any image (an untrained model): AP 0
            out |= {f"{prefix}_{suffix}": 0.0 for suffix in ("ap", "ap50", "ap75")}
            continue
        evaluator = COCOeval_faster(gt, gt.loadRes(results), iou_type)
        evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        with contextlib.redirect_stdout(io.StringIO()):  # COCOeval's table of 12 lines: result.json has them
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        # stats[0:3] are AP@[.5:.95], AP@.5, AP@.75; -1 means no ground truth among the images, reported as 0.
        for suffix, value in zip(("ap", "ap50", "ap75"), evaluator.stats[:3]):
            out[f"{prefix}_{suffix}"] = max(float(value), 0.0) * 100
    return out


# ---------------------------------------------------------------------------------------------------------------------
# A tiny split in the official layout

TINY_CATEGORIES = ({"id": 1, "name": "box"}, {"id": 3, "name": "triangle"}, {"id": 7, "name": "diamond"})


def _shape(category: int, x: int, y: int, w: int, h: int) -> list[float]:
    """The polygon (flat x, y list) of a shape of `category` inside the box (x, y, w, h)."""
    if category == 1:
        return [x, y, x + w, y, x + w, y + h, x, y + h]
    if category == 3:
        return [x, y + h, x + w / 2, y, x + w, y + h]
    return [x + w / 2, y, x + w, y + h / 2, x + w / 2, y + h, x, y + h / 2]


def write_tiny_coco(
    root: str | Path, split: str = "train", images: int = 4, seed: int = 0, size: tuple[int, int] = (96, 64)
) -> Path:
    """Write `images` (>= 2) small JPEGs to `root/{split}2017/` and `root/annotations/instances_{split}2017.json`.

    Image i < images - 1 holds 2-3 shapes, each in its own 32x32 cell of a `size` (width, height) canvas, of
    categories 1, 3 and 7 (ids with gaps, as COCO's) with their polygons, tight bboxes and pixel areas; image 0 also
    holds one crowd annotation (iscrowd=1, an uncompressed RLE as COCO writes crowds); the last image has no
    annotation. Deterministic for a given seed. Returns the annotation file.
    """
    from pycocotools import mask as mask_util

    if images < 2:
        raise ValueError(f"images must be >= 2 (one annotated, one empty), got {images}")
    root, width, height = Path(root), *size
    cells = [(cx, cy) for cy in range(0, height - 31, 32) for cx in range(0, width - 31, 32)]
    if len(cells) < 4:
        raise ValueError(f"size {size} holds {len(cells)} 32x32 cells; at least 4 are needed")
    rng = np.random.default_rng(seed)
    (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    image_list, annotations = [], []
    for i in range(images):
        image_id, name = i + 1, f"{i + 1:012d}.jpg"
        image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 80, 3)))
        draw = ImageDraw.Draw(image)
        order = rng.permutation(len(cells))
        n = 0 if i == images - 1 else int(rng.integers(2, 4))
        for k in range(n):
            cx, cy = cells[order[k]]
            w, h = (int(v) for v in rng.integers(12, 28, 2))
            x, y = cx + int(rng.integers(0, 32 - w)), cy + int(rng.integers(0, 32 - h))
            category = TINY_CATEGORIES[int(rng.integers(len(TINY_CATEGORIES)))]["id"]
            polygon = [float(v) for v in _shape(category, x, y, w, h)]
            draw.polygon(polygon, fill=tuple(int(v) for v in rng.integers(120, 256, 3)))
            rle = mask_util.merge(mask_util.frPyObjects([polygon], height, width))
            xs, ys = polygon[0::2], polygon[1::2]
            bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            annotations.append(
                {
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": [polygon],
                    "bbox": bbox,
                    "area": float(mask_util.area(rle)),
                    "iscrowd": 0,
                }
            )
        if i == 0:  # a crowd of boxes: a filled rectangle in the next free cell, as uncompressed RLE
            cx, cy = cells[order[n]]
            crowd = np.zeros((height, width), dtype=np.uint8)
            crowd[cy + 4 : cy + 28, cx + 4 : cx + 28] = 1
            draw.rectangle([cx + 4, cy + 4, cx + 27, cy + 27], fill=(250, 250, 250))
            flat = crowd.flatten(order="F")  # COCO's RLE runs go down the columns, starting with a run of zeros
            change = np.flatnonzero(np.diff(flat)) + 1
            counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
            annotations.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": {"size": [height, width], "counts": counts},
                    "bbox": [cx + 4.0, cy + 4.0, 24.0, 24.0],
                    "area": float(crowd.sum()),
                    "iscrowd": 1,
                }
            )
        image.save(root / f"{split}2017" / name, quality=95)
        image_list.append({"id": image_id, "file_name": name, "width": width, "height": height})
    for k, ann in enumerate(annotations):
        ann["id"] = k + 1
    path = root / "annotations" / f"instances_{split}2017.json"
    data = {"images": image_list, "annotations": annotations, "categories": [dict(c) for c in TINY_CATEGORIES]}
    path.write_text(json.dumps(data))
    return path
