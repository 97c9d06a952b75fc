"""Fine-tuning classifier, linear probe, parameter groups with layer-wise lr decay."""

import copy

import pytest
import torch

import model
from model import vit
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


def _beit_layer_id(var_name: str, num_max_layer: int) -> int:
    """BEiT's get_num_layer_for_vit (unilm/beit optim_factory.py), for its model's parameter names."""
    if var_name in ("cls_token", "mask_token", "pos_embed") or var_name.startswith("patch_embed"):
        return 0
    if var_name.startswith("blocks"):
        return int(var_name.split(".")[1]) + 1
    return num_max_layer - 1


def _beit_param_groups(named, depth: int, decay: float, skip: set[str]) -> dict[str, tuple[float, bool]]:
    """BEiT's LayerDecayValueAssigner + get_parameter_groups: name -> (lr_scale, weight decay applied)."""
    values = [decay ** (depth + 1 - i) for i in range(depth + 2)]  # as run_class_finetuning.py builds them
    out = {}
    for name, param in named:
        decayed = not (param.ndim == 1 or name.endswith(".bias") or name in skip)
        out[name] = (values[_beit_layer_id(name, len(values))], decayed)
    return out


@pytest.mark.parametrize("pool", ["avg", "cls"])
def test_layer_decay_equals_beits_rule_for_every_parameter(pool):
    """ViT-S at decay 0.65: each parameter's lr_scale and weight-decay membership equal BEiT's."""
    torch.manual_seed(0)
    clf = model.Classifier(vit("small"), num_classes=10, pool=pool)
    groups = param_groups(clf, weight_decay=0.05, layer_decay=0.65)
    ours = {id(p): (g["lr_scale"], g["weight_decay"] > 0) for g in groups for p in g["params"]}
    # Our names carry an `encoder.` prefix; BEiT's fine-tuning model has the norm (`norm` or `fc_norm`) and the
    # head at the top level, so both map to BEiT's names by dropping the prefix. BEiT's skip list is its
    # no_weight_decay(): {"pos_embed", "cls_token"}.
    named = [(n.removeprefix("encoder."), p) for n, p in clf.named_parameters()]
    reference = _beit_param_groups(named, depth=12, decay=0.65, skip={"pos_embed", "cls_token"})
    params = dict(named)
    assert len(ours) == len(reference) == 152
    for name, (scale, decayed) in reference.items():
        assert ours[id(params[name])][0] == pytest.approx(scale, rel=1e-12), name
        assert ours[id(params[name])][1] == decayed, name
    top = "fc_norm.weight" if pool == "avg" else "norm.weight"
    assert reference[top][0] == 1.0 and reference["blocks.11.mlp.fc2.weight"][0] == pytest.approx(0.65)
