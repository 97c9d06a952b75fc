"""Everything a job builds from its config: the model, the datasets with their transforms, the optimiser.

Kept apart from the loop, which knows no method: here is where "SplitMask pre-training on Stanford Cars" turns into
a SplitMask with 75% uniform masks fed by a strong-augmentation pipeline that draws those masks in its workers.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset, Subset

import model as models
from harness.config import ConfigError
from harness.data import (
    DATASETS,
    MaskedView,
    MultiCropTransform,
    build_dataset,
    class_balanced_subset,
    eval_transform,
    finetune_transform,
    pretrain_transform,
)
from harness.io import atomic_write
from harness.train.loader import SeededTransformDataset
from model.tokenizers import RandomPatchesTokenizer

# The DALL-E dVAE encoder weights (scripts/convert_dalle.py) for `method.args.tokenizer=dalle`: where they live is
# the cluster's business, like a dataset root, so it is read here and stays out of a job's identity.
DALLE_WEIGHTS_ENV = "HARNESS_DALLE_WEIGHTS"

__all__ = [
    "DALLE_WEIGHTS_ENV",
    "ENCODER_FILE",
    "build_datasets",
    "build_model",
    "build_optimizer",
    "fit_tokenizer",
    "load_encoder",
    "save_encoder",
]

ENCODER_FILE = "encoder.pt"


def _container(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def _encoder_args(cfg: DictConfig) -> dict:
    """ViT arguments from the config: the size preset, the dataset's resolution and channels, `model.args`."""
    info = DATASETS[cfg.data.name]
    args = {k: v for k, v in _container(cfg.model.args).items() if v is not None}
    return dict(img_size=cfg.data.img_size, in_chans=info.in_chans) | args


def _registry_name(method: str, size: str) -> str:
    return f"{method}_vit_{size}_p{models.SIZES[size]['patch_size']}"


# ---------------------------------------------------------------------------------------------------------------
# encoders: what pre-training hands to fine-tuning
def save_encoder(encoder: models.ViT, path: str | Path) -> None:
    """The encoder's constructor arguments and weights (no mask token), enough to rebuild it alone."""
    state = {k: v for k, v in encoder.state_dict().items() if k != "mask_token"}
    args = encoder.init_args | {"use_mask_token": False, "dynamic_img_size": False}
    atomic_write(path, lambda f: torch.save({"args": args, "state_dict": state}, f))


def load_encoder(path: str | Path, **overrides) -> models.ViT:
    """Rebuild a saved encoder; `overrides` change non-weight arguments (drop_path_rate, img_size, ...)."""
    path = Path(path)
    if path.is_dir():
        path = path / ENCODER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no pre-trained encoder at {path}: expected the {ENCODER_FILE} of a pre-training run")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    encoder = models.ViT(**(saved["args"] | overrides))
    encoder.load_timm_state_dict(saved["state_dict"])  # resamples the position embedding for another resolution
    return encoder


# ---------------------------------------------------------------------------------------------------------------
def build_model(cfg: DictConfig) -> nn.Module:
    """The method (pre-training) or the classifier / linear probe (fine-tuning, probing) the config describes."""
    info = DATASETS[cfg.data.name]
    method = cfg.method.name
    method_args = _container(cfg.method.args)
    if cfg.task == "pretrain":
        method_args |= _container(cfg.data.method_args).get(method, {})
        if method in ("splitmask", "beit") and method_args.get("tokenizer") == "dalle":
            kwargs = method_args.setdefault("tokenizer_kwargs", {})
            kwargs.update(mean=tuple(info.mean), std=tuple(info.std))
            if not kwargs.get("allow_random_init") and "weights" not in kwargs:
                if not os.environ.get(DALLE_WEIGHTS_ENV):
                    raise ConfigError(
                        f"method.args.tokenizer=dalle needs the DALL-E dVAE encoder weights: set ${DALLE_WEIGHTS_ENV} "
                        "to the file `scripts/convert_dalle.py` makes from the official encoder.pkl (nothing is "
                        "downloaded)"
                    )
                kwargs["weights"] = os.environ[DALLE_WEIGHTS_ENV]
        if method == "supervised":
            method_args.setdefault("num_classes", info.num_classes)
        return models.create(_registry_name(method, cfg.model.size), **_encoder_args(cfg), **method_args)

    if info.num_classes == 0:
        raise ConfigError(f"data={cfg.data.name} has no labels: it can be used for pre-training only")
    encoder_args = _encoder_args(cfg)
    if cfg.pretrained:
        keep = {k: encoder_args[k] for k in ("img_size", "drop_path_rate") if k in encoder_args}
        encoder = load_encoder(cfg.pretrained, **keep)
    else:  # random initialisation: the plain ViT of this size
        encoder = models.vit(cfg.model.size, **encoder_args)
    if method == "classifier":
        return models.Classifier(encoder, info.num_classes, label_smoothing=cfg.aug.label_smoothing, **method_args)
    return models.LinearProbe(encoder, info.num_classes, layer=cfg.linear.layer, **method_args)


