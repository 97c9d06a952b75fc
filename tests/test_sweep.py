"""Sweep files: parsing, validation errors a person can act on, compilation into a job graph, identities."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from harness.config import compose, config_hash
from harness.io import CACHE_ENV
from harness.launch.cost import CostModel
from harness.sweep import SweepError, compile_sweeps, load_sweep

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "sweeps" / "smoke.yaml"

TWO_STAGES = """
name: {name}
overrides: [model=micro, data=fashion_mnist]
stages:
  pretrain:
    overrides: [optim.epochs=1]
    grid:
      method: {{splitmask: [method=splitmask], beit: [method=beit]}}
  finetune:
    grid:
      - from: pretrain
        seed: [0, 1]
      - method: {{random: []}}
cells:
  - {{stage: finetune, keys: {{method: beit}}, paper: 70.0}}
"""


def write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_smoke_sweep_compiles_to_its_graph(tmp_path):
    graph = compile_sweeps([load_sweep(SMOKE)], tmp_path)
    jobs = list(graph.jobs.values())
    assert [j.task for j in jobs].count("pretrain") == 3
    assert [j.task for j in jobs].count("finetune") == 4 * 3  # three encoders and random init, 3 seeds each
    assert [j.task for j in jobs].count("linear") == 5 * 3  # and the raw pixels
    pretrain = {j.refs[0].keys["method"]: j for j in jobs if j.task == "pretrain"}
    for job in jobs:
        assert job.run_dir == tmp_path.resolve() / job.task / job.id
        method = job.refs[0].keys["method"]
        if job.task != "pretrain" and method in pretrain:
            up = pretrain[method]
            assert job.upstream == up.id
            assert job.config.pretrained == str(up.run_dir)
        elif job.task != "pretrain":
            assert job.upstream is None and job.config.pretrained is None
    # upstream jobs come before their dependents
    order = list(graph.jobs)
    assert all(order.index(j.upstream) < order.index(j.id) for j in jobs if j.upstream)


def test_identical_jobs_are_shared_across_sweeps(tmp_path):
    a = load_sweep(write(tmp_path, TWO_STAGES.format(name="a"), "a.yaml"))
    b = load_sweep(write(tmp_path, TWO_STAGES.format(name="b"), "b.yaml"))
    graph = compile_sweeps([a, b], tmp_path / "results")
    assert len(graph.jobs) == 2 + 2 * 2 + 1
    assert all(len(job.refs) == 2 for job in graph.jobs.values())
    assert {r.sweep for r in next(iter(graph.jobs.values())).refs} == {"a", "b"}


def test_identity_ignores_where_results_and_data_live(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(write(tmp_path, TWO_STAGES.format(name="a")))
    relative = compile_sweeps([sweep], "results")
    absolute = compile_sweeps([sweep], tmp_path / "elsewhere" / "results", overrides=["data.root=/data/fmnist"])
    assert list(relative.jobs) == list(absolute.jobs)
    with_workers = compile_sweeps([sweep], "results", overrides=["loader.workers=3", "log.every=7"])
    assert list(with_workers.jobs) == list(relative.jobs)
    changed = compile_sweeps([sweep], "results", overrides=["optim.weight_decay=0.1"])
    assert not set(changed.jobs) & set(relative.jobs)


def test_pretrained_path_enters_the_hash_as_the_upstream_identity():
    a = compose(["task=finetune", "pretrained=results/pretrain/0123456789ab"])
    b = compose(["task=finetune", "pretrained=/scratch/me/results/pretrain/0123456789ab/"])
    c = compose(["task=finetune", "pretrained=results/pretrain/ba9876543210"])
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_block_with_match_and_where_pairs_upstream_jobs(tmp_path):
    path = write(
        tmp_path,
        """
        overrides: [model=micro]
        stages:
          pretrain:
            grid:
              data: {fashion_mnist: [data=fashion_mnist], imagenet: [data=imagenet]}
              method: {beit: [method=beit], splitmask: [method=splitmask]}
          finetune:
            grid:
              - from: pretrain
                where: {method: splitmask}
                match: {data: target}
                target: {fashion_mnist: [data=fashion_mnist], imagenet: [data=imagenet]}
        """,
    )
    graph = compile_sweeps([load_sweep(path)], tmp_path)
    finetunes = [j for j in graph.jobs.values() if j.task == "finetune"]
    assert sorted(j.label for j in finetunes) == [
        "data=fashion_mnist method=splitmask target=fashion_mnist",
        "data=imagenet method=splitmask target=imagenet",
    ]
    for job in finetunes:
        assert graph.jobs[job.upstream].config.data.name == job.config.data.name


def test_smoke_profile_swaps_datasets_and_shrinks_jobs(tmp_path):
    path = write(
        tmp_path,
        """
        stages:
          pretrain:
            overrides: [model=small, data=imagenet, optim.epochs=300]
        """,
    )
    graph = compile_sweeps([load_sweep(path)], tmp_path, profile="smoke")
    (job,) = graph.jobs.values()
    assert job.config.data.name == "fashion_mnist"
    assert job.config.data.stands_in_for == "imagenet"
    assert job.config.model.size == "micro"
    assert job.config.optim.epochs == 300  # the paper's epochs stay; the job stops after a few iterations
    assert job.config.optim.max_iters == 2


def test_micro_profile_seeds_downstream_jobs_and_keeps_what_each_stand_in_is_about(tmp_path, monkeypatch):
    path = write(
        tmp_path,
        """
        stages:
          pretrain:
            overrides: [model=small, optim.epochs=300]
            grid: {data: {cars: [data=stanford_cars], coco: [data=coco], sketch: [data=sketch]}}
          finetune:
            grid: {from: pretrain, where: {data: [cars, sketch]}}
        """,
    )
    graph = compile_sweeps([load_sweep(path)], tmp_path, profile="micro")
    pretrain = {j.refs[0].keys["data"]: j.config for j in graph.jobs.values() if j.task == "pretrain"}
    finetune = [j for j in graph.jobs.values() if j.task == "finetune" and j.upstream]
    assert len(pretrain) == 3 and len(finetune) == 2 * 3  # three seeds of every fine-tuning
    assert sorted({(j.refs[0].keys["seed"], j.config.seed, j.config.data.subset.seed) for j in finetune}) == [
        ("0", 0, 0), ("1", 1, 1), ("2", 2, 2)]  # fmt: skip
    cars, coco, sketch = pretrain["cars"], pretrain["coco"], pretrain["sketch"]
    assert list(cars.data.stand_in.classes) == [5, 7, 9] and cars.data.num_classes == 3  # a fine-grained target
    assert cars.method.args.mask_ratio == 0.75  # the smallest sets keep their recipe
    assert coco.data.stand_in.mosaic == 2 and coco.data.num_classes == 0  # scenes, unlabelled
    assert sketch.data.stand_in.style == "sketch"
    assert cars.optim.epochs == 300 and cars.optim.epoch_scale == pytest.approx(1 / 600)  # the protocol's epochs
    with pytest.raises(SweepError, match="seeds"):
        _bad_profile(tmp_path, "seeds: {finetune: 0}")


def _bad_profile(tmp_path: Path, text: str):
    import harness.sweep.graph as graph_module
    from harness.sweep.graph import load_profile

    folder = tmp_path / "conf" / "profile"
    folder.mkdir(parents=True)
    (folder / "bad.yaml").write_text(text)
    original = graph_module.CONF_DIR
    graph_module.CONF_DIR = tmp_path / "conf"
    try:
        return load_profile("bad")
    finally:
        graph_module.CONF_DIR = original


def test_smoke_profile_keeps_distinct_datasets_models_and_epochs_distinct(tmp_path):
    """Every paper dataset has its own stand-in, ViT-S and ViT-B stay two models, and epochs stay in the identity."""
    path = write(
        tmp_path,
        """
        stages:
          pretrain:
            grid:
              data: {in1: [data=imagenet, data.subset.fraction=0.01], in_full: [data=imagenet],
                     inat: [data=inat2019], cars: [data=stanford_cars], coco: [data=coco]}
              model: {s: [model=small], b: [model=base]}
              epochs: {short: [optim.epochs=100], long: ["optim.epochs=${parity:300}"]}
        """,
    )
    real = compile_sweeps([load_sweep(path)], tmp_path, profile=None)
    smoke = compile_sweeps([load_sweep(path)], tmp_path, profile="smoke")
    assert len(real.jobs) == len(smoke.jobs) == 5 * 2 * 2
    by_keys = {tuple(j.refs[0].keys.values()): j.config for j in smoke.jobs.values()}
    assert {c.data.name for c in by_keys.values()} == {"fashion_mnist"}
    cars = by_keys[("cars", "s", "long")]
    assert cars.aug.strong.enabled and cars.method.args.mask_ratio == 0.75  # the small-set recipe stays
    assert by_keys[("in1", "b", "long")].model.args.depth == 12  # ViT-B's stand-in keeps 12 blocks to probe
    # Iteration parity counts the images of the dataset a stand-in replaces: the paper's epochs, not Fashion-MNIST's.
    assert [by_keys[(d, "s", "long")].optim.epochs for d in ("in1", "in_full", "coco")] == [30000, 300, 3000]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stages: {pretrain: {grid: {method: [beit}}", r"sweep.yaml:1:\d+: YAML syntax error"),
        ("stagez: {}", r"yaml: stagez: unknown key; did you mean 'stages'"),
        ("stages: {pretrain: {overides: []}}", r"stages.pretrain.overides: unknown key; did you mean 'overrides'"),
        ("stages: {pretrain: {overrides: [data=imagenett]}}", r"unknown data 'imagenett'; did you mean 'imagenet'"),
        ("stages: {pretrain: {overrides: [method=splitmsk]}}", r"unknown method .*valid: beit, classifier"),
        (
            "stages: {pretrain: {overrides: [optim.epoch=3]}}",
            r"(?s)stages.pretrain.grid, job -: .*did you mean 'optim.epochs'",
        ),
        ("stages: {pretrain: {task: pretrian}}", r"unknown task 'pretrian'; did you mean 'pretrain'"),
        ("stages: {finetune: {grid: {from: pretrain}}}", r"unknown stage 'pretrain'"),
        (
            "stages: {a: {task: finetune, grid: {from: b}}, b: {task: finetune, grid: {from: a}}}",
            r"dependency cycle: a -> b -> a",
        ),
        (
            "stages: {pretrain: {grid: {seed: [0]}}}\ncells: [{stage: pretrain, keys: {seed: 1}, paper: 1.0}]",
            r"cells\[0\].keys.seed: no job of stage 'pretrain' has seed=1 \(values: 0\)",
        ),
        (
            "stages: {pretrain: {}}\ncells: [{stage: pretrain, keys: {size: b}, paper: 1.0}]",
            r"cells\[0\].keys.size: stage 'pretrain' has no key 'size'",
        ),
        ("stages: {pretrain: {}}\ncells: [{stage: pretrain, metric: acc, paper: 1.0}]", r"unknown metric 'acc'"),
        ("stages: {pretrain: {}}\ncells: [{stage: pretrain, paper: high}]", r"paper: expected a finite number"),
        ("stages: {pretrain: {cluster: {gpus: 8}}}", r"stages.pretrain.cluster.gpus: unknown key"),
        (
            "stages: {pretrain: {grid: {m: {a: [method=beit]}}}, finetune: {grid: {from: pretrain, where: {m: b}}}}",
            r"stages.finetune.grid: selects no jobs",
        ),
    ],
)
def test_validation_errors_name_the_file_the_key_and_the_fix(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(SweepError, match=expected) as info:
        compile_sweeps([load_sweep(path)], tmp_path)
    assert str(path) in str(info.value)


def test_cost_model_matches_the_papers_reference_point_and_calibrates(tmp_path):
    cfg = compose(["method=beit", "model=base", "data=imagenet", "optim.epochs=300"])
    cost = CostModel()
    assert cost.estimate(cfg).hours == pytest.approx(16 * 32.5, rel=1e-6)  # FACTS T6: 32.5 h on 16 GPUs
    sm = compose(["method=splitmask", "model=base", "data=imagenet", "optim.epochs=300"])
    assert cost.estimate(sm).hours == pytest.approx(16 * 34.0, rel=1e-6)
    run = tmp_path / "run"
    run.mkdir()
    # 300 epochs of 625 steps at batch 2048 (the last partial batch of each epoch dropped)
    (run / "result.json").write_text('{"gpu_hours": 100.0, "device_hours": 100.0, "epochs": 300, "iterations": 187500}')
    cpu = tmp_path / "cpu"
    cpu.mkdir()
    (cpu / "result.json").write_text('{"gpu_hours": 0.0, "device_hours": 1.0, "epochs": 300, "iterations": 187500}')
    cost.calibrate(tmp_path, {cpu: cfg})
    assert cost.estimate(cfg).source == "model"  # a CPU run says nothing about GPU-hours
    cost.calibrate(tmp_path, {run: cfg})
    estimate = cost.estimate(cfg)
    assert estimate.hours == pytest.approx(100.0, rel=1e-3) and estimate.source == "measured (1)"
    assert cost.estimate(sm).source == "model"
    capped = compose(["method=splitmask", "model=base", "data=imagenet", "optim.max_iters=10"])
    assert cost.estimate(capped).hours == pytest.approx(cost.estimate(sm).hours * 10 * 2048 / (300 * 1_281_167))


@pytest.mark.parametrize(
    "overrides",
    [
        ["task=finetune", "data=inat2019", "model=small", "seed=3"],
        ["task=finetune", "model=micro", "data.subset.per_class=60", "pretrained=/r/pretrain/0123456789ab", "seed=1"],
        ["task=linear", "optim.epochs=10", "aug.scale=[1.0,1.0]", "eval.every_epochs=100"],
        ["task=pretrain", "method=dino", "method.args.momentum_teacher=0.99", "optim.blr=2e-3", "seed=2"],
        ["task=finetune", "data=food101", "recipe.epochs=7", "optim.warmup_epochs=1"],  # interpolated
        ["task=finetune", "optim.batch_size=64", "seed=0"],  # a validated key
        ["task=pretrain", "data=imagenet", "data.subset.fraction=0.1", "optim.epochs=${parity:300}"],  # a resolver
        ["optim.warmup_epochs=1", "task=finetune", "data=food101", "+method.args.extra=1", "seed=4"],  # values first
        ["model=small", "optim.epochs=${parity:300}", "data=imagenet", "data.subset.fraction=0.01"],  # read by it
    ],
)
def test_fast_composer_gives_exactly_what_hydra_composes(overrides):
    from omegaconf import OmegaConf

    from harness.config import Composer

    composer = Composer()
    fast = composer.container(overrides)
    assert fast == OmegaConf.to_container(compose(overrides), resolve=True)
    assert config_hash(fast) == config_hash(compose(overrides))
    key = overrides[-1].rsplit("=", 1)[0]
    changed = [*overrides[:-1], f"{key}={0.5 if key.endswith('fraction') else 5}"]  # the next cell: a cached base
    assert composer.container(changed) == OmegaConf.to_container(compose(changed), resolve=True)


def test_fast_composer_reports_unknown_keys_as_hydra_does():
    from harness.config import Composer, ConfigError

    with pytest.raises(ConfigError, match=r"did you mean 'optim\.epochs'"):
        Composer().container(["task=pretrain", "optim.epoch=3"])


@pytest.mark.parametrize(
    ("overrides", "epochs"),
    [
        (["data=imagenet"], 300),
        (["data=imagenet", "data.subset.fraction=0.1"], 3000),  # FACTS §3.1: IN-10% 3k
        (["data=imagenet", "data.subset.fraction=0.01"], 30000),  # IN-1% 30k
        (["data=coco"], 3000),  # COCO 3k (3,249 exactly)
        (["data=inat2019", "optim.epochs=${parity:300,2}"], 1400),  # two significant figures
    ],
)
def test_parity_epochs_come_from_the_named_helper(overrides, epochs):
    from harness.catalog import DATASETS, iteration_parity_epochs

    typed = any(o.startswith("optim.epochs") for o in overrides)
    items = overrides if typed else [*overrides, "optim.epochs=${parity:300}"]
    cfg = compose(["task=pretrain", *items])
    assert cfg.optim.epochs == epochs
    fraction = cfg.data.subset.fraction or 1.0
    significant = 2 if "300,2" in items[-1] else 1
    expected = iteration_parity_epochs(round(DATASETS[cfg.data.name].train_size * fraction), significant=significant)
    assert cfg.optim.epochs == expected


def test_parity_refuses_a_subset_it_cannot_count():
    from harness.config import ConfigError

    with pytest.raises(ConfigError, match=r"data\.subset\.fraction"):
        compose(["task=pretrain", "data=imagenet", "data.subset.per_class=13", "optim.epochs=${parity:300}"])


def test_dense_tasks_plan_as_not_runnable_with_the_reason(tmp_path):
    path = write(
        tmp_path,
        """
        stages:
          pretrain: {overrides: [model=small, data=coco]}
          detect:
            grid: {from: pretrain, target: {coco: [data=coco]}}
        cells:
          - {stage: detect, keys: {target: coco}, metric: box_ap, paper: 45.3}
          - {external: "Liu et al. (NeurIPS 2021), quoted", keys: {method: liu}, paper: 60.6}
        """,
    )
    sweep = load_sweep(path)
    graph = compile_sweeps([sweep], tmp_path)
    detect = next(j for j in graph.jobs.values() if j.task == "detect")
    assert graph.jobs[detect.upstream].blocked is None and detect.blocked is None  # the dense tasks run
    assert detect.config["method"]["name"] == "mask_rcnn"
    assert sweep.cells[1].external and sweep.cells[1].stage is None  # a quoted number: no stage, no job


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ('{external: "x", stage: pretrain, paper: 1}', r"cells\[0\]\.stage: an external cell .* no stage"),
        ("{external: x}", r"cells\[0\]\.paper: an external cell is a quoted number"),
        ("{external: 3, paper: 1}", r"cells\[0\]\.external: expected the source"),
    ],
)
def test_external_cells_are_checked(tmp_path, cell, expected):
    path = write(tmp_path, f"stages: {{pretrain: {{}}}}\ncells: [{cell}]\n")
    with pytest.raises(SweepError, match=expected):
        load_sweep(path)


@pytest.mark.parametrize(
    ("runnable", "blocked"),
    [("true", None), ('"waits for the tokenizer release"', "waits for the tokenizer release"), ("false", "is false")],
)
def test_a_stage_marked_not_runnable_blocks_its_jobs_and_their_dependents(tmp_path, runnable, blocked):
    """The file's `runnable:` becomes `blocked`: None, or the reason, inherited by every job downstream."""
    path = write(
        tmp_path,
        f"""
        overrides: [model=micro]
        stages:
          pretrain: {{runnable: {runnable}}}
          finetune: {{grid: {{from: pretrain}}}}
        """,
    )
    sweep = load_sweep(path)
    graph = compile_sweeps([sweep], tmp_path)
    jobs = list(graph.jobs.values())
    if blocked is None:
        assert sweep.stages["pretrain"].blocked is None and [j.blocked for j in jobs] == [None, None]
    else:
        assert all(blocked in j.blocked for j in jobs), [j.blocked for j in jobs]


