"""The benchmarks (bench/, `python -m bench NAME`) at tiny settings: what they print and write, never how fast.

The `cuda` tests run only where torch sees a GPU (bench/gpu_check.sh runs them: `pytest -m cuda`).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

import model.beit
import model.splitmask
from bench import commands, step
from bench.__main__ import main
from harness.config import compose
from harness.launch.cost import step_flops
from tests.helpers import HAVE_FMNIST, TWO_STAGES, write_sweep

cuda = pytest.mark.cuda
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _run(argv: list[str]) -> tuple[str, dict]:
    out = io.StringIO()
    assert main(argv, out=out) == 0
    text = out.getvalue()
    path = Path(text.rsplit("JSON: ", 1)[1].split()[0])
    return text, json.loads(path.read_text())


def test_help_lists_the_benchmarks(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("step", "data", "harness", "dense"))


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["step", "--size", "huge"], "bench step: unknown --size huge (valid: "),
        (["step", "--override", "optim.batch_size=x"], "bench step: optim.batch_size=x"),
        (["data", "--gpu-img-s", "0"], "bench data: --samples"),
    ],
)
def test_bad_arguments_get_one_line(argv, said, tmp_path):
    out = io.StringIO()
    assert main([*argv, "--out", str(tmp_path)], out=out) == 2
    assert any(line.startswith(said) for line in out.getvalue().splitlines()) and "Traceback" not in out.getvalue()


def test_step_reports_every_method_beside_the_flop_model(tmp_path):
    tiny = ["--steps", "1", "--repeat", "2", "--warmup", "1", "--batch", "4", "--no-memory", "--out", str(tmp_path)]
    text, record = _run(["step", *tiny])
    assert record["benchmark"] == "step" and record["command"].startswith("python -m bench step")
    rows = {r["method"]: r for r in record["rows"]}
    assert list(rows) == list(step.METHODS) and all(r["size"] == "micro" for r in rows.values())
    for method, r in rows.items():
        flops = step_flops(compose(["task=pretrain", "model=micro", "data=fashion_mnist", f"method={method}"]))
        assert r["flops_per_image"] == flops.total
        assert r["flop_ratio"] == pytest.approx(flops.total / rows["supervised"]["flops_per_image"])
        assert r["img_s"] > 0 and len(r["step_s_rounds"]) == 2 and r["mfu"] is None  # no MFU on the CPU
        assert ("ratio_within_5pct" in r["targets"]) == (method != "supervised")
    assert rows["supervised"]["step_ratio"] == 1.0
    assert "ratio_within_5pct met" in text or "ratio_within_5pct MISSED" in text
    assert "splitmask_vit_micro_p4" in text  # the registry's names


def test_step_measures_a_methods_memory_in_a_fresh_process():
    args = step_args(["--methods", "supervised", "--batch", "4", "--warmup", "1"])
    peak = step.cpu_peak_child("supervised", "micro", args)
    assert peak is not None and peak > 0


def step_args(argv: list[str]):
    import argparse

    parser = argparse.ArgumentParser()
    step.add_arguments(parser)
    return parser.parse_args(argv)


def test_compiled_splitmask_and_beit_have_no_graph_break_but_the_cpu_mask_check(monkeypatch):
    """torch._dynamo on the micro models' forward: the only break is model/mim.py `check_counts`, which reads a CPU
    tensor's value (it is skipped on CUDA); without it, one graph and no recompilation over steps with new masks."""
    cpu = torch.device("cpu")
    for method in ("splitmask", "beit"):
        found = step.explain(step.build_case(method, "micro", 2, cpu), steps=1)
        assert all(b["where"].startswith("mim.py") for b in found["breaks"]), found  # none, once it is compile-aware
    for module in (model.splitmask, model.beit):
        monkeypatch.setattr(module, "check_counts", lambda *args: None)
    for method in ("splitmask", "beit"):
        found = step.explain(step.build_case(method, "micro", 2, cpu, batches=3), steps=3)
        assert (found["graphs"], found["graph_breaks"], found["recompiles"]) == (1, 0, 0), found


def test_dino_compiles_once_though_its_teacher_temperature_changes():
    """The scheduled temperature is a buffer set in place, not a float attribute dynamo would specialise on."""
    found = step.explain(step.build_case("dino", "micro", 4, torch.device("cpu"), batches=3), steps=3)
    assert (found["graphs"], found["graph_breaks"], found["recompiles"]) == (1, 0, 0), found


