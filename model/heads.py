"""Classification on top of a ViT encoder: fine-tuning / supervised (DeiT) training, linear probes, and the
optimiser parameter groups with layer-wise learning-rate decay.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import Tensor, nn

from model.method import Method
from model.vit import ViT

__all__ = ["Classifier", "LinearProbe", "PixelProbe", "frozen_features", "param_groups"]

Pool = Literal["avg", "cls", "cls_avg"]
POOLS = ("avg", "cls", "cls_avg")


def _pool(tokens: Tensor, pool: Pool, num_prefix_tokens: int) -> Tensor:
    """[B, prefix + N, D] -> [B, D]: the class token, the mean of the patch tokens, or both side by side ([B, 2D])."""
    if pool == "cls":
        return tokens[:, 0]
    mean = tokens[:, num_prefix_tokens:].mean(1)
    return torch.cat([tokens[:, 0], mean], dim=-1) if pool == "cls_avg" else mean


@torch.no_grad()
def frozen_features(encoder: ViT, images: Tensor, layer: int, pool: Pool = "avg") -> Tensor:
    """The output of block `layer` (1-indexed; the residual stream, before the final norm), pooled: [B, D] (or
    [B, 2D] for cls_avg). What linear probes and k-NN evaluations read from a frozen encoder."""
    tokens = encoder.forward_layers(images, [layer - 1])[0]
    return _pool(tokens, pool, encoder.num_prefix_tokens)


def _classification_loss(logits: Tensor, targets: Tensor, label_smoothing: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Cross-entropy with hard labels [B] (label smoothing applied) or soft targets [B, C] (mixup/cutmix)."""
    logits = logits.float()
    if targets.ndim == 2:
        loss = torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return loss, {"loss": loss.detach()}
    loss = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    acc = (logits.detach().argmax(-1) == targets).float().mean()
    return loss, {"loss": loss.detach(), "acc": acc}


