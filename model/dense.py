"""COCO detection and instance segmentation on the ViT encoders: Mask R-CNN with a multi-scale ViT backbone.

The paper fine-tunes its encoders on COCO with Mask R-CNN (FACTS §3.3), following XCiT's detection code: four
intermediate blocks of the ViT (3, 5, 7, 11 for a 12-block ViT) are turned into a feature pyramid by a small
adapter (deconvolutions up, max-pool down) and a standard FPN. Here the detector is torchvision's `MaskRCNN`:

    import model
    from model.dense import mask_rcnn, sync_batchnorm

    encoder = model.vit("base", pos_embed="sincos", dynamic_img_size=True)  # any input size, multiple of 16
    detector = mask_rcnn(encoder, num_classes=91, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    detector = sync_batchnorm(detector)  # before DistributedDataParallel
    losses = detector(images, targets)  # train mode: dict of the five Mask R-CNN losses
    detections = detector(images)  # eval mode: per image {"boxes", "labels", "scores", "masks"}

`Detector` is the same Mask R-CNN as a method of the training loop (`harness train detect`): `forward(images,
targets)` returns the summed losses and each of them to log, `predict(images)` the detections.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from model.method import Method
from model.vit import ViT

__all__ = ["Detector", "ViTPyramid", "freeze_unread", "mask_rcnn", "sync_batchnorm"]


class ViTPyramid(nn.Module):
    """Four ViT blocks as a feature pyramid, then an FPN: images [B, C, H, W] -> OrderedDict of NCHW maps.

    The blocks' patch tokens (prefix tokens dropped, no final norm: XCiT takes the raw residual stream) are laid
    out on the patch grid (stride p, the patch size) and resized by XCiT's adapter to strides p/4, p/2, p and 2p:
    for ViT-*/16 the usual 4, 8, 16, 32. The adapter is the same for any patch size, so the levels stay where they
    are relative to the patch (patch 4: strides 1, 2, 4, 8):

        stride p/4: ConvTranspose2d(2, 2) -> BatchNorm2d -> GELU -> ConvTranspose2d(2, 2)
        stride p/2: ConvTranspose2d(2, 2)
        stride p:   identity
        stride 2p:  MaxPool2d(2)

    The FPN (torchvision's, with a max-pooled extra level) returns keys '0', '1', '2', '3' (strides p/4 .. 2p) and
    'pool' (stride 4p), each with `out_channels` channels: what `MaskRCNN` expects.

    Args:
        encoder: the ViT; it must accept any input size (`dynamic_img_size=True`), since Mask R-CNN resizes and pads
            every batch differently. H and W must be multiples of 2p so that the stride-2p level is exact.
        indices: the four blocks (0-indexed, increasing; negative counts from the end), shallow to deep. The
            paper's (3, 5, 7, 11) need a 12-block ViT; a 4-block micro ViT takes (0, 1, 2, 3).
        out_channels: FPN width; None: no FPN, `forward` returns the adapter's four maps (UperNet has its own).
    """

    def __init__(self, encoder: ViT, indices: Sequence[int] = (3, 5, 7, 11), out_channels: int | None = 256) -> None:
        super().__init__()
        if not encoder.dynamic_img_size:
            # Without it timm's patch embedding asserts the input is img_size x img_size and returns flat tokens;
            # we do not flip it behind the caller's back: build the encoder with it.
            raise ValueError("the ViT must be built with dynamic_img_size=True: Mask R-CNN feeds it any image size")
        depth = len(encoder.blocks)
        if len(indices) != 4 or any(not -depth <= i < depth for i in indices):
            raise ValueError(f"indices must be 4 blocks of the {depth}-block ViT, got {list(indices)}")
        self.indices = [i % depth for i in indices]
        if any(a >= b for a, b in zip(self.indices, self.indices[1:])):
            raise ValueError(f"indices must be increasing (shallow to deep), got {list(indices)}")
        self.encoder = encoder
        dim = encoder.embed_dim
        self.adapter = nn.ModuleList(
            [
                nn.Sequential(
                    nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
                    nn.BatchNorm2d(dim),
                    nn.GELU(),
                    nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
                ),
                nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
                nn.Identity(),
                nn.MaxPool2d(kernel_size=2, stride=2),
            ]
        )
        self.fpn = None
        if out_channels is not None:
            self.fpn = FeaturePyramidNetwork([dim] * 4, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def blocks(self, x: Tensor) -> list[Tensor]:
        """The chosen blocks' patch tokens as maps on the patch grid: 4 x [B, D, H/p, W/p]."""
        # stop_early: blocks after the deepest one asked for are not run (timm runs them all otherwise).
        return self.encoder.forward_intermediates(
            x, indices=self.indices, intermediates_only=True, output_fmt="NCHW", stop_early=True
        )

    def features(self, x: Tensor) -> list[Tensor]:
        """The adapter's four maps, at strides p/4, p/2, p, 2p: 4 x [B, D, ., .]."""
        return [f(y) for f, y in zip(self.adapter, self.blocks(x))]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor] | list[Tensor]:
        maps = self.features(x)
        return maps if self.fpn is None else self.fpn(OrderedDict((str(i), y) for i, y in enumerate(maps)))


