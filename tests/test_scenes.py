"""Fashion-MNIST scenes in COCO's and ADE20k's layouts: read back by the real readers, the same scenes in both,
deterministic, cached atomically, and their arguments checked.

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_scenes.py
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from harness.data import scenes
from harness.data.ade20k import ade20k_segmentation
from harness.data.coco import coco_detection
from harness.data.scenes import MARKER, draw_scene, scene_root, write_ade_scenes, write_coco_scenes

# Small builds: a few hundred milliseconds each, and enough scenes that some items overlap others.
COUNT = 12
PARAMS = {"size": 64, "per_scene": (2, 4), "item_size": (20, 40), "seed": 3}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    """Tests must not see the machine's dataset configuration (Fashion-MNIST is then read from its default)."""
    monkeypatch.delenv("HARNESS_DATA_ROOT", raising=False)
    monkeypatch.delenv("HARNESS_DATASETS_FILE", raising=False)


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """(root, {split: annotation JSON}) of COCO scenes, both splits."""
    root = tmp_path_factory.mktemp("coco")
    files = {split: write_coco_scenes(root, split, COUNT, **PARAMS) for split in ("train", "val")}
    return root, {split: json.loads(path.read_text()) for split, path in files.items()}


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    """The root of ADE20k scenes built with the same parameters as `coco`."""
    root = tmp_path_factory.mktemp("ade")
    for split in ("train", "val"):
        write_ade_scenes(root, split, COUNT, **PARAMS)
    return root


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_subclass(torch.Tensor)


# ---------------------------------------------------------------------------------------------------------------------
# COCO layout


@pytest.mark.parametrize("split, train", [("train", True), ("val", False)])
def test_coco_scenes_read_back_as_mask_rcnn_targets(coco, split, train):
    root, data = coco[0], coco[1][split]
    ds = coco_detection(root, split, train=train)
    assert len(ds) == COUNT == len(data["images"])
    assert {c["id"]: c["name"] for c in data["categories"]}[1] == "T-shirt/top" and len(data["categories"]) == 10
    areas = {}
    for a in data["annotations"]:
        areas.setdefault(a["image_id"], []).append(a["area"])
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.size == (64, 64)
        boxes, masks, labels = _plain(target["boxes"]), _plain(target["masks"]).bool(), target["labels"]
        n = len(labels)
        assert 1 <= n <= 4 and boxes.shape == (n, 4) and masks.shape == (n, 64, 64)
        assert ((labels >= 1) & (labels <= 10)).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        assert masks.flatten(1).any(1).all(), "every instance has pixels"
        for box, mask in zip(boxes.long(), masks):
            inside = torch.zeros_like(mask)
            inside[box[1] : box[3], box[0] : box[2]] = True
            assert not (mask & ~inside).any(), "a mask pixel outside its box"
            ys, xs = torch.nonzero(mask, as_tuple=True)  # and the box is tight
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(box.tolist())
        assert masks.flatten(1).sum(1).tolist() == areas[target["image_id"]]
        assert (masks.sum(0) <= 1).all(), "visible masks overlap"


def test_an_occluded_item_loses_the_occluders_pixels(coco):
    """Among the scenes some boxes overlap (so occlusion is exercised), and where the later item's mask covers the
    earlier item, the earlier one's mask is cut: no pixel is in both."""
    root = coco[0]
    ds = coco_detection(root, "train")
    overlapping = 0
    for i in range(len(ds)):
        _, target = ds[i]
        boxes, masks = _plain(target["boxes"]), _plain(target["masks"]).bool()
        for a in range(len(masks)):
            for b in range(a + 1, len(masks)):
                lo, hi = torch.maximum(boxes[a, :2], boxes[b, :2]), torch.minimum(boxes[a, 2:], boxes[b, 2:])
                overlapping += bool((hi > lo).all())
                assert not (masks[a] & masks[b]).any()
    assert overlapping >= 3


def test_occlusion_cuts_the_earlier_mask_and_tiny_remains_are_dropped():
    """An item pasted fully under a larger one has no visible pixel and is dropped; one partly under keeps the rest."""
    white = np.full((28, 28), 200, np.uint8)

    class Source:  # the generator's draws decide the places: a stub source makes every item a white square
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return Image.fromarray(white), 4

    kept = []
    for i in range(40):
        scene = draw_scene(Source(), "train", i, size=32, per_scene=(2, 2), item_size=(10, 20), seed=0)
        kept.append(len(scene.instances))
        item_pixels = (scene.label_map == 6).sum()
        assert sum(int(inst.mask.sum()) for inst in scene.instances) == item_pixels, "the label map and masks agree"
        assert all(inst.mask.sum() >= scenes.MIN_AREA for inst in scene.instances)
        assert 1 <= len(scene.instances) <= 2
        if len(scene.instances) == 2:
            assert not (scene.instances[0].mask & scene.instances[1].mask).any()
    assert 1 in kept and 2 in kept, "both cases were drawn: one item hidden, and both visible"


