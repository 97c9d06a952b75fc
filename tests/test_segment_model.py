"""UperNet on the ViT: output shapes, the loss (weights, ignored pixels), gradients, overfitting, lazy transformers."""

import subprocess
import sys

import pytest
import torch
from torch import nn

import model
from model.dense import sync_batchnorm
from model.heads import param_groups
from model.segment import UperNet, upernet

K = 5  # classes
H, W = 32, 48  # non-square, multiples of 2p = 8


def micro_upernet(**overrides) -> UperNet:
    encoder = model.vit("micro", in_chans=3, img_size=32, pos_embed="sincos", dynamic_img_size=True)
    args = dict(num_classes=K, indices=(0, 1, 2, 3), channels=32, aux_channels=16) | overrides
    return upernet(encoder, **args)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, H, W, generator=g)
    target = torch.randint(0, K, (2, H, W), generator=g)
    target[0, :4] = 255  # some ignored pixels
    return x, target


def test_builder_follows_beits_config():
    torch.manual_seed(0)
    seg = micro_upernet()
    assert seg.backbone.indices == [0, 1, 2, 3] and seg.backbone.fpn is None
    assert seg.decode_head.channels == 32 and list(seg.decode_head.pool_scales) == [1, 2, 3, 6]
    aux = seg.aux_head
    assert aux.in_index == 2 and aux.channels == 16 and aux.num_convs == 1 and not aux.concat_input
    assert aux.convs[0].conv.kernel_size == (3, 3) and aux.in_channels == 128
    for head in (seg.decode_head, seg.aux_head):
        drop, conv = head.classifier
        assert isinstance(drop, nn.Dropout2d) and drop.p == 0.1 and conv.out_channels == K
    assert seg.aux_weight == 0.4
    # sync_batchnorm converts the adapter's and the heads' BatchNorms
    synced = sync_batchnorm(seg)
    assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) > 5


def test_eval_logits_at_input_resolution():
    torch.manual_seed(0)
    seg = micro_upernet().eval()
    x, _ = batch()
    with torch.no_grad():
        logits = seg(x)
        assert logits.shape == (2, K, H, W)
        maps = seg.features(x)
    p = 4
    for m, stride in zip(maps, (p // 4, p // 2, p, 2 * p)):
        assert m.shape == (2, 128, H // stride, W // stride)
    assert torch.isfinite(logits).all()


def test_train_loss_is_the_weighted_sum_of_both_cross_entropies():
    torch.manual_seed(0)
    seg = micro_upernet().train()
    x, target = batch()
    torch.manual_seed(1)  # same dropout masks for both calls
    out = seg(x)
    assert set(out) == {"logits", "aux_logits"}
    assert out["logits"].shape == out["aux_logits"].shape == (2, K, H, W)
    torch.manual_seed(1)
    loss = seg.loss(x, target)
    valid = target != 255
    by_hand = [
        -lg.log_softmax(1).gather(1, target.clamp(max=K - 1)[:, None])[:, 0][valid].mean() for lg in out.values()
    ]
    assert torch.isfinite(loss)
    assert torch.allclose(loss, by_hand[0] + 0.4 * by_hand[1], atol=1e-5)
    assert not torch.allclose(by_hand[0], by_hand[1])  # two different heads


def test_loss_ignores_255():
    torch.manual_seed(0)
    seg = micro_upernet().eval()  # no dropout: deterministic
    x, _ = batch()
    target = torch.full((2, H, W), 255)
    target[1, 7, 30] = 3
    loss = seg.loss(x, target)
    out = seg.forward_train(x)
    alone = [-lg[1, :, 7, 30].log_softmax(0)[3] for lg in out.values()]
    assert torch.allclose(loss, alone[0] + 0.4 * alone[1], atol=1e-5)
    target[0, 0, 0] = 1  # one more pixel changes it
    assert not torch.allclose(seg.loss(x, target), loss)


def test_backward_reaches_encoder_blocks_adapter_and_both_heads():
    torch.manual_seed(0)
    seg = micro_upernet().train()
    seg.loss(*batch()).backward()
    encoder = seg.backbone.encoder
    adapter = seg.backbone.adapter[:2]  # the two with weights (identity and max-pool have none)
    for part in (*encoder.blocks, encoder.patch_embed, *adapter, seg.decode_head, seg.aux_head):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads), type(part).__name__
        assert sum(g.abs().sum() for g in grads) > 0, type(part).__name__
    # the encoder's final norm would get no gradient (the blocks are taken before it): it is frozen, so that DDP
    # and the optimiser leave it out (the sin-cos table is fixed anyway), and every trainable parameter has a gradient
    frozen = {n for n, p in seg.named_parameters() if not p.requires_grad}
    assert frozen == {"backbone.encoder.norm.weight", "backbone.encoder.norm.bias", "backbone.encoder.pos_embed"}
    assert all(p.grad is not None for p in seg.parameters() if p.requires_grad)


def test_overfits_one_batch():
    torch.manual_seed(0)
    seg = micro_upernet().train()
    x, _ = batch()
    g = torch.Generator().manual_seed(1)  # labels constant on 8x8 cells, a learnable layout
    target = torch.randint(0, K, (2, H // 8, W // 8), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
    opt = torch.optim.Adam(seg.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = seg.loss(x, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_layer_decay_groups_follow_beit():
    seg = micro_upernet()
    groups = param_groups(seg, weight_decay=0.05, layer_decay=0.9)
    by_id = {id(p): g for g in groups for p in g["params"]}
    group = {n: by_id[id(p)] for n, p in seg.named_parameters() if p.requires_grad}
    depth = len(seg.backbone.encoder.blocks)  # BEiT: embeddings 0, block i at i + 1, the rest at depth + 1
    assert group["backbone.encoder.patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.9 ** (depth + 1))
    assert group["backbone.encoder.blocks.0.attn.qkv.weight"]["lr_scale"] == pytest.approx(0.9**depth)
    assert group["backbone.encoder.blocks.3.attn.qkv.weight"]["lr_scale"] == pytest.approx(0.9)
    for name in ("decode_head.classifier.1.weight", "aux_head.convs.0.conv.weight", "backbone.adapter.0.0.weight"):
        assert group[name]["lr_scale"] == 1.0, name
    assert group["backbone.encoder.cls_token"]["weight_decay"] == 0.0
    assert group["decode_head.classifier.1.bias"]["weight_decay"] == 0.0
    assert group["decode_head.classifier.1.weight"]["weight_decay"] == 0.05


def test_import_model_does_not_import_transformers():
    code = "import sys, model; assert 'transformers' not in sys.modules, 'transformers imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    code = "import sys, model.segment; assert 'transformers' in sys.modules"  # the check can fail
    subprocess.run([sys.executable, "-c", code], check=True)
