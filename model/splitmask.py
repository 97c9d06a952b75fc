"""SplitMask (El-Nouby et al., arXiv 2112.10740): split, inpaint, match.

1. **Split**: the patches of an image are split into two disjoint subsets A and B (BEiT block masking at 50%: B is
   the mask, A its complement). A shared ViT encoder encodes each subset on its own: it sees only that subset's
   patches, never a mask token.
2. **Inpaint**: a shallow decoder (2 ViT blocks of the encoder's width) takes one branch's encoder outputs plus mask
   tokens at every position the branch did not see, and predicts the visual-word id of each of those positions
   (cross-entropy, only on the positions the branch did not see: A predicts B, B predicts A).
3. **Match**: each branch's global descriptor is the average of the decoder output over *all* patch positions,
   observed and inpainted; an InfoNCE loss (temperature 0.2, the other images of the batch as negatives) pulls the
   two descriptors of an image together.

loss = MIM(A -> B) + MIM(B -> A) + InfoNCE, each term switchable (`inpaint`, `match`) so that the SplitMask rows of
the paper's component ablation (FACTS T6) are configs; its row without the split is the BEiT baseline (method
`beit`). Where the paper is silent, the choice made is named in the argument's description and in model/README.md.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.layers import LayerNorm, trunc_normal_
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from model.masking import SplitMasking
from model.method import Method
from model.mim import build_tokenizer, check_counts, positions, sample_masks, token_loss
from model.tokenizers import Tokenizer
from model.vit import Init, ViT, beit_init_, beit_trunc_normal_

__all__ = ["SplitMask", "SplitMaskDecoder", "info_nce"]


class SplitMaskDecoder(nn.Module):
    """The "inpaint" decoder: mask tokens at the unseen positions, `depth` ViT blocks, a final LayerNorm.

    Assumptions (the paper gives only depth 2 and the encoder's width): fixed 2-D sin-cos position embeddings, as
    MAE's decoder; the encoder's class token goes through the decoder in front of the patches, as in MAE; no
    LayerScale, no drop path; one decoder shared by both branches (the paper's figure draws the same box twice).
    Every LayerNorm (the blocks' and the final one) has eps 1e-6, as the encoder's (timm's ViT, BEiT).

    Args:
        grid: patch grid (H, W).
        dim: width (the encoder's).
        depth, num_heads, mlp_ratio: transformer shape.
        num_prefix_tokens: encoder prefix (class) tokens passed through in front of the patches.
        init: "timm" (Linear weights and mask token truncated normal of std 0.02 cut at +-2, biases 0) or "beit"
            (BEiT's init, cut at +-0.02: `beit_init_`); an assumption, see `SplitMask`.
    """

    def __init__(
        self,
        grid: tuple[int, int],
        dim: int,
        depth: int = 2,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_prefix_tokens: int = 1,
        init: Init = "timm",
    ) -> None:
        super().__init__()
        self.num_patches = grid[0] * grid[1]
        self.num_prefix_tokens = num_prefix_tokens
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", build_sincos2d_pos_embed(list(grid), dim=dim).unsqueeze(0), persistent=False)
        # timm's Block norms with timm's LayerNorm, whose eps is 1e-6, as the encoder's (and BEiT's) norms.
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = LayerNorm(dim, eps=1e-6)
        if init == "beit":
            beit_trunc_normal_(self.mask_token)
            beit_init_(self)
        else:
            trunc_normal_(self.mask_token, std=0.02)
            self.apply(_init_linear)

    def forward(self, encoded: Tensor, keep: Tensor) -> Tensor:
        """Inpaint the full grid from one branch.

        Args:
            encoded: encoder output [B, prefix + n, D] for the visible patches `keep`.
            keep: long [B, n], the patch index of each encoded token.
        Returns:
            decoder output for every patch position, in grid order: [B, N, D].
        """
        b, _, d = encoded.shape
        prefix, visible = encoded[:, : self.num_prefix_tokens], encoded[:, self.num_prefix_tokens :]
        grid = self.mask_token.to(visible.dtype).expand(b, self.num_patches, d).clone()
        grid = grid.scatter(1, keep.unsqueeze(-1).expand(-1, -1, d), visible)
        x = torch.cat([prefix, grid + self.pos_embed.to(grid.dtype)], dim=1)
        x = self.norm(self.blocks(x))
        return x[:, self.num_prefix_tokens :]


class SplitMask(Method):
    """SplitMask pre-training.

    Args:
        encoder: the shared `ViT` encoder.
        tokenizer: a `Tokenizer` or its name; the paper's default is "random_projection".
        vocab_size: visual-word vocabulary (8192).
        decoder_depth: decoder blocks (2).
        decoder_heads: decoder attention heads; None = the encoder's.
        mask_ratio: fraction of patches in the mask (0.5; 0.75 on the smallest datasets).
        mask_pattern: "block" (BEiT block-wise, default) or "random" (uniform, the smallest datasets).
        subsets: "complement" (B = mask, A = rest: the paper) or "disjoint" (two disjoint visible sets of
            1 - mask_ratio each: an assumption for 75% masking; identical to "complement" at 50%).
        min_block, max_block, min_aspect: block shape (16 and 75 patches; aspect 0.3 from BEiT).
        inpaint: the two MIM terms.
        match: the InfoNCE term between the two branches' descriptors.
        temperature: InfoNCE temperature (0.2, following MoCo v3).
        mim_weight, match_weight: loss weights (the paper gives none: 1 and 1).
        infonce_normalize: L2-normalise the descriptors first (assumption: tau = 0.2 is MoCo v3's cosine setting).
        infonce_symmetric: average the A->B and B->A directions (assumption, as MoCo v3).
        infonce_gather: negatives from every DDP rank, not only the local batch (assumption, as MoCo v3).
        tokenizer_kwargs: extra arguments for `create_tokenizer`.
        init: how the decoder, its mask token and the MIM head start (an assumption: the paper says only that
            SplitMask follows BEiT). "timm": truncated normal of std 0.02 cut at +-2 (effectively std 0.02), biases
            0. "beit": BEiT's init (unilm/beit modeling_pretrain.py), cut at +-0.02 (effective std 0.0108). None
            (default): the encoder's `init`.
    """

    views = "masked"  # an image and its split, drawn in the data-loader workers

    def __init__(
        self,
        encoder: ViT,
        tokenizer: str | Tokenizer = "random_projection",
        vocab_size: int = 8192,
        decoder_depth: int = 2,
        decoder_heads: int | None = None,
        mask_ratio: float = 0.5,
        mask_pattern: str = "block",
        subsets: str = "complement",
        min_block: int = 16,
        max_block: int | None = 75,
        min_aspect: float = 0.3,
        inpaint: bool = True,
        match: bool = True,
        temperature: float = 0.2,
        mim_weight: float = 1.0,
        match_weight: float = 1.0,
        infonce_normalize: bool = True,
        infonce_symmetric: bool = True,
        infonce_gather: bool = True,
        tokenizer_kwargs: dict | None = None,
        init: Init | None = None,
    ) -> None:
        super().__init__()
        if not (inpaint or match):
            raise ValueError("SplitMask with inpaint=False and match=False has no loss: enable one of them")
        init = init or encoder.init_scheme
        if init not in ("timm", "beit"):
            raise ValueError(f"init must be 'timm' or 'beit', got {init!r}")
        self.encoder = encoder
        self.inpaint, self.match = inpaint, match
        self.mim_weight, self.match_weight, self.temperature = mim_weight, match_weight, temperature
        self.infonce = dict(normalize=infonce_normalize, symmetric=infonce_symmetric, gather=infonce_gather)

        self.mask_generator = SplitMasking(
            encoder.grid_size, mask_ratio, mask_pattern, subsets, min_block, max_block, min_aspect
        )
        self.decoder = SplitMaskDecoder(
            encoder.grid_size,
            encoder.embed_dim,
            decoder_depth,
            decoder_heads or encoder.blocks[0].attn.num_heads,
            num_prefix_tokens=encoder.num_prefix_tokens,
            init=init,
        )
        # Only what a loss uses is built, so DDP never sees a parameter without a gradient.
        self.tokenizer = (
            build_tokenizer(tokenizer, vocab_size, encoder, **(tokenizer_kwargs or {})) if inpaint else None
        )
        self.head = nn.Linear(encoder.embed_dim, self.tokenizer.vocab_size) if inpaint else None
        if self.head is not None and init == "beit":
            beit_init_(self.head)
        elif self.head is not None:
            _init_linear(self.head)

    # ---------------------------------------------------------------------------------------------------------
    def forward(self, images: Tensor, split: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """SplitMask loss.

        Args:
            images: [B, C, H, W], normalised.
            split: int8 [B, N] from `self.mask_generator` (0 = A, 1 = B, 2 = neither), made in the data-loader
                workers; drawn here if None.
        Returns:
            loss and logs: "loss", per-branch "mim_loss_a"/"mim_loss_b", their mean "mim_loss", "mim_acc",
            "match_loss", "match_acc" (each only when its term is on).
        """
        if split is None:
            split = self.sample_masks(images.shape[0], images.device)

        num_visible = self.mask_generator.num_visible
        for code, n in enumerate(num_visible):
            check_counts(split == code, n, f"SplitMask subset {'AB'[code]}")
        # One patch embedding for both branches; each branch then keeps only its own patches.
        tokens = self.encoder.embed(images)
        targets = self.tokenizer(images) if self.inpaint else None  # [B, N] visual-word ids, no gradient

        keeps, unseen = zip(*(self.split_indices(split, code, n) for code, n in enumerate(num_visible)))
        if num_visible[0] == num_visible[1]:  # the usual 50/50 split: both branches in one batch of 2B
            decoded = self.encode_and_decode(tokens.repeat(2, 1, 1), torch.cat(keeps)).chunk(2)
        else:
            decoded = [self.encode_and_decode(tokens, keep) for keep in keeps]

        logs: dict[str, Tensor] = {}
        loss = images.new_zeros(())
        if self.inpaint:
            mim = [self.predict_tokens(dec, idx, targets) for dec, idx in zip(decoded, unseen)]
            (loss_a, acc_a), (loss_b, acc_b) = mim
            loss = loss + self.mim_weight * (loss_a + loss_b)
            logs |= {"mim_loss_a": loss_a.detach(), "mim_loss_b": loss_b.detach()}
            logs |= {"mim_loss": (loss_a + loss_b).detach() / 2, "mim_acc": (acc_a + acc_b) / 2}
        if self.match:
            # Global descriptor: average over all patch positions, observed and inpainted.
            match_loss, match_acc = info_nce(decoded[0].mean(1), decoded[1].mean(1), self.temperature, **self.infonce)
            loss = loss + self.match_weight * match_loss
            logs |= {"match_loss": match_loss.detach(), "match_acc": match_acc}
        logs["loss"] = loss.detach()
        return loss, logs

    @staticmethod
    def split_indices(split: Tensor, code: int, num_visible: int) -> tuple[Tensor, Tensor]:
        """The patches a branch sees (long [B, n]) and the ones it must predict (long [B, N - n])."""
        seen = split == code
        return positions(seen, num_visible), positions(~seen, split.shape[1] - num_visible)

    def encode_and_decode(self, tokens: Tensor, keep: Tensor) -> Tensor:
        """Encoder on the kept patches only, then the decoder on the full grid: [B, N, D]."""
        encoded = self.encoder.encode(self.encoder.select(tokens, keep))
        return self.decoder(encoded, keep)

    def predict_tokens(self, decoded: Tensor, unseen: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy of the visual words at the positions this branch did not see."""
        x = torch.gather(decoded, 1, unseen.unsqueeze(-1).expand(-1, -1, decoded.shape[-1]))
        return token_loss(self.head(x), torch.gather(targets, 1, unseen))

    def sample_masks(self, batch_size: int, device: torch.device | str = "cpu", seed: int | None = None) -> Tensor:
        """Splits drawn in the calling process (the data pipeline draws them in its workers instead)."""
        return sample_masks(self.mask_generator, batch_size, device, seed)


def info_nce(
    a: Tensor,
    b: Tensor,
    temperature: float = 0.2,
    normalize: bool = True,
    symmetric: bool = True,
    gather: bool = True,
) -> tuple[Tensor, Tensor]:
    """InfoNCE between paired descriptors a[i] <-> b[i]; the other images of the batch are the negatives.

    L = -1/B sum_i log( exp(a_i . b_i / t) / sum_k exp(a_i . b_k / t) ), averaged with the b -> a direction when
    `symmetric`. With `gather` under DDP, the negatives come from every rank (differentiable all-gather).

    Args:
        a, b: [B, D] descriptors of the two branches.
    Returns:
        (loss, top-1 accuracy of finding the positive among the candidates), 0-dim tensors.
    """
    a, b = a.float(), b.float()
    if normalize:
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    a_all, b_all, offset = a, b, 0
    if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_gather

        a_all, b_all = torch.cat(all_gather(a)), torch.cat(all_gather(b))
        offset = dist.get_rank() * a.shape[0]
    labels = torch.arange(a.shape[0], device=a.device) + offset
    logits = a @ b_all.T / temperature
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        loss = (loss + F.cross_entropy(b @ a_all.T / temperature, labels)) / 2
    with torch.no_grad():
        acc = (logits.argmax(-1) == labels).float().mean()
    return loss, acc


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