# ---------------------------------------------------------------------------------------------------------------------
# ADE20k layout


def test_ade_scenes_read_back_and_describe_the_coco_scenes(coco, ade):
    for split in ("train", "val"):
        ds = ade20k_segmentation(ade, split)
        assert len(ds) == COUNT
        categories = {}
        for a in coco[1][split]["annotations"]:
            categories.setdefault(a["image_id"], set()).add(a["category_id"])
        for i in range(len(ds)):
            image, mask = ds[i]
            assert image.shape == (3, 64, 64) and mask.shape == (64, 64)
            values = set(torch.unique(_plain(mask)).tolist())
            assert values <= {*range(11), 255}
            assert 0 in values, "the background is present"
            assert 255 in values, "the items' soft rims are ignored"
            items = values - {0, 255}
            assert items, "every scene has item pixels"
            assert items == categories[i + 1], f"{split} scene {i}: ADE classes {items}, COCO {categories[i + 1]}"


def test_ade_item_pixels_are_the_coco_masks(coco, ade):
    """Pixel for pixel: the ADE label of every COCO mask pixel is the instance's category."""
    ds_ade, ds_coco = ade20k_segmentation(ade, "val"), coco_detection(coco[0], "val", train=False)
    for i in range(COUNT):
        label = _plain(ds_ade[i][1])
        _, target = ds_coco[i]
        union = torch.zeros(64, 64, dtype=torch.bool)
        for category, mask in zip(target["labels"], _plain(target["masks"]).bool()):
            assert (label[mask] == category).all()
            union |= mask
        assert ((label >= 1) & (label <= 10)).eq(union).all()


def test_the_image_is_faint_outside_the_items(ade):
    """The texture is not flat black, yet stays far below the item threshold (JPEG's ringing included)."""
    folder = ade / "images" / "training"
    for path in sorted(folder.glob("*.jpg")):
        pixels = np.asarray(Image.open(path))
        label = np.asarray(Image.open(ade / "annotations" / "training" / f"{path.stem}.png"))
        background = pixels[label == 1]
        assert (background > 0).mean() > 0.95 and background.std() > 0.5
        assert background.max() < scenes.ITEM_THRESHOLD


# ---------------------------------------------------------------------------------------------------------------------
# Determinism


def test_same_parameters_same_files_another_seed_differs(tmp_path):
    a = write_coco_scenes(tmp_path / "a", "val", 5, **PARAMS).read_bytes()
    b_path = write_coco_scenes(tmp_path / "b", "val", 5, **PARAMS)
    assert a == b_path.read_bytes()
    assert (tmp_path / "a/val2017/000000000003.jpg").read_bytes() == (
        b_path.parent.parent / "val2017/000000000003.jpg"
    ).read_bytes()
    assert a != write_coco_scenes(tmp_path / "c", "val", 5, **{**PARAMS, "seed": 4}).read_bytes()
    # the splits are different scenes, not the same scenes from another source
    train = json.loads(write_coco_scenes(tmp_path / "a", "train", 5, **PARAMS).read_text())
    assert train["annotations"] != json.loads(a)["annotations"]


def test_a_scene_does_not_depend_on_what_else_is_generated(tmp_path):
    """Scene i drawn alone is scene i of a written split: its masks are the file's, decoded."""
    from pycocotools import mask as mask_util

    data = json.loads(write_coco_scenes(tmp_path, "train", 6, **PARAMS).read_text())
    source = scenes._source("train", None)
    for i in (4, 1):  # in another order than written
        alone = draw_scene(source, "train", i, **PARAMS)
        written = [a for a in data["annotations"] if a["image_id"] == i + 1]
        assert [a["category_id"] for a in written] == [inst.label + 1 for inst in alone.instances]
        for a, inst in zip(written, alone.instances):
            assert np.array_equal(mask_util.decode(a["segmentation"]).astype(bool), inst.mask)


# ---------------------------------------------------------------------------------------------------------------------
# The cache


def _build(kind, cache, **overrides):
    return scene_root(kind, {"train": 4, "val": 2}, cache, **{**PARAMS, **overrides})