def test_runnable_must_be_true_or_a_reason(tmp_path):
    with pytest.raises(SweepError, match=r"stages\.pretrain\.runnable: expected true, or a sentence"):
        load_sweep(write(tmp_path, "stages: {pretrain: {runnable: 3}}"))


PARITY = """
name: parity
stages:
  pretrain:
    overrides: [model=micro, data=imagenet, data.subset.fraction=0.1, "optim.epochs=${parity:300}"]
"""


def test_a_changed_dataset_size_changes_the_cached_graphs_epochs(tmp_path, monkeypatch):
    """The graph cache is keyed on the dataset catalogue: a train size changed after a compile is not served stale."""
    import dataclasses

    from harness import catalog
    from harness.sweep import Request, compile_request

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    req = Request([str(write(tmp_path, PARITY))], results=str(tmp_path / "results"))
    (job,) = compile_request(req).jobs.values()
    assert job.config.optim.epochs == 3000  # FACTS §3.1: IN-10% at parity with 300 ImageNet epochs
    (job,) = compile_request(req).jobs.values()  # read back from the cache
    assert job.config.optim.epochs == 3000 and len(list((tmp_path / "cache").rglob("graphs/*.json"))) == 1
    monkeypatch.setitem(
        catalog.DATASETS, "imagenet", dataclasses.replace(catalog.DATASETS["imagenet"], train_size=128_117)
    )
    (halved,) = compile_request(req).jobs.values()
    assert halved.config.optim.epochs == 30000  # a tenth of the images: ten times the epochs
    assert halved.id != job.id


