"""Models of the SplitMask reproduction: a timm ViT backbone and the methods the paper compares.

    import model
    model.list_models("splitmask*")   # ['splitmask_vit_base_p16', 'splitmask_vit_micro_p4', ...]
    m = model.create("splitmask_vit_small_p16", drop_path_rate=0.1, temperature=0.2)

A name is `<method>_vit_<size>_p<patch>`. Its defaults come from the harness's config tree (`model/registry.py`), so
that a registered model is the model a training job builds. Keyword overrides go to the ViT when they are ViT
arguments (img_size, patch_size, in_chans, drop_path_rate, layer_scale_init, pos_embed, ...) and to the method
otherwise. The classes themselves (`ViT`, `SplitMask`, ...) need nothing from the harness.
"""

from __future__ import annotations

from model.beit import BEiT
from model.dino import DINO
from model.heads import Classifier, LinearProbe, param_groups
from model.method import Method, Schedule
from model.registry import METHODS, MODELS, SIZES, build, create, defaults, list_models, method_class, vit
from model.splitmask import SplitMask
from model.tokenizers import TOKENIZERS, Tokenizer, create_tokenizer
from model.vit import ViT

__all__ = [
    "DINO",
    "METHODS",
    "MODELS",
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
    "build",
    "create",
    "create_tokenizer",
    "defaults",
    "list_models",
    "method_class",
    "param_groups",
    "vit",
]
