"""Mask R-CNN on the ViT: the pyramid's levels, its block maps, the detector's losses and outputs, SyncBatchNorm."""

import math

import pytest
import torch
from torch import nn

import model
from model.dense import ViTPyramid, mask_rcnn, sync_batchnorm

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def micro(**overrides):
    """The micro ViT (patch 4, width 128, depth 4) on RGB inputs of any size, with sin-cos position embedding."""
    args = dict(in_chans=3, img_size=32, pos_embed="sincos", dynamic_img_size=True)
    return model.vit("micro", **(args | overrides))


def test_pyramid_levels_strides_and_channels_on_a_non_square_input():
    torch.manual_seed(0)
    encoder = micro()
    assert encoder.patch_size == 4 and encoder.embed_dim == 128 and len(encoder.blocks) == 4
    pyramid = ViTPyramid(encoder, indices=(0, 1, 2, 3), out_channels=32).eval()
    out = pyramid(torch.randn(2, 3, 64, 96))
    assert list(out) == ["0", "1", "2", "3", "pool"] and pyramid.out_channels == 32
    p = encoder.patch_size  # strides p/4, p/2, p, 2p, then the extra max-pool level at 4p
    for key, stride in zip(out, (p / 4, p / 2, p, 2 * p, 4 * p)):
        assert out[key].shape == (2, 32, math.ceil(64 / stride), math.ceil(96 / stride)), key


@pytest.mark.parametrize("pos_embed", ["sincos", "learn"])  # learn: timm's resampling of the table, at 40x24
def test_pyramid_block_maps_are_the_encoders_block_outputs(pos_embed):
    torch.manual_seed(0)
    encoder = micro(pos_embed=pos_embed).eval()
    with pytest.raises(ValueError, match="increasing"):
        ViTPyramid(encoder, indices=(0, 2, 3, -1))  # -1 is block 3 again
    pyramid = ViTPyramid(encoder, indices=(0, 1, 2, -1))
    x = torch.randn(2, 3, 40, 24)
    maps = pyramid.blocks(x)
    tokens = encoder.forward_layers(x, [0, 1, 2, 3])  # the project's own loop over the blocks
    for m, t in zip(maps, tokens):
        expected = t[:, encoder.num_prefix_tokens :].reshape(2, 10, 6, -1).permute(0, 3, 1, 2)
        assert m.shape == (2, 128, 10, 6)
        assert torch.allclose(m, expected, atol=1e-5)


def test_pyramid_needs_a_dynamic_size_encoder():
    with pytest.raises(ValueError, match="dynamic_img_size"):
        ViTPyramid(model.vit("micro", dynamic_img_size=False), indices=(0, 1, 2, 3))


def synthetic_batch():
    images, targets = [], []
    for boxes in ([[8, 8, 40, 40]], [[4, 10, 30, 50], [40, 20, 76, 60]]):
        boxes = torch.tensor(boxes, dtype=torch.float32)
        masks = torch.zeros(len(boxes), 64, 80, dtype=torch.uint8)
        for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
            m[y0:y1, x0:x1] = 1
        images.append(torch.rand(3, 64, 80))
        targets.append({"boxes": boxes, "labels": torch.arange(1, len(boxes) + 1), "masks": masks})
    return images, targets


def test_mask_rcnn_trains_and_predicts():
    torch.manual_seed(0)
    encoder = micro()
    detector = mask_rcnn(
        encoder, num_classes=3, indices=(0, 1, 2, 3), out_channels=32, min_size=64, max_size=96, image_mean=MEAN,
        image_std=STD,
    )  # fmt: skip
    assert detector.transform.size_divisible == 32
    assert detector.rpn.anchor_generator.num_anchors_per_location() == [3] * 5
    images, targets = synthetic_batch()

    detector.train()
    losses = detector(images, targets)
    keys = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert set(losses) == keys and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for i, block in enumerate(encoder.blocks):
        grad = block.attn.qkv.weight.grad
        assert grad is not None and grad.abs().sum() > 0, i
    assert not encoder.pos_embed.requires_grad  # sin-cos stays fixed

    detector.eval()
    with torch.no_grad():
        out = detector(images)
    assert len(out) == 2
    for det in out:
        assert set(det) == {"boxes", "labels", "scores", "masks"}
        n = len(det["boxes"])
        assert det["boxes"].shape == (n, 4) and det["masks"].shape == (n, 1, 64, 80)


def test_sync_batchnorm_converts_the_adapter():
    detector = mask_rcnn(micro(), num_classes=2, indices=(0, 1, 2, 3), image_mean=MEAN, image_std=STD)
    assert isinstance(detector.backbone.adapter[0][1], nn.BatchNorm2d)
    converted = sync_batchnorm(detector)
    assert isinstance(converted.backbone.adapter[0][1], nn.SyncBatchNorm)
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())


def test_the_detector_freezes_what_it_never_reads():
    """The blocks after the deepest one read and the final norm get no gradient: frozen, so DDP needs no search for
    unused parameters; everything else trains, and a backward reaches it."""
    from model.dense import Detector

    torch.manual_seed(0)
    encoder = model.vit("micro", img_size=32, in_chans=3, pos_embed="sincos", dynamic_img_size=True, depth=6)
    det = Detector(encoder, num_classes=2, indices=(0, 1, 2, 3), fpn_channels=16, min_size=(32,), max_size=48,
                   box_head_dim=16, mask_head_dim=8, rpn_post_nms_train=20, rpn_post_nms_test=20,
                   image_mean=(0.5,) * 3, image_std=(0.5,) * 3).train()  # fmt: skip
    frozen = {n.removeprefix("detector.backbone.encoder.") for n, p in det.named_parameters() if not p.requires_grad}
    unread = {n for n, _ in encoder.named_parameters() if n.startswith("blocks.") and int(n.split(".")[1]) >= 4}
    assert frozen == {"norm.weight", "norm.bias", "pos_embed"} | unread and unread  # pos_embed: the fixed sin-cos
    masks = torch.zeros(1, 32, 32, dtype=torch.uint8)
    masks[0, 8:20, 6:24] = 1
    target = {"boxes": torch.tensor([[6.0, 8.0, 24.0, 20.0]]), "labels": torch.tensor([1]), "masks": masks}
    loss, logs = det([torch.rand(3, 32, 32)], [target])
    loss.backward()
    assert set(logs) == {"loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert all(p.grad is not None for p in det.parameters() if p.requires_grad)
    assert det.encoder is det.detector.backbone.encoder and not any(k.startswith("encoder.") for k in det.state_dict())
    with pytest.raises(ValueError, match="one value per input channel"):
        Detector(model.vit("micro", in_chans=1, pos_embed="sincos", dynamic_img_size=True), image_mean=(0.5, 0.5))