def test_the_graph_cache_key_covers_code_config_catalogue_and_versions(tmp_path, monkeypatch):
    """Every input of `_cache_key` changes it: a Python file anywhere under harness/ or model/, any file of the config
    tree, a dataset's entry in the catalogue, the version of Hydra (whose private function the Composer calls)."""
    import dataclasses
    import importlib.metadata

    from harness import catalog
    from harness.sweep import graph

    for name in ("harness/train/deep/loop.py", "model/vit.py", "conf/data/x.yaml", "conf/README"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("0")
    monkeypatch.setattr(graph, "ROOT", tmp_path)
    monkeypatch.setattr(graph, "CONF_DIR", tmp_path / "conf")
    sweep = load_sweep(write(tmp_path, "stages: {pretrain: {}}"))
    keys = [graph._cache_key([sweep], ["results"])]
    assert graph._cache_key([sweep], ["results"]) == keys[0]  # the same inputs, the same key
    for name in ("harness/train/deep/loop.py", "model/vit.py", "conf/data/x.yaml", "conf/README", "sweep.yaml"):
        (tmp_path / name).write_text((tmp_path / name).read_text() + "\n# changed")
        keys.append(graph._cache_key([sweep], ["results"]))
    keys.append(graph._cache_key([sweep], ["elsewhere"]))
    info = catalog.DATASETS["coco"]
    monkeypatch.setitem(catalog.DATASETS, "coco", dataclasses.replace(info, train_size=info.train_size + 1))
    keys.append(graph._cache_key([sweep], ["elsewhere"]))
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda p: "0.0-other" if p == "hydra-core" else real(p))
    keys.append(graph._cache_key([sweep], ["elsewhere"]))
    assert len(set(keys)) == len(keys)


