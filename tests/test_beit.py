"""BEiT: mask tokens in the encoder, a linear head on the masked positions only, BEiT's initialisation."""

import math

import pytest
import torch

import model
from model import vit
from tests.test_vit import assert_beit_trunc_normal, assert_std


@pytest.fixture
def beit():
    torch.manual_seed(0)
    return model.create("beit_vit_micro_p4", vocab_size=64).eval()


def test_default_masking_is_beits():
    m = model.create("beit_vit_small_p16")
    g = m.mask_generator
    assert (g.num_masked, g.min_block, g.max_block, g.min_aspect) == (75, 16, None, 0.3)
    assert m.encoder.mask_token is not None
    assert all(blk.ls1.gamma.eq(0.1).all() for blk in m.encoder.blocks)  # LayerScale as in BEiT


def test_loss_is_on_masked_positions_only(beit, monkeypatch):
    images = torch.randn(4, 1, 28, 28)
    mask = beit.sample_masks(4, seed=0)
    targets = torch.randint(0, 64, (4, 49), generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(beit.tokenizer, "forward", lambda x: targets.clone())
    base, logs = beit(images, mask)
    visible = int((~mask[0]).nonzero()[0])
    targets[0, visible] = (targets[0, visible] + 1) % 64
    assert torch.equal(beit(images, mask)[0], base)
    masked = int(mask[0].nonzero()[0])
    targets[0, masked] = (targets[0, masked] + 1) % 64
    assert not torch.equal(beit(images, mask)[0], base)
    assert set(logs) == {"loss", "mim_loss", "mim_acc"}


def test_masked_patches_reach_the_encoder_as_mask_tokens(beit):
    images = torch.randn(2, 1, 28, 28)
    mask = beit.sample_masks(2, seed=0)
    changed = images.clone()
    # change only the pixels of one masked patch: the loss cannot see it except through the targets
    p = int(mask[0].nonzero()[0])
    r, c = divmod(p, 7)
    changed[0, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 3.0
    x1 = beit.encoder.forward_features(images, mask=mask)
    x2 = beit.encoder.forward_features(changed, mask=mask)
    assert torch.equal(x1, x2)


def test_wrong_mask_count_is_reported(beit):
    mask = beit.sample_masks(2, seed=0)
    mask[0, (~mask[0]).nonzero()[0]] = True
    with pytest.raises(ValueError, match="BEiT mask"):
        beit(torch.randn(2, 1, 28, 28), mask)


def test_needs_mask_token():
    with pytest.raises(ValueError, match="use_mask_token"):
        model.BEiT(model.vit("micro"))


def test_beit_init_of_the_head_and_mask_token():
    """init="beit" (BEiT's trunc_normal_, cut at +-std): the MIM head and the encoder's mask token; by default the
    method follows its encoder, and the timm init stays timm's (cut at +-2, effectively std 0.02)."""
    torch.manual_seed(0)
    beit_way = model.BEiT(vit("micro", use_mask_token=True, rescale_init=True, init="beit"), vocab_size=1024)
    assert_beit_trunc_normal(beit_way.head.weight)
    assert_beit_trunc_normal(beit_way.encoder.mask_token)
    assert not beit_way.head.bias.any()
    # the encoder's rescale of the output projections survives its re-init
    assert_beit_trunc_normal(beit_way.encoder.blocks[-1].mlp.fc2.weight, 0.02 / math.sqrt(2 * 4))

    timm_way = model.BEiT(vit("micro", use_mask_token=True), vocab_size=1024)
    assert_std(timm_way.head.weight, 0.02)
    assert timm_way.head.weight.abs().max() > 0.02 and timm_way.encoder.mask_token.abs().max() > 0.02

    # BEiT's own argument overrides the encoder's, for what BEiT owns (the head, and the mask token only it uses)
    mixed = model.BEiT(vit("micro", use_mask_token=True), vocab_size=1024, init="beit")
    assert_beit_trunc_normal(mixed.head.weight)
    assert_beit_trunc_normal(mixed.encoder.mask_token)
    assert mixed.encoder.blocks[0].mlp.fc1.weight.abs().max() > 0.02  # the rest of the encoder is the encoder's
    with pytest.raises(ValueError, match="init"):
        model.BEiT(vit("micro", use_mask_token=True), init="xavier")
