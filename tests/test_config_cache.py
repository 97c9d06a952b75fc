"""Hydra's compositions of config-group sets, kept on disk ($HARNESS_CACHE/configs): read back exactly, or composed
again when the file is damaged."""

from __future__ import annotations

from omegaconf import OmegaConf

from harness import config
from harness.io import CACHE_ENV

GROUPS = ["task=pretrain", "data=fashion_mnist", "model=micro", "method=splitmask"]
VALUES = ["optim.epochs=3", "seed=4"]


def _fresh(monkeypatch) -> None:
    """As in a new process: nothing composed in memory."""
    monkeypatch.setattr(config, "_GROUP_CONFIGS", {})


def test_a_group_set_read_back_from_disk_is_what_hydra_composes(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    _fresh(monkeypatch)
    composed = config.Composer().container([*GROUPS, *VALUES])
    assert composed == OmegaConf.to_container(config.compose([*GROUPS, *VALUES]), resolve=True)
    assert len(list((tmp_path / "configs").glob("*.yaml"))) == 1  # one set of groups, one file
    _fresh(monkeypatch)
    calls = []
    monkeypatch.setattr(config, "_hydra_compose", lambda groups: calls.append(groups))  # must not be needed
    again = config.Composer().container([*GROUPS, *VALUES])
    assert calls == [] and again == composed


def test_a_damaged_stored_group_set_is_composed_again(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    _fresh(monkeypatch)
    composed = config.Composer().container(GROUPS)
    (stored,) = (tmp_path / "configs").glob("*.yaml")
    text = stored.read_text()
    for damage in ("model: {args: [1, 2\n", "- a list\n", "", text[: len(text) // 2], text.replace("0.", "1.", 1)):
        stored.write_text(damage)
        _fresh(monkeypatch)
        assert config.Composer().container(GROUPS) == composed
        assert stored.read_text() == text  # written again
