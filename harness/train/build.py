"""Everything a job builds from its config: the model, the datasets with their transforms, the optimiser.

Kept apart from the loop, which knows no method: here is where "SplitMask pre-training on Stanford Cars" turns into
a SplitMask with 75% uniform masks fed by a strong-augmentation pipeline that draws those masks in its workers. The
config holds every argument (`model.args`, `method.args`, `aug`, `data`); what a method needs from its data it
declares (`Method.views`, `Method.labelled`), and an option its pipeline would not read is an error, not ignored.
"""

from __future__ import annotations

import json
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
    MaskedView,
    MultiCropTransform,
    build_dataset,
    class_balanced_subset,
    eval_transform,
    finetune_transform,
    pretrain_transform,
)
from harness.data.standins import stand_in
from harness.io import atomic_write
from harness.train import RESULT_FILE, TrainingError
from harness.train.checkpoint import read_checked
from harness.train.loader import SeededTransformDataset
from model.tokenizers import RandomPatchesTokenizer

# The DALL-E dVAE encoder weights (scripts/convert_dalle.py) for `tokenizer=dalle`: where they live is the cluster's
# business, like a dataset root, so it is read here and stays out of a job's identity.
DALLE_WEIGHTS_ENV = "HARNESS_DALLE_WEIGHTS"

__all__ = [
    "DALLE_WEIGHTS_ENV",
    "ENCODER_FILE",
    "ENCODER_FILES",
    "amp_dtype",
    "build_datasets",
    "build_model",
    "build_optimizer",
    "check_options",
    "fit_tokenizer",
    "frozen_datasets",
    "load_encoder_state",
    "save_encoder",
]

# What a pre-training hands on. `encoder.pt` and `encoder.safetensors` hold the encoder as a plain timm ViT (LayerScale
# folded into the layers it scales, which is exact): `timm.create_model("vit_small_patch16_224", num_classes=0)`
# loads either strictly. `encoder.harness.pt` holds what the harness's downstream jobs start from: the ViT's
# arguments and its own weights (LayerScale kept, as BEiT fine-tunes it).
ENCODER_FILE = "encoder.pt"
ENCODER_FILES = ("encoder.pt", "encoder.safetensors", "encoder.harness.pt")
_HARNESS_ENCODER = "encoder.harness.pt"
# The ViT arguments that shape its weights: a pre-trained encoder and the job that loads it must agree on them.
ARCHITECTURE_KEYS = ("patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio")


def _container(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


# ---------------------------------------------------------------------------------------------------------------
# encoders: what pre-training hands to fine-tuning
def save_encoder(encoder: models.ViT, run_dir: str | Path) -> None:
    """The encoder for timm (`encoder.pt`, `encoder.safetensors`) and for the harness (`encoder.harness.pt`)."""
    from safetensors.torch import save as save_safetensors

    run_dir = Path(run_dir)
    args = encoder.init_args | {"use_mask_token": False, "dynamic_img_size": False}
    native = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items() if k != "mask_token"}
    timm_sd = {k: v.cpu().contiguous() for k, v in encoder.timm_state_dict().items()}
    metadata = {"vit_args": json.dumps(args, sort_keys=True), "format": "timm VisionTransformer, num_classes=0"}
    atomic_write(run_dir / _HARNESS_ENCODER, lambda f: torch.save({"args": args, "state_dict": native}, f))
    atomic_write(run_dir / "encoder.safetensors", lambda f: f.write(save_safetensors(timm_sd, metadata)))
    atomic_write(run_dir / ENCODER_FILE, lambda f: torch.save(timm_sd, f))  # last: downstream jobs wait for it


def load_encoder_state(pretrained: str | Path, encoder_args: dict) -> dict:
    """The weights of a pre-training run's encoder for a ViT built with `encoder_args`: with LayerScale if those
    arguments have it, folded otherwise. The architectures must agree (ConfigError naming the key otherwise)."""
    folder = Path(pretrained)
    path = folder / _HARNESS_ENCODER if folder.is_dir() else folder
    if not path.is_file():
        raise FileNotFoundError(
            f"no pre-trained encoder at {path}: expected the {_HARNESS_ENCODER} a pre-training run writes"
        )
    try:
        saved = read_checked(path)
    except Exception as err:  # truncated, garbled: the pre-training must write it again
        raise TrainingError(
            f"the pre-trained encoder {path} is unreadable ({type(err).__name__}: {err}); delete "
            f"{path.parent / RESULT_FILE} so that `harness run` redoes that pre-training (it resumes from its last "
            "checkpoint and writes the encoder again)"
        ) from None
    differ = [
        f"{k}={saved['args'][k]} (this job: {encoder_args[k]})"
        for k in ARCHITECTURE_KEYS
        if saved["args"][k] != encoder_args[k]
    ]
    if differ:
        raise ConfigError(f"{path}: the pre-trained encoder has {', '.join(differ)}; set model.args to match")
    encoder = models.ViT(**saved["args"])
    encoder.load_state_dict(saved["state_dict"], strict=False)  # the mask token is not saved
    if encoder_args["layer_scale_init"] is None:
        return encoder.timm_state_dict()
    return saved["state_dict"]


