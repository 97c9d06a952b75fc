"""Dataset registry, loaders on tiny fixture trees in the official layouts, errors, root resolution, subsets."""

from __future__ import annotations

import gzip
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from harness.data import (
    DATASETS,
    DatasetError,
    FashionMNIST,
    ImageList,
    build_dataset,
    class_balanced_subset,
    dataset_root,
    iteration_parity_epochs,
    read_idx,
    targets_of,
)
from harness.data.datasets import DEBIAN_FASHION_MNIST

HAS_SCIPY = importlib.util.find_spec("scipy") is not None
HAS_FASHION_MNIST = (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists()


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    """Tests must not see the machine's dataset configuration."""
    monkeypatch.delenv("HARNESS_DATA_ROOT", raising=False)
    monkeypatch.delenv("HARNESS_DATASETS_FILE", raising=False)


def _image(path: Path, colour=(200, 30, 30), size=(8, 6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _check(ds, n: int, targets: list[int], mode: str = "RGB") -> None:
    assert len(ds) == n
    assert [int(t) for t in ds.targets] == targets
    for i in (0, n - 1):
        img, label = ds[i]
        assert isinstance(img, Image.Image) and img.mode == mode
        assert isinstance(label, int) and label == targets[i]


# ---------------------------------------------------------------------------------------------------------------------
# Fixture trees in the official layouts


@pytest.fixture
def imagenet_root(tmp_path) -> Path:
    root = tmp_path / "imagenet"
    for c, wnid in enumerate(["n01440764", "n01443537"]):
        for i in range(3):
            _image(root / "train" / wnid / f"{wnid}_{i}.JPEG", (50 * c, 0, 0))
        for i in range(2):
            _image(root / "val" / wnid / f"ILSVRC2012_val_{c}{i}.JPEG")
    return root


def _inat_tree(root: Path, year: int) -> None:
    categories = [{"id": 0, "name": "Aa", "supercategory": "Plantae"}, {"id": 1, "name": "Bb", "supercategory": "Aves"}]
    for split, per_class in (("train", 3), ("val", 2)):
        images, annotations = [], []
        for cat in categories:
            for i in range(per_class):
                image_id = len(images) + 100
                name = f"train_val{year}/{cat['supercategory']}/{cat['id']}/{split}{i}.jpg"
                _image(root / name)
                images.append({"id": image_id, "file_name": name, "width": 8, "height": 6})
                annotations.append({"id": len(annotations), "image_id": image_id, "category_id": cat["id"]})
        data = {"images": images, "annotations": annotations, "categories": categories, "info": {}, "licenses": []}
        (root / f"{split}{year}.json").write_text(json.dumps(data))


@pytest.fixture
def food_root(tmp_path) -> Path:
    base = tmp_path / "food-101"
    meta = {"train": {}, "test": {}}
    for cls in ["apple_pie", "baby_back_ribs"]:
        meta["train"][cls] = [f"{cls}/{i}" for i in range(3)]
        meta["test"][cls] = [f"{cls}/{i}" for i in range(3, 5)]
        for i in range(5):
            _image(base / "images" / cls / f"{i}.jpg")
    (base / "meta").mkdir(parents=True)
    for split, data in meta.items():
        (base / "meta" / f"{split}.json").write_text(json.dumps(data))
    return tmp_path


@pytest.fixture
def domainnet_root(tmp_path) -> Path:
    root = tmp_path / "domainnet"
    for split, per_class in (("train", 3), ("test", 2)):
        lines = []
        for label, cls in enumerate(["aircraft_carrier", "zebra"]):
            for i in range(per_class):
                rel = f"clipart/{cls}/clipart_{split}_{i:06d}.jpg"
                _image(root / rel)
                lines.append(f"{rel} {label}")
        (root / f"clipart_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


# ---------------------------------------------------------------------------------------------------------------------
# Registry


def test_registry_sizes_and_fields():
    sizes = {name: info.train_size for name, info in DATASETS.items()}
    assert sizes == {
        "fashion_mnist": 60_000,
        "imagenet": 1_281_167,
        "inat2018": 437_513,
        "inat2019": 265_213,
        "food101": 75_750,
        "stanford_cars": 8_144,
        "coco": 118_287,
        "clipart": 33_525,
        "painting": 50_416,
        "sketch": 48_212,
        "ade20k": 20_210,
    }
    for info in DATASETS.values():
        assert len(info.mean) == len(info.std) == info.in_chans
        assert info.layout and info.dirname
    assert DATASETS["fashion_mnist"].mean == (0.2860,) and DATASETS["fashion_mnist"].image_mode == "L"
    assert DATASETS["coco"].num_classes == DATASETS["ade20k"].num_classes == 0
    with pytest.raises(AttributeError):
        DATASETS["imagenet"].train_size = 1  # frozen


def test_unknown_name_and_split():
    with pytest.raises(ValueError, match=r"valid datasets: .*imagenet"):
        build_dataset("imagenet1k", root="/nowhere")
    with pytest.raises(ValueError, match="split"):
        build_dataset("imagenet", "test", root="/nowhere")


# ---------------------------------------------------------------------------------------------------------------------
# Loaders


def test_imagenet(imagenet_root):
    _check(build_dataset("imagenet", "train", root=imagenet_root), 6, [0, 0, 0, 1, 1, 1])
    val = build_dataset("imagenet", "val", root=imagenet_root)
    _check(val, 4, [0, 0, 1, 1])
    assert val.classes == ["n01440764", "n01443537"]


@pytest.mark.parametrize("year", [2018, 2019])
def test_inaturalist_official_json(tmp_path, year):
    _inat_tree(tmp_path, year)
    train = build_dataset(f"inat{year}", "train", root=tmp_path)
    _check(train, 6, [0, 0, 0, 1, 1, 1])
    assert train.classes == ["Aa", "Bb"] and train.paths[0].endswith(f"train_val{year}/Plantae/0/train0.jpg")
    _check(build_dataset(f"inat{year}", "val", root=tmp_path), 4, [0, 0, 1, 1])


@pytest.mark.parametrize("inside", [False, True], ids=["parent", "food-101"])
def test_food101(food_root, inside):
    root = food_root / "food-101" if inside else food_root
    _check(build_dataset("food101", "train", root=root), 6, [0, 0, 0, 1, 1, 1])
    val = build_dataset("food101", "val", root=root)
    _check(val, 4, [0, 0, 1, 1])
    assert val.classes == ["apple_pie", "baby_back_ribs"]


@pytest.mark.skipif(not HAS_SCIPY, reason="scipy is not installed (torchvision reads the Cars devkit .mat with it)")
def test_stanford_cars(tmp_path):
    import scipy.io

    base = tmp_path / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array(["AM General", "Acura"], object)})

    def annos(folder: str, n: int) -> np.ndarray:
        rows = np.zeros(n, dtype=[("fname", object), ("class", np.uint8)])
        for i in range(n):
            rows[i] = (f"{i:05d}.jpg", 1 + i % 2)  # classes are 1-based in the devkit
            _image(base / folder / f"{i:05d}.jpg")
        return rows

    scipy.io.savemat(base / "devkit" / "cars_train_annos.mat", {"annotations": annos("cars_train", 4)})
    scipy.io.savemat(base / "cars_test_annos_withlabels.mat", {"annotations": annos("cars_test", 2)})
    _check(build_dataset("stanford_cars", "train", root=tmp_path), 4, [0, 1, 0, 1])
    _check(build_dataset("stanford_cars", "val", root=base), 2, [0, 1])


def test_stanford_cars_without_scipy_names_the_fix(tmp_path):
    if HAS_SCIPY:
        pytest.skip("scipy is installed")
    with pytest.raises(ImportError, match="pip install scipy"):
        build_dataset("stanford_cars", root=tmp_path)


def test_coco_folder_and_annotation_file(tmp_path):
    for split, n in (("train2017", 3), ("val2017", 2)):
        for i in range(n):
            _image(tmp_path / split / f"{i + 1:012d}.jpg")
    _check(build_dataset("coco", "train", root=tmp_path), 3, [0, 0, 0])
    images = [{"id": 2, "file_name": "000000000002.jpg"}, {"id": 1, "file_name": "000000000001.jpg"}]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps({"images": images}))
    val = build_dataset("coco", "val", root=tmp_path, annotation_file="annotations/instances_val2017.json")
    _check(val, 2, [0, 0])
    assert val.paths[0].endswith("val2017/000000000001.jpg")  # id order, as CocoDetection


def test_domainnet_split_files(domainnet_root):
    train = build_dataset("clipart", "train", root=domainnet_root)
    _check(train, 6, [0, 0, 0, 1, 1, 1])
    assert train.classes == ["aircraft_carrier", "zebra"]
    _check(build_dataset("clipart", "val", root=domainnet_root), 4, [0, 0, 1, 1])


def test_ade20k(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for i in range(3):
        _image(base / "images" / "training" / f"ADE_train_{i:08d}.jpg")
    _image(base / "images" / "validation" / "ADE_val_00000001.jpg")
    _check(build_dataset("ade20k", "train", root=base), 3, [0, 0, 0])
    _check(build_dataset("ade20k", "val", root=tmp_path), 1, [0])


@pytest.mark.skipif(not HAS_FASHION_MNIST, reason=f"Debian's Fashion-MNIST is not installed at {DEBIAN_FASHION_MNIST}")
def test_fashion_mnist_real_files():
    train, val = build_dataset("fashion_mnist", "train"), build_dataset("fashion_mnist", "val")
    assert isinstance(train, FashionMNIST) and (len(train), len(val)) == (60_000, 10_000)
    assert train.data.dtype == torch.uint8 and train.data.shape == (60_000, 28, 28)
    assert train.targets.dtype == torch.long and set(train.targets.unique().tolist()) == set(range(10))
    img, label = train[0]
    assert img.mode == "L" and img.size == (28, 28) and 0 <= label <= 9
    assert torch.bincount(val.targets).tolist() == [1000] * 10


# ---------------------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "name",
    [
        "fashion_mnist",
        "imagenet",
        "inat2018",
        "food101",
        "coco",
        "clipart",
        "ade20k",
        pytest.param("stanford_cars", marks=pytest.mark.skipif(not HAS_SCIPY, reason="scipy is not installed")),
    ],
)
def test_wrong_root_names_dataset_path_and_layout(tmp_path, name):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(DatasetError) as info:
        build_dataset(name, root=root)
    message = str(info.value)
    assert name in message and str(root) in message and DATASETS[name].layout in message
    assert "HARNESS_DATA_ROOT" in message and "root=" in message
    with pytest.raises(DatasetError, match="no such folder"):
        build_dataset(name, root=tmp_path / "missing")


def _idx_gz(path: Path, magic: int, shape: tuple[int, ...], payload: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(f">i{len(shape)}i", magic, *shape) + payload)


def test_truncated_and_wrong_idx_files(tmp_path):
    images = tmp_path / "train-images-idx3-ubyte.gz"
    _idx_gz(images, 2051, (10, 28, 28), bytes(28 * 28 * 9))  # one image short
    _idx_gz(tmp_path / "train-labels-idx1-ubyte.gz", 2049, (10,), bytes(10))
    with pytest.raises(DatasetError, match="truncated") as info:
        build_dataset("fashion_mnist", root=tmp_path)
    assert str(images) in str(info.value) and "fashion_mnist" in str(info.value)

    _idx_gz(images, 2049, (10, 28, 28), bytes(28 * 28 * 10))  # a labels magic number on the images file
    with pytest.raises(DatasetError, match="magic number 2049, expected 2051"):
        read_idx(images, 2051)
    images.write_bytes(gzip.compress(bytes(100))[:20])  # a gzip stream cut short
    with pytest.raises(DatasetError, match=str(images)):
        read_idx(images)
    _idx_gz(images, 2051, (2, 28, 28), bytes(28 * 28 * 2))
    assert read_idx(images).shape == (2, 28, 28)


def test_broken_json(tmp_path):
    _inat_tree(tmp_path, 2018)
    (tmp_path / "train2018.json").write_text('{"images": [')
    with pytest.raises(DatasetError, match="cannot parse") as info:
        build_dataset("inat2018", root=tmp_path)
    assert str(tmp_path / "train2018.json") in str(info.value)
    (tmp_path / "train2018.json").write_text('{"images": []}')
    with pytest.raises(DatasetError, match="lacks"):
        build_dataset("inat2018", root=tmp_path)


def test_malformed_domainnet_line(domainnet_root):
    (domainnet_root / "clipart_train.txt").write_text("clipart/zebra/a.jpg zero\n")
    with pytest.raises(DatasetError, match=r"clipart_train\.txt line 1"):
        build_dataset("clipart", root=domainnet_root)


def test_unreadable_image_names_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"bad\.jpg"):
        ImageList("coco", [str(bad)], [0])[0]