def mask_rcnn(
    encoder: ViT,
    num_classes: int | None,
    indices: Sequence[int] = (3, 5, 7, 11),
    out_channels: int = 256,
    min_size: int | tuple[int, ...] = tuple(range(480, 801, 32)),
    max_size: int = 1333,
    **kwargs,
) -> MaskRCNN:
    """torchvision's Mask R-CNN on a `ViTPyramid` of `encoder`.

    torchvision's defaults fit the five pyramid levels as they are: the anchor generator has one anchor size per
    level (32, 64, 128, 256, 512 on '0' .. 'pool', 3 aspect ratios each) and the box and mask RoIAlign pool from
    '0' .. '3'. Training picks the shorter side at random from `min_size` (multi-scale, as XCiT's 480..800 step 32);
    evaluation uses its last value.

    Args:
        encoder: the ViT (built with `dynamic_img_size=True`).
        num_classes: classes including the background, as torchvision counts them (COCO: 91 = 90 ids + 1); None
            when `box_predictor` and `mask_predictor` are given in `kwargs`.
        indices, out_channels: see `ViTPyramid`.
        min_size, max_size: the resize of `GeneralizedRCNNTransform`.
        **kwargs: to `MaskRCNN`; pass `image_mean` and `image_std`, the encoder's data normalisation (torchvision
            otherwise uses ImageNet's, three channels). `size_divisible` (the batch padding) defaults to
            lcm(32, 2 * patch): 32 for patch 4, 8 or 16, so that the padded sides are multiples of the patch and
            of the stride-2p level.
    """
    kwargs.setdefault("size_divisible", math.lcm(32, 2 * encoder.patch_size))
    backbone = ViTPyramid(encoder, indices=indices, out_channels=out_channels)
    return MaskRCNN(backbone, num_classes=num_classes, min_size=min_size, max_size=max_size, **kwargs)


def freeze_unread(encoder: ViT, indices: Sequence[int]) -> None:
    """Freeze what a dense head never reads: the blocks after the deepest of `indices` (not even run) and the final
    norm (the maps are the raw residual stream). They would get no gradient, which DDP reports as an error unless
    told to search for unused parameters at every step; frozen, they are left out of DDP and of the optimiser."""
    deepest = max(i % len(encoder.blocks) for i in indices)
    for name, p in encoder.named_parameters():
        block = re.match(r"blocks\.(\d+)\.", name)
        if name.startswith(("norm.", "fc_norm.", "head.")) or (block and int(block.group(1)) > deepest):
            p.requires_grad_(False)


