"""Dataset registry: every dataset of the paper, read from its official on-disk layout, never downloaded.

    from harness.data import DATASETS, build_dataset
    train = build_dataset("food101", "train")          # items: (PIL.Image "RGB", int label)
    DATASETS["food101"].num_classes                     # 101

Where a dataset lives is resolved by `dataset_root` (explicit `root=` > datasets file > `$HARNESS_DATA_ROOT/<dirname>`
> for Fashion-MNIST only, Debian's `/usr/share/datasets/fashion-mnist`). Every dataset lists its images and labels
up front and decodes an image only when it is indexed (Fashion-MNIST excepted: its 47 MB of pixels are parsed once),
and exposes `targets` so that subsets can be drawn without touching an image.

A dataset that is missing or malformed raises one `DatasetError` saying which dataset, where it looked, what layout it
expected and how to point the harness elsewhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.data import Dataset

from harness.catalog import DATA_ROOT_ENV, DATASETS, DATASETS_FILE_ENV, DatasetError, DatasetInfo, dataset_error
from harness.data.fashion_mnist import FashionMNIST

__all__ = ["DEBIAN_FASHION_MNIST", "ImageList", "build_dataset", "dataset_root"]

# Where Debian's `dataset-fashion-mnist` package installs the files (its documented location).
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------------------------------------------------------------
# Root resolution


def _check_name(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def _read_datasets_file(path: Path) -> dict[str, Path]:
    """The `name: path` mapping of a datasets file; relative paths are relative to the file's folder."""
    expected = "a YAML mapping from dataset name to folder, e.g. `imagenet: /datasets/imagenet`"
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise DatasetError(f"datasets file {path} cannot be read ({e}); expected {expected}") from e
    except yaml.YAMLError as e:
        raise DatasetError(f"datasets file {path} is not valid YAML ({e}); expected {expected}") from e
    if data is None:  # an empty file maps nothing
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise DatasetError(f"datasets file {path} holds {type(data).__name__} {data!r:.200}; expected {expected}")
    # Names that are not datasets of the registry are ignored, so one file can serve other tools as well.
    return {k: path.parent / Path(os.path.expandvars(v)).expanduser() for k, v in data.items()}


def _resolve_root(name: str, root: str | Path | None, roots_file: str | Path | None) -> tuple[Path | None, str]:
    """(path or None, where it came from) following the order documented in `dataset_root`."""
    info = DATASETS[name]
    if root is not None:
        return Path(root).expanduser(), "root argument"
    file = roots_file if roots_file is not None else os.environ.get(DATASETS_FILE_ENV) or None
    if file is not None:
        roots = _read_datasets_file(Path(file).expanduser())
        if name in roots:
            return roots[name], f"datasets file {file}"
    data_root = os.environ.get(DATA_ROOT_ENV)
    if data_root:
        path = Path(data_root).expanduser() / info.dirname
        # Fashion-MNIST has a system default: a data root for the paper's datasets need not hold a copy of it.
        if name != "fashion_mnist" or path.exists():
            return path, f"${DATA_ROOT_ENV}"
    if name == "fashion_mnist":
        return DEBIAN_FASHION_MNIST, "the Debian package's default location"
    return None, "nowhere"


def dataset_root(name: str, root: str | Path | None = None, roots_file: str | Path | None = None) -> Path:
    """The folder a dataset is read from.

    Order: an explicit `root`; else the entry for `name` in a datasets file (`roots_file`, else the file named by
    `$HARNESS_DATASETS_FILE`), a YAML mapping `name: path`; else `$HARNESS_DATA_ROOT/<dirname>`; for `fashion_mnist`
    only, finally `/usr/share/datasets/fashion-mnist` (also used when `$HARNESS_DATA_ROOT` has no `fashion-mnist`).
    The folder is not checked here; `build_dataset` checks it.
    """
    _check_name(name)
    path, _ = _resolve_root(name, root, roots_file)
    if path is None:
        raise dataset_error(name, None, "no location is configured for it")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# The dataset class shared by every image-file dataset


