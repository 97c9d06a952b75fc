"""Image transforms for pre-training (SplitMask/BEiT views, DINO multi-crop), fine-tuning and evaluation.

Every transform is a picklable object (no lambdas), so it runs in data-loader workers. Every random draw comes from
the global RNGs of torch (torchvision's transforms, the mask seed), python's `random` (blur, solarisation, timm's
RandAugment) and numpy (timm's RandAugment op choice): seeding those three per sample makes a sample's views, and so a
resumed run, exactly reproducible. Grey (1-channel) images go through every transform; the colour operations that
need RGB (saturation, hue, greyscale conversion) are skipped for them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from timm.data import auto_augment, create_transform
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import functional as F

__all__ = [
    "ColorJitter",
    "GaussianBlur",
    "MaskedView",
    "MultiCropTransform",
    "RGBOnly",
    "RandomResizedCrop",
    "Solarization",
    "ToNormalizedTensor",
    "eval_transform",
    "finetune_transform",
    "pretrain_transform",
]


def _is_grey(img: Image.Image | Tensor) -> bool:
    return F.get_image_num_channels(img) == 1


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks


class ColorJitter(T.ColorJitter):
    """torchvision's `ColorJitter` that leaves out saturation and hue on 1-channel images (they need colour)."""

    def forward(self, img: Image.Image | Tensor) -> Image.Image | Tensor:
        grey = _is_grey(img)
        order, b, c, s, h = self.get_params(
            self.brightness, self.contrast, None if grey else self.saturation, None if grey else self.hue
        )
        for op in order.tolist():
            if op == 0 and b is not None:
                img = F.adjust_brightness(img, b)
            elif op == 1 and c is not None:
                img = F.adjust_contrast(img, c)
            elif op == 2 and s is not None:
                img = F.adjust_saturation(img, s)
            elif op == 3 and h is not None:
                img = F.adjust_hue(img, h)
        return img


class RGBOnly:
    """Apply `transform` to colour images only; 1-channel images pass through (e.g. random greyscale)."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, img: Image.Image | Tensor) -> Image.Image | Tensor:
        return img if _is_grey(img) else self.transform(img)

    def __repr__(self) -> str:
        return f"RGBOnly({self.transform})"


class GaussianBlur:
    """DINO's PIL Gaussian blur: with probability `p`, blur with a radius drawn uniformly in `sigma` (python RNG)."""

    def __init__(self, p: float = 0.5, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.p, self.sigma = p, tuple(sigma)

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))

    def __repr__(self) -> str:
        return f"GaussianBlur(p={self.p}, sigma={self.sigma})"


class Solarization:
    """DINO's solarisation: with probability `p`, invert the pixels at or above `threshold` (python RNG)."""

    def __init__(self, p: float = 0.2, threshold: int = 128) -> None:
        self.p, self.threshold = p, threshold

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img, self.threshold) if random.random() < self.p else img

    def __repr__(self) -> str:
        return f"Solarization(p={self.p}, threshold={self.threshold})"


def _interpolation(name: str) -> T.InterpolationMode:
    return T.InterpolationMode(name)  # "bicubic", "bilinear", "nearest", ...


class RandomResizedCrop:
    """torchvision's `RandomResizedCrop` (same sampling, same fallback), made cheap for small images.

    All random numbers come from one draw of torch's global RNG, and a PIL image is cropped and resized in one
    antialiased PIL call (`resize(box=...)`): about 8x faster than torchvision's at 28 px, where the per-call overhead
    dominates. Tensors go through torchvision's `resized_crop`.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        interpolation: str = "bicubic",
    ) -> None:
        self.size, self.scale, self.ratio, self.interpolation = size, tuple(scale), tuple(ratio), interpolation

    def get_params(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the crop: ten tries at a random area and log-uniform aspect ratio, then the
        central crop at the nearest allowed ratio, as torchvision does."""
        u = torch.rand(22).tolist()  # 10 x (area, log-ratio) + (top, left)
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for k in range(10):
            area = width * height * (self.scale[0] + u[2 * k] * (self.scale[1] - self.scale[0]))
            aspect = math.exp(log_ratio[0] + u[2 * k + 1] * (log_ratio[1] - log_ratio[0]))
            w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < w <= width and 0 < h <= height:
                return int(u[20] * (height - h + 1)), int(u[21] * (width - w + 1)), h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, round(width / min(self.ratio))
        elif in_ratio > max(self.ratio):
            w, h = round(height * max(self.ratio)), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img: Image.Image | Tensor) -> Image.Image | Tensor:
        width, height = F.get_image_size(img)
        top, left, h, w = self.get_params(width, height)
        if isinstance(img, Image.Image):
            resample = F.pil_modes_mapping[_interpolation(self.interpolation)]
            return img.resize((self.size, self.size), resample, box=(left, top, left + w, top + h))
        return F.resized_crop(img, top, left, h, w, [self.size, self.size], _interpolation(self.interpolation))

    def __repr__(self) -> str:
        return f"RandomResizedCrop({self.size}, scale={self.scale}, ratio={self.ratio}, {self.interpolation})"


