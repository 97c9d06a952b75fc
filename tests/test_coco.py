"""COCO for Mask R-CNN: the dataset on a tiny official-layout split, its errors, the evaluation vs pycocotools."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from harness.catalog import DatasetError
from harness.data.coco import METRICS, coco_detection, coco_evaluate, coco_result_lists, write_tiny_coco


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    """Tests must not see the machine's dataset configuration."""
    monkeypatch.delenv("HARNESS_DATA_ROOT", raising=False)
    monkeypatch.delenv("HARNESS_DATASETS_FILE", raising=False)


@pytest.fixture
def tiny(tmp_path):
    """(root, the annotation file's JSON) of a 5-image val split."""
    path = write_tiny_coco(tmp_path, "val", images=5, seed=0)
    return tmp_path, json.loads(path.read_text())


def _perfect(ds) -> dict[int, dict[str, torch.Tensor]]:
    """MaskRCNN-style outputs equal to the ground truth of every image, with score 1."""
    out = {}
    for i in range(len(ds)):
        _, t = ds[i]
        n = len(t["labels"])
        out[t["image_id"]] = {
            "boxes": t["boxes"].as_subclass(torch.Tensor).float(),
            "labels": t["labels"],
            "scores": torch.ones(n),
            "masks": t["masks"].as_subclass(torch.Tensor).float()[:, None],
        }
    return out