def test_scene_root_builds_once_and_reuses(tmp_path, monkeypatch, capsys):
    root = _build("coco", tmp_path)
    assert root.parent == tmp_path and root.name.startswith("coco-") and len(root.name) == len("coco-") + 12
    assert "building 6 COCO stand-in scenes" in capsys.readouterr().err
    assert len(coco_detection(root, "train")) == 4 and len(coco_detection(root, "val", train=False)) == 2
    marker = json.loads((root / MARKER).read_text())
    assert marker["splits"] == {"train": 4, "val": 2} and marker["seed"] == PARAMS["seed"]
    mtime = (root / MARKER).stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(scenes, "write_coco_scenes", fail)
    assert _build("coco", tmp_path) == root
    assert (root / MARKER).stat().st_mtime_ns == mtime
    assert capsys.readouterr().err == ""
    # the Fashion-MNIST location is not part of the key: the same files elsewhere make the same scenes
    assert _build("coco", tmp_path, data_root="/usr/share/datasets/fashion-mnist") == root
    assert os.listdir(tmp_path) == [root.name], "no temporary folder left behind"


def test_scene_root_another_parameter_another_folder(tmp_path):
    roots = {
        _build("coco", tmp_path),
        _build("coco", tmp_path, seed=4),
        _build("coco", tmp_path, item_size=(20, 30)),
        _build("ade20k", tmp_path),
        scene_root("coco", {"train": 5, "val": 2}, tmp_path, **PARAMS),
    }
    assert len(roots) == 5
    assert sorted(os.listdir(tmp_path)) == sorted(r.name for r in roots)
    ade = _build("ade20k", tmp_path)
    assert ade.name.startswith("ade20k-") and len(ade20k_segmentation(ade, "val")) == 2


def test_a_crashed_build_is_neither_used_nor_left_by_us(tmp_path, monkeypatch):
    name = _build("coco", tmp_path / "probe").name
    cache = tmp_path / "cache"
    # what a build killed half-way leaves: its temporary folder, one split written, no marker
    stale = cache / f".{name}.tmp-99999-deadbeef"
    write_coco_scenes(stale, "train", 2, **PARAMS)
    root = _build("coco", cache)
    assert root == cache / name and (root / MARKER).is_file()
    assert len(coco_detection(root, "val", train=False)) == 2

    # a build that fails removes its own temporary folder, and leaves no final one
    def fail(root, split, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(scenes, "write_ade_scenes", fail)
    with pytest.raises(OSError, match="disk full"):
        _build("ade20k", cache)
    assert sorted(os.listdir(cache)) == sorted([name, stale.name])


def test_a_final_folder_without_marker_is_refused(tmp_path):
    name = _build("coco", tmp_path / "probe").name
    (tmp_path / "cache" / name / "train2017").mkdir(parents=True)
    with pytest.raises(RuntimeError, match=MARKER):
        _build("coco", tmp_path / "cache")


def test_when_another_process_finishes_first_its_folder_is_used(tmp_path, monkeypatch):
    """Our rename finds the folder already there: ours is discarded, theirs (with its marker) returned."""
    real = scenes.write_coco_scenes
    theirs = {}

    def race(root, split, *args, **kwargs):
        if not theirs:  # the other process builds the whole folder while we write our first split
            monkeypatch.setattr(scenes, "write_coco_scenes", real)
            theirs["root"] = _build("coco", tmp_path)
            theirs["mtime"] = (theirs["root"] / MARKER).stat().st_mtime_ns
            monkeypatch.setattr(scenes, "write_coco_scenes", race)
        return real(root, split, *args, **kwargs)

    monkeypatch.setattr(scenes, "write_coco_scenes", race)
    root = _build("coco", tmp_path)
    assert root == theirs["root"] and (root / MARKER).stat().st_mtime_ns == theirs["mtime"]
    assert os.listdir(tmp_path) == [root.name]


# ---------------------------------------------------------------------------------------------------------------------
# Arguments


@pytest.mark.parametrize(
    "overrides, name",
    [
        ({"count": 0}, "count"),
        ({"split": "test"}, "split"),
        ({"size": 4}, "size"),
        ({"item_size": (20, 80)}, "item_size"),
        ({"item_size": (30, 20)}, "item_size"),
        ({"item_size": 20}, "item_size"),
        ({"per_scene": (0, 3)}, "per_scene"),
        ({"per_scene": (3, 2)}, "per_scene"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(tmp_path, overrides, name):
    args = {"split": "train", "count": 2, **PARAMS, **overrides}
    for writer in (write_coco_scenes, write_ade_scenes):
        with pytest.raises(ValueError, match=name):
            writer(tmp_path, **args)
    assert not any(tmp_path.iterdir()), "nothing written before the check"


@pytest.mark.parametrize(
    "kind, splits, name",
    [
        ("voc", {"train": 2}, "kind"),
        ("coco", {}, "splits"),
        ("coco", {"test": 2}, "split"),
        ("coco", {"val": 0}, "val"),
    ],
)
def test_scene_root_bad_arguments(tmp_path, kind, splits, name):
    with pytest.raises(ValueError, match=name):
        scene_root(kind, splits, tmp_path, **PARAMS)
    assert not any(tmp_path.iterdir())
