"""Models of the SplitMask reproduction: a timm ViT backbone and the methods the paper compares.

    import model
    model.list_models("splitmask*")   # ['splitmask_vit_base_p16', 'splitmask_vit_micro_p4', ...]
    m = model.create("splitmask_vit_small_p16", drop_path_rate=0.1, temperature=0.2)

A name is `<method>_vit_<size>_p<patch>`, or `vit_<size>_p<patch>` for the bare encoder. Keyword overrides go to
the ViT when they are ViT arguments (img_size, patch_size, in_chans, drop_path_rate, layer_scale_init, pos_embed,
...) and to the method otherwise.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable

from torch import nn

from model.beit import BEiT
from model.dino import DINO
from model.heads import Classifier, LinearProbe, param_groups
from model.method import Method, Schedule
from model.splitmask import SplitMask
from model.tokenizers import TOKENIZERS, Tokenizer, create_tokenizer
from model.vit import SIZES, ViT, vit

__all__ = [
    "DINO",
    "SIZES",
    "TOKENIZERS",
    "BEiT",
    "Classifier",
    "LinearProbe",
    "Method",
    "Schedule",
    "SplitMask",
    "Tokenizer",
    "ViT",
    "create",
    "create_tokenizer",
    "list_models",
    "param_groups",
    "vit",
]

# BEiT's pre-training recipe for the encoder (FACTS §3.1, followed by SplitMask): LayerScale 0.1, drop path 0.1,
# init rescaling. The paper gives no ViT-S values; the same ones are assumed.
_BEIT_ENCODER = dict(layer_scale_init=0.1, drop_path_rate=0.1, rescale_init=True)

# Per method: (builder, encoder defaults, method defaults, extra method defaults for the micro demo size).
_METHODS: dict[str, tuple[Callable[..., nn.Module] | None, dict, dict, dict]] = {
    # the bare encoder
    "vit": (None, {}, {}, {}),
    # supervised pre-training, DeiT style: class-token head, drop path 0.1 (DeiT-S)
    "supervised": (
        Classifier,
        dict(drop_path_rate=0.1),
        dict(num_classes=1000, pool="cls", head_init_scale=1.0),
        dict(num_classes=10),
    ),
    # fine-tuning head (BEiT recipe: mean pooling, head init scale 0.001)
    "classifier": (Classifier, dict(drop_path_rate=0.1), dict(num_classes=1000), dict(num_classes=10)),
    # linear probe on a frozen encoder
    "linear": (LinearProbe, {}, dict(num_classes=1000), dict(num_classes=10)),
    "beit": (BEiT, dict(_BEIT_ENCODER, use_mask_token=True), {}, dict(vocab_size=1024, min_block=4)),
    "splitmask": (SplitMask, _BEIT_ENCODER, {}, dict(vocab_size=1024, min_block=4, max_block=None)),
    # DINO: local crops need the position embedding resampled; drop path 0.1 as in the DINO repo
    "dino": (DINO, dict(drop_path_rate=0.1, dynamic_img_size=True), {}, dict(out_dim=1024, hidden_dim=512)),
}


def _name(method: str, size: str) -> str:
    arch = f"vit_{size}_p{SIZES[size]['patch_size']}"
    return arch if method == "vit" else f"{method}_{arch}"


MODELS: dict[str, tuple[str, str]] = {_name(m, s): (m, s) for m in _METHODS for s in SIZES}


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    return sorted(n for n in MODELS if fnmatch.fnmatch(n, pattern))


def create(name: str, **overrides) -> nn.Module:
    """Build a registered model; see the module docstring for how overrides are routed."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    method, size = MODELS[name]
    builder, encoder_defaults, method_defaults, micro_defaults = _METHODS[method]
    encoder_keys = set(inspect.signature(ViT.__init__).parameters) - {"self"}
    encoder_kw = {**SIZES[size], **encoder_defaults, **{k: v for k, v in overrides.items() if k in encoder_keys}}
    method_kw = {**method_defaults, **(micro_defaults if size == "micro" else {})}
    method_kw |= {k: v for k, v in overrides.items() if k not in encoder_keys}
    if method == "splitmask" and not method_kw.get("split", True):
        encoder_kw.setdefault("use_mask_token", True)  # without the split, the encoder takes mask tokens (BEiT)
    if builder is None:
        if method_kw:
            raise ValueError(f"unknown arguments for {name}: {sorted(method_kw)}; valid: {sorted(encoder_keys)}")
        return ViT(**encoder_kw)
    valid = set(inspect.signature(builder.__init__).parameters) - {"self", "encoder"}
    unknown = set(method_kw) - valid
    if unknown:
        raise ValueError(
            f"unknown arguments for {name}: {sorted(unknown)}; "
            f"valid: ViT {sorted(encoder_keys)}, {builder.__name__} {sorted(valid)}"
        )
    return builder(ViT(**encoder_kw), **method_kw)