class ToNormalizedTensor:
    """`ToTensor` + `Normalize` in one numpy pass: PIL image (H, W[, C]) uint8 -> float32 [C, H, W]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        # (x / 255 - mean) / std  ==  x * scale + shift
        self._scale = (1.0 / (255.0 * np.asarray(std, np.float32)))[:, None, None].astype(np.float32)
        self._shift = (-np.asarray(mean, np.float32) / np.asarray(std, np.float32))[:, None, None].astype(np.float32)

    def __call__(self, img: Image.Image) -> Tensor:
        if not isinstance(img, Image.Image) or img.mode not in ("L", "RGB"):
            return F.normalize(F.to_tensor(img), self.mean, self.std)
        x = np.asarray(img, dtype=np.float32)
        x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
        if x.shape[0] != len(self.mean):
            raise ValueError(f"a {x.shape[0]}-channel image with {len(self.mean)}-channel mean/std")
        return torch.from_numpy(np.ascontiguousarray(x * self._scale + self._shift))

    def __repr__(self) -> str:
        return f"ToNormalizedTensor(mean={self.mean}, std={self.std})"


def _colour_augment(
    color_jitter: Sequence[float], color_jitter_prob: float, grayscale_prob: float
) -> list[Callable[[Image.Image], Image.Image]]:
    """BYOL/DINO colour distortion: jitter with probability p, then random greyscale (RGB images only)."""
    ops: list[Callable] = []
    if color_jitter_prob > 0 and any(color_jitter):
        ops.append(T.RandomApply([ColorJitter(*color_jitter)], p=color_jitter_prob))
    if grayscale_prob > 0:
        ops.append(RGBOnly(T.RandomGrayscale(p=grayscale_prob)))
    return ops


def _to_tensor(mean: Sequence[float], std: Sequence[float]) -> list[Callable]:
    return [ToNormalizedTensor(mean, std)]


# ---------------------------------------------------------------------------------------------------------------------
# Pre-training views


def pretrain_transform(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    scale: tuple[float, float] = (0.08, 1.0),
    strong: bool = False,
    interpolation: str = "bicubic",
    *,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
    color_jitter_prob: float = 0.8,
    grayscale_prob: float = 0.2,
    blur_prob: float = 0.5,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    solarize_prob: float = 0.2,
) -> T.Compose:
    """The pre-training view of SplitMask and BEiT: PIL image -> float [C, img_size, img_size], normalised.

    Default (FACTS §3.1): RandomResizedCrop(`scale`) + horizontal flip only. `strong=True` adds what the paper uses on
    its smallest datasets (Cars, Clipart, Painting, Sketch): colour jitter, random greyscale, Gaussian blur and
    solarisation. The paper gives no parameters for them; **assumed** are the BYOL/DINO values: jitter
    brightness/contrast/saturation/hue 0.4/0.4/0.2/0.1 applied with p=0.8, greyscale p=0.2, blur p=0.5 with sigma in
    [0.1, 2.0] pixels, solarisation p=0.2 (threshold 128). Each is an argument. On grey images saturation, hue and
    greyscale are skipped. Note that sigma is in pixels, as in DINO at 224 px: at 28 px the same sigma blurs far more.
    """
    ops: list[Callable] = [
        RandomResizedCrop(img_size, scale=scale, ratio=ratio, interpolation=interpolation),
        T.RandomHorizontalFlip(hflip),
    ]
    if strong:
        ops += _colour_augment(color_jitter, color_jitter_prob, grayscale_prob)
        ops += [GaussianBlur(blur_prob, blur_sigma), Solarization(solarize_prob)]
    return T.Compose(ops + _to_tensor(mean, std))


class MaskedView:
    """A view and its patch mask: `img -> (transform(img), torch.from_numpy(mask_generator(rng)))`.

    `mask_generator` is any generator of `model.masking` (it takes a `numpy.random.Generator`). The generator's seed is
    drawn from torch's global RNG after the view, so seeding torch per sample makes the mask reproducible too.
    """

    def __init__(self, transform: Callable, mask_generator: Callable[[np.random.Generator], np.ndarray]) -> None:
        self.transform, self.mask_generator = transform, mask_generator

    def __call__(self, img: Image.Image) -> tuple[Tensor, Tensor]:
        view = self.transform(img)
        seed = int(torch.randint(0, 2**62, ()).item())
        return view, torch.from_numpy(self.mask_generator(np.random.default_rng(seed)))

    def __repr__(self) -> str:
        return f"MaskedView({self.transform}, {self.mask_generator})"


class MultiCropTransform:
    """DINO's multi-crop augmentation (`DataAugmentationDINO` of facebookresearch/dino): img -> list of
    `num_global + num_local` float tensors, the global crops [C, global_size, global_size] first.

    Each crop: RandomResizedCrop (bicubic) -> flip -> colour jitter (0.4/0.4/0.2/0.1, p=0.8) -> greyscale (p=0.2) ->
    Gaussian blur (sigma 0.1-2.0) -> [solarisation] -> normalise. The blur probability is 1.0 for the first global
    crop, 0.1 for the second and 0.5 for local crops; the second global crop is solarised with p=0.2. With more than two
    global crops (DINO has two) they alternate between the first and second recipe. Grey images skip saturation, hue
    and greyscale.
    """

    def __init__(
        self,
        global_size: int,
        local_size: int,
        num_global: int,
        num_local: int,
        global_scale: tuple[float, float],
        local_scale: tuple[float, float],
        mean: Sequence[float],
        std: Sequence[float],
        *,
        color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
        color_jitter_prob: float = 0.8,
        grayscale_prob: float = 0.2,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        global_blur_probs: tuple[float, float] = (1.0, 0.1),
        local_blur_prob: float = 0.5,
        global_solarize_probs: tuple[float, float] = (0.0, 0.2),
        interpolation: str = "bicubic",
    ) -> None:
        if num_global < 1:
            raise ValueError(f"num_global must be >= 1, got {num_global}")
        self.num_global, self.num_local = num_global, num_local
        colour = _colour_augment(color_jitter, color_jitter_prob, grayscale_prob)

        def crop(size: int, scale: tuple[float, float], blur: float, solarize: float) -> T.Compose:
            ops = [RandomResizedCrop(size, scale=scale, interpolation=interpolation), T.RandomHorizontalFlip(0.5)]
            ops += [*colour, GaussianBlur(blur, blur_sigma)]
            if solarize > 0:
                ops.append(Solarization(solarize))
            return T.Compose(ops + _to_tensor(mean, std))

        self.global_transforms = [
            crop(global_size, global_scale, global_blur_probs[i], global_solarize_probs[i]) for i in range(2)
        ]
        self.local_transform = crop(local_size, local_scale, local_blur_prob, 0.0)

    @classmethod
    def from_model(
        cls, dino: torch.nn.Module, mean: Sequence[float], std: Sequence[float], **kwargs
    ) -> MultiCropTransform:
        """The crops a `model.DINO` expects: its `num_*_crops`, `*_crop_size` and `*_crops_scale` attributes."""
        return cls(
            dino.global_crop_size,
            dino.local_crop_size,
            dino.num_global_crops,
            dino.num_local_crops,
            dino.global_crops_scale,
            dino.local_crops_scale,
            mean,
            std,
            **kwargs,
        )

    def __call__(self, img: Image.Image) -> list[Tensor]:
        crops = [self.global_transforms[i % 2](img) for i in range(self.num_global)]
        return crops + [self.local_transform(img) for _ in range(self.num_local)]

    def __repr__(self) -> str:
        return f"MultiCropTransform({self.num_global} global + {self.num_local} local)"


# ---------------------------------------------------------------------------------------------------------------------
# Fine-tuning and evaluation (timm, as DeiT/BEiT and so the paper's Table 7 recipe)


def _posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize, with the old Pillow meaning of keeping 0 bits (a black image).

    timm's "PosterizeIncreasing" asks for 0 bits at the top of the magnitude range (m=9, mstd=0.5 reaches it in ~0.4%
    of calls); Pillow 13 (installed here) raises ValueError there, where older versions (those of the DeiT/BEiT runs)
    returned a black image.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _patch_posterize(transform: T.Compose) -> T.Compose:
    for t in transform.transforms:
        ops = list(getattr(t, "ops", [])) + [op for sub in getattr(t, "policy", []) for op in sub]
        for op in ops:
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = _posterize
    return transform


def finetune_transform(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    color_jitter: float | None = 0.4,
    reprob: float = 0.25,
    remode: str = "pixel",
    recount: int = 1,
    interpolation: str = "bicubic",
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
) -> T.Compose:
    """The fine-tuning transform of FACTS §3.2 (Table 7), built by `timm.data.create_transform(is_training=True)`.

    RandomResizedCrop(`scale`) + flip + RandAugment (`auto_augment`: m9/mstd0.5 for Cars and DomainNet, use
    "rand-m7-mstd0.5-inc1" for iNat and Food-101) + normalise + random erasing. As in DeiT and BEiT (timm), colour
    jitter is ignored while a RandAugment policy is set; it applies only with `auto_augment=None`. Random erasing is
    not in Table 7: `reprob=0.25` (pixel mode, one region) is the DeiT/timm default, an **assumption**. Works on grey
    images (timm's RandAugment handles PIL "L"). Mixup/cutmix act on batches and belong to the training loop.
    """
    transform = create_transform(
        img_size,
        is_training=True,
        scale=scale,
        ratio=ratio,
        hflip=hflip,
        color_jitter=color_jitter,
        auto_augment=auto_augment,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
        re_prob=reprob,
        re_mode=remode,
        re_count=recount,
    )
    return _patch_posterize(transform)


def eval_transform(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
) -> T.Compose:
    """Evaluation: resize the short side to img_size / crop_pct, centre-crop img_size, normalise (timm)."""
    return create_transform(
        img_size,
        is_training=False,
        crop_pct=crop_pct,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
    )