def test_an_old_graph_cache_file_is_compiled_again(tmp_path, monkeypatch):
    """A graph file of another layout (format 1 had `runnable`) under the current key is not trusted."""
    from harness.sweep import Request, compile_request

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    req = Request([str(write(tmp_path, PARITY))], results=str(tmp_path / "results"))
    first = compile_request(req)
    (cached,) = (tmp_path / "cache").rglob("graphs/*.json")
    cached.write_text(cached.read_text().replace('"blocked": null', '"runnable": true'))
    again = compile_request(req)
    assert list(again.jobs) == list(first.jobs) and next(iter(again.jobs.values())).blocked is None
    assert '"blocked": null' in cached.read_text()  # written again in the current layout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: ../../escaped\nstages: {pretrain: {}}", r"name: expected a simple name .*got '\.\./\.\./escaped'"),
        ("name: /tmp/escaped\nstages: {pretrain: {}}", r"name: expected a simple name"),
        ("name: .hidden\nstages: {pretrain: {}}", r"name: expected a simple name"),
        ("name: [a]\nstages: {pretrain: {}}", r"name: expected a simple name"),
        (
            "stages: {pretrain: {}}\nfigures: [{name: ../../../figescape, kind: bar, stage: pretrain, x: method}]",
            r"figures\[0\]\.name: expected a simple name",
        ),
        (
            "stages: {pretrain: {}}\nfigures: [{name: a, kind: bar, stage: pretrain, x: m}, "
            "{name: a, kind: bar, stage: pretrain, x: m}]",
            r"figures\[1\]\.name: 'a' is also the name of figures\[0\]",
        ),
        (
            "stages: {pretrain: {grid: {seed: [0, 1]}}}\n"
            "cells: [{stage: pretrain, keys: {seed: 0}, paper: 1.0}, {stage: pretrain, keys: {seed: 0}, paper: 2.0}]",
            r"cells\[1\]: the same cell as cells\[0\]",
        ),
        ("stages: {pretrain: {}}\ncells: [{stage: pretrain, paper: true}]", r"cells\[0\]\.paper: expected a finite"),
        ("stages: {pretrain: {}}\ncells: [{stage: pretrain, paper: .nan}]", r"cells\[0\]\.paper: expected a finite"),
        ("stages: {pretrain: {}}\ncells: [{stage: pretrain, paper: .inf}]", r"cells\[0\]\.paper: expected a finite"),
        (
            "stages: {pretrain: {}}\ncells: [{stage: pretrain, paper: 1.0, tolerance: -0.5}]",
            r"cells\[0\]\.tolerance: expected a number >= 0",
        ),
        ("name: a\nstages: {pretrain: {}}\nname: b", r"sweep.yaml:3:1: YAML: duplicate key 'name' \(first at line 1\)"),
        ("stages:\n  pretrain: {overrides: [model=micro], overrides: []}", r"sweep.yaml:2:\d+: YAML: duplicate key"),
        (
            'stages: {pretrain: {cluster: {partition: "gpu\\n#SBATCH --exclusive"}}}',
            r"stages\.pretrain\.cluster: partition: .* holds a control character",
        ),
        (
            'stages: {pretrain: {cluster: {additional: {exclude: "n1\\n#SBATCH --x"}}}}',
            r"stages\.pretrain\.cluster: additional\.exclude: .* holds a control character",
        ),
    ],
)
def test_names_values_and_keys_that_were_accepted_silently_are_refused(tmp_path, text, expected):
    """Issue 15 items 1, 11, 12: a name that would lead out of the report folder, a value the table would misread,
    a duplicate YAML key (the last one won), a cluster value that would add a line to the job script."""
    path = write(tmp_path, text)
    with pytest.raises(SweepError, match=expected) as info:
        load_sweep(path)
    assert str(path) in str(info.value)


