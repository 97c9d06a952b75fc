"""Vision Transformer backbone shared by every method of the paper, built on timm.

`ViT` is timm's `VisionTransformer` (same blocks, same parameter names, same forward) with the three things the
pre-training methods need on top:

(a) encode only a subset of the patches (`keep`): SplitMask's encoder sees its visible patches and nothing else;
(b) encode with a learned mask token at given positions (`mask`): BEiT;
(c) return the outputs of chosen intermediate blocks (`forward_layers`): per-layer linear probes, detection.

Position embeddings are learned (the ViT default) or fixed 2-D sin-cos (what the paper's detection models use,
FACTS §3.3). `timm_state_dict()` exports weights that load into a plain timm ViT of the same size, so a pre-trained
encoder can be taken to any timm-based codebase.

The weights start as timm initialises its ViT (`init="timm"`) or as BEiT does (`init="beit"`, see
`beit_trunc_normal_`); learned position embeddings are resampled for other resolutions as timm does
(`pos_embed_resample="timm"`) or as DINO does (`"dino"`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import LayerScale, resample_abs_pos_embed, trunc_normal_
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

__all__ = ["Init", "ViT", "beit_init_", "beit_trunc_normal_"]

Init = Literal["timm", "beit"]


def beit_trunc_normal_(tensor: Tensor, std: float = 0.02) -> Tensor:
    """BEiT's `trunc_normal_` (unilm/beit modeling_pretrain.py): a normal of std `std` truncated at +-std, i.e. at
    one sigma (timm's default truncates at +-2 absolute, 100 sigma for std 0.02). Its effective std is
    sqrt(1 - 2 phi(1) / (2 Phi(1) - 1)) ~ 0.54 times `std`: 0.0108 for 0.02."""
    return trunc_normal_(tensor, std=std, a=-std, b=std)


def beit_init_(module: nn.Module, std: float = 0.02) -> None:
    """BEiT's `_init_weights`, applied to `module` and all its submodules: Linear and Conv2d weights
    `beit_trunc_normal_`, their biases 0; LayerNorm weight 1, bias 0. Other parameters are left as they are."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            beit_trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


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
        init: how the weights start (an assumption: the paper does not say).
            "timm": timm's `VisionTransformer` init, bit for bit (Linear weights truncated normal of std 0.02 cut at
            +-2, so effectively std 0.02; position embedding the same; class token normal of std 1e-6; the
            patch-embedding conv PyTorch's default; the mask token truncated normal of std 0.02).
            "beit": BEiT's pre-training init (unilm/beit modeling_pretrain.py): Linear and conv weights, position
            embedding, class and mask tokens `beit_trunc_normal_` of std 0.02 (cut at +-0.02: effective std
            0.0108), biases 0, LayerNorms 1 and 0. `rescale_init` is applied after either.
        pos_embed_resample: how a learned position embedding is resampled for another grid (`dynamic_img_size`).
            "timm": timm's `resample_abs_pos_embed` (bicubic with antialias, to the exact grid).
            "dino": DINO's `interpolate_pos_encoding` (facebookresearch/dino vision_transformer.py): bicubic
            without antialias, with the scale factor (n + 0.1) / N that DINO passes (the sampling grid follows
            that scale, not n / N); the class token's embedding kept. The sin-cos table is always recomputed.
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
        init: Init = "timm",
        pos_embed_resample: Literal["timm", "dino"] = "timm",
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
            init=init,
            pos_embed_resample=pos_embed_resample,
        )
        if pos_embed not in ("learn", "sincos"):
            raise ValueError(f"pos_embed must be 'learn' or 'sincos', got {pos_embed!r}")
        if init not in ("timm", "beit"):
            raise ValueError(f"init must be 'timm' or 'beit', got {init!r}")
        if pos_embed_resample not in ("timm", "dino"):
            raise ValueError(f"pos_embed_resample must be 'timm' or 'dino', got {pos_embed_resample!r}")
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
        self.init_scheme = init
        self.pos_embed_resample = pos_embed_resample
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_mask_token else None
        if self.mask_token is not None:
            trunc_normal_(self.mask_token, std=0.02)
        if init == "beit":
            self._init_beit()
        if pos_embed == "sincos":
            # Kept as a (frozen) parameter under timm's name, so the state dict loads into a plain timm ViT.
            self.pos_embed.requires_grad_(False)
            self.pos_embed.data.copy_(self._sincos_table(self.patch_embed.grid_size))

    @torch.no_grad()
    def _init_beit(self) -> None:
        """Re-initialise as BEiT's `VisionTransformerForMaskedImageModeling.__init__` does: the tokens and the
        position embedding, then `_init_weights` on every module, then the output-projection rescale."""
        for p in (self.pos_embed, self.cls_token, self.mask_token):
            if p is not None:
                beit_trunc_normal_(p)
        beit_init_(self)
        if self.fix_init:  # timm's fix_init_weight is BEiT's rescale (1 / sqrt(2 * layer)); it ran on the old init
            self.fix_init_weight()

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
    def _dino_pos_embed(self, grid: Sequence[int]) -> Tensor:
        """The learned position embedding for another grid, as DINO's `interpolate_pos_encoding`: [1, prefix + h*w, D].

        DINO calls `F.interpolate(..., scale_factor=(h + 0.1) / H, mode="bicubic")` (the 0.1 keeps the floored
        output size from rounding down); PyTorch then maps output to input coordinates with that scale factor, not
        with h / H, and applies no antialias.
        """
        prefix, patches = self.pos_embed[:, : self.num_prefix_tokens], self.pos_embed[:, self.num_prefix_tokens :]
        (height, width), (h, w) = self.grid_size, grid
        patches = patches.reshape(1, height, width, -1).permute(0, 3, 1, 2).float()
        scale = ((h + 0.1) / height, (w + 0.1) / width)
        patches = F.interpolate(patches, scale_factor=scale, mode="bicubic", recompute_scale_factor=False)
        patches = patches.permute(0, 2, 3, 1).flatten(1, 2).to(prefix.dtype)
        return torch.cat([prefix, patches], dim=1)

    def _pos_embed(self, x: Tensor) -> Tensor:
        resample = x.ndim == 4 and tuple(x.shape[1:3]) != self.grid_size  # [B, h, w, D] from dynamic_img_size
        if resample and (self.pos_embed_type == "sincos" or self.pos_embed_resample == "dino"):
            # sincos: other resolutions get an exact sin-cos table rather than an interpolated one.
            if self.pos_embed_type == "sincos":
                table = self._sincos_table(x.shape[1:3]).to(x)
            else:
                table = self._dino_pos_embed(x.shape[1:3]).to(x.dtype)
            x = x.flatten(1, 2)
            if self.cls_token is not None:
                x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            return self.pos_drop(x + table)
        return super()._pos_embed(x)  # timm: the table as is, or resample_abs_pos_embed (bicubic, antialias)

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
        """Load encoder weights exported by `timm_state_dict` or taken from a timm ViT (e.g. DeiT). A ViT with the
        fixed sin-cos table keeps it: a learned position embedding is replaced by it (the paper's detection setup)."""
        sd = dict(state_dict)
        sd = {k: v for k, v in sd.items() if not k.startswith(("head.", "fc_norm."))}
        if self.pos_embed_type == "sincos":  # a fixed table is this model's own: a learned one is replaced by it
            sd["pos_embed"] = self.pos_embed.detach().clone()
        elif "pos_embed" in sd and sd["pos_embed"].shape != self.pos_embed.shape:
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