# ---------------------------------------------------------------------------------------------------------------
def _dalle_weights(method_args: dict) -> None:
    """`tokenizer=dalle` reads its weights from $HARNESS_DALLE_WEIGHTS (a location, not part of the identity)."""
    tokenizer = method_args.get("tokenizer")
    if not isinstance(tokenizer, dict) or tokenizer.get("name") != "dalle" or tokenizer.get("allow_random_init"):
        return
    if not os.environ.get(DALLE_WEIGHTS_ENV):
        raise ConfigError(
            f"tokenizer=dalle needs the DALL-E dVAE encoder weights: set ${DALLE_WEIGHTS_ENV} to the file "
            "`scripts/convert_dalle.py` makes from the official encoder.pkl (nothing is downloaded)"
        )
    tokenizer["weights"] = os.environ[DALLE_WEIGHTS_ENV]


def build_model(cfg: DictConfig) -> nn.Module:
    """The model of a job, from its config alone: `model.build(method.name, model.args, method.args)`, starting from
    the pre-trained encoder of `pretrained` when the job has one."""
    method, encoder_args, method_args = cfg.method.name, _container(cfg.model.args), _container(cfg.method.args)
    if method not in models.METHODS:
        raise ConfigError(f"method.name={method}: not a registered method; valid: {', '.join(models.METHODS)}")
    cls = models.method_class(method)
    if cls.views in ("labelled", "probe") and cfg.data.num_classes == 0:
        raise ConfigError(f"data={cfg.data.name} has no labels: it can be used for pre-training only")
    _dalle_weights(method_args)
    state = None
    if cfg.pretrained:
        if not cls.takes_encoder:
            raise ConfigError(
                f"pretrained= starts a fine-tuning or a probe from an encoder; method={method} builds its own"
            )
        state = load_encoder_state(cfg.pretrained, encoder_args)
    return models.build(method, encoder_args, method_args, encoder_state=state)


# Options of `aug` that only a labelled pipeline (timm's training transform and Mixup) reads, with their "off" value.
_LABELLED_ONLY = {
    "auto_augment": None,
    "color_jitter": 0.0,
    "reprob": 0.0,
    "mixup": 0.0,
    "cutmix": 0.0,
    "label_smoothing": 0.0,
    "repeated_aug": False,
}


def check_options(cfg: DictConfig, net: nn.Module) -> None:
    """An option the job's pipeline would not read is an error: it would be silently ignored otherwise."""
    views = net.views
    ignored = [
        f"aug.{k}={cfg.aug[k]}" for k, off in _LABELLED_ONLY.items() if views != "labelled" and cfg.aug[k] != off
    ]
    if cfg.aug.strong.enabled and views != "masked":
        ignored.append("aug.strong.enabled=true")
    if ignored:
        raise ConfigError(
            f"method={cfg.method.name} ({views} views) does not use {', '.join(ignored)}: "
            "turn it off, or pick a method whose pipeline reads it"
        )


# ---------------------------------------------------------------------------------------------------------------
def _stand_in(dataset: Dataset, cfg: DictConfig, split: str) -> Dataset:
    return stand_in(dataset, **_container(cfg.data.stand_in), split=split)


def _subset(dataset: Dataset, cfg: DictConfig) -> Dataset:
    s = cfg.data.subset
    if s.fraction is None and s.per_class is None and s.split_file is None:
        return dataset
    return class_balanced_subset(
        dataset, fraction=s.fraction, per_class=s.per_class, seed=s.seed, split_file=s.split_file
    )