class Detector(Method):
    """Mask R-CNN on a ViT as a method of the training loop: `forward(images, targets)` -> (loss, logs).

    `images` is a list of float [C, H, W] in [0, 1] (any sizes: Mask R-CNN resizes to `min_size` / `max_size`,
    normalises with `image_mean` / `image_std` and pads), `targets` a list of {"boxes" XYXY [N, 4], "labels" [N] in
    1..num_classes, "masks" [N, H, W]}. The loss is the sum of Mask R-CNN's five (RPN objectness and box, RoI
    classification, box and mask), each logged. `predict(images)` gives the eval-mode detections in the input
    images' pixels.

    Args:
        encoder: the ViT (`dynamic_img_size=True`), fresh or pre-trained.
        num_classes: object categories; the box classifier has `num_classes + 1` outputs (0: background).
        indices, fpn_channels: see `ViTPyramid`.
        min_size, max_size: Mask R-CNN's resize (multi-scale training; the test uses `min_size[-1]`).
        box_head_dim: width of the two-layer box head (torchvision's 1024).
        mask_head_dim: width of the four mask-head convolutions (256).
        rpn_post_nms_train, rpn_post_nms_test: proposals kept per image after the RPN's NMS.
        box_batch_size_per_image: RoIs sampled per image for the box and mask heads' losses (mmdet's and
            torchvision's 512, a quarter positive): what a training step costs per image, whatever its size.
        detections_per_img: detections kept per image at test time.
        image_mean, image_std: the data's normalisation (one value per channel).
    """

    views = "detection"
    labelled = True
    takes_encoder = True

    def __init__(
        self,
        encoder: ViT,
        num_classes: int = 80,
        indices: Sequence[int] = (3, 5, 7, 11),
        fpn_channels: int = 256,
        min_size: Sequence[int] = tuple(range(480, 801, 32)),
        max_size: int = 1333,
        box_head_dim: int = 1024,
        mask_head_dim: int = 256,
        rpn_post_nms_train: int = 2000,
        rpn_post_nms_test: int = 1000,
        box_batch_size_per_image: int = 512,
        detections_per_img: int = 100,
        image_mean: Sequence[float] = (0.485, 0.456, 0.406),
        image_std: Sequence[float] = (0.229, 0.224, 0.225),
    ) -> None:
        super().__init__()
        if len(image_mean) != encoder.patch_embed.proj.in_channels or len(image_std) != len(image_mean):
            raise ValueError(
                f"image_mean / image_std need one value per input channel ({encoder.patch_embed.proj.in_channels}), "
                f"got {list(image_mean)} / {list(image_std)}"
            )
        freeze_unread(encoder, indices)
        resolution = 7  # torchvision's box RoIAlign output
        # The heads are torchvision's defaults at these widths; its constructor would hard-code 1024 and 256 for the
        # predictors, so they are built here too (num_classes then goes to them, not to MaskRCNN).
        self.detector = mask_rcnn(
            encoder,
            num_classes=None,
            indices=indices,
            out_channels=fpn_channels,
            min_size=tuple(min_size),
            max_size=max_size,
            image_mean=list(image_mean),
            image_std=list(image_std),
            box_head=TwoMLPHead(fpn_channels * resolution**2, box_head_dim),
            box_predictor=FastRCNNPredictor(box_head_dim, num_classes + 1),
            mask_head=MaskRCNNHeads(fpn_channels, [mask_head_dim] * 4, 1),
            mask_predictor=MaskRCNNPredictor(mask_head_dim, mask_head_dim, num_classes + 1),
            rpn_post_nms_top_n_train=rpn_post_nms_train,
            rpn_post_nms_top_n_test=rpn_post_nms_test,
            box_batch_size_per_image=box_batch_size_per_image,
            box_detections_per_img=detections_per_img,
        )
        self.num_classes = num_classes

    @property
    def encoder(self) -> ViT:  # a property, not a second registration: the state dict names it once
        return self.detector.backbone.encoder

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
        losses = self.detector(images, targets)
        loss = torch.stack([v.float() for v in losses.values()]).sum()
        return loss, {"loss": loss.detach()} | {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def predict(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Eval-mode detections: per image {"boxes" XYXY, "labels" 1..num_classes, "scores", "masks" [N, 1, H, W]}."""
        return self.detector(images)

    # ---------------------------------------------------------------------------------------------------------
    # optimiser helpers (model.heads.param_groups)
    def no_weight_decay(self) -> set[str]:
        return {f"detector.backbone.encoder.{n}" for n in self.encoder.no_weight_decay()}

    def group_matcher(self, coarse: bool = False) -> dict:
        """BEiT's layer ids, as `UperNet.group_matcher`: embeddings 0, block i -> i + 1, the rest (adapter, FPN,
        heads) last."""
        return encoder_group_matcher("detector.backbone.encoder.", coarse)


def encoder_group_matcher(prefix: str, coarse: bool) -> dict:
    """timm's `group_matcher` of a ViT found under `prefix` of a larger model."""
    prefix = re.escape(prefix)
    return dict(
        stem=rf"^{prefix}(?:cls_token|pos_embed|patch_embed|reg_token|mask_token)",
        blocks=rf"^{prefix}blocks\.(\d+)" if coarse else [(rf"^{prefix}blocks\.(\d+)", None)],
    )


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """The model with every BatchNorm (the adapter's) made a SyncBatchNorm, for DDP training with small per-GPU
    batches (XCiT's detection adapter uses SyncBatchNorm); call it before wrapping in DistributedDataParallel."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
