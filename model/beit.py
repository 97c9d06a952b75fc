"""BEiT (Bao et al., 2021): masked image modelling with visual-word targets, the paper's main baseline.

The encoder sees every patch, with a learned mask token in place of the masked ones (block-wise masking, 75 of 196
patches), and a linear head predicts the visual word of each masked patch (cross-entropy). As the paper states for
all its models, the backbone is the original ViT: absolute position embeddings, no relative position bias. BEiT's
LayerScale and init rescaling are switched on by the registry when it builds the encoder.
"""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import Tensor, nn

from model.masking import BlockMasking, num_masked_for
from model.method import Method
from model.mim import build_tokenizer, check_counts, positions, sample_masks, token_loss
from model.tokenizers import Tokenizer
from model.vit import Init, ViT, beit_init_, beit_trunc_normal_

__all__ = ["BEiT"]


class BEiT(Method):
    """BEiT pre-training.

    Args:
        encoder: a `ViT` built with `use_mask_token=True`.
        tokenizer: a `Tokenizer` or its name (the paper's BEiT on ImageNet uses "dalle", elsewhere the random
            projection; the default here is "random_projection" because it needs no weights file).
        vocab_size: visual-word vocabulary (8192).
        mask_ratio: fraction of patches masked; BEiT masks 75 of 196 patches, 75/196 = 0.383.
        min_block, max_block, min_aspect: block shape (BEiT: 16 patches minimum, no maximum, aspect 0.3).
        tokenizer_kwargs: extra arguments for `create_tokenizer` (e.g. the DALL-E weights file).
        init: how the MIM head starts (an assumption: the paper does not say). "timm": truncated normal of std
            0.02 cut at +-2 (effectively std 0.02), bias 0. "beit": BEiT's init (unilm/beit modeling_pretrain.py),
            the weight cut at +-0.02 (effective std 0.0108), bias 0; the encoder's mask token, which only BEiT
            uses, is re-drawn the same way. None (default): the encoder's `init`.
    """

    views = "masked"  # an image and its mask, drawn in the data-loader workers

    def __init__(
        self,
        encoder: ViT,
        tokenizer: str | Tokenizer = "random_projection",
        vocab_size: int = 8192,
        mask_ratio: float = 75 / 196,
        min_block: int = 16,
        max_block: int | None = None,
        min_aspect: float = 0.3,
        tokenizer_kwargs: dict | None = None,
        init: Init | None = None,
    ) -> None:
        super().__init__()
        if encoder.mask_token is None:
            raise ValueError("BEiT needs an encoder with a mask token: build the ViT with use_mask_token=True")
        init = init or encoder.init_scheme
        if init not in ("timm", "beit"):
            raise ValueError(f"init must be 'timm' or 'beit', got {init!r}")
        self.encoder = encoder
        self.tokenizer = build_tokenizer(tokenizer, vocab_size, encoder, **(tokenizer_kwargs or {}))
        num_masked = num_masked_for(encoder.num_patches, mask_ratio)
        self.mask_generator = BlockMasking(encoder.grid_size, num_masked, min_block, max_block, min_aspect)
        self.head = nn.Linear(encoder.embed_dim, self.tokenizer.vocab_size)
        if init == "beit":
            beit_init_(self.head)
            beit_trunc_normal_(encoder.mask_token)
        else:
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def forward(self, images: Tensor, mask: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Masked-token prediction loss.

        Args:
            images: [B, C, H, W], normalised.
            mask: bool [B, N] from `self.mask_generator` (made in the data-loader workers); drawn here if None.
        Returns:
            loss and logs {"loss", "mim_loss", "mim_acc"}.
        """
        if mask is None:
            mask = self.sample_masks(images.shape[0], images.device)
        k = self.mask_generator.num_masked
        check_counts(mask, k, "BEiT mask")
        targets = self.tokenizer(images)  # [B, N], no gradient
        x = self.encoder.forward_features(images, mask=mask)[:, self.encoder.num_prefix_tokens :]
        idx = positions(mask, k)  # [B, k]
        x = torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        loss, acc = token_loss(self.head(x), torch.gather(targets, 1, idx))
        return loss, {"loss": loss.detach(), "mim_loss": loss.detach(), "mim_acc": acc}

    def sample_masks(self, batch_size: int, device: torch.device | str = "cpu", seed: int | None = None) -> Tensor:
        """Masks drawn in the calling process (the data pipeline draws them in its workers instead)."""
        return sample_masks(self.mask_generator, batch_size, device, seed)
