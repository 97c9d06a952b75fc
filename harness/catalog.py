"""The dataset catalogue: what the harness knows about each dataset before reading it, without importing torch.

    from harness.catalog import DATASETS
    DATASETS["food101"].num_classes      # 101
    DATASETS["imagenet"].train_size      # 1,281,167: what iteration parity counts

The configs read it (`${parity:300}`, `${catalog:mean}`), so planning a sweep never imports torch; the readers in
`harness.data` read it too. `DatasetError` is the one error of a missing or malformed dataset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DATASETS",
    "DATASETS_FILE_ENV",
    "DATA_ROOT_ENV",
    "DatasetError",
    "DatasetInfo",
    "dataset_error",
    "iteration_parity_epochs",
]

DATA_ROOT_ENV = "HARNESS_DATA_ROOT"
DATASETS_FILE_ENV = "HARNESS_DATASETS_FILE"

# ImageNet statistics (timm's IMAGENET_DEFAULT_MEAN/STD), used for every RGB dataset as BEiT/DeiT/DINO do.
_RGB_MEAN, _RGB_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DatasetError(FileNotFoundError, ValueError):
    """A dataset is missing or malformed. Both a `FileNotFoundError` and a `ValueError`, so either `except` works."""


@dataclass(frozen=True)
class DatasetInfo:
    """What the harness knows about a dataset before reading it.

    `train_size` is the official number of training images (what iteration parity is computed from); `num_classes` is
    0 for an unlabelled pre-training set; `layout` describes the expected files under the dataset root; `dirname` is
    the folder looked for under `$HARNESS_DATA_ROOT`.
    """

    name: str
    num_classes: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int
    layout: str
    dirname: str

    @property
    def image_mode(self) -> str:
        """PIL mode of the images a dataset yields: "L" (grey) or "RGB"."""
        return "L" if self.in_chans == 1 else "RGB"


def _domainnet(domain: str, train_size: int) -> DatasetInfo:
    return DatasetInfo(
        domain,
        345,
        3,
        _RGB_MEAN,
        _RGB_STD,
        train_size,
        f"the official DomainNet release: {domain}/<class>/*.jpg beside {domain}_train.txt and {domain}_test.txt, "
        f"whose lines read `{domain}/<class>/<file>.jpg <label>`",
        "domainnet",
    )


def _inat(year: int, num_classes: int, train_size: int) -> DatasetInfo:
    return DatasetInfo(
        f"inat{year}",
        num_classes,
        3,
        _RGB_MEAN,
        _RGB_STD,
        train_size,
        f"the official iNaturalist {year} release: train{year}.json and val{year}.json (COCO-style annotations whose "
        f"file_name entries are relative to the root) beside train_val{year}/<supercategory>/<category id>/*.jpg",
        f"inat{year}",
    )


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "fashion_mnist",
            10,
            1,
            (0.2860,),
            (0.3530,),
            60_000,
            "{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz (gzip IDX files, as installed by Debian's "
            "dataset-fashion-mnist package)",
            "fashion-mnist",
        ),
        DatasetInfo(
            "imagenet",
            1000,
            3,
            _RGB_MEAN,
            _RGB_STD,
            1_281_167,
            "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (torchvision ImageFolder: one sub-folder per class; the "
            "validation images must be sorted into class folders too)",
            "imagenet",
        ),
        _inat(2018, 8142, 437_513),
        _inat(2019, 1010, 265_213),
        DatasetInfo(
            "food101",
            101,
            3,
            _RGB_MEAN,
            _RGB_STD,
            75_750,
            "food-101/meta/{train,test}.json and food-101/images/<class>/*.jpg (the official archive, read by "
            "torchvision Food101; the root may be the food-101 folder itself or the folder holding it)",
            "food-101",
        ),
        DatasetInfo(
            "stanford_cars",
            196,
            3,
            _RGB_MEAN,
            _RGB_STD,
            8_144,
            "stanford_cars/devkit/{cars_train_annos.mat,cars_meta.mat}, stanford_cars/cars_train/*.jpg, "
            "stanford_cars/cars_test/*.jpg and stanford_cars/cars_test_annos_withlabels.mat (torchvision "
            "StanfordCars; the root may be the stanford_cars folder itself or the folder holding it)",
            "stanford_cars",
        ),
        DatasetInfo(
            "coco",
            0,
            3,
            _RGB_MEAN,
            _RGB_STD,
            118_287,
            "train2017/*.jpg and val2017/*.jpg (unlabelled; with annotation_file=, e.g. "
            "annotations/instances_train2017.json, the image list is read from that file's `images`)",
            "coco",
        ),
        # DomainNet train splits of the current ("cleaned") release; see the note at the end of the module.
        _domainnet("clipart", 33_525),
        _domainnet("painting", 50_416),
        _domainnet("sketch", 48_212),
        DatasetInfo(
            "ade20k",
            0,
            3,
            _RGB_MEAN,
            _RGB_STD,
            20_210,
            "images/training/*.jpg and images/validation/*.jpg of ADEChallengeData2016 (unlabelled; the root may be "
            "the ADEChallengeData2016 folder itself or the folder holding it)",
            "ADEChallengeData2016",
        ),
    )
}
# Note on DomainNet: the paper quotes Clipart 34k, Painting 52k and Sketch 49k training images (FACTS §2). The
# cleaned split files (the ones on the DomainNet site today) have 33,525 / 50,416 / 48,212; the original release had
# about 1.4% / 4.6% / 1.8% more images per domain, which fits the paper's 52k and 49k better. Either release loads.


def _how_to_point(info: DatasetInfo) -> str:
    return (
        f"Point the harness at it with root=..., with a datasets file (roots_file=... or ${DATASETS_FILE_ENV}; a YAML "
        f"mapping such as `{info.name}: /path/to/{info.dirname}`), or with ${DATA_ROOT_ENV} (it then looks in "
        f"${DATA_ROOT_ENV}/{info.dirname})."
    )


def dataset_error(name: str, path: Path | None, problem: str) -> DatasetError:
    """The one error of a missing or malformed dataset: the dataset, the path, the problem, the layout, the fix."""
    info = DATASETS[name]
    where = f"at {path}" if path is not None else "(no location configured)"
    return DatasetError(f"dataset {name!r} {where}: {problem}\nExpected layout: {info.layout}.\n{_how_to_point(info)}")


def iteration_parity_epochs(
    num_images: int,
    reference_epochs: int = 300,
    reference_images: int = 1_281_167,
    significant: int | None = 1,
) -> int:
    """Epochs over `num_images` that make as many iterations, at equal batch size, as `reference_epochs` over
    `reference_images` (ImageNet-1k), rounded to `significant` significant figures (None: to the nearest integer).

    The paper holds the number of pre-training iterations constant (FACTS §3.1): 300 epochs on ImageNet-full, 3k on
    IN-10%, 30k on IN-1% and 3k on COCO (118,287 images). Those are the exact ratios rounded to one significant
    figure: COCO's exact value is 3,249. Always at least 1.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    epochs = reference_epochs * reference_images / num_images
    if significant is not None:
        if significant < 1:
            raise ValueError(f"significant must be >= 1 or None, got {significant}")
        epochs = round(epochs, significant - 1 - math.floor(math.log10(epochs)))
    return max(1, round(epochs))
