"""Pieces shared by the two masked-image-modelling methods, BEiT and SplitMask."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.masking import generate
from model.tokenizers import Tokenizer, create_tokenizer

__all__ = ["build_tokenizer", "check_counts", "positions", "sample_masks", "token_loss"]


def build_tokenizer(tokenizer: str | Tokenizer, vocab_size: int, encoder: nn.Module, **kwargs) -> Tokenizer:
    """A tokenizer on the encoder's patch grid: an instance is used as is, a name is built with `create_tokenizer`."""
    if isinstance(tokenizer, Tokenizer):
        if tokenizer.patch_size != encoder.patch_size:
            raise ValueError(f"tokenizer patch size {tokenizer.patch_size} != encoder patch size {encoder.patch_size}")
        return tokenizer
    return create_tokenizer(
        tokenizer, vocab_size=vocab_size, patch_size=encoder.patch_size, in_chans=encoder.in_chans, **kwargs
    )


def positions(where: Tensor, count: int) -> Tensor:
    """Indices of the True entries of `where` (bool [B, N]), exactly `count` per row, ascending: long [B, count].

    A stable sort instead of `nonzero`, so nothing waits for the device; the caller knows `count` from its mask
    generator, which guarantees it.
    """
    order = torch.argsort((~where).to(torch.uint8), dim=1, stable=True)
    return order[:, :count]


def check_counts(where: Tensor, count: int, what: str) -> None:
    """Fail loudly on a mask that does not have `count` True entries per row (CPU tensors only: no device sync; not
    while torch.compile traces, where the data-dependent branch would break the graph)."""
    if where.device.type == "cpu" and not torch.compiler.is_compiling():
        counts = where.sum(dim=1)
        if not bool((counts == count).all()):
            raise ValueError(f"{what}: expected exactly {count} patches per sample, got {counts.tolist()}")


def token_loss(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy of visual-word logits [..., V] against ids [...]; returns (loss, accuracy) as 0-dim tensors."""
    logits = logits.reshape(-1, logits.shape[-1]).float()
    targets = targets.reshape(-1)
    loss = F.cross_entropy(logits, targets)
    with torch.no_grad():
        acc = (logits.argmax(-1) == targets).float().mean()
    return loss, acc


def sample_masks(
    mask_generator, batch_size: int, device: torch.device | str = "cpu", seed: int | None = None
) -> Tensor:
    """Masks drawn in the calling process (the data pipeline draws them in its workers instead): [B, N]."""
    return torch.from_numpy(generate(mask_generator, batch_size, seed)).to(device)