class Classifier(Method):
    """ViT encoder + linear classifier, trained end to end (fine-tuning, and the supervised DeiT baseline).

    Args:
        encoder: the ViT (pre-trained, or fresh for random init / supervised pre-training).
        num_classes: classes of the target dataset.
        pool: "avg" (mean of the patch tokens then a LayerNorm `fc_norm`, BEiT's fine-tuning) or "cls" (the class
            token after the encoder's final norm, DeiT). With "avg" the encoder's final norm moves after the pooling
            (it becomes `fc_norm`, with its weights), as timm and MAE do: build the classifier from an encoder that
            already holds its pre-trained weights.
        label_smoothing: applied to hard labels (0.1 in the paper's fine-tuning recipe).
        head_init_scale: the head's initial weights are scaled by this (BEiT's fine-tuning uses 0.001).
    """

    views = "labelled"
    labelled = True
    takes_encoder = True

    def __init__(
        self,
        encoder: ViT,
        num_classes: int,
        pool: Pool = "avg",
        label_smoothing: float = 0.1,
        head_init_scale: float = 0.001,
    ) -> None:
        super().__init__()
        if pool not in ("avg", "cls"):
            raise ValueError(f"pool must be 'avg' or 'cls', got {pool!r}")
        self.encoder = encoder
        self.pool = pool
        self.label_smoothing = label_smoothing
        self.fc_norm = nn.LayerNorm(encoder.embed_dim, eps=1e-6) if pool == "avg" else nn.Identity()
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            self.head.weight.mul_(head_init_scale)
        if pool == "avg":
            self.fc_norm.load_state_dict(encoder.norm.state_dict())
            encoder.norm = nn.Identity()

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def features(self, images: Tensor) -> Tensor:
        """Pooled, normalised features [B, D]."""
        tokens = self.encoder.forward_features(images)
        return self.fc_norm(_pool(tokens, self.pool, self.encoder.num_prefix_tokens))

    def predict(self, images: Tensor) -> Tensor:
        """Logits [B, num_classes]."""
        return self.head(self.features(images))

    def forward(self, images: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return _classification_loss(self.predict(images), targets, self.label_smoothing)

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer ids for layer-wise lr decay, BEiT's `get_num_layer_for_vit` (unilm/beit optim_factory.py): the
        embeddings and special tokens are layer 0, block i is layer i + 1, and everything else (the final norm or
        `fc_norm`, the head) the top layer, depth + 1, whose lr scale is 1.

        The norms get their own group after the blocks: marking them timm's MATCH_PREV_GROUP (99999,) would merge
        them into the last block and scale their lr by `layer_decay`.
        """
        return dict(
            stem=r"^encoder\.(?:cls_token|pos_embed|patch_embed|mask_token)",
            blocks=r"^encoder\.blocks\.(\d+)",
            head=r"^encoder\.norm|^fc_norm|^head",
        )

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{name}" for name in self.encoder.no_weight_decay()}


class LinearProbe(Method):
    """A linear classifier on frozen features of one encoder block (FACTS T6 "Lin." and the per-layer F2).

    The paper does not give its linear-probing protocol. Assumptions (configurable): features are the output of
    block `layer` (1-indexed as in the paper's figure; the last block by default), average-pooled over the patch
    tokens (`pool`: or the class token, or both), then a BatchNorm without affine parameters, then a linear layer;
    MAE's linear probe. The harness trains it by SGD (the paper-scale protocol) or solves the same linear model to
    convergence on the extracted `features` (harness/train/probe.py).

    The encoder is frozen and always kept in eval mode (no drop path, no statistics drift).
    """

    views = "probe"
    labelled = True
    takes_encoder = True

    def __init__(self, encoder: ViT, num_classes: int, layer: int | None = None, pool: Pool = "avg") -> None:
        super().__init__()
        depth = len(encoder.blocks)
        self.layer = depth if layer is None else layer
        if not 1 <= self.layer <= depth:
            raise ValueError(f"layer must be in 1..{depth} (1-indexed block), got {layer}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.encoder = encoder.requires_grad_(False).eval()
        self.pool = pool
        dim = encoder.embed_dim * (2 if pool == "cls_avg" else 1)
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.encoder.eval()
        return self

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def features(self, images: Tensor) -> Tensor:
        return frozen_features(self.encoder, images, self.layer, self.pool)

    def predict(self, images: Tensor) -> Tensor:
        return self.head(self.bn(self.features(images).float()))

    def forward(self, images: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return _classification_loss(self.predict(images), targets, label_smoothing=0.0)


class PixelProbe(LinearProbe):
    """The raw-pixel baseline: the same probe on the flattened, normalised pixels, with no encoder (the "identity
    encoder"). A number every reader knows: logistic regression on Fashion-MNIST's pixels with 60 labels a class
    gets 76-80 % (DESIGN.md)."""

    uses_encoder = False

    def __init__(self, encoder: None, num_classes: int, img_size: int, in_chans: int) -> None:
        Method.__init__(self)
        if encoder is not None:
            raise ValueError("PixelProbe reads the pixels: it takes no encoder")
        self.encoder, self.layer, self.pool = None, 0, "pixels"
        dim = in_chans * img_size * img_size
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def train(self, mode: bool = True) -> PixelProbe:
        return Method.train(self, mode)

    def features(self, images: Tensor) -> Tensor:
        return images.flatten(1)


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """Optimiser parameter groups: no weight decay on biases, norms, position embeddings and special tokens; with
    `layer_decay`, each group also carries `lr_scale = layer_decay ** (depth + 1 - layer_id)` (BEiT's rule, timm's
    implementation). Frozen parameters are left out.
    """
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    if layer_decay is None or layer_decay == 1.0:
        return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    if not hasattr(model, "group_matcher"):
        raise ValueError(f"layer-wise lr decay needs a model with group_matcher(); {type(model).__name__} has none")
    return param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)
