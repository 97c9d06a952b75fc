"""Data: the dataset registry (official layouts, nothing downloaded), subsets and transforms.

from harness.data import build_dataset, class_balanced_subset, pretrain_transform
train = build_dataset("imagenet", "train")                       # root from the datasets file / HARNESS_DATA_ROOT
in1 = class_balanced_subset(train, split_file="1percent.txt")    # PAWS/SimCLR subset file
view = pretrain_transform(224, DATASETS["imagenet"].mean, DATASETS["imagenet"].std)
"""

from harness.catalog import (
    DATA_ROOT_ENV,
    DATASETS,
    DATASETS_FILE_ENV,
    DatasetError,
    DatasetInfo,
    iteration_parity_epochs,
)
from harness.data.datasets import ImageList, build_dataset, dataset_root
from harness.data.fashion_mnist import FashionMNIST, read_idx
from harness.data.subsets import class_balanced_subset, sample_paths, targets_of
from harness.data.transforms import (
    MaskedView,
    MultiCropTransform,
    eval_transform,
    finetune_transform,
    pretrain_transform,
)

__all__ = [
    "DATASETS",
    "DATASETS_FILE_ENV",
    "DATA_ROOT_ENV",
    "DatasetError",
    "DatasetInfo",
    "FashionMNIST",
    "ImageList",
    "MaskedView",
    "MultiCropTransform",
    "build_dataset",
    "class_balanced_subset",
    "dataset_root",
    "eval_transform",
    "finetune_transform",
    "iteration_parity_epochs",
    "pretrain_transform",
    "read_idx",
    "sample_paths",
    "targets_of",
]
