"""Vision Transformer backbone shared by every method of the paper, built on timm.

`ViT` is timm's `VisionTransformer` (same blocks, same parameter names, same forward) with the three things the
pre-training methods need on top:

(a) encode only a subset of the patches (`keep`): SplitMask's encoder sees its visible patches and nothing else;
(b) encode with a learned mask token at given positions (`mask`): BEiT;
(c) return the outputs of chosen intermediate blocks (`forward_layers`): per-layer linear probes, detection.

Position embeddings are learned (the ViT default) or fixed 2-D sin-cos (what the paper's detection models use,
FACTS §3.3). `timm_state_dict()` exports weights that load into a plain timm ViT of the same size, so a pre-trained
encoder can be taken to any timm-based codebase.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from timm.layers import LayerScale, resample_abs_pos_embed, trunc_normal_
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

__all__ = ["SIZES", "ViT", "vit"]

# Architecture presets. `micro` is the demo model for 28x28 grey images (7x7 = 49 tokens); the others are the
# standard DeiT/ViT sizes at 224x224 with 16x16 patches (14x14 = 196 tokens).
SIZES: dict[str, dict] = {
    "micro": dict(embed_dim=128, depth=4, num_heads=4, img_size=28, patch_size=4, in_chans=1),
    "tiny": dict(embed_dim=192, depth=12, num_heads=3, img_size=224, patch_size=16, in_chans=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6, img_size=224, patch_size=16, in_chans=3),
    "base": dict(embed_dim=768, depth=12, num_heads=12, img_size=224, patch_size=16, in_chans=3),
}


class ViT(VisionTransformer):
    """timm ViT encoder (no classifier head) that can mask, subset and expose intermediate blocks.

    Args:
        img_size: input resolution the position embedding is laid out for.
        patch_size: side of the square patches.
        in_chans: image channels (1 for Fashion-MNIST, 3 otherwise).
        embed_dim, depth, num_heads, mlp_ratio: transformer shape.
        drop_path_rate: stochastic depth, linearly increasing over the blocks (timm rule).
        layer_scale_init: LayerScale init value (BEiT uses 0.1 for ViT-B); None disables LayerScale.
        pos_embed: "learn" (trainable, the original ViT) or "sincos" (fixed 2-D sin-cos, not trained).
        use_mask_token: create the learned mask token used by `mask=` (BEiT); off otherwise so that DDP sees no
            unused parameter.
        rescale_init: BEiT's init fix, dividing each block's output projections by sqrt(2 * layer).
        dynamic_img_size: accept other resolutions, resampling the position embedding (DINO's local crops).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        layer_scale_init: float | None = None,
        pos_embed: Literal["learn", "sincos"] = "learn",
        use_mask_token: bool = False,
        rescale_init: bool = False,
        dynamic_img_size: bool = False,
    ) -> None:
        # The constructor arguments, so that a saved encoder can be rebuilt from its file alone.
        self.init_args = dict(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
            layer_scale_init=layer_scale_init,
            pos_embed=pos_embed,
            use_mask_token=use_mask_token,
            rescale_init=rescale_init,
            dynamic_img_size=dynamic_img_size,
        )
        if pos_embed not in ("learn", "sincos"):
            raise ValueError(f"pos_embed must be 'learn' or 'sincos', got {pos_embed!r}")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=0,
            global_pool="token",
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
            init_values=layer_scale_init,
            fix_init=rescale_init,
            dynamic_img_size=dynamic_img_size,
        )
        self.pos_embed_type = pos_embed
        if pos_embed == "sincos":
            # Kept as a (frozen) parameter under timm's name, so the state dict loads into a plain timm ViT.
            self.pos_embed.requires_grad_(False)
            self.pos_embed.data.copy_(self._sincos_table(self.patch_embed.grid_size))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_mask_token else None
        if self.mask_token is not None:
            trunc_normal_(self.mask_token, std=0.02)

    # ---------------------------------------------------------------------------------------------------------
    # geometry
    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.patch_embed.grid_size)

    @property
    def num_patches(self) -> int:
        h, w = self.grid_size
        return h * w

    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size[0]

    def _sincos_table(self, grid: Sequence[int]) -> Tensor:
        """[1, prefix + H*W, D] fixed sin-cos table; the class token gets the zero vector (MoCo v3 / MAE)."""
        table = build_sincos2d_pos_embed(list(grid), dim=self.embed_dim)
        prefix = torch.zeros(self.num_prefix_tokens, self.embed_dim)
        return torch.cat([prefix, table]).unsqueeze(0)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "mask_token"}

    # ---------------------------------------------------------------------------------------------------------
    # forward
    def _pos_embed(self, x: Tensor) -> Tensor:
        if self.pos_embed_type == "sincos" and x.ndim == 4 and tuple(x.shape[1:3]) != self.grid_size:
            # Other resolutions get an exact sin-cos table rather than an interpolated one.
            table = self._sincos_table(x.shape[1:3]).to(x)
            x = x.flatten(1, 2)
            if self.cls_token is not None:
                x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            return self.pos_drop(x + table)
        return super()._pos_embed(x)

    def embed(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Images to tokens with position embeddings: [B, C, H, W] -> [B, prefix + N, D].

        Args:
            x: images [B, C, H, W].
            mask: bool [B, N]; patch embeddings where True are replaced by the mask token (BEiT), before the
                position embedding is added, so a mask token still knows where it is.
        """
        x = self.patch_embed(x)  # [B, N, D], or [B, H, W, D] with dynamic_img_size
        if mask is not None:
            if self.mask_token is None:
                raise ValueError("this ViT was built without a mask token: pass use_mask_token=True to mask")
            w = mask.reshape(*x.shape[:-1], 1).to(x.dtype)
            x = x * (1.0 - w) + self.mask_token.to(x.dtype) * w
        return self._pos_embed(x)

    def select(self, tokens: Tensor, keep: Tensor) -> Tensor:
        """Keep the prefix (class) tokens and the patches at `keep` (long [B, n]): [B, prefix + n, D]."""
        prefix, patches = tokens[:, : self.num_prefix_tokens], tokens[:, self.num_prefix_tokens :]
        patches = torch.gather(patches, 1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        return torch.cat([prefix, patches], dim=1)

    def encode(self, tokens: Tensor) -> Tensor:
        """Run the transformer on a token sequence of any length; normalised output of the same shape."""
        x = self.norm_pre(self.patch_drop(tokens))
        return self.norm(self.blocks(x))

    def forward_features(self, x: Tensor, mask: Tensor | None = None, keep: Tensor | None = None) -> Tensor:
        """Normalised output tokens [B, prefix + N (or n), D]; identical to timm's without `mask` and `keep`.

        Args:
            x: images [B, C, H, W].
            mask: bool [B, N], patches replaced by the mask token (BEiT).
            keep: long [B, n], the only patches that enter the blocks (SplitMask); the others are never seen.
        """
        tokens = self.embed(x, mask=mask)
        if keep is not None:
            tokens = self.select(tokens, keep)
        return self.encode(tokens)

    def forward_layers(
        self,
        x: Tensor,
        layers: Sequence[int],
        mask: Tensor | None = None,
        keep: Tensor | None = None,
    ) -> list[Tensor]:
        """Raw outputs [B, prefix + N, D] of the given blocks (0-indexed; -1 is the last), in the order asked.

        Blocks after the deepest one requested are not run. The outputs are the residual stream, before the
        final norm: probes and detection necks put their own normalisation on top.
        """
        depth = len(self.blocks)
        if not layers or any(not -depth <= i < depth for i in layers):
            raise ValueError(f"layers {list(layers)} out of range for a {depth}-block ViT")
        wanted = [i % depth for i in layers]
        tokens = self.embed(x, mask=mask)
        if keep is not None:
            tokens = self.select(tokens, keep)
        x = self.norm_pre(self.patch_drop(tokens))
        out: dict[int, Tensor] = {}
        for i, blk in enumerate(self.blocks[: max(wanted) + 1]):
            x = blk(x)
            out[i] = x
        return [out[i] for i in wanted]

    def forward(self, x: Tensor) -> Tensor:
        """Pooled features [B, D] (the class token after the final norm), as timm with `num_classes=0`."""
        return self.forward_head(self.forward_features(x))

    # ---------------------------------------------------------------------------------------------------------
    # export
    def timm_state_dict(self) -> dict[str, Tensor]:
        """Weights for a plain timm ViT of the same shape (no LayerScale, no mask token), outputs unchanged.

        LayerScale is folded into the linear layer it scales (gamma * (W x + b) = (gamma W) x + gamma b), so the
        export loads into e.g. `timm.create_model('vit_small_patch16_224', num_classes=0)` and gives the same
        features.
        """
        sd = {k: v.detach().clone() for k, v in self.state_dict().items() if k != "mask_token"}
        for i, blk in enumerate(self.blocks):
            for ls, linear in (("ls1", "attn.proj"), ("ls2", "mlp.fc2")):
                if isinstance(getattr(blk, ls), LayerScale):
                    gamma = sd.pop(f"blocks.{i}.{ls}.gamma")
                    sd[f"blocks.{i}.{linear}.weight"] *= gamma[:, None]
                    sd[f"blocks.{i}.{linear}.bias"] *= gamma
        return sd

    def load_timm_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Load encoder weights exported by `timm_state_dict` or taken from a timm ViT (e.g. DeiT)."""
        sd = dict(state_dict)
        sd = {k: v for k, v in sd.items() if not k.startswith(("head.", "fc_norm."))}
        if "pos_embed" in sd and sd["pos_embed"].shape != self.pos_embed.shape:
            sd["pos_embed"] = resample_abs_pos_embed(
                sd["pos_embed"], new_size=self.grid_size, num_prefix_tokens=self.num_prefix_tokens
            )
        for i, blk in enumerate(self.blocks):
            for ls in ("ls1", "ls2"):
                if isinstance(getattr(blk, ls), LayerScale):
                    sd.setdefault(f"blocks.{i}.{ls}.gamma", torch.ones(self.embed_dim))
        if self.mask_token is not None:
            sd.setdefault("mask_token", self.mask_token.detach().clone())
        self.load_state_dict(sd, strict=True)


def vit(size: str = "small", **overrides) -> ViT:
    """A `ViT` of a named size (`SIZES`), any constructor argument overridable."""
    if size not in SIZES:
        raise ValueError(f"unknown ViT size {size!r}; valid sizes: {', '.join(SIZES)}")
    return ViT(**{**SIZES[size], **overrides})