# ---------------------------------------------------------------------------------------------------------------
def _subset(dataset: Dataset, cfg: DictConfig) -> Dataset:
    s = cfg.data.subset
    if s.fraction is None and s.per_class is None and s.split_file is None:
        return dataset
    return class_balanced_subset(
        dataset, fraction=s.fraction, per_class=s.per_class, seed=s.seed, split_file=s.split_file
    )


def build_datasets(cfg: DictConfig, net: nn.Module) -> tuple[SeededTransformDataset, Dataset | None]:
    """Training set (with its transform, seeded per sample) and, for finetune / linear, the evaluation set."""
    info = DATASETS[cfg.data.name]
    mean, std, size = tuple(info.mean), tuple(info.std), cfg.data.img_size
    train = _subset(build_dataset(cfg.data.name, cfg.data.train_split, root=cfg.data.root), cfg)
    if isinstance(net, models.DINO):
        transform, output = MultiCropTransform.from_model(net, mean, std), "crops"
    elif hasattr(net, "mask_generator"):  # SplitMask, BEiT: masks are drawn in the workers, with the crop
        base = pretrain_transform(size, mean, std, scale=tuple(cfg.aug.scale), strong=cfg.data.strong_aug)
        transform, output = MaskedView(base, net.mask_generator), "views"
    elif isinstance(net, models.LinearProbe):
        transform, output = pretrain_transform(size, mean, std), "image_label"
    else:  # supervised pre-training and fine-tuning: timm's training transform
        a = cfg.aug
        transform = finetune_transform(
            size,
            mean,
            std,
            auto_augment=a.auto_augment,
            color_jitter=a.color_jitter,
            reprob=a.reprob,
            scale=tuple(a.scale),
        )
        output = "image_label"
    train_set = SeededTransformDataset(train, transform, seed=cfg.seed, output=output)
    if cfg.task == "pretrain":
        return train_set, None
    evaluation = build_dataset(cfg.data.name, cfg.data.eval_split, root=cfg.data.root)
    if cfg.eval.per_class:
        evaluation = class_balanced_subset(evaluation, per_class=cfg.eval.per_class, seed=0)
    return train_set, _Transformed(evaluation, eval_transform(size, mean, std, crop_pct=cfg.aug.crop_pct))


class _Transformed(Dataset):
    """Deterministic evaluation transform over (image, label) items."""

    def __init__(self, dataset: Dataset, transform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return self.transform(image), label


def fit_tokenizer(net: nn.Module, train: SeededTransformDataset, cfg: DictConfig) -> None:
    """Data-dependent codebooks (random patches, k-means) are built from un-augmented pre-training images."""
    tokenizer = getattr(net, "tokenizer", None)
    if tokenizer is None or not tokenizer.needs_fit:
        return
    info, fit = DATASETS[cfg.data.name], cfg.method.tokenizer_fit
    base = train.dataset
    per_image = (cfg.data.img_size // tokenizer.patch_size) ** 2
    random_patches = isinstance(tokenizer, RandomPatchesTokenizer)
    wanted = tokenizer.vocab_size if random_patches else fit.num_patches
    # random patches: one image per codebook entry ("patches from different images"); k-means: enough images
    count = min(len(base), tokenizer.vocab_size if random_patches else math.ceil(wanted / per_image))
    g = torch.Generator().manual_seed(cfg.seed)
    pick = torch.randperm(len(base), generator=g)[:count].tolist()
    images = _Transformed(
        Subset(base, pick), eval_transform(cfg.data.img_size, tuple(info.mean), tuple(info.std), crop_pct=1.0)
    )
    loader = torch.utils.data.DataLoader(images, batch_size=256, num_workers=cfg.loader.workers)
    if random_patches:
        tokenizer.fit(loader, generator=g)
    else:
        tokenizer.fit(loader, num_patches=fit.num_patches, generator=g, iters=fit.iters, batch_size=fit.batch_size)


# ---------------------------------------------------------------------------------------------------------------
def build_optimizer(net: nn.Module, cfg: DictConfig, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; no weight decay on norms, biases, embeddings; optional layer decay."""
    groups = models.param_groups(net, cfg.optim.weight_decay, cfg.optim.layer_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.optim.betas), fused=device.type == "cuda")