def test_step_explain_prints_the_table(tmp_path):
    text, record = _run(["step", "--explain", "--steps", "0", "--explain-steps", "2", "--explain-batch", "2",
                         "--methods", "supervised", "--out", str(tmp_path)])  # fmt: skip
    assert record["rows"] == [] and record["explain"][0]["graph_breaks"] == 0
    assert "torch._dynamo" in text and "recompiles" in text


# ---------------------------------------------------------------------------------------------------------------
def test_data_times_the_real_pipelines_per_worker(tmp_path):
    datasets = ["synthetic", "fashion_mnist"] if HAVE_FMNIST else ["synthetic"]
    tiny = ["--samples", "3", "--warmup", "1", "--images", "4", "--workers", "1", "--batch", "2", "--batches", "2"]
    text, record = _run(["data", "--datasets", *datasets, "--pipelines", "pretrain-splitmask", "finetune", *tiny,
                         "--gpu-img-s", "1000", "--out", str(tmp_path)])  # fmt: skip
    rows = {(r["dataset"], r["pipeline"]): r for r in record["rows"]}
    assert set(rows) == {(d, p) for d in datasets for p in ("pretrain-splitmask", "finetune")}
    for r in rows.values():
        assert r["worker_img_s"] > 0 and r["loader_img_s"] > 0 and r["loader_workers"] == 1
        assert r["workers_needed"] >= 1 and r["workers_needed"] * r["per_worker_img_s"] >= 1000
    assert rows[("synthetic", "finetune")]["img_size"] == 224 and "mixup_img_s" in rows[("synthetic", "finetune")]
    assert "mixup_img_s" not in rows[("synthetic", "pretrain-splitmask")]
    assert "workers for GPU" in text


# ---------------------------------------------------------------------------------------------------------------
def test_harness_times_commands_in_fresh_processes(tmp_path):
    sweep = write_sweep(tmp_path, TWO_STAGES)
    text, record = _run(["harness", "--parts", "startup", "plan", "status", "report", "--sweeps", sweep,
                         "--status-jobs", "100", "--report-results", "100", "--repeat", "1", "--out",
                         str(tmp_path / "out")])  # fmt: skip
    parts = record["parts"]
    assert set(parts) == set(commands.PARTS)
    assert all(p[phase]["ok"] and p[phase]["seconds"] > 0 and p[phase]["peak_mb"] > 0
               for p in parts.values() for phase in ("cold", "warm"))  # fmt: skip
    assert parts["status"]["jobs"] == 100 and parts["report"]["results"] == 100
    assert parts["plan"]["imports"]["heavy"] == [] and parts["plan"]["targets"]["no torch/timm"]["ok"]
    assert set(parts["plan"]["targets"]) == {"cold < 5 s", "warm < 2 s", "memory < 300 MB", "no torch/timm"}
    assert set(parts["status"]["targets"]) == {"warm < 0.5 s"} and set(parts["report"]["targets"]) == {"cold < 5 s"}
    assert "harness report, 100 results" in text and "no torch/timm" in text


def test_the_import_check_sees_torch(tmp_path):
    stderr = tmp_path / "importtime.txt"
    assert commands.child(["-X", "importtime", "-c", "import torch"], stderr=stderr)["returncode"] == 0
    assert "torch" in commands._imports(stderr)["heavy"]


# ---------------------------------------------------------------------------------------------------------------
def test_dense_steps(tmp_path):
    _, record = _run(["dense", "--steps", "1", "--warmup", "0", "--batch", "2", "--out", str(tmp_path)])
    assert [r["task"] for r in record["rows"]] == ["detect", "segment"]
    assert all(r["img_s"] > 0 for r in record["rows"])


# ---------------------------------------------------------------------------------------------------------------
@cuda
@needs_cuda
def test_cuda_compiled_bf16_steps_have_no_graph_break():
    """On CUDA the mask check is skipped: SplitMask and BEiT compile to one graph, and recompile for no mask."""
    for method in ("splitmask", "beit"):
        case = step.build_case(method, "micro", 8, torch.device("cuda"), batches=3)
        found = step.explain(case, steps=3)
        assert (found["graph_breaks"], found["recompiles"]) == (0, 0), found


@cuda
@needs_cuda
def test_cuda_step_reports_mfu_and_memory(tmp_path):
    tiny = ["--steps", "2", "--repeat", "1", "--warmup", "2", "--batch", "16", "--bf16", "--sequential"]
    _, record = _run(["step", "--device", "cuda", "--size", "micro", *tiny, "--out", str(tmp_path)])
    for r in record["rows"]:
        assert r["peak_memory_bytes"] > 0 and (r["mfu"] is None or 0 < r["mfu"] < 1)
