"""DINO on the micro ViT: gradients, EMA teacher, centre, frozen last layer, loss by hand, schedules, checkpoints."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.layers import DropPath

from harness.train import schedules
from model import vit
from model.dino import DINO
from tests.test_vit import dino_interpolate_pos_encoding

OUT_DIM = 256


def make_dino(seed: int = 0, **overrides) -> DINO:
    torch.manual_seed(seed)
    kwargs = dict(out_dim=OUT_DIM, hidden_dim=64, bottleneck_dim=32, num_local_crops=2, local_crop_size=16)
    return DINO(vit("micro", dynamic_img_size=True), **{**kwargs, **overrides})


def make_crops(batch: int = 2, seed: int = 1) -> list[torch.Tensor]:
    """2 global 28x28 crops and 2 local 16x16 crops of grey images."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 1, s, s, generator=g) for s in (28, 28, 16, 16)]


def teacher_params(model: DINO) -> list[torch.Tensor]:
    return [*model.teacher_encoder.parameters(), *model.teacher_head.parameters()]


def student_params(model: DINO) -> list[torch.Tensor]:
    return [*model.encoder.parameters(), *model.head.parameters()]


def test_forward_backward_finite_and_logs():
    model = make_dino()
    loss, logs = model(make_crops())
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(logs) == {"loss", "teacher_entropy", "teacher_marginal_entropy"}
    assert all(v.ndim == 0 and not v.requires_grad for v in logs.values())
    assert model.local_crop_size == 16 and model.global_crop_size == 28
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None


def test_no_gradient_reaches_teacher():
    model = make_dino()
    model(make_crops())[0].backward()
    teacher_ids = {id(p) for p in teacher_params(model)}
    assert all(not p.requires_grad and p.grad is None for p in teacher_params(model))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and not any(id(p) in teacher_ids for p in trainable)
    # Teacher and student hold distinct tensors, equal at initialisation.
    assert all(s is not t and torch.equal(s, t) for s, t in zip(student_params(model), teacher_params(model)))


def test_ema_update_formula():
    model = make_dino()
    with torch.no_grad():
        for p in student_params(model):
            p.add_(torch.randn_like(p))
    old_teacher = [p.detach().clone() for p in teacher_params(model)]
    m = 0.7
    model.set_schedule_values(teacher_momentum=m)
    model.after_step()
    for t, t_old, s in zip(teacher_params(model), old_teacher, student_params(model)):
        torch.testing.assert_close(t, m * t_old + (1 - m) * s.detach())


def test_center_update_formula():
    model = make_dino()
    c0 = torch.randn(1, OUT_DIM)
    model.center.copy_(c0)
    crops = make_crops(batch=3)
    with torch.no_grad():
        teacher_out = torch.cat([model.teacher_head(model.teacher_encoder(x)) for x in crops[:2]])  # [2*3, K]
        model(crops)
    expected = 0.9 * c0 + 0.1 * teacher_out.mean(0, keepdim=True)
    torch.testing.assert_close(model.center, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not dist.is_available(), reason="torch built without distributed")
def test_center_update_all_reduces_under_distributed(tmp_path):
    """The all_reduce path, on a one-process gloo group: same centre as without distributed."""
    crops = make_crops(batch=3)
    expected = make_dino()
    expected(crops)
    model = make_dino()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model(crops)
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(model.center, expected.center)


def test_teacher_has_no_drop_path():
    torch.manual_seed(0)
    model = DINO(vit("micro", dynamic_img_size=True, drop_path_rate=0.2), out_dim=OUT_DIM, hidden_dim=64)
    assert model.encoder.blocks[-1].drop_path1.drop_prob > 0
    assert all(m.drop_prob == 0 for m in model.teacher_encoder.modules() if isinstance(m, DropPath))


def test_last_layer_frozen_in_first_epoch():
    model = make_dino(freeze_last_layer=1)
    v = model.head.last_layer.parametrizations.weight.original1  # the direction; the gain g is fixed at 1
    for epoch, frozen in ((0, True), (1, False)):
        model.zero_grad(set_to_none=True)
        model(make_crops())[0].backward()
        model.after_backward(epoch)
        assert (v.grad is None) == frozen
        assert model.head.mlp[0].weight.grad is not None
        assert model.encoder.patch_embed.proj.weight.grad is not None
    assert not model.head.last_layer.parametrizations.weight.original0.requires_grad


def test_loss_matches_hand_computation():
    model = make_dino(teacher_temp=0.07, warmup_teacher_temp=0.07)
    model.eval()
    model.center.copy_(0.1 * torch.randn(1, OUT_DIM))
    center = model.center.clone()
    crops = make_crops(batch=3)
    with torch.no_grad():
        # Each crop on its own (no multi-crop grouping), then DINO's double loop over view pairs.
        student = [model.head(model.encoder(x)) / 0.1 for x in crops]
        teacher = [F.softmax((model.teacher_head(model.teacher_encoder(x)) - center) / 0.07, -1) for x in crops[:2]]
        total, terms = 0.0, 0
        for iq, q in enumerate(teacher):
            for v, s in enumerate(student):
                if v != iq:
                    total += (-q * F.log_softmax(s, -1)).sum(-1).mean()
                    terms += 1
        loss, logs = model(crops)
    assert terms == 6
    torch.testing.assert_close(loss, total / terms, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logs["loss"], loss)


