"""The model registry: names like `splitmask_vit_small_p16`, their defaults, and the one function that builds a model.

    model.list_models("splitmask*")          # ['splitmask_vit_base_p16', 'splitmask_vit_micro_p4', ...]
    m = model.create("splitmask_vit_small_p16", temperature=0.1, drop_path_rate=0.2)
    m = model.build("splitmask", encoder_args, method_args)   # every argument given: what the harness calls

Every default lives in one place, the harness's config tree (`harness/conf`): a size preset in `model/<size>.yaml`,
the ViT arguments in `config.yaml`, a method's in `method/<name>.yaml` (and `method_model/<name>_<size>.yaml` for one
size). `create` composes that tree for the name, exactly as a training job of that method and size on the size's
home dataset would (`micro`: Fashion-MNIST; the others: ImageNet), so that `model.create(name)` and the harness build
the same model from the same values. `build` takes complete arguments and fills in nothing.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import inspect
from pathlib import Path

import yaml
from torch import nn

from model.beit import BEiT
from model.dense import Detector
from model.dino import DINO
from model.heads import Classifier, LinearProbe, PixelProbe
from model.splitmask import SplitMask
from model.vit import ViT

__all__ = [
    "CONF_DIR",
    "DENSE_TASKS",
    "METHODS",
    "MODELS",
    "SIZES",
    "build",
    "create",
    "defaults",
    "list_models",
    "method_class",
    "vit",
]

CONF_DIR = Path(__file__).resolve().parents[1] / "harness" / "conf"

# A registry method: its class, and the task of the training job whose config holds its defaults. The classifier
# and the linear probe wrap an encoder (pre-trained or fresh); the pre-training methods build theirs.
METHODS: dict[str, tuple[type[nn.Module], str]] = {
    "supervised": (Classifier, "pretrain"),  # DeiT's supervised pre-training
    "classifier": (Classifier, "finetune"),
    "linear": (LinearProbe, "linear"),
    "beit": (BEiT, "pretrain"),
    "splitmask": (SplitMask, "pretrain"),
    "dino": (DINO, "pretrain"),
    "pixels": (PixelProbe, "linear"),  # the raw-pixel baseline: no ViT, so no registered name
    # The dense tasks' models (COCO, ADE20k): built by their jobs, not registered names (a name is a ViT recipe).
    "mask_rcnn": (Detector, "detect"),
    "upernet": ("model.segment:UperNet", "segment"),  # imported when built: it imports transformers (~1 s)
}
DENSE_TASKS = ("detect", "segment")


def method_class(method: str) -> type[nn.Module]:
    """The class of a registry method (importing its module if it is registered by path)."""
    cls = METHODS[method][0]
    if isinstance(cls, str):
        module, name = cls.split(":")
        cls = getattr(importlib.import_module(module), name)
    return cls


# The dataset a size is composed with when no job says otherwise: what its img_size and in_chans come from.
HOME_DATA = {"micro": "fashion_mnist"}


def _read_sizes() -> dict[str, dict]:
    sizes = {}
    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        preset = yaml.safe_load(path.read_text())
        sizes[preset["size"]] = dict(preset["args"])
    return sizes


# The size presets (patch_size, embed_dim, depth, num_heads), read from harness/conf/model/*.yaml.
SIZES: dict[str, dict] = _read_sizes()
MODELS: dict[str, tuple[str, str]] = {
    f"{m}_vit_{s}_p{preset['patch_size']}": (m, s)
    for m, (cls, task) in METHODS.items()
    if task not in DENSE_TASKS and cls.uses_encoder
    for s, preset in SIZES.items()
}


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    return sorted(n for n in MODELS if fnmatch.fnmatch(n, pattern))


@functools.cache
def _composed(method: str | None, size: str) -> tuple[dict, dict]:
    # The harness's composition (Hydra, the resolvers) is the one reader of the config tree; imported here only, so
    # that `import model` needs nothing from the harness.
    from harness.config import compose

    task = METHODS[method][1] if method else "linear"  # no method: the plain encoder (config.yaml's ViT defaults)
    overrides = [f"task={task}", f"model={size}", f"data={HOME_DATA.get(size, 'imagenet')}"]
    if task == "pretrain" or method not in (None, "classifier", "linear"):
        overrides.append(f"method={method}")
    cfg = compose(overrides)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.model.args), OmegaConf.to_container(cfg.method.args)


def defaults(name: str) -> tuple[dict, dict]:
    """The (encoder, method) arguments of a registered name, from the config tree (copies)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    encoder_args, method_args = _composed(*MODELS[name])
    return dict(encoder_args), _copy(method_args)


def _copy(args: dict) -> dict:
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in args.items()}


def _parameters(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self", "encoder"}


def build(method: str, encoder_args: dict, method_args: dict, encoder_state: dict | None = None) -> nn.Module:
    """`method` on a `ViT(**encoder_args)`, from complete arguments (as a job's config holds them).

    Args:
        method: a key of `METHODS`.
        encoder_args: every `ViT` argument.
        method_args: every argument of the method's class; `tokenizer` as a mapping {name, its arguments..., fit}
            (`fit`, how a codebook is fitted to data, is the harness's business and is not passed on).
        encoder_state: weights for the encoder before the method wraps it (a pre-trained encoder: fine-tuning and
            probes), as `ViT.load_timm_state_dict` takes them.
    Returns:
        the module; `module.build_args` holds (method, encoder_args, method_args) as built.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    cls = method_class(method)
    _check("ViT", _parameters(ViT), encoder_args)
    kwargs = _copy(method_args)
    if isinstance(kwargs.get("tokenizer"), dict):
        spec = kwargs.pop("tokenizer")
        spec.pop("fit", None)
        kwargs["tokenizer"], kwargs["tokenizer_kwargs"] = spec.pop("name"), spec
    _check(cls.__name__, _parameters(cls), kwargs)
    encoder = ViT(**encoder_args) if cls.uses_encoder else None
    if encoder_state is not None:
        encoder.load_timm_state_dict(encoder_state)
    net = cls(encoder, **kwargs)
    net.build_args = (method, dict(encoder_args), _copy(method_args))
    return net


def _check(what: str, valid: set[str], args: dict) -> None:
    unknown = set(args) - valid
    if unknown:
        raise ValueError(f"unknown arguments for {what}: {sorted(unknown)}; valid: {sorted(valid)}")


def create(name: str, **overrides) -> nn.Module:
    """Build a registered model from its defaults; keyword overrides go to the ViT when they are ViT arguments
    (img_size, patch_size, drop_path_rate, layer_scale_init, pos_embed, ...) and to the method otherwise."""
    encoder_args, method_args = defaults(name)
    vit_keys = _parameters(ViT)
    encoder_args |= {k: v for k, v in overrides.items() if k in vit_keys}
    method_args |= {k: v for k, v in overrides.items() if k not in vit_keys}
    return build(MODELS[name][0], encoder_args, method_args)


def vit(size: str = "small", **overrides) -> ViT:
    """A plain encoder of a size (the config tree's ViT defaults: no LayerScale, no drop path), on the size's home
    resolution and channels; any argument overridable."""
    if size not in SIZES:
        raise ValueError(f"unknown ViT size {size!r}; valid sizes: {', '.join(SIZES)}")
    encoder_args, _ = _composed(None, size)
    _check("ViT", _parameters(ViT), overrides)
    return ViT(**(encoder_args | overrides))