def _pycocotools(annotation_file, predictions, label_to_category) -> dict[str, float]:
    """The same metrics with the reference implementation."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, out = COCO(str(annotation_file)), {}
    results_by_type = coco_result_lists(predictions, label_to_category)
    for prefix, iou_type, results in zip(("box", "mask"), ("bbox", "segm"), results_by_type):
        evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), iou_type)
        evaluator.params.imgIds = sorted(predictions)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        for suffix, value in zip(("ap", "ap50", "ap75"), evaluator.stats[:3]):
            out[f"{prefix}_{suffix}"] = max(float(value), 0.0) * 100
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The dataset


def test_fixture_layout(tiny):
    root, data = tiny
    assert (root / "val2017").is_dir() and len(list((root / "val2017").glob("*.jpg"))) == 5
    assert sorted(c["id"] for c in data["categories"]) == [1, 3, 7]
    assert {a["category_id"] for a in data["annotations"] if not a["iscrowd"]} == {1, 3, 7}
    assert sum(a["iscrowd"] for a in data["annotations"]) == 1
    annotated = {a["image_id"] for a in data["annotations"]}
    assert [i["id"] for i in data["images"] if i["id"] not in annotated] == [5]
    assert write_tiny_coco(root / "again", "val", images=5).read_text() == json.dumps(data)  # deterministic


def test_training_targets(tiny):
    root, data = tiny
    ds = coco_detection(root, "val", train=True)
    assert ds.ids == [1, 2, 3, 4]  # the unannotated image 5 is dropped
    assert ds.category_to_label == {1: 1, 3: 2, 7: 3} and ds.label_to_category == {1: 1, 2: 3, 3: 7}
    for i, image_id in enumerate(ds.ids):
        image, t = ds[i]
        anns = [a for a in data["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
        assert t["image_id"] == image_id
        assert isinstance(t["boxes"], tv_tensors.BoundingBoxes) and t["boxes"].format.value == "XYXY"
        assert isinstance(t["masks"], tv_tensors.Mask) and t["masks"].shape == (len(anns), image.height, image.width)
        assert t["labels"].dtype == torch.int64 and t["labels"].min() >= 1 and t["labels"].max() <= 3
        assert [ds.label_to_category[int(label)] for label in t["labels"]] == [a["category_id"] for a in anns]
        expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        torch.testing.assert_close(t["boxes"].as_subclass(torch.Tensor), expected)
        assert set(t["masks"].unique().tolist()) == {0, 1}
        for mask, a in zip(t["masks"], anns):
            xs, ys = a["segmentation"][0][0::2], a["segmentation"][0][1::2]
            cx, cy = int(sum(xs) / len(xs)), int(sum(ys) / len(ys))  # the centroid is inside every convex shape
            assert mask[cy, cx] == 1
            x, y, w, h = a["bbox"]
            assert mask[int(y + h) + 2 :, :].sum() == 0 and mask[:, int(x + w) + 2 :].sum() == 0  # nothing outside
            assert abs(int(mask.sum()) - a["area"]) <= 0.05 * a["area"]
    # Image 1 holds the crowd: its target has one object fewer than its annotations.
    assert len(ds[0][1]["labels"]) == sum(a["image_id"] == 1 for a in data["annotations"]) - 1


def test_evaluation_keeps_every_image_with_empty_targets(tiny):
    root, _ = tiny
    transforms = v2.Compose([v2.RandomHorizontalFlip(1.0), v2.ToImage(), v2.SanitizeBoundingBoxes()])
    ds = coco_detection(root, "val", transforms=transforms, train=False)
    assert ds.ids == [1, 2, 3, 4, 5]
    image, t = ds[4]  # the unannotated image: empty tensors, so transforms and MaskRCNN run on it
    assert t["image_id"] == 5 and image.shape == (3, 64, 96)
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["masks"].shape == (0, 64, 96)


def test_missing_files_name_path_and_layout(tmp_path):
    with pytest.raises(DatasetError) as e:
        coco_detection(tmp_path, "train")
    message = str(e.value)
    assert str(tmp_path / "annotations" / "instances_train2017.json") in message
    assert "Expected layout" in message and "train2017" in message
    write_tiny_coco(tmp_path, "val", images=2)
    (tmp_path / "val2017" / "000000000001.jpg").unlink()
    (tmp_path / "val2017" / "000000000002.jpg").unlink()
    (tmp_path / "val2017").rmdir()
    with pytest.raises(DatasetError, match="missing image folder"):
        coco_detection(tmp_path, "val")


# ---------------------------------------------------------------------------------------------------------------------
# The evaluation


def test_perfect_shifted_and_reference(tiny):
    root, _ = tiny
    ds = coco_detection(root, "val", train=False)
    perfect = _perfect(ds)
    # Exactly 100: every detection matches its ground truth at IoU 1, so precision is 1 at all 101 recall points.
    assert coco_evaluate(ds.coco, perfect, ds.label_to_category) == dict.fromkeys(METRICS, 100.0)

    shifted, generator = copy.deepcopy(perfect), torch.Generator().manual_seed(0)
    for p in shifted.values():
        p["boxes"] += torch.tensor([3.0, 2.0, 3.0, 2.0])
        p["masks"] = torch.roll(p["masks"], shifts=(2, 3), dims=(2, 3))
        p["scores"] = torch.rand(len(p["scores"]), generator=generator)
    # A confident false positive on the unannotated image 5 ranks above every true positive.
    shifted[5] = {
        "boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]),
        "labels": torch.tensor([1]),
        "scores": torch.tensor([0.99]),
        "masks": torch.zeros(1, 1, 64, 96),
    }
    shifted[5]["masks"][..., 10:30, 10:30] = 0.9
    metrics = coco_evaluate(root / "annotations" / "instances_val2017.json", shifted, ds.label_to_category)
    assert 0 < metrics["box_ap"] < 100 and 0 < metrics["mask_ap"] < 100
    assert metrics["box_ap"] <= metrics["box_ap50"]
    for predictions in (perfect, shifted):
        ours = coco_evaluate(ds.coco, predictions, ds.label_to_category)
        reference = _pycocotools(root / "annotations" / "instances_val2017.json", predictions, ds.label_to_category)
        assert ours.keys() == reference.keys()
        np.testing.assert_allclose([ours[k] for k in METRICS], [reference[k] for k in METRICS], atol=1e-6)


def test_detection_on_a_crowd_is_ignored(tiny):
    root, data = tiny
    ds = coco_detection(root, "val", train=False)
    predictions = _perfect(ds)
    (crowd,) = (a for a in data["annotations"] if a["iscrowd"])
    x, y, w, h = (int(v) for v in crowd["bbox"])
    masks = torch.zeros(1, 1, 64, 96)
    masks[..., y : y + h, x : x + w] = 1.0
    p = predictions[crowd["image_id"]]
    p["boxes"] = torch.cat([p["boxes"], torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32)])
    p["labels"] = torch.cat([p["labels"], torch.tensor([ds.category_to_label[crowd["category_id"]]])])
    p["scores"], p["masks"] = torch.cat([p["scores"], torch.ones(1)]), torch.cat([p["masks"], masks])
    assert coco_evaluate(ds.coco, predictions, ds.label_to_category) == dict.fromkeys(METRICS, 100.0)


def test_results_are_json_with_category_ids(tiny):
    root, _ = tiny
    ds = coco_detection(root, "val", train=False)
    boxes, masks = coco_result_lists(_perfect(ds), ds.label_to_category)
    assert len(boxes) == len(masks) == 10 and {r["category_id"] for r in boxes} == {1, 3, 7}
    assert isinstance(masks[0]["segmentation"]["counts"], str)
    json.dumps([boxes, masks])
    _, t = ds[0]
    x1, y1, x2, y2 = t["boxes"][0].tolist()
    assert boxes[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])


def test_no_predictions(tiny):
    root, _ = tiny
    ds = coco_detection(root, "val", train=False)
    assert coco_evaluate(ds.coco, {}, ds.label_to_category) == dict.fromkeys(METRICS, 0.0)
    empty = {
        i: {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.int64),
            "scores": torch.zeros(0),
            "masks": torch.zeros(0, 1, 64, 96),
        }
        for i in ds.ids
    }
    assert coco_evaluate(ds.coco, empty, ds.label_to_category) == dict.fromkeys(METRICS, 0.0)
