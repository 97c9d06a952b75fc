"""Fine-tuning classifier, linear probe, parameter groups with layer-wise lr decay."""

import copy

import pytest
import torch

import model
from model.heads import param_groups


def test_classifier_avg_pool_moves_the_encoder_norm_after_pooling():
    torch.manual_seed(0)
    encoder = model.vit("micro")
    with torch.no_grad():
        encoder.norm.weight.uniform_(0.5, 1.5)
    norm = copy.deepcopy(encoder.norm)
    clf = model.Classifier(encoder, num_classes=10).eval()
    x = torch.randn(2, 1, 28, 28)
    raw = clf.encoder.forward_layers(x, [-1])[0][:, 1:].mean(1)
    assert torch.allclose(clf.features(x), norm(raw), atol=1e-6)  # fc_norm is the pre-trained final norm
    assert clf.predict(x).shape == (2, 10)


def test_classifier_losses_hard_and_soft_targets():
    torch.manual_seed(0)
    clf = model.create("supervised_vit_micro_p4", num_classes=10, label_smoothing=0.0).eval()
    x = torch.randn(4, 1, 28, 28)
    y = torch.tensor([0, 1, 2, 3])
    hard, logs = clf(x, y)
    soft, soft_logs = clf(x, torch.nn.functional.one_hot(y, 10).float())
    assert torch.allclose(hard, soft, atol=1e-5) and "acc" in logs and "acc" not in soft_logs


def test_linear_probe_is_frozen_and_reads_the_chosen_block():
    torch.manual_seed(0)
    probe = model.create("linear_vit_micro_p4", num_classes=10, layer=2)
    probe.train()
    assert not probe.encoder.training
    assert all(not p.requires_grad for p in probe.encoder.parameters())
    x = torch.randn(4, 1, 28, 28)
    expected = probe.encoder.forward_layers(x, [1])[0][:, 1:].mean(1)
    assert torch.allclose(probe.features(x), expected)
    loss, _ = probe(x, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert probe.head.weight.grad is not None
    assert {n for n, p in probe.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    with pytest.raises(ValueError, match="layer"):
        model.create("linear_vit_micro_p4", layer=5)


def test_param_groups_weight_decay_and_layer_decay():
    clf = model.create("classifier_vit_micro_p4", num_classes=10)
    groups = param_groups(clf, weight_decay=0.05)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert id(clf.encoder.pos_embed) in no_decay and id(clf.encoder.cls_token) in no_decay
    assert id(clf.head.bias) in no_decay and id(clf.head.weight) not in no_decay

    groups = param_groups(clf, weight_decay=0.05, layer_decay=0.65)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    depth = len(clf.encoder.blocks)
    assert scale[id(clf.head.weight)] == pytest.approx(1.0)
    assert scale[id(clf.encoder.blocks[depth - 1].mlp.fc1.weight)] == pytest.approx(0.65)
    assert scale[id(clf.encoder.blocks[0].mlp.fc1.weight)] == pytest.approx(0.65**depth)
    assert scale[id(clf.encoder.patch_embed.proj.weight)] == pytest.approx(0.65 ** (depth + 1))
    total = sum(p.numel() for g in groups for p in g["params"])
    assert total == sum(p.numel() for p in clf.parameters() if p.requires_grad)
