"""Visual-word tokenizers: image patches -> discrete ids, the targets of masked image modelling (FACTS §1.3).

The paper's point is that the targets need no pre-training. Three tokenizers are training-free and assign each patch
to the codebook vector of highest cosine similarity in pixel space; they differ only in the codebook:

- "random_projection" (the paper's default): `vocab_size` vectors with i.i.d. uniform components;
- "random_patches": `vocab_size` patches sampled from the pre-training images (`fit`);
- "kmeans": spherical mini-batch k-means centroids of 3 million sampled patches (`fit`).

"dalle" is BEiT's tokenizer, the encoder of OpenAI's DALL-E dVAE, whose weights the user supplies.

Every tokenizer maps normalised images [B, C, H, W] (what the ViT sees) to ids [B, (H/p)*(W/p)] in the row-major
order of timm's PatchEmbed. A patch is flattened channel-last, [p, p, C] -> C*p*p, by `patchify`. Codebooks are
buffers, so they are saved in checkpoints, and everything random draws from a local generator seeded by `seed`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "TOKENIZERS",
    "CosineTokenizer",
    "DalleTokenizer",
    "KMeansTokenizer",
    "RandomPatchesTokenizer",
    "RandomProjectionTokenizer",
    "Tokenizer",
    "create_tokenizer",
    "patchify",
]

# Largest [rows, vocab] float32 similarity block computed at once (8192 rows for a 8192-word vocabulary).
_SIM_BYTES = 256 * 2**20
DALLE_URL = "https://cdn.openai.com/dall-e/encoder.pkl"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """[B, C, H, W] -> [B, (H/p)*(W/p), p*p*C]: row-major over the patch grid (timm's PatchEmbed order)."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def _unit(x: Tensor, center: bool) -> Tensor:
    """Rows [M, D] made zero-mean (if `center`) and L2-normalised; an all-zero row stays zero."""
    if center:
        x = x - x.mean(dim=-1, keepdim=True)
    return F.normalize(x, dim=-1)


def _batches(images: Tensor | Iterable) -> Iterable[Tensor]:
    """A tensor is one batch; an iterable yields batches, or (images, labels) pairs as data loaders do."""
    if isinstance(images, Tensor):
        yield images
        return
    for batch in images:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


class Tokenizer(nn.Module):
    """Base class: `forward(images [B, C, H, W]) -> ids long [B, N]`, ids in [0, vocab_size)."""

    needs_fit: ClassVar[bool] = False

    def __init__(self, vocab_size: int, patch_size: int, in_chans: int) -> None:
        super().__init__()
        self.vocab_size, self.patch_size, self.in_chans = vocab_size, patch_size, in_chans

    def fit(
        self,
        images: Tensor | Iterable[Tensor],
        num_patches: int | None = None,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> None:
        """Build the codebook from pre-training images; a no-op for tokenizers that need no data."""

    def _grid(self, images: Tensor) -> tuple[int, int]:
        if images.ndim != 4 or images.shape[1] != self.in_chans:
            raise ValueError(f"expected images [B, {self.in_chans}, H, W], got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}")
        return h // self.patch_size, w // self.patch_size


def _refresh_fitted(module: CosineTokenizer, incompatible_keys) -> None:
    module._fitted = bool(module.fitted)


class CosineTokenizer(Tokenizer):
    """A codebook [V, C*p*p] in normalised pixel space; each patch gets the id of the most cosine-similar row.

    Args:
        vocab_size, patch_size, in_chans: vocabulary V and patch geometry.
        center: subtract each patch's (and codebook row's) mean before the cosine, i.e. a Pearson correlation. An
            assumption knob, off by default: the paper does not say how pixels are normalised before the cosine.
        seed: seeds the local generator behind every random draw.
        chunk_rows: patches per similarity block; the default keeps a [rows, V] float32 block under 256 MB.
    """

    def __init__(
        self,
        vocab_size: int = 8192,
        patch_size: int = 16,
        in_chans: int = 3,
        center: bool = False,
        seed: int = 0,
        chunk_rows: int | None = None,
    ) -> None:
        super().__init__(vocab_size, patch_size, in_chans)
        self.center, self.seed = center, seed
        self.chunk_rows = chunk_rows or max(1, _SIM_BYTES // (4 * vocab_size))
        # Raw rows (e.g. the actual sampled patches); normalised on use, which costs V*D next to the N*V*D matmul.
        self.register_buffer("codebook", torch.zeros(vocab_size, in_chans * patch_size**2))
        self.register_buffer("fitted", torch.tensor(not self.needs_fit))
        # A host copy of `fitted`, so forward never waits for the device; a checkpoint load refreshes it.
        self._fitted = not self.needs_fit
        self.register_load_state_dict_post_hook(_refresh_fitted)

    def _nearest(self, units: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
        """Max cosine and its row for unit patches [M, D] against a unit codebook [V, D]: ([M], long [M])."""
        sims, ids = zip(*[(u @ codebook.T).max(dim=1) for u in units.split(self.chunk_rows)])
        return torch.cat(sims), torch.cat(ids)

    def _nearest_raw(self, patches: Tensor) -> tuple[Tensor, Tensor]:
        """As `_nearest` for raw patches [M, D], normalising one chunk at a time (no second full copy)."""
        codebook = _unit(self.codebook.float(), self.center)
        out = [self._nearest(_unit(x, self.center), codebook) for x in patches.float().split(self.chunk_rows)]
        sims, ids = zip(*out)
        return torch.cat(sims), torch.cat(ids)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Normalised images [B, C, H, W] -> ids long [B, (H/p)*(W/p)]."""
        self._grid(images)
        if not self._fitted:
            raise RuntimeError(f"{type(self).__name__} has no codebook yet: call fit() with pre-training images first")
        # float32 even under autocast: bf16 cosines would flip near-ties between codebook rows.
        with torch.autocast(device_type=images.device.type, enabled=False):
            patches = patchify(images.float(), self.patch_size).flatten(0, 1)
            _, ids = self._nearest_raw(patches)
        return ids.view(images.shape[0], -1)

    @torch.no_grad()
    def quantisation_error(self, patches: Tensor) -> float:
        """Mean (1 - max cosine) of raw patches [..., D] (as `patchify` makes them) against the codebook."""
        sims, _ = self._nearest_raw(patches.reshape(-1, self.codebook.shape[1]).to(self.codebook.device))
        return float((1 - sims).mean())

    @torch.no_grad()
    def _sample_patches(self, images: Tensor | Iterable, count: int, generator: torch.Generator) -> Tensor:
        """Up to `count` patches [n, D], uniform without replacement over every (image, position) of the data.

        Streaming reservoir: each patch gets an i.i.d. uniform key and the `count` smallest keys are kept, so one
        pass over a data loader suffices and memory stays at `count` patches. Keys come from the CPU generator, so
        the sample depends only on the seed and the data order. The reservoir lives on the tokenizer's device.
        """
        device, buf, keys, filling, n = self.codebook.device, None, None, [], 0
        for batch in _batches(images):
            self._grid(batch)
            x = patchify(batch.to(device, torch.float32), self.patch_size).flatten(0, 1)
            k = torch.rand(len(x), generator=generator).to(device)
            if buf is None:  # filling: keep everything until `count` patches have been seen
                filling.append((x, k))
                n += len(x)
                if n < count:
                    continue
                x, k = (torch.cat(t) for t in zip(*filling))
                buf, keys, x, k, filling = x[:count].clone(), k[:count].clone(), x[count:], k[count:], []
            if len(x):
                # Only the reservoir's len(x) largest keys can be evicted: keep the smallest of those and the new.
                old_keys, slots = keys.topk(min(len(x), count))
                pool_keys = torch.cat([old_keys, k])
                win = pool_keys.topk(len(slots), largest=False).indices
                buf[slots] = torch.cat([buf[slots], x])[win]
                keys[slots] = pool_keys[win]
        if buf is None:  # the data holds fewer than `count` patches: all of them
            return torch.cat([x for x, _ in filling]) if filling else torch.empty(0, self.codebook.shape[1])
        return buf

    def _generator(self, generator: torch.Generator | None) -> torch.Generator:
        return generator if generator is not None else torch.Generator().manual_seed(self.seed)

    def _set_codebook(self, codebook: Tensor) -> None:
        self.codebook.copy_(codebook)
        self.fitted.fill_(True)
        self._fitted = True


class RandomProjectionTokenizer(CosineTokenizer):
    """The paper's default: `vocab_size` random vectors with i.i.d. components uniform in [low, high].

    The paper says "uniform component-wise" [SUPP] but gives neither the range nor the pixel normalisation. Assumed
    here: components in [-1, 1] (zero-mean, like the normalised pixels they are compared with), against the
    mean/std-normalised patches the ViT sees. With e.g. [0, 1] every codebook row would lie in the positive orthant.

    Args:
        low, high: the uniform range; other arguments as `CosineTokenizer`.
    """

    def __init__(
        self,
        vocab_size: int = 8192,
        patch_size: int = 16,
        in_chans: int = 3,
        low: float = -1.0,
        high: float = 1.0,
        center: bool = False,
        seed: int = 0,
        chunk_rows: int | None = None,
    ) -> None:
        super().__init__(vocab_size, patch_size, in_chans, center, seed, chunk_rows)
        g = torch.Generator().manual_seed(seed)
        self.codebook.copy_(torch.rand(self.codebook.shape, generator=g) * (high - low) + low)
        self.low, self.high = low, high


class RandomPatchesTokenizer(CosineTokenizer):
    """Codebook = `vocab_size` patches sampled from the pre-training images [SUPP]; `fit` must be called first.

    The paper says the patches come "from different images"; here they are uniform over (image, position), which on
    ImageNet-size data puts almost every one in a different image.
    """

    needs_fit = True

    def fit(
        self,
        images: Tensor | Iterable[Tensor],
        num_patches: int | None = None,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> None:
        """Sample the codebook from `images` ([N, C, H, W] or an iterable of batches); `num_patches` is unused."""
        sample = self._sample_patches(images, self.vocab_size, self._generator(generator))
        if len(sample) < self.vocab_size:
            raise ValueError(f"the data has {len(sample)} patches, fewer than the vocabulary ({self.vocab_size})")
        self._set_codebook(sample)


class KMeansTokenizer(CosineTokenizer):
    """Codebook = spherical k-means centroids of patches sampled from the pre-training images [SUPP: 3M patches].

    The paper names neither the k-means variant nor its iterations. Here: mini-batch k-means (Sculley, 2010) on the
    unit sphere, so training matches the cosine assignment: centroids start at random sampled patches, each mini-batch
    moves a centre to the running mean of all the patches it has won (per-centre learning rate 1/count), and centres
    are re-normalised after every step. A centre that wins nothing in a window of ~10 expected hits per centre is
    dead: it is re-seeded at a random sampled patch and its count reset.
    """

    needs_fit = True

    @torch.no_grad()
    def fit(
        self,
        images: Tensor | Iterable[Tensor],
        num_patches: int = 3_000_000,
        generator: torch.Generator | None = None,
        iters: int = 300,
        batch_size: int = 16384,
        **kwargs,
    ) -> None:
        """Run k-means on `num_patches` patches of `images` (capped at what the data holds), on this module's device.

        Args:
            images: [N, C, H, W] or an iterable of batches (read once).
            num_patches: patches to sample; 3M at 16x16x3 is 9.2 GB of float32.
            generator: CPU generator for every draw; a fresh one seeded with `seed` if None.
            iters: mini-batch steps (0 keeps the random-patch initialisation).
            batch_size: patches per step.
        """
        g = self._generator(generator)
        x = self._sample_patches(images, num_patches, g)
        n, v = len(x), self.vocab_size
        if n < v:
            raise ValueError(f"the data has {n} patches, fewer than the vocabulary ({v})")
        for chunk in x.split(self.chunk_rows):  # to the unit sphere, in place: x may be gigabytes
            chunk.copy_(_unit(chunk, self.center))

        def pick(count: int) -> Tensor:
            return torch.randint(n, (count,), generator=g).to(x.device)

        centres = x[torch.randperm(n, generator=g)[:v].to(x.device)].clone()
        counts = torch.zeros(v, device=x.device)
        hits = torch.zeros(v, device=x.device)
        window = math.ceil(10 * v / batch_size)
        for it in range(iters):
            xb = x[pick(batch_size)]
            _, assign = self._nearest(xb, centres)
            won = torch.bincount(assign, minlength=v).float()
            sums = torch.zeros_like(centres).index_add_(0, assign, xb)
            # Sequential updates with rate 1/count amount to a running mean: (count * c + sum) / (count + won).
            total = counts + won
            moved = (counts[:, None] * centres + sums) / total.clamp_min(1)[:, None]
            centres = F.normalize(torch.where(won[:, None] > 0, moved, centres), dim=1)
            counts, hits = total, hits + won
            if (it + 1) % window == 0:
                # Drawn for every centre and applied with `where`, so the host never waits on the dead count.
                dead = hits == 0
                centres = torch.where(dead[:, None], x[pick(v)], centres)
                counts = torch.where(dead, 0.0, counts)
                hits.zero_()
        self._set_codebook(centres)


class _Conv(nn.Module):
    """The dVAE's convolution: 'same' padding, weight `w` and bias `b` (the official checkpoint's names).

    They are buffers, not parameters: the tokenizer is frozen, so they must not reach an optimiser, DDP or a
    parameter count, and the state-dict keys are the same either way. `g=None` leaves them uninitialised
    (weights are about to be loaded); otherwise the official init, N(0, 1/fan_in) and zero bias.
    """

    def __init__(self, n_in: int, n_out: int, kw: int, g: torch.Generator | None) -> None:
        super().__init__()
        shape = (n_out, n_in, kw, kw)
        w = torch.randn(shape, generator=g) / math.sqrt(n_in * kw**2) if g is not None else torch.empty(shape)
        self.register_buffer("w", w)
        self.register_buffer("b", torch.zeros(n_out))

    def forward(self, x: Tensor) -> Tensor:
        # float32 even if the module was cast (e.g. `.half()`), like every tokenizer here.
        return F.conv2d(x, self.w.float(), self.b.float(), padding=(self.w.shape[-1] - 1) // 2)


class _EncoderBlock(nn.Module):
    """id_path(x) + post_gain * res_path(x); res_path = 3 x (ReLU, 3x3 conv) then ReLU, 1x1 conv, width n_out/4."""

    def __init__(self, n_in: int, n_out: int, n_layers: int, g: torch.Generator | None) -> None:
        super().__init__()
        n_hid = n_out // 4
        self.post_gain = 1 / n_layers**2
        self.id_path = _Conv(n_in, n_out, 1, g) if n_in != n_out else nn.Identity()
        shapes = [(n_in, n_hid, 3), (n_hid, n_hid, 3), (n_hid, n_hid, 3), (n_hid, n_out, 1)]
        layers = OrderedDict()
        for i, shape in enumerate(shapes, 1):
            layers[f"relu_{i}"], layers[f"conv_{i}"] = nn.ReLU(), _Conv(*shape, g)
        self.res_path = nn.Sequential(layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


class DalleTokenizer(Tokenizer):
    """BEiT's tokenizer: argmax of the DALL-E dVAE encoder's logits (github openai/DALL-E, `dall_e/encoder.py`).

    Architecture (n_hid=256, 2 blocks per group): 7x7 input conv 3 -> 256; groups of widths 256, 512, 1024, 2048, a
    2x2 max-pool after each of the first three (8x downsampling); ReLU and a 1x1 conv to 8192 logits. State-dict keys
    equal the official encoder's (`blocks.input.w`, `blocks.group_1.block_1.res_path.conv_1.w`, `blocks.output.conv.b`).

    The dVAE reads [0, 1] pixels, so the ViT's normalised images are un-normalised with `mean`/`std`, clamped, grey
    repeated to RGB, resized (bilinear, antialiased) to 8x the patch grid and squeezed by `map_pixels`. Assumption:
    the grid-x-8 resize mirrors BEiT, which feeds the dVAE a 112x112 second view of each 224x224 crop (patch 16).
    The official code runs its convs in float16 on CUDA; this runs float32, so near-tied logits may differ.

    Args:
        weights: `.safetensors` or a torch state-dict file converted from the official `encoder.pkl` by
            `scripts/convert_dalle.py`. Nothing is ever downloaded.
        allow_random_init: with `weights=None`, build a randomly initialised encoder. For tests only.
        mean, std: the normalisation to undo; ImageNet's by default (required for in_chans=1).
        seed: seeds the random init.
        n_hid: width of the first group; the official encoder has 256 (smaller only for fast tests).
    """

    def __init__(
        self,
        vocab_size: int = 8192,
        patch_size: int = 16,
        in_chans: int = 3,
        weights: str | Path | None = None,
        allow_random_init: bool = False,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        seed: int = 0,
        n_hid: int = 256,
    ) -> None:
        super().__init__(vocab_size, patch_size, in_chans)
        if (weights is None and not allow_random_init) or (weights is not None and not Path(weights).is_file()):
            missing = (
                f"{str(weights)!r} does not exist"
                if weights
                else "none given (expected weights='dalle_encoder.safetensors')"
            )
            raise FileNotFoundError(
                f"the DALL-E tokenizer needs the dVAE encoder weights file: {missing}. Download the official encoder "
                f"{DALLE_URL} yourself and convert it with `python scripts/convert_dalle.py encoder.pkl "
                "dalle_encoder.safetensors`; this code never downloads anything."
            )
        if weights is not None and vocab_size != 8192:
            raise ValueError(f"the DALL-E encoder has a vocabulary of 8192, got vocab_size={vocab_size}")
        if in_chans not in (1, 3):
            raise ValueError(f"the DALL-E encoder reads grey or RGB images, got in_chans={in_chans}")
        if mean is None or std is None:
            if in_chans != 3:
                raise ValueError("pass the mean= and std= the grey images were normalised with")
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        if len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(f"mean and std need {in_chans} values, got {mean} and {std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

        g = torch.Generator().manual_seed(seed) if weights is None else None
        n_blk, n_layers = 2, 4 * 2  # 4 groups of 2 blocks; post_gain = 1 / n_layers**2
        groups, width = [("input", _Conv(3, n_hid, 7, g))], n_hid
        for i, mult in enumerate((1, 2, 4, 8), 1):
            blocks = []
            for j in range(1, n_blk + 1):
                blocks.append((f"block_{j}", _EncoderBlock(width, mult * n_hid, n_layers, g)))
                width = mult * n_hid
            if i < 4:
                blocks.append(("pool", nn.MaxPool2d(kernel_size=2)))
            groups.append((f"group_{i}", nn.Sequential(OrderedDict(blocks))))
        groups.append(("output", nn.Sequential(OrderedDict(relu=nn.ReLU(), conv=_Conv(width, vocab_size, 1, g)))))
        self.blocks = nn.Sequential(OrderedDict(groups))
        if weights is not None:
            self.load_state_dict(_load_weights(weights))

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Normalised images [B, C, H, W] -> ids long [B, (H/p)*(W/p)]."""
        gh, gw = self._grid(images)
        with torch.autocast(device_type=images.device.type, enabled=False):
            x = (images.float() * self.std + self.mean).clamp(0, 1).expand(-1, 3, -1, -1)
            if x.shape[-2:] != (gh * 8, gw * 8):
                x = F.interpolate(x, size=(gh * 8, gw * 8), mode="bilinear", align_corners=False, antialias=True)
            logits = self.blocks((1 - 2 * 0.1) * x + 0.1)  # map_pixels: keep away from the logit-Laplace edges
        return logits.argmax(dim=1).flatten(1)


def _load_weights(path: str | Path) -> dict[str, Tensor]:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


TOKENIZERS: dict[str, type[Tokenizer]] = {
    "random_projection": RandomProjectionTokenizer,
    "random_patches": RandomPatchesTokenizer,
    "kmeans": KMeansTokenizer,
    "dalle": DalleTokenizer,
}


def create_tokenizer(name: str, vocab_size: int = 8192, patch_size: int = 16, in_chans: int = 3, **kwargs) -> Tokenizer:
    """Build a tokenizer by name (a key of `TOKENIZERS`); `kwargs` go to its constructor (seed, weights, ...)."""
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; valid: {', '.join(TOKENIZERS)}")
    return TOKENIZERS[name](vocab_size=vocab_size, patch_size=patch_size, in_chans=in_chans, **kwargs)
