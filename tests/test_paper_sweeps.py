"""Every paper table and figure as a sweep: each compiles, keeps its graph under the smoke profile, shares its jobs
with the other sweeps, takes its epochs from the parity rule, and runs end to end into a report (--profile smoke).

The end-to-end test (slow: minutes) writes the results and the reports of every paper sweep into a temporary folder,
as `harness report sweeps/*.yaml --profile smoke --out <folder>` would.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from harness.catalog import DATASETS, iteration_parity_epochs
from harness.launch import commands
from harness.launch.queue import Queue
from harness.launch.state import State, observe
from harness.report.build import build_reports, judge_claims
from harness.report.claims import HOLDS
from harness.report.table import summarize
from harness.sweep import Request, compile_request, compile_sweeps, load_sweep
from tests.helpers import needs_data

ROOT = Path(__file__).resolve().parents[1]
PAPER = sorted(p for p in (ROOT / "sweeps").glob("*.yaml") if p.stem != "smoke")
# The figures whose x-axis is the pre-training length type their epochs; every other pre-training is at parity.
EPOCH_FIGURES = {"fig_how_long", "fig3_cars_length"}


def _shape(graph) -> Counter:
    """What a graph is made of, whatever the configs: (sweep, stage, cell keys) of every job, and the jobs per task."""
    refs = Counter((r.sweep, r.stage, tuple(sorted(r.keys.items()))) for j in graph.jobs.values() for r in j.refs)
    return refs + Counter(j.task for j in graph.jobs.values())


DEMO = [ROOT / "sweeps" / "smoke.yaml", ROOT / "sweeps" / "demo" / "curve.yaml"]  # the demo and its curve


@pytest.mark.parametrize("path", [*PAPER, *DEMO], ids=[*(p.stem for p in PAPER), "smoke", "demo_curve"])
def test_each_sweep_compiles_and_keeps_its_graph_under_the_smoke_profile(path, tmp_path):
    sweep = load_sweep(path)
    real = compile_sweeps([sweep], tmp_path)
    smoke = compile_sweeps([sweep], tmp_path, profile="smoke")
    assert _shape(real) == _shape(smoke)
    assert len(real.jobs) == len(smoke.jobs)


MICRO = [p for p in PAPER if p.stem not in ("t3_coco", "ade20k")]  # the classification sweeps


@pytest.mark.parametrize("path", MICRO, ids=[p.stem for p in MICRO])
def test_each_classification_sweep_keeps_its_graph_under_the_micro_profile_with_seeds(path, tmp_path):
    """The micro graph is the paper's, job for job, with 3 seeds of every fine-tuning and probe, and beside them the
    baselines of each one's data: random init with its task's recipe, the raw pixels' probe, on each seed."""
    sweep = load_sweep(path)
    real = compile_sweeps([sweep], tmp_path)
    micro = compile_sweeps([sweep], tmp_path, profile="micro")
    drop_seed = Counter()
    wanted, baselines = set(), set()
    for job in micro.jobs.values():
        data = job.container["data"]["stands_in_for"]
        for r in job.refs:
            if r.stage == "baselines":
                assert job.upstream is None
                baselines.add((r.keys["baseline"], r.keys["task"], r.keys["data"], r.keys["seed"]))
                continue
            if job.task in ("finetune", "linear") and job.upstream:
                wanted |= {("random", job.task, data, r.keys["seed"]), ("pixels", "linear", data, r.keys["seed"])}
            keys = tuple(sorted((k, v) for k, v in r.keys.items() if k != "seed"))
            drop_seed[(r.sweep, r.stage, keys)] += 1
    for (_, stage, keys), n in drop_seed.items():
        task = sweep.stages[stage].task
        assert n == (3 if task in ("finetune", "linear") else 1), (stage, keys)
    assert {k for k in drop_seed} == {(r.sweep, r.stage, tuple(sorted(r.keys.items()))) for j in real.jobs.values()
                                      for r in j.refs}  # fmt: skip
    assert baselines == wanted
    for job in micro.jobs.values():
        c = job.container
        assert c["data"]["name"] == "fashion_mnist" and c["model"]["size"] == "micro"


