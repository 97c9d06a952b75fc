"""The backbone: equal to timm's ViT, loadable into timm, and able to subset, mask and expose blocks."""

import pytest
import timm
import torch

from model.vit import SIZES, vit


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomise_layer_scale(model):
    with torch.no_grad():
        for blk in model.blocks:
            blk.ls1.gamma.uniform_(0.5, 1.5)
            blk.ls2.gamma.uniform_(0.5, 1.5)


def test_equals_timm_vit_on_same_weights():
    ours = vit("small").eval()
    ref = timm.create_model("vit_small_patch16_224", num_classes=0).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours.forward_features(x) - ref.forward_features(x)).abs().max() <= 1e-5
        assert (ours(x) - ref(x)).abs().max() <= 1e-5


def test_encoder_weights_load_into_plain_timm_model():
    """LayerScale and the mask token are folded away; the plain timm model gives the same features."""
    ours = vit("small", layer_scale_init=0.1, use_mask_token=True).eval()
    _randomise_layer_scale(ours)
    ref = timm.create_model("vit_small_patch16_224", num_classes=0).eval()
    ref.load_state_dict(ours.timm_state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-4)


def test_load_timm_state_dict_round_trip():
    src = vit("micro", layer_scale_init=0.1).eval()
    _randomise_layer_scale(src)
    dst = vit("micro", layer_scale_init=0.1, use_mask_token=True).eval()
    dst.load_timm_state_dict(src.timm_state_dict())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(src(x), dst(x), atol=1e-5)


def test_keep_encodes_only_the_given_patches():
    m = vit("micro").eval()
    x = torch.randn(2, 1, 28, 28)
    keep = torch.stack([torch.randperm(49)[:20] for _ in range(2)])
    seen = []
    m.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape))
    with torch.no_grad():
        out = m.forward_features(x, keep=keep)
    assert out.shape == (2, 21, 128)
    assert seen == [torch.Size([2, 21, 128])]
    # the kept tokens carry the position embedding of their own patch
    tokens = m.embed(x)
    assert torch.equal(m.select(tokens, keep)[1, 1 + 5], tokens[1, 1 + keep[1, 5]])


def test_patches_outside_keep_do_not_matter():
    m = vit("micro").eval()
    x = torch.randn(1, 1, 28, 28)
    keep = torch.arange(0, 49, 2).unsqueeze(0)  # even patches of the 7x7 grid
    y = x.clone()
    y[..., :4, 4:8] += 5.0  # patch 1 (odd) changes
    with torch.no_grad():
        assert torch.equal(m.forward_features(x, keep=keep), m.forward_features(y, keep=keep))
        assert not torch.equal(m.forward_features(x), m.forward_features(y))


def test_mask_token_replaces_masked_patches():
    m = vit("micro", use_mask_token=True).eval()
    x = torch.randn(2, 1, 28, 28)
    mask = torch.zeros(2, 49, dtype=torch.bool)
    mask[:, 10:20] = True
    tokens = m.embed(x, mask=mask)
    expected = m.mask_token[0, 0] + m.pos_embed[0, 1 + 10]
    assert torch.allclose(tokens[0, 1 + 10], expected)
    assert torch.allclose(tokens[0, 1 + 0], m.embed(x)[0, 1 + 0])
    with pytest.raises(ValueError, match="mask token"):
        vit("micro").embed(x, mask=mask)


def test_forward_layers_returns_chosen_blocks():
    m = vit("micro").eval()
    x = torch.randn(2, 1, 28, 28)
    first, last = m.forward_layers(x, [0, -1])
    with torch.no_grad():
        manual = m.blocks[0](m.embed(x))
    assert torch.allclose(first, manual)
    assert torch.allclose(m.norm(last), m.forward_features(x), atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        m.forward_layers(x, [4])


def test_sincos_position_embedding_is_fixed_and_resolution_free():
    m = vit("micro", pos_embed="sincos", dynamic_img_size=True)
    assert not m.pos_embed.requires_grad
    assert torch.equal(m.pos_embed[0, 0], torch.zeros(128))  # the class token gets none
    assert m(torch.randn(2, 1, 16, 16)).shape == (2, 128)
    with pytest.raises(ValueError, match="pos_embed"):
        vit("micro", pos_embed="rope")


def test_sizes_and_errors():
    assert {"micro", "tiny", "small", "base"} <= set(SIZES)
    assert vit("micro").num_patches == 49 and vit("micro", patch_size=7).num_patches == 16
    with pytest.raises(ValueError, match="valid sizes"):
        vit("huge")
    with pytest.raises(ValueError, match="multiple"):
        vit("micro", patch_size=5)
