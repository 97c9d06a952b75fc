"""SplitMask: split, inpaint, match, each as the paper describes it, and each switchable."""

import math

import pytest
import torch
import torch.nn.functional as F

import model
from model.splitmask import info_nce


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

    no_split = model.create("splitmask_vit_micro_p4", vocab_size=64, split=False, match=False).eval()
    shapes = _block_input_shapes(no_split)
    mask = no_split.sample_masks(4, seed=0)
    loss, logs = no_split(images, mask)
    assert shapes == [(4, 1 + 49)]  # the whole grid, with mask tokens: BEiT
    assert "match_loss" not in logs
    assert torch.allclose(loss, no_split.beit(images, mask)[0])

    with pytest.raises(ValueError, match="no loss"):
        model.create("splitmask_vit_micro_p4", inpaint=False, match=False)
    with pytest.raises(ValueError, match="split=True"):
        model.create("splitmask_vit_micro_p4", split=False)


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
