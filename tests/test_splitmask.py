"""SplitMask: split, inpaint, match, each as the paper describes it, and each switchable."""

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import model
from model import vit
from model.splitmask import SplitMask, info_nce
from tests.test_vit import assert_beit_trunc_normal, assert_std


@pytest.fixture
def splitmask():
    torch.manual_seed(0)
    return model.create("splitmask_vit_micro_p4", vocab_size=64).eval()  # eval: no drop path, deterministic


def _batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, 28, 28, generator=g)


def test_subsets_disjoint_and_covering(splitmask):
    split = splitmask.sample_masks(8, seed=0)
    n_a, n_b = splitmask.mask_generator.num_visible
    keep_a, unseen_a = splitmask.split_indices(split, 0, n_a)
    keep_b, unseen_b = splitmask.split_indices(split, 1, n_b)
    for i in range(8):
        a, b = set(keep_a[i].tolist()), set(keep_b[i].tolist())
        assert not a & b and a | b == set(range(49))
        assert set(unseen_a[i].tolist()) == b and set(unseen_b[i].tolist()) == a


def _block_input_shapes(m):
    shapes = []
    m.encoder.blocks[0].register_forward_hook(lambda mod, inp, out: shapes.append(tuple(inp[0].shape[:2])))
    return shapes


def test_encoder_sees_only_visible_patches_and_no_mask_token(splitmask):
    # 7x7 grid: 24 patches masked (B), 25 visible (A): two encoder passes of different lengths
    assert splitmask.mask_generator.num_visible == (25, 24)
    shapes = _block_input_shapes(splitmask)
    splitmask(_batch(), splitmask.sample_masks(4, seed=1))
    assert shapes == [(4, 1 + 25), (4, 1 + 24)]  # class token + that branch's visible patches, nothing else
    assert splitmask.encoder.mask_token is None

    # 8x8 grid: 32 / 32, both branches go through the encoder as one batch of 2B
    even = model.create("splitmask_vit_micro_p4", img_size=32, vocab_size=64).eval()
    shapes = _block_input_shapes(even)
    even(torch.randn(4, 1, 32, 32))
    assert shapes == [(8, 1 + 32)]


