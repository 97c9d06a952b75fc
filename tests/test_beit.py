"""BEiT: mask tokens in the encoder, a linear head on the masked positions only."""

import pytest
import torch

import model


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
