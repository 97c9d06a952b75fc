"""Config values are checked when a config is composed (issue 15.5): `plan` refuses what would only fail, or silently
do nothing, at run time. Each error is one line naming the key, the value and what was expected."""

from __future__ import annotations

import copy

import pytest
from omegaconf import OmegaConf

from harness.config import VALUES, Composer, ConfigError, check_values, compose, load_config

BAD = [
    ("optim.epochs=-1", "optim.epochs=-1: expected a number > 0"),
    ("optim.lr=abc", "optim.lr=abc (a string): expected a number >= 0, or null"),
    ("optim.batch_size=0", "optim.batch_size=0: expected an integer > 0"),
    ("optim.batch_size=32.5", "optim.batch_size=32.5: expected an integer > 0"),
    ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1: expected a number >= 0"),
    ("optim.warmup_epochs=abc", "optim.warmup_epochs=abc (a string): expected a number >= 0"),
    ("optim.max_iters=0", "optim.max_iters=0: expected an integer > 0, or null"),
    ("loader.workers=-1", "loader.workers=-1: expected an integer >= 0"),
    ("seed=1.5", "seed=1.5: expected an integer >= 0"),
    ("data.mim.mask_ratio=1.0", "data.mim.mask_ratio=1.0: expected a number in (0, 1)"),
    ("eval.every_epochs=0", "eval.every_epochs=0: expected a number > 0"),
    ("log.checkpoint_every=true", "log.checkpoint_every=true: expected an integer > 0"),
    ("run.amp=fp8", "run.amp=fp8: expected one of auto, bf16, fp16, fp32"),
    ("data.img_size=30", "data.img_size=30 is not a multiple of model.args.patch_size=4"),
    ("optim=3", "optim=3: expected a section of keys (optim.KEY=VALUE), got a value"),
    ("optim.epoch=3", "unknown key 'optim.epoch': did you mean 'optim.epochs'?"),
    ("data=fashion", "data=fashion: no such option in harness/conf/data/; valid: ade20k"),
    ("optim.lr=[", "optim.lr=[: not a valid override"),
]


@pytest.mark.parametrize(("override", "expected"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_value_is_one_line_naming_the_key_the_value_and_what_is_expected(override, expected):
    for compose_ in (compose, Composer().container):  # `harness train` and `harness plan` (the sweep's Composer)
        with pytest.raises(ConfigError) as refused:
            compose_(["model=micro", "data=fashion_mnist", override])
        assert expected in str(refused.value) and "\n" not in str(refused.value), compose_


def test_the_fast_path_of_a_grid_checks_values_too():
    """The Composer sets a trailing plain value on a cached config without Hydra: it used to skip the checks, so
    `harness plan` passed optim.epochs=-1 and the job wrote a result of -10 iterations."""
    composer = Composer()
    composer.container(["task=pretrain", "optim.epochs=5"])  # the grid's base, cached
    with pytest.raises(ConfigError, match=r"optim\.epochs=-1: expected a number > 0"):
        composer.container(["task=pretrain", "optim.epochs=-1"])


@pytest.fixture(scope="module")
def configs() -> list[dict]:
    """The resolved configs of each task and of the methods with their own arguments."""
    sets = [[], ["method=dino"], ["method=beit"], ["task=finetune"], ["task=linear"], ["task=detect"], ["task=segment"]]
    return [OmegaConf.to_container(compose(["model=micro", *overrides]), resolve=True) for overrides in sets]


def _lookup(config: dict, key: str):
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return KeyError
        node = node[part]
    return node


def test_every_rule_names_a_key_of_the_config_tree_and_refuses_a_wrong_type(configs):
    """The table is the config's own: each key exists in some job's config (no rule for a misspelt key), every
    default passes it, and a string where a number (or an option) goes is refused, naming the key."""
    for key in VALUES:
        holders = [c for c in configs if _lookup(c, key) is not KeyError]
        assert holders, f"{key}: no such key in any job's config"
        config = copy.deepcopy(holders[0])
        check_values(config)
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = "not-a-value"
        with pytest.raises(ConfigError, match=rf"^{key}=not-a-value"):
            check_values(config)


@pytest.mark.parametrize("text", ["model: {args: [1, 2\n", "- just\n- a list\n", "\x00\x01garbage: : :\n"])
def test_an_unreadable_saved_config_is_one_line(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="not a readable YAML config") as refused:
        load_config(path)
    assert str(path) in str(refused.value) and "\n" not in str(refused.value)