# ---------------------------------------------------------------------------------------------------------------------
# Root resolution


def test_root_resolution_order(tmp_path, monkeypatch):
    explicit, from_file, data_root = tmp_path / "explicit", tmp_path / "from_file", tmp_path / "data"
    datasets_file = tmp_path / "datasets.yaml"
    datasets_file.write_text(f"imagenet: {from_file}\ncoco: relative/coco\nsomething_else: /x\n")
    monkeypatch.setenv("HARNESS_DATA_ROOT", str(data_root))

    assert dataset_root("imagenet", root=explicit, roots_file=datasets_file) == explicit
    assert dataset_root("imagenet", roots_file=datasets_file) == from_file
    assert dataset_root("coco", roots_file=datasets_file) == tmp_path / "relative/coco"  # relative to the file
    assert dataset_root("food101", roots_file=datasets_file) == data_root / "food-101"  # not in the file
    monkeypatch.setenv("HARNESS_DATASETS_FILE", str(datasets_file))
    assert dataset_root("imagenet") == from_file
    monkeypatch.delenv("HARNESS_DATASETS_FILE")
    assert dataset_root("imagenet") == data_root / "imagenet"
    monkeypatch.delenv("HARNESS_DATA_ROOT")
    with pytest.raises(DatasetError, match="no location is configured") as info:
        dataset_root("imagenet")
    assert "HARNESS_DATA_ROOT" in str(info.value)


