"""The registry: every registered model runs forward + backward, and is the model the harness builds from a job's
config, whose every argument comes from the config tree."""

import inspect
import shutil

import pytest
import torch
import yaml
from omegaconf import OmegaConf

import harness.config
import model
from harness.config import NON_IDENTITY_KEYS, compose, config_hash
from harness.train.build import build_model

INPUTS = {"grey28": dict(img_size=28, in_chans=1, patch_size=4), "rgb32": dict(img_size=32, in_chans=3, patch_size=4)}


def _loss(m, name: str, images: torch.Tensor) -> torch.Tensor:
    """Run the model the way the training loop does and return a scalar to differentiate."""
    method = name.split("_vit_")[0]
    if method in ("supervised", "classifier", "linear"):
        loss, _ = m(images, torch.tensor([0, 1]))
        return loss
    if method == "dino":
        local = torch.nn.functional.interpolate(images, size=m.local_crop_size, mode="bilinear")
        loss, _ = m([images, images.flip(-1)] + [local] * m.num_local_crops)
        return loss
    loss, _ = m(images)
    return loss


@pytest.mark.parametrize("input_kind", list(INPUTS))
@pytest.mark.parametrize("name", model.list_models())
def test_forward_backward(name, input_kind):
    torch.manual_seed(0)
    kw = dict(INPUTS[input_kind])
    if name.startswith(("beit", "splitmask")):
        kw |= dict(vocab_size=128, min_block=4, max_block=None)  # masks fit the 7x7 / 8x8 grids
    if name.startswith("splitmask"):
        kw |= dict(decoder_heads=4)
    if name.startswith("dino"):
        kw |= dict(global_crop_size=kw["img_size"], local_crop_size=12, out_dim=256, hidden_dim=64)
    if name.startswith(("supervised", "classifier", "linear")):
        kw |= dict(num_classes=10)
    if name.startswith("linear"):
        kw |= dict(layer=2)
    m = model.create(name, embed_dim=64, num_heads=4, depth=2, **kw)
    images = torch.randn(2, kw["in_chans"], kw["img_size"], kw["img_size"])
    loss = _loss(m, name, images)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable), "a trainable parameter got no gradient"


def test_registry_lists_every_method_and_size():
    names = model.list_models()
    for size in ("micro", "tiny", "small", "base"):
        for method in ("supervised", "classifier", "linear", "beit", "splitmask", "dino"):
            assert any(n.startswith(f"{method}_vit_{size}_p") for n in names)
    assert model.list_models("splitmask*") == [n for n in names if n.startswith("splitmask")]
    assert model.SIZES["small"] == dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)


def test_unknown_names_and_arguments_are_explained():
    with pytest.raises(ValueError, match=r"valid models: .*splitmask_vit_small_p16"):
        model.create("splitmask_vit_giant_p14")
    with pytest.raises(ValueError, match=r"unknown arguments .*\['temprature'\].*temperature"):
        model.create("splitmask_vit_micro_p4", temprature=0.1)


def test_overrides_are_routed_to_encoder_and_method():
    with torch.device("meta"):
        m = model.create("splitmask_vit_small_p16", drop_path_rate=0.2, temperature=0.1, pos_embed="sincos")
    assert m.temperature == 0.1 and m.encoder.pos_embed_type == "sincos"
    assert m.encoder.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)


# ---------------------------------------------------------------------------------------------------------------
# one source of defaults: the config tree
def _job(name: str) -> list[str]:
    """The overrides of the training job that builds a registered name (on the size's home dataset)."""
    method, size = model.MODELS[name]
    data = "fashion_mnist" if size == "micro" else "imagenet"
    task = {"classifier": "finetune", "linear": "linear"}.get(method, "pretrain")
    return [f"task={task}", f"model={size}", f"data={data}", *([f"method={method}"] if task == "pretrain" else [])]


def _arguments(cls) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self", "encoder"}