@pytest.mark.parametrize("name", ["t3_coco", "ade20k"])
def test_each_dense_sweep_keeps_its_graph_under_the_micro_profile_with_seeds(name, tmp_path):
    """T3's and ADE20k's micro graphs: the paper's jobs, 2 seeds of each detection / segmentation, each on the
    scenes standing in for its dataset, 300 steps of its recipe's schedule (its sweep's longer schedules longer)."""
    sweep = load_sweep(ROOT / "sweeps" / f"{name}.yaml")
    real, micro = compile_sweeps([sweep], tmp_path), compile_sweeps([sweep], tmp_path, profile="micro")
    task = "detect" if name == "t3_coco" else "segment"
    dense = [j for j in micro.jobs.values() if j.task == task]
    assert len(dense) == 2 * sum(1 for j in real.jobs.values() if j.task == task)
    assert all(j.blocked is None for j in micro.jobs.values())
    classes = {"detect": 10, "segment": 11}[task]
    for job in dense:
        c = job.container
        assert c["data"]["name"] == "fashion_mnist" and c["method"]["args"]["num_classes"] == classes
        steps = c["optim"]["epochs"] * c["optim"]["epoch_scale"] * (c["data"]["scenes"]["train"] // 16)
        recipe = {"detect": 36, "segment": 127}[task]  # Random Init.+ runs twice the 3x schedule: twice the steps
        assert round(steps * recipe / c["optim"]["epochs"]) in (299, 300) and c["optim"]["lr"] == 1e-3
    assert {j.container["seed"] for j in dense} == {0, 1}


def test_micro_stand_ins_see_equal_images_at_iteration_parity(tmp_path):
    """ImageNet, its 1% and 10%, and COCO at parity: the same number of images seen, within rounding."""
    graph = compile_sweeps([load_sweep(ROOT / "sweeps" / "t1_sample_efficiency.yaml")], tmp_path, profile="micro")
    seen = {}
    for job in graph.jobs.values():
        c = job.container
        if job.task != "pretrain":
            continue
        d = c["data"]
        per_class = d["stand_in"]["per_class"] or 6000
        images = per_class * 10 * (d["subset"]["fraction"] or 1.0)  # 10 classes (mosaics: one item a class)
        seen[(c["method"]["name"], d["stands_in_for"], d["subset"]["fraction"])] = (
            images * c["optim"]["epochs"] * c["optim"]["epoch_scale"]
        )
    values = list(seen.values())
    assert len(values) == 15 and max(values) / min(values) < 1.15, seen  # COCO's 3,000 epochs are 3,249 rounded


def test_the_same_pretraining_in_several_sweeps_is_one_job(tmp_path):
    graph = compile_sweeps([load_sweep(p) for p in PAPER], tmp_path)
    by_recipe: dict[tuple, set[str]] = {}
    for job in graph.jobs.values():
        if job.task != "pretrain":
            continue
        c = job.container
        args = c["method"]["args"]
        variant = "".join(k[0] for k in ("inpaint", "match") if args.get(k, True))  # T6's switches
        tokenizer = (args.get("tokenizer") or {}).get("name")
        recipe = (c["method"]["name"], tokenizer, variant, c["model"]["size"], c["data"]["name"],
                  c["data"]["subset"]["fraction"], c["optim"]["epochs"])  # fmt: skip
        assert recipe not in by_recipe, f"two pre-training jobs for {recipe}: their configs differ somewhere else"
        by_recipe[recipe] = {r.sweep for r in job.refs}
    assert {"t6_ablation", "fig2_linear_layers", "t4_imagenet", "t5_target", "t3_coco", "ade20k"} <= by_recipe[
        ("beit", "dalle", "im", "base", "imagenet", None, 300)
    ]
    assert {"t1_sample_efficiency", "fig_sample_efficiency", "t5_target", "robustness", "t3_coco"} <= by_recipe[
        ("supervised", None, "im", "small", "imagenet", None, 300)
    ]
    assert {"t1_sample_efficiency", "fig_how_long", "fig_sample_efficiency"} <= by_recipe[
        ("splitmask", "random_projection", "im", "small", "imagenet", 0.1, 3000)
    ]
    assert {"t1_sample_efficiency", "robustness", "t3_coco"} <= by_recipe[
        ("splitmask", "random_projection", "im", "small", "coco", None, 3000)
    ]
    assert {"t5_target", "robustness", "fig3_cars_length"} <= by_recipe[
        ("splitmask", "random_projection", "im", "small", "stanford_cars", None, 5000)
    ]
    total = sum(len(compile_sweeps([load_sweep(p)], tmp_path).jobs) for p in PAPER)
    assert len(graph.jobs) < total  # shared jobs counted once


def test_pretraining_epochs_come_from_the_parity_rule(tmp_path):
    """ImageNet (and its subsets) and COCO pre-trainings run at iteration parity, computed, never typed."""
    graph = compile_sweeps([load_sweep(p) for p in PAPER], tmp_path)
    checked = 0
    for job in graph.jobs.values():
        data = job.container["data"]
        if job.task != "pretrain" or data["name"] not in ("imagenet", "coco"):
            continue
        if {r.sweep for r in job.refs} <= EPOCH_FIGURES:
            continue  # an x-axis value of a pre-training-length figure
        images = round(DATASETS[data["name"]].train_size * (data["subset"]["fraction"] or 1.0))
        assert job.container["optim"]["epochs"] == iteration_parity_epochs(images), job.label
        checked += 1
    assert checked >= 20
    for path in PAPER:
        if path.stem in EPOCH_FIGURES:
            continue
        typed = {int(n) for n in re.findall(r"optim\.epochs=(\d+)", path.read_text())}
        assert not typed & {300, 3000, 30000}, f"{path}: a parity number typed by hand; write ${{parity:300}}"


def test_every_claim_holds_on_the_papers_numbers():
    import pandas as pd

    for path in PAPER:
        sweep = load_sweep(path)
        for claim in judge_claims(sweep, summarize(sweep, pd.DataFrame())):
            assert claim["paper"] == HOLDS, f"{path.name}: '{claim['claim']}' on the paper's numbers: {claim}"


@needs_data
@pytest.mark.slow
@pytest.mark.timeout(600)  # 214 jobs and 12 reports: ~150 s on 2 cores, more on a busy one
def test_every_paper_sweep_runs_under_the_smoke_profile_into_its_report(tmp_path_factory):
    """The whole paper at micro scale, in this process (`--executor debug`: a job costs a second, where a process
    per job would cost its imports, ~7 s), then every sweep's report."""
    folder = tmp_path_factory.mktemp("paper")
    results, reports = folder / "results", folder / "reports"
    req = Request([str(p) for p in PAPER], [], profile="smoke", results=str(results))
    assert commands.run(req, "debug") == 0
    graph = compile_request(req)
    states = observe(graph, req.results_dir, Queue())
    counts = Counter(s.state for s in states.values())
    assert counts[State.DONE] == len(graph.jobs), counts  # nothing blocked: the dense tasks run too

    with open(results / "report.txt", "w") as printed:
        pages = build_reports(req, reports, out=printed)
    assert [p.parent for p in pages] == [reports / load_sweep(p).name for p in PAPER]
    for path in PAPER:
        sweep = load_sweep(path)
        folder = reports / sweep.name
        assert (folder / "index.html").stat().st_size > 0
        table = (folder / "table.md").read_text()
        for cell in sweep.cells:
            shown = (f"(paper {cell.paper:.1f}", f"({cell.paper:.1f}")  # a profile's report: for reference
            assert any(s in table for s in shown), f"{path.name}: paper value {cell.paper} missing from its table"
        assert "not runnable" not in table  # every job of the paper runs, the dense tasks' too
        for figure in sweep.figures:
            assert (folder / f"{figure.name}.png").is_file()