def test_fashion_mnist_default_root(tmp_path, monkeypatch):
    assert dataset_root("fashion_mnist") == DEBIAN_FASHION_MNIST
    monkeypatch.setenv("HARNESS_DATA_ROOT", str(tmp_path))
    assert dataset_root("fashion_mnist") == DEBIAN_FASHION_MNIST  # the data root holds no copy
    (tmp_path / "fashion-mnist").mkdir()
    assert dataset_root("fashion_mnist") == tmp_path / "fashion-mnist"


@pytest.mark.parametrize("text", ["- imagenet\n- /data\n", "imagenet: [unclosed\n", "imagenet: 3\n"])
def test_malformed_datasets_file(tmp_path, text):
    datasets_file = tmp_path / "datasets.yaml"
    datasets_file.write_text(text)
    with pytest.raises(DatasetError, match="mapping") as info:
        dataset_root("imagenet", roots_file=datasets_file)
    assert str(datasets_file) in str(info.value)


# ---------------------------------------------------------------------------------------------------------------------
# Subsets and iteration parity


class _Labelled(torch.utils.data.Dataset):
    def __init__(self, targets):
        self.targets = targets

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        raise AssertionError("subsets must not load images")


@pytest.fixture
def imbalanced() -> _Labelled:
    targets = [0] * 100 + [1] * 50 + [2] * 7
    return _Labelled(torch.tensor(np.random.default_rng(0).permutation(targets)))