@pytest.mark.parametrize("name", model.list_models())
def test_create_and_the_harness_build_the_same_model_from_the_same_values(name):
    cfg = compose(_job(name))
    with torch.device("meta"):  # shapes without the cost of initialising ViT-S weights
        built, created = build_model(cfg), model.create(name)
    assert built.build_args == created.build_args
    method, encoder_args, method_args = built.build_args
    # Every constructor argument has its value in the config: nothing is left to a signature's default.
    assert set(encoder_args) == _arguments(model.ViT)
    cls = model.METHODS[method][0]
    expected = _arguments(cls) - ({"tokenizer_kwargs"} if "tokenizer" in method_args else set())
    assert set(method_args) == expected, set(method_args) ^ expected
    if "tokenizer" in method_args:
        spec = dict(method_args["tokenizer"])
        tokenizer = model.TOKENIZERS[spec.pop("name")]
        spec.pop("fit", None)
        given = {"vocab_size", "patch_size", "in_chans", "chunk_rows", "weights"}  # from the method / the run
        assert set(spec) == _arguments(tokenizer) - given, set(spec) ^ (_arguments(tokenizer) - given)
    shapes = {k: v.shape for k, v in built.state_dict().items()}
    assert shapes == {k: v.shape for k, v in created.state_dict().items()}


# Defaults that used to live in Python (the registry's micro values, BEiT's encoder recipe, a method's constructor
# default), now in the config tree: editing one in the YAML must change the identity of the jobs that use it.
EDITS = [
    ("method_model/splitmask_micro.yaml", ["method", "args", "vocab_size"], 512, []),
    ("method_model/splitmask_micro.yaml", ["method", "args", "min_block"], 3, []),
    ("method_model/beit_micro.yaml", ["method", "args", "min_block"], 5, ["method=beit"]),
    ("method_model/dino_micro.yaml", ["method", "args", "out_dim"], 2048, ["method=dino"]),
    ("method/beit.yaml", ["model", "args", "layer_scale_init"], 0.2, ["method=beit"]),
    ("method/splitmask.yaml", ["method", "args", "temperature"], 0.1, []),
    ("method/dino.yaml", ["method", "args", "momentum_teacher"], 0.99, ["method=dino"]),
    ("tokenizer/random_projection.yaml", ["low"], -0.5, []),
    ("model/micro.yaml", ["args", "embed_dim"], 96, []),
    ("config.yaml", ["model", "args", "mlp_ratio"], 2.0, []),
    ("config.yaml", ["aug", "strong", "blur_prob"], 0.3, ["data=stanford_cars"]),
    ("recipe/table7_small.yaml", ["lr"], 1e-3, ["task=finetune", "data=stanford_cars"]),
    ("data/stanford_cars.yaml", ["mim", "mask_ratio"], 0.6, ["data=stanford_cars"]),
]


@pytest.mark.parametrize("file, path, value, job", EDITS, ids=[f"{e[0]}:{'.'.join(e[1])}" for e in EDITS])
def test_editing_a_default_in_the_config_tree_changes_the_identity(tmp_path, monkeypatch, file, path, value, job):
    before = config_hash(compose(job))
    conf = tmp_path / "conf"
    shutil.copytree(harness.config.CONF_DIR, conf)
    text = (conf / file).read_text()
    header = [line for line in text.splitlines() if line.startswith("# @package")]
    data = yaml.safe_load(text)
    node = data
    for key in path[:-1]:
        node = node[key]
    assert path[-1] in node and node[path[-1]] != value
    node[path[-1]] = value
    (conf / file).write_text("\n".join([*header, yaml.safe_dump(data, sort_keys=False)]))
    monkeypatch.setattr(harness.config, "CONF_DIR", conf)
    assert config_hash(compose(job)) != before


def test_the_hash_covers_every_value_but_where_a_job_runs():
    """Every leaf of a resolved config, changed, changes the identity, but for the non-identity keys."""
    base = OmegaConf.to_container(compose(["task=finetune"]), resolve=True)
    reference = config_hash(base)

    def leaves(node, prefix=()):
        for k, v in node.items():
            if isinstance(v, dict) and v:
                yield from leaves(v, (*prefix, k))
            else:
                yield (*prefix, k)

    checked = 0
    for path in leaves(base):
        changed = yaml.safe_load(yaml.safe_dump(base))
        node = changed
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = f"changed from {node[path[-1]]!r}"
        dotted = ".".join(path)
        ignored = any(dotted == k or dotted.startswith(k + ".") for k in NON_IDENTITY_KEYS)
        assert (config_hash(changed) == reference) == ignored, dotted
        checked += 1
    assert checked > 100
