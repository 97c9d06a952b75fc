"""The backbone: equal to timm's ViT, loadable into timm, able to subset, mask and expose blocks; BEiT's init and
DINO's position-embedding resampling."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from model import SIZES, vit


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


# ---------------------------------------------------------------------------------------------------------------
# initialisation
def one_sigma_truncated_std(sigma: float) -> float:
    """Std of N(0, sigma^2) truncated at +-sigma: sigma * sqrt(1 - 2 phi(1) / (2 Phi(1) - 1)) ~ 0.5399 sigma."""
    phi = math.exp(-0.5) / math.sqrt(2 * math.pi)
    big_phi = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    return sigma * math.sqrt(1 - 2 * phi / (2 * big_phi - 1))


def assert_std(t: torch.Tensor, expected: float) -> None:
    """Sample std (about zero) within 4 standard errors of `expected`; the relative standard error of a sample std is
    sqrt((kurtosis - 1) / 4n), at most 1 / sqrt(2n) for the normal and the (flatter) truncated normal."""
    t = t.detach().flatten().double()
    std = t.pow(2).mean().sqrt().item()
    assert abs(std / expected - 1) <= 4 / math.sqrt(2 * t.numel()), (std, expected, t.numel())


def assert_beit_trunc_normal(t: torch.Tensor, sigma: float = 0.02) -> None:
    """Drawn by BEiT's trunc_normal_ of std sigma: within +-sigma, with the one-sigma truncated normal's std."""
    assert t.detach().abs().max().item() <= sigma * (1 + 1e-6)
    assert_std(t, one_sigma_truncated_std(sigma))


def test_one_sigma_truncated_std_formula():
    assert one_sigma_truncated_std(0.02) == pytest.approx(0.0108, abs=5e-5)
    samples = torch.randn(1_000_000, dtype=torch.float64)
    assert samples[samples.abs() <= 1].std().item() == pytest.approx(one_sigma_truncated_std(1.0), rel=3e-3)


def test_timm_init_is_timms_bit_for_bit():
    """init="timm" (the default) draws exactly what timm's VisionTransformer draws from the same seed."""
    shape = dict(SIZES["micro"], img_size=28, in_chans=1, init_values=0.1, fix_init=True)
    torch.manual_seed(3)
    ref = VisionTransformer(**shape, num_classes=0, global_pool="token")
    torch.manual_seed(3)
    ours = vit("micro", layer_scale_init=0.1, rescale_init=True, use_mask_token=True)
    ours_sd = ours.state_dict()
    assert ours_sd.keys() - ref.state_dict().keys() == {"mask_token"}
    assert all(torch.equal(v, ours_sd[k]) for k, v in ref.state_dict().items())
    assert_std(ours.blocks[0].mlp.fc1.weight, 0.02)  # cut at +-2 (100 sigma): effectively std 0.02
    assert ours.blocks[0].mlp.fc1.weight.abs().max() > 0.02
    assert_std(ours.pos_embed, 0.02)
    assert_std(ours.mask_token, 0.02)


def test_beit_init_truncates_at_one_sigma_and_rescales_after():
    m = vit("micro", layer_scale_init=0.1, rescale_init=True, use_mask_token=True, init="beit")
    for p in (m.pos_embed, m.cls_token, m.mask_token, m.patch_embed.proj.weight):
        assert_beit_trunc_normal(p)
    assert torch.equal(m.patch_embed.proj.bias, torch.zeros_like(m.patch_embed.proj.bias))
    for i, blk in enumerate(m.blocks):
        for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            linear = blk.get_submodule(name)
            # BEiT's fix_init_weight divides the output projections by sqrt(2 * layer), after the re-init
            rescale = math.sqrt(2 * (i + 1)) if name in ("attn.proj", "mlp.fc2") else 1.0
            assert_beit_trunc_normal(linear.weight, 0.02 / rescale)
            assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
        assert torch.equal(blk.ls1.gamma, torch.full_like(blk.ls1.gamma, 0.1))  # LayerScale untouched
    for norm in (mod for mod in m.modules() if isinstance(mod, nn.LayerNorm)):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and not norm.bias.any()
    # the fixed sin-cos table is not re-drawn
    sincos = vit("micro", pos_embed="sincos", init="beit")
    assert torch.equal(sincos.pos_embed, sincos._sincos_table(sincos.grid_size))
    with pytest.raises(ValueError, match="init"):
        vit("micro", init="xavier")


# ---------------------------------------------------------------------------------------------------------------
# position embedding for other resolutions (DINO's local crops)
def dino_interpolate_pos_encoding(pos_embed: torch.Tensor, w: int, h: int, patch_size: int) -> torch.Tensor:
    """facebookresearch/dino's `VisionTransformer.interpolate_pos_encoding`, rewritten from its algorithm for an image
    of w x h pixels (DINO's w is the image's dim 2, h its dim 3): the class token's embedding kept; the square patch
    grid resized bicubically, without antialias, by the scale factor (pixels // patch + 0.1) / sqrt(N)."""
    num = pos_embed.shape[1] - 1
    side = math.sqrt(num)
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:]
    grid = grid.reshape(1, int(side), int(side), -1).permute(0, 3, 1, 2)
    w0, h0 = w // patch_size + 0.1, h // patch_size + 0.1
    grid = F.interpolate(grid, scale_factor=(w0 / side, h0 / side), mode="bicubic")
    assert grid.shape[-2:] == (int(w0), int(h0))
    return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, -1, pos_embed.shape[-1])], dim=1)


@pytest.mark.parametrize(
    "img_size, patch_size, crop",
    [(28, 4, (12, 12)), (224, 16, (96, 96)), (28, 4, (12, 20))],  # micro's local crop; 96/224; not square
)
def test_dino_position_embedding_resampling(img_size, patch_size, crop):
    m = vit("micro", img_size=img_size, patch_size=patch_size, dynamic_img_size=True, pos_embed_resample="dino")
    timm_way = vit("micro", img_size=img_size, patch_size=patch_size, dynamic_img_size=True)
    timm_way.load_state_dict(m.state_dict())
    x = torch.randn(2, 1, *crop)
    with torch.no_grad():
        patches = torch.cat([m.cls_token.expand(2, -1, -1), m.patch_embed(x).flatten(1, 2)], dim=1)
        expected = patches + dino_interpolate_pos_encoding(m.pos_embed, *crop, patch_size)
        torch.testing.assert_close(m.embed(x), expected, rtol=0, atol=1e-6)
        # timm's default (kept for every other model) is a different resampling: bicubic with antialias
        antialiased = patches + resample_abs_pos_embed(
            m.pos_embed, new_size=[c // patch_size for c in crop], num_prefix_tokens=1
        )
        torch.testing.assert_close(timm_way.embed(x), antialiased, rtol=0, atol=1e-6)
        assert (timm_way.embed(x) - m.embed(x)).abs().max() > 1e-3
        # at the model's own resolution both use the table as it is (DINO returns pos_embed unchanged)
        full = torch.randn(2, 1, img_size, img_size)
        assert torch.equal(m.embed(full), timm_way.embed(full))
        assert m(x).shape == (2, 128)
    with pytest.raises(ValueError, match="pos_embed_resample"):
        vit("micro", pos_embed_resample="bilinear")