def test_visible_targets_do_not_change_the_mim_loss(splitmask, monkeypatch):
    images, split = _batch(), splitmask.sample_masks(4, seed=2)
    targets = torch.randint(0, 64, (4, 49), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(splitmask.tokenizer, "forward", lambda x: targets.clone())
    _, base = splitmask(images, split)
    # a patch of subset A is visible to branch A: its target only matters to branch B
    a_patch = int((split[0] == 0).nonzero()[0])
    targets[0, a_patch] = (targets[0, a_patch] + 1) % 64
    _, changed = splitmask(images, split)
    assert torch.equal(changed["mim_loss_a"], base["mim_loss_a"])
    assert not torch.equal(changed["mim_loss_b"], base["mim_loss_b"])


def test_total_loss_is_the_sum_of_its_terms(splitmask):
    loss, logs = splitmask(_batch(), splitmask.sample_masks(4, seed=3))
    assert torch.allclose(loss, logs["mim_loss_a"] + logs["mim_loss_b"] + logs["match_loss"])
    assert {"mim_acc", "match_acc"} <= set(logs)


def test_ablation_switches_remove_their_term():
    torch.manual_seed(0)
    images = _batch()
    no_match = model.create("splitmask_vit_micro_p4", vocab_size=64, match=False).eval()
    loss, logs = no_match(images)
    assert "match_loss" not in logs and torch.allclose(loss, logs["mim_loss_a"] + logs["mim_loss_b"])

    no_inpaint = model.create("splitmask_vit_micro_p4", vocab_size=64, inpaint=False).eval()
    loss, logs = no_inpaint(images)
    assert "mim_loss" not in logs and torch.allclose(loss, logs["match_loss"])
    assert no_inpaint.head is None and no_inpaint.tokenizer is None  # nothing without a gradient under DDP

    with pytest.raises(ValueError, match="no loss"):
        model.create("splitmask_vit_micro_p4", inpaint=False, match=False)


def test_no_split_variant_and_no_encoder_registered_twice():
    """T6's row without the split is the BEiT baseline (method `beit`); SplitMask has no `split` switch, and its
    encoder is registered once (the removed split=False also held it as `beit.encoder.*`)."""
    assert "split" not in inspect.signature(SplitMask).parameters
    with pytest.raises(TypeError, match="split"):
        SplitMask(vit("micro"), vocab_size=64, split=False)
    m = SplitMask(vit("micro"), vocab_size=64, min_block=4, max_block=None)
    names = m.state_dict().keys()
    assert not any(k.startswith("beit.") for k in names) and "encoder.pos_embed" in names
    assert len(list(m.named_parameters(remove_duplicate=False))) == len(list(m.named_parameters()))


def test_decoder_norms_use_the_encoders_eps(splitmask):
    """Every LayerNorm of the decoder (its blocks' and its final one) has eps 1e-6, as timm's ViT and BEiT."""
    norms = [mod for mod in splitmask.decoder.modules() if isinstance(mod, nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1  # two per block, two blocks, the final norm
    assert {mod.eps for mod in norms} == {1e-6} == {splitmask.encoder.norm.eps}
    x = 1e-3 * torch.randn(2, 5, 128)  # variance ~1e-6: the eps matters
    expected = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-6)
    torch.testing.assert_close(splitmask.decoder.norm(x), expected, rtol=0, atol=1e-5)


def test_beit_init_of_the_decoder_and_head():
    """init="beit": decoder Linear layers, its mask token and the MIM head drawn by BEiT's trunc_normal_ (cut at
    +-0.02); by default the method follows its encoder's init, and timm's init stays as it was."""
    torch.manual_seed(0)
    beit_way = SplitMask(vit("micro", init="beit"), vocab_size=1024, min_block=4, max_block=None)
    dec = beit_way.decoder
    linears = [mod for mod in dec.modules() if isinstance(mod, nn.Linear)] + [beit_way.head]
    assert len(linears) == 2 * 4 + 1
    for linear in linears:
        assert_beit_trunc_normal(linear.weight)
        assert not linear.bias.any()
    assert_beit_trunc_normal(dec.mask_token)
    assert all(mod.weight.eq(1).all() and not mod.bias.any() for mod in dec.modules() if isinstance(mod, nn.LayerNorm))

    timm_way = SplitMask(vit("micro"), vocab_size=1024, min_block=4, max_block=None)
    assert_std(timm_way.decoder.blocks[0].mlp.fc1.weight, 0.02)
    assert_std(timm_way.head.weight, 0.02)
    assert timm_way.head.weight.abs().max() > 0.02 and timm_way.decoder.mask_token.abs().max() > 0.02
    explicit = SplitMask(vit("micro"), vocab_size=1024, min_block=4, max_block=None, init="beit")
    assert_beit_trunc_normal(explicit.head.weight)
    assert_beit_trunc_normal(explicit.decoder.blocks[1].attn.qkv.weight)


def test_descriptor_is_the_mean_over_all_decoded_positions(splitmask, monkeypatch):
    captured = {}

    def spy(a, b, *args, **kwargs):
        captured["a"] = a
        return info_nce(a, b, *args, **kwargs)

    monkeypatch.setattr("model.splitmask.info_nce", spy)
    images, split = _batch(), splitmask.sample_masks(4, seed=4)
    splitmask(images, split)
    n_a = splitmask.mask_generator.num_visible[0]
    keep_a, _ = splitmask.split_indices(split, 0, n_a)
    decoded_a = splitmask.encode_and_decode(splitmask.encoder.embed(images), keep_a)
    assert decoded_a.shape == (4, 49, 128)
    assert torch.allclose(captured["a"], decoded_a.mean(1), atol=1e-6)


def test_info_nce_matches_hand_computation():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    t = 0.2
    an, bn = F.normalize(a, dim=1), F.normalize(b, dim=1)

    def direction(x, y):
        total = 0.0
        for i in range(3):
            sims = [float(x[i] @ y[k]) / t for k in range(3)]
            total -= sims[i] - math.log(sum(math.exp(s) for s in sims))
        return total / 3

    loss, acc = info_nce(a, b, temperature=t, symmetric=False)
    assert loss.item() == pytest.approx(direction(an, bn), rel=1e-5)
    loss, _ = info_nce(a, b, temperature=t, symmetric=True)
    assert loss.item() == pytest.approx((direction(an, bn) + direction(bn, an)) / 2, rel=1e-5)
    loss, _ = info_nce(a, b, temperature=t, normalize=False, symmetric=False)
    assert loss.item() == pytest.approx(direction(a, b), rel=1e-5)
    assert acc.item() == pytest.approx(1 / 3)  # only a[0] is closest to its own b; a[1] -> b[2], a[2] -> b[1]


def test_75_percent_uniform_splits():
    torch.manual_seed(0)
    images = _batch()
    # 75% of 49 = 37 masked: complement -> A sees 12, B 37; disjoint -> both see 12, 25 hidden from both
    for subsets, shapes_expected in (("complement", [(4, 13), (4, 38)]), ("disjoint", [(8, 13)])):
        m = model.create(
            "splitmask_vit_micro_p4", vocab_size=64, mask_ratio=0.75, mask_pattern="random", subsets=subsets
        ).eval()
        shapes = _block_input_shapes(m)
        loss, _ = m(images)
        assert torch.isfinite(loss)
        assert shapes == shapes_expected


def test_bad_split_counts_are_reported(splitmask):
    split = splitmask.sample_masks(2, seed=0)
    split[0, (split[0] == 0).nonzero()[0]] = 1
    with pytest.raises(ValueError, match="subset A"):
        splitmask(_batch(2), split)


def test_branch_loss_matches_a_reference_computation(splitmask, monkeypatch):
    """Branch A's MIM loss, recomputed patch by patch with explicit loops, equals the vectorised one."""
    images, split = _batch(2), splitmask.sample_masks(2, seed=6)
    targets = torch.randint(0, 64, (2, 49), generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(splitmask.tokenizer, "forward", lambda x: targets.clone())
    _, logs = splitmask(images, split)
    dec, enc = splitmask.decoder, splitmask.encoder
    total, count = 0.0, 0
    for i in range(2):
        seen = [p for p in range(49) if split[i, p] == 0]
        encoded = enc.forward_features(images[i : i + 1], keep=torch.tensor([seen]))[0]  # [1 + n, D]
        grid = [encoded[1 + seen.index(p)] if p in seen else dec.mask_token[0, 0] for p in range(49)]
        x = torch.cat([encoded[:1], torch.stack(grid) + dec.pos_embed[0]]).unsqueeze(0)
        out = dec.norm(dec.blocks(x))[0, 1:]
        for p in range(49):
            if p not in seen:
                total += F.cross_entropy(splitmask.head(out[p]).unsqueeze(0), targets[i, p : p + 1])
                count += 1
    assert torch.allclose(logs["mim_loss_a"], total / count, atol=1e-5)