def test_class_balanced_counts(imbalanced):
    subset = class_balanced_subset(imbalanced, fraction=0.1)
    assert np.bincount(targets_of(subset)).tolist() == [10, 5, 1]  # round(0.7) = 1, at least 1 anyway
    assert subset.indices == sorted(subset.indices)
    assert np.bincount(targets_of(class_balanced_subset(imbalanced, per_class=5))).tolist() == [5, 5, 5]
    with pytest.raises(ValueError, match="class 2 has 7 images"):
        class_balanced_subset(imbalanced, per_class=8)
    with pytest.raises(ValueError, match="exactly one"):
        class_balanced_subset(imbalanced, fraction=0.1, per_class=5)


def test_class_balanced_seeds(imbalanced):
    a = class_balanced_subset(imbalanced, fraction=0.2, seed=0).indices
    assert class_balanced_subset(imbalanced, fraction=0.2, seed=0).indices == a
    assert class_balanced_subset(imbalanced, fraction=0.2, seed=1).indices != a
    nested = class_balanced_subset(Subset(imbalanced, list(range(0, 157, 2))), per_class=2)
    assert np.bincount(targets_of(nested)).tolist() == [2, 2, 2]


def test_split_file_names_and_indices(imagenet_root, tmp_path):
    train = build_dataset("imagenet", root=imagenet_root)
    names = tmp_path / "1percent.txt"
    names.write_text("n01440764_2.JPEG\nn01443537/n01443537_0.JPEG\n\n")
    subset = class_balanced_subset(train, split_file=names)
    assert [Path(train.paths[i]).name for i in subset.indices] == ["n01440764_2.JPEG", "n01443537_0.JPEG"]
    assert targets_of(subset).tolist() == [0, 1]

    names.write_text("n01440764_2.JPEG\nn01440764_99.JPEG\n")
    with pytest.raises(DatasetError, match=r"1percent.txt line 2: 'n01440764_99.JPEG' is not in the dataset"):
        class_balanced_subset(train, split_file=names)

    indices = tmp_path / "indices.txt"
    indices.write_text("5\n0\n")
    assert class_balanced_subset(train, split_file=indices).indices == [0, 5]
    indices.write_text("6\n")
    with pytest.raises(DatasetError, match="out of range"):
        class_balanced_subset(train, split_file=indices)


@pytest.mark.parametrize(
    ("num_images", "epochs"), [(12_811, 30_000), (128_116, 3_000), (1_281_167, 300), (118_287, 3_000)]
)
def test_iteration_parity_epochs(num_images, epochs):
    assert iteration_parity_epochs(num_images) == epochs


def test_iteration_parity_exact():
    assert iteration_parity_epochs(118_287, significant=None) == 3249
    assert iteration_parity_epochs(8_144, significant=2) == 47_000
    assert iteration_parity_epochs(10**9) == 1