class ImageList(Dataset):
    """Images on disk, listed up front and decoded when indexed: item i is `(PIL image in mode, targets[i])`.

    The list is held in two numpy/torch buffers (paths as bytes, targets as int64), not in Python lists: forked
    data-loader workers then share them, where a list of a million str objects would be copied into every worker
    page by page as reference counts are touched.

    Args:
        name: the dataset's registry name (for error messages).
        paths: one image file per sample.
        targets: one int label per sample (all 0 for an unlabelled set).
        classes: class names, index = label (empty for an unlabelled set).
        mode: PIL mode every image is converted to ("RGB" or "L").
        transform: optional callable applied to the PIL image.
    """

    def __init__(
        self,
        name: str,
        paths: Sequence[str],
        targets: Sequence[int],
        classes: Sequence[str] = (),
        mode: str = "RGB",
        transform: Callable | None = None,
    ) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.name, self.classes, self.mode, self.transform = name, list(classes), mode, transform
        self._paths = np.array([os.fsencode(p) for p in paths], dtype=bytes) if len(paths) else np.array([], "S1")
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.int64).reshape(-1))  # long [N]

    @property
    def paths(self) -> list[str]:
        """The image file of each sample."""
        return [os.fsdecode(p) for p in self._paths]

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path = os.fsdecode(self._paths[index])
        try:
            with open(path, "rb") as f:  # opened by hand so that the file is closed after decoding
                img = Image.open(f).convert(self.mode)
        except OSError as e:  # includes PIL's UnidentifiedImageError and truncated files
            raise DatasetError(f"dataset {self.name!r}: cannot read image {path}: {e}") from e
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])

    def __repr__(self) -> str:
        return f"ImageList({self.name!r}, {len(self)} images, {len(self.classes)} classes)"


# ---------------------------------------------------------------------------------------------------------------------
# Loaders, one per on-disk format. Each gets (info, root, split, **kwargs) with split "train" or "val".


def _official_folder(root: Path, folder: str) -> Path:
    """The folder that holds `folder`: torchvision's Food101/StanfordCars want the parent of `food-101/` etc."""
    if not (root / folder).is_dir() and root.name == folder:
        return root.parent
    return root


def _first_exists(name: str, root: Path, paths: list[str], what: str) -> None:
    """Catch a wrong root early by checking one listed file (checking all of them would stat a million files)."""
    if not paths:
        raise dataset_error(name, root, f"no images found in {what}")
    if not Path(paths[0]).is_file():
        raise dataset_error(name, root, f"{what} lists {paths[0]}, which does not exist")


def _load_json(name: str, root: Path, path: Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise dataset_error(name, root, f"missing file {path}") from e
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise dataset_error(name, root, f"cannot parse {path}: {e}") from e


def _list_images(folder: Path, suffixes: tuple[str, ...] = (".jpg", ".jpeg", ".png")) -> list[str]:
    return sorted(e.path for e in os.scandir(folder) if e.name.lower().endswith(suffixes))


def _fashion_mnist(info: DatasetInfo, root: Path, split: str, transform: Callable | None = None) -> Dataset:

    return FashionMNIST(root, split, transform=transform)


def _imagenet(info: DatasetInfo, root: Path, split: str, transform: Callable | None = None) -> Dataset:
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(root / split))  # scans the folders; decodes nothing
    paths, targets = zip(*folder.samples) if folder.samples else ((), ())
    return ImageList(info.name, paths, targets, folder.classes, transform=transform)


def _inaturalist(info: DatasetInfo, root: Path, split: str, transform: Callable | None = None) -> Dataset:
    # torchvision's INaturalist reads the image folders only (no official train/val split), so the official JSON is
    # read here: images[{id, file_name}], annotations[{image_id, category_id}], categories[{id, name}].
    year = info.name.removeprefix("inat")
    ann_file = root / f"{split}{year}.json"
    data = _load_json(info.name, root, ann_file)
    try:
        label = {a["image_id"]: int(a["category_id"]) for a in data["annotations"]}
        images = [(str(root / img["file_name"]), label[img["id"]]) for img in data["images"]]
        categories = sorted(data.get("categories", []), key=lambda c: c["id"])
    except (KeyError, TypeError, ValueError) as e:
        raise dataset_error(
            info.name, root, f"{ann_file} lacks the expected images/annotations entries ({type(e).__name__}: {e})"
        ) from e
    paths, targets = zip(*images) if images else ((), ())
    _first_exists(info.name, root, list(paths), str(ann_file))
    # Labels are the official category ids (0..N-1 in both releases), so they match the leaderboards' class ids.
    classes = [str(c.get("name", c["id"])) for c in categories]
    return ImageList(info.name, paths, targets, classes, transform=transform)


def _food101(info: DatasetInfo, root: Path, split: str, transform: Callable | None = None) -> Dataset:
    from torchvision.datasets import Food101

    folder = Food101(_official_folder(root, "food-101"), split="train" if split == "train" else "test", download=False)
    # `_image_files`/`_labels` are torchvision's parsed lists (private, but stable since 0.12; covered by the tests).
    paths = [str(p) for p in folder._image_files]
    return ImageList(info.name, paths, folder._labels, folder.classes, transform=transform)