def test_schedules():
    model = make_dino(teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=2, momentum_teacher=0.99)
    assert model.teacher_temp == pytest.approx(0.04) and model.teacher_momentum == pytest.approx(0.99)
    with pytest.raises(KeyError):
        model.set_schedule_values(lr=1.0)
    sched = model.schedules()
    temp = schedules.array(sched["teacher_temp"], epochs=10, iters_per_epoch=5)
    assert len(temp) == 50
    # per epoch, as DINO: np.linspace(0.04, 0.07, 2) over the first two epochs, then 0.07
    np.testing.assert_allclose(temp[:5], 0.04)
    np.testing.assert_allclose(temp[5:], 0.07)
    momentum = schedules.array(sched["teacher_momentum"], epochs=10, iters_per_epoch=5)
    assert momentum[0] == pytest.approx(0.99) and momentum[-1] == pytest.approx(1.0)
    model.set_schedule_values(teacher_temp=0.05, teacher_momentum=0.9)
    assert model.teacher_temp == 0.05 and model.teacher_momentum == 0.9


def test_encoder_must_take_local_crops():
    with pytest.raises(ValueError, match="dynamic_img_size"):
        DINO(vit("micro"), out_dim=OUT_DIM, hidden_dim=64, num_local_crops=2)
    DINO(vit("micro"), out_dim=OUT_DIM, hidden_dim=64, num_local_crops=0)  # global crops only: fine
    with pytest.raises(ValueError, match="multiples"):
        make_dino(local_crop_size=14)
    model = make_dino()
    assert model.export_encoder is model.teacher_encoder
    student_export = make_dino(export_teacher=False)
    assert student_export.export_encoder is student_export.encoder


def test_state_dict_round_trip():
    model = make_dino(seed=0)
    with torch.no_grad():
        model.center.normal_()
        for p in teacher_params(model):
            p.add_(0.01 * torch.randn_like(p))  # teacher != student, as after training
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = make_dino(seed=123)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    model.eval(), fresh.eval()
    crops = make_crops()
    with torch.no_grad():
        torch.testing.assert_close(fresh(crops)[0], model(crops)[0], rtol=0, atol=0)


def structured_images(n: int, seed: int = 0) -> torch.Tensor:
    """[n, 1, 28, 28] oriented gratings of random frequency and phase plus a bright blob: images that differ."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    angle, freq, phase = torch.rand(3, n, 1, 1, generator=g) * torch.tensor([math.pi, 0.6, 2 * math.pi]).view(
        3, 1, 1, 1
    )
    cy, cx = torch.rand(2, n, 1, 1, generator=g) * 20 + 4
    grating = torch.sin((xx * torch.cos(angle) + yy * torch.sin(angle)) * (freq + 0.2) + phase)
    blob = 2 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 18)
    return (grating + blob).unsqueeze(1)


def test_overfit_lowers_loss():
    model = make_dino(seed=0, momentum_teacher=0.9)
    images = structured_images(16)
    # Fixed views: the image and its mirror as global crops, two 16x16 corners as local crops.
    crops = [images, images.flip(-1), images[..., :16, :16], images[..., 12:, 12:]]
    # Start from a centred teacher, the state DINO is in after its first few hundred iterations. With the centre at
    # zero the initial loss is artificially low (an uncentred teacher at init is near one-hot on the same prototype
    # for every image, and the student, a copy of it, already agrees).
    with torch.no_grad():
        model.center.copy_(torch.cat([model.teacher_head(model.teacher_encoder(x)) for x in crops[:2]]).mean(0, True))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(50):
        loss, _ = model(crops)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        model.after_backward(epoch=0)  # all 50 steps are in DINO's first epoch: the prototypes stay frozen
        opt.step()
        model.after_step()
        losses.append(loss.detach())
    losses = torch.stack(losses)
    # On one fixed batch DINO does not settle: the loss falls within ~10 steps (the teacher sharpens), then the
    # lagging centre (momentum 0.9) catches up with the dominant prototypes and the loss spikes before falling
    # again. So the test averages the second half, a full cycle or more, rather than reading the last step.
    # Threshold 0.6: over seeds 0-9 this ratio was 0.21-0.48, while a student stuck at the uniform distribution
    # (loss ~ log(256) = 5.5 against an initial ~6.8) gives ~0.8, and a broken update gives ~1.
    ratio = losses[25:].mean() / losses[0]
    assert torch.isfinite(losses).all() and ratio < 0.6, losses


def test_local_crops_with_dinos_position_embedding_resampling():
    """With pos_embed_resample="dino" (DINO's interpolate_pos_encoding: bicubic, no antialias), student and teacher
    embed a local crop with DINO's resampled table; the global crops use the table as it is."""
    torch.manual_seed(0)
    model = DINO(
        vit("micro", dynamic_img_size=True, pos_embed_resample="dino"),
        out_dim=OUT_DIM,
        hidden_dim=64,
        bottleneck_dim=32,
        num_local_crops=2,
        local_crop_size=16,
    ).eval()
    assert model.teacher_encoder.pos_embed_resample == "dino"
    crops = make_crops()
    enc = model.encoder
    with torch.no_grad():
        local = crops[2]
        tokens = torch.cat([enc.cls_token.expand(2, -1, -1), enc.patch_embed(local).flatten(1, 2)], dim=1)
        tokens = tokens + dino_interpolate_pos_encoding(enc.pos_embed, 16, 16, 4)
        torch.testing.assert_close(enc(local), enc.forward_head(enc.encode(tokens)), rtol=0, atol=1e-5)
        loss, _ = model(crops)
    assert torch.isfinite(loss)