def test_a_sweep_named_by_its_file_needs_a_file_name_that_is_a_simple_name(tmp_path):
    assert load_sweep(write(tmp_path, "stages: {pretrain: {}}", "t1.v2-b.yaml")).name == "t1.v2-b"
    with pytest.raises(SweepError, match=r"name: missing, and the default 'my sweep' is not a simple name"):
        load_sweep(write(tmp_path, "stages: {pretrain: {}}", "my sweep.yaml"))


def test_a_yaml_merge_key_may_still_be_overridden(tmp_path):
    path = write(tmp_path, "stages:\n  pretrain: &p {overrides: [model=micro]}\n  finetune: {<<: *p, overrides: []}\n")
    assert load_sweep(path).stages["finetune"].overrides == ()


def test_two_sweep_files_of_one_name_are_refused_naming_both(tmp_path):
    a = load_sweep(write(tmp_path, TWO_STAGES.format(name="same"), "a.yaml"))
    b = load_sweep(write(tmp_path, TWO_STAGES.format(name="same"), "b.yaml"))
    with pytest.raises(SweepError, match=r"b\.yaml: name 'same' is also the name of .*a\.yaml"):
        compile_sweeps([a, b], tmp_path / "results")
    with pytest.raises(SweepError, match=r"a\.yaml: given twice"):
        compile_sweeps([a, a], tmp_path / "results")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (['cluster.partition="gpu\\n#SBATCH --exclusive"'], r"command line: cluster: partition: .* control"),
        (['cluster.setup=["module load cuda\\n#SBATCH -x"]'], r"command line: cluster: setup\[0\]: .* control"),
        (['cluster.qos="high\\tx"'], r"command line: cluster: qos: .* control character"),
    ],
)
def test_a_control_character_in_a_command_line_cluster_value_is_refused(tmp_path, overrides, expected):
    from harness.sweep import Request, compile_request

    req = Request([str(write(tmp_path, "stages: {pretrain: {}}"))], overrides, results=str(tmp_path / "results"))
    with pytest.raises(SweepError, match=expected):
        compile_request(req)


def test_a_control_character_in_a_cluster_file_is_refused(tmp_path, monkeypatch):
    from harness.sweep import graph

    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "odd.yaml").write_text('partition: "a\\r\\n#SBATCH --x"\n')
    monkeypatch.setattr(graph, "CONF_DIR", tmp_path)
    with pytest.raises(SweepError, match=r"odd\.yaml: partition: .* control character"):
        graph.load_cluster("odd")


@pytest.mark.parametrize(
    ("group", "name"), [("profile", "../cluster/slurm"), ("cluster", "../profile/smoke"), ("cluster", "/etc/hostname")]
)
def test_a_profile_or_cluster_name_cannot_read_outside_its_folder(group, name):
    from harness.sweep.graph import load_cluster, load_profile

    with pytest.raises(SweepError, match=rf"unknown {group} '{name}': .*valid: "):
        (load_profile if group == "profile" else load_cluster)(name)