def build_datasets(cfg: DictConfig, net: nn.Module) -> tuple[SeededTransformDataset, Dataset | None]:
    """Training set (with the transform the method's views need, seeded per sample) and, for the labelled methods,
    the evaluation set."""
    check_options(cfg, net)
    d, a = cfg.data, cfg.aug
    mean, std, size = tuple(d.mean), tuple(d.std), d.img_size
    train = _train_images(cfg)
    crop = dict(scale=tuple(a.scale), ratio=tuple(a.ratio), hflip=a.hflip, interpolation=a.interpolation)
    if net.views == "masked":  # SplitMask, BEiT: masks are drawn in the workers, with the crop
        strong = _container(a.strong)
        base = pretrain_transform(size, mean, std, strong=strong.pop("enabled"), **crop, **_tuples(strong))
        transform, output = MaskedView(base, net.mask_generator), "views"
    elif net.views == "multi_crop":  # DINO
        transform = MultiCropTransform.from_model(
            net, mean, std, interpolation=a.interpolation, **_tuples(a.multi_crop)
        )
        output = "crops"
    elif net.views == "probe":  # a frozen encoder: crop and flip
        transform, output = pretrain_transform(size, mean, std, **crop), "image_label"
    else:  # labelled training: timm's training transform
        transform = finetune_transform(
            size, mean, std, auto_augment=a.auto_augment, color_jitter=a.color_jitter, reprob=a.reprob,
            remode=a.remode, recount=a.recount, **crop,
        )  # fmt: skip
        output = "image_label"
    train_set = SeededTransformDataset(train, transform, seed=cfg.seed, output=output)
    if not net.labelled:
        return train_set, None
    return train_set, _Transformed(_eval_images(cfg), _eval_transform(cfg))


def _tuples(node) -> dict:
    """A config node's values with lists as tuples (what the transforms take)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in _container(node).items()}


def frozen_datasets(cfg: DictConfig) -> tuple[Dataset, Dataset]:
    """The training and evaluation images through the evaluation transform (no augmentation), labelled: what the
    features of a frozen encoder are extracted from (converged probes, k-NN)."""
    transform = _eval_transform(cfg)
    return _Transformed(_train_images(cfg), transform), _Transformed(_eval_images(cfg), transform)


def _train_images(cfg: DictConfig) -> Dataset:
    """The training split as the job reads it: the stand-in (if any), then the subset (if any)."""
    d = cfg.data
    return _subset(_stand_in(build_dataset(d.name, d.train_split, root=d.root), cfg, "train"), cfg)


def _eval_images(cfg: DictConfig) -> Dataset:
    d = cfg.data
    evaluation = _stand_in(build_dataset(d.name, d.eval_split, root=d.root), cfg, "val")
    if cfg.eval.per_class:
        evaluation = class_balanced_subset(evaluation, per_class=cfg.eval.per_class, seed=0)
    return evaluation


def _eval_transform(cfg: DictConfig):
    d, a = cfg.data, cfg.aug
    return eval_transform(d.img_size, tuple(d.mean), tuple(d.std), crop_pct=a.crop_pct, interpolation=a.interpolation)


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
    fit = cfg.method.args.tokenizer.get("fit") or {}
    base = train.dataset
    per_image = (cfg.data.img_size // tokenizer.patch_size) ** 2
    random_patches = isinstance(tokenizer, RandomPatchesTokenizer)
    wanted = tokenizer.vocab_size if random_patches else fit["num_patches"]
    # random patches: one image per codebook entry ("patches from different images"); k-means: enough images
    count = min(len(base), tokenizer.vocab_size if random_patches else math.ceil(wanted / per_image))
    g = torch.Generator().manual_seed(cfg.seed)
    pick = torch.randperm(len(base), generator=g)[:count].tolist()
    d = cfg.data
    images = _Transformed(Subset(base, pick), eval_transform(d.img_size, tuple(d.mean), tuple(d.std), crop_pct=1.0))
    loader = torch.utils.data.DataLoader(images, batch_size=256, num_workers=cfg.loader.workers)
    if random_patches:
        tokenizer.fit(loader, generator=g)
    else:
        tokenizer.fit(loader, generator=g, **fit)


# ---------------------------------------------------------------------------------------------------------------
def amp_dtype(cfg: DictConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `run.amp`: auto is bf16 on CUDA and none (fp32) on the CPU."""
    amp = cfg.run.amp
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[amp]


def build_optimizer(net: nn.Module, cfg: DictConfig, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; no weight decay on norms, biases, embeddings; optional layer decay."""
    groups = models.param_groups(net, cfg.optim.weight_decay, cfg.optim.layer_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.optim.betas), fused=device.type == "cuda")