def _stanford_cars(info: DatasetInfo, root: Path, split: str, transform: Callable | None = None) -> Dataset:
    try:
        import scipy.io  # noqa: F401  (torchvision reads the devkit's .mat files with it)
    except ImportError as e:
        raise ImportError("stanford_cars needs scipy to read the devkit's .mat files: pip install scipy") from e
    from torchvision.datasets import StanfordCars

    folder = StanfordCars(
        _official_folder(root, "stanford_cars"), split="train" if split == "train" else "test", download=False
    )
    paths, targets = zip(*folder._samples) if folder._samples else ((), ())  # private, as for Food101
    return ImageList(info.name, paths, targets, folder.classes, transform=transform)


def _coco(
    info: DatasetInfo,
    root: Path,
    split: str,
    annotation_file: str | Path | None = None,
    transform: Callable | None = None,
) -> Dataset:
    folder = root / ("train2017" if split == "train" else "val2017")
    if annotation_file is None:
        if not folder.is_dir():
            raise dataset_error(info.name, root, f"missing folder {folder}")
        paths = _list_images(folder)
        _first_exists(info.name, root, paths, str(folder))
    else:
        # The `images` list of an instances/captions file, in id order as torchvision's CocoDetection lists it
        # (read directly, so pycocotools is not needed for an unlabelled image list).
        ann_file = root / Path(annotation_file).expanduser()
        data = _load_json(info.name, root, ann_file)
        try:
            paths = [str(folder / img["file_name"]) for img in sorted(data["images"], key=lambda img: img["id"])]
        except (KeyError, TypeError) as e:
            raise dataset_error(info.name, root, f"{ann_file} lacks images[].{{id,file_name}} ({e})") from e
        _first_exists(info.name, root, paths, str(ann_file))
    return ImageList(info.name, paths, [0] * len(paths), transform=transform)


def _domainnet_split(info: DatasetInfo, root: Path, split: str, transform: Callable | None = None) -> Dataset:
    split_file = root / f"{info.name}_{'train' if split == 'train' else 'test'}.txt"
    try:
        lines = split_file.read_text().splitlines()
    except FileNotFoundError as e:
        raise dataset_error(info.name, root, f"missing split file {split_file}") from e
    paths, targets, classes = [], [], {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise dataset_error(info.name, root, f"{split_file} line {number}: expected `<path> <label>`: {line!r}")
        rel, label = parts[0], int(parts[1])
        paths.append(str(root / rel))
        targets.append(label)
        classes.setdefault(label, Path(rel).parent.name)
    _first_exists(info.name, root, paths, str(split_file))
    names = [classes.get(i, "") for i in range(max(classes) + 1)]
    return ImageList(info.name, paths, targets, names, transform=transform)


def _ade20k(info: DatasetInfo, root: Path, split: str, transform: Callable | None = None) -> Dataset:
    if not (root / "images").is_dir() and (root / info.dirname / "images").is_dir():
        root = root / info.dirname
    folder = root / "images" / ("training" if split == "train" else "validation")
    if not folder.is_dir():
        raise dataset_error(info.name, root, f"missing folder {folder}")
    paths = _list_images(folder)
    _first_exists(info.name, root, paths, str(folder))
    return ImageList(info.name, paths, [0] * len(paths), transform=transform)


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "fashion_mnist": _fashion_mnist,
    "imagenet": _imagenet,
    "inat2018": _inaturalist,
    "inat2019": _inaturalist,
    "food101": _food101,
    "stanford_cars": _stanford_cars,
    "coco": _coco,
    "clipart": _domainnet_split,
    "painting": _domainnet_split,
    "sketch": _domainnet_split,
    "ade20k": _ade20k,
}


def build_dataset(
    name: str,
    split: str = "train",
    root: str | Path | None = None,
    roots_file: str | Path | None = None,
    **kwargs,
) -> Dataset:
    """A dataset of the registry: items are `(PIL.Image, int label)`, "L" for Fashion-MNIST and "RGB" otherwise.

    Args:
        name: a key of `DATASETS`.
        split: "train", or "val" for the dataset's validation/test split.
        root, roots_file: where to look; see `dataset_root`.
        **kwargs: loader options: `transform` (any dataset), `annotation_file` (coco).

    Raises:
        ValueError: unknown name or split.
        DatasetError: the dataset is missing or malformed at the resolved root.
    """
    info = _check_name(name)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    path, source = _resolve_root(name, root, roots_file)
    if path is None:
        raise dataset_error(name, None, "no location is configured for it")
    if not path.is_dir():
        raise dataset_error(name, path, f"no such folder (taken from {source})")
    try:
        return _LOADERS[name](info, path, split, **kwargs)
    except DatasetError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError, IndexError) as e:  # torchvision's own errors
        raise dataset_error(name, path, f"{type(e).__name__}: {e}") from e
