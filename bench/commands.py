"""The harness's own commands: seconds and peak memory of plan, status, report and start-up, cold and warm.

    python -m bench harness                              # the paper's plan, 1,000 jobs' status, 10,000 results' report
    python -m bench harness --parts plan --repeat 5      # one part, more warm runs

Each figure is one command in a fresh process (`python -m harness.cli ...`, what the `harness` script runs): its
wall-clock seconds and its peak resident memory (ru_maxrss of that child, from os.wait4). Cold: no compiled graph
(an empty graph cache: each part has its own $HARNESS_CACHE), so the sweep files are compiled; warm: the same
command again, the graph read back. For plan also "first": an empty cache altogether, where Hydra composes every
set of config groups again (harness.config._group_config keeps them in the cache, as the graphs are). A cold figure
is the median of `--cold-repeat` runs, a warm one of `--repeat`.

- startup: `harness --help` (cold: the first run).
- plan: `harness plan` of every sweep file in sweeps/ (the paper's tables and figures, and smoke.yaml, the demo: what
  the README's `harness plan sweeps/*.yaml` plans) into a results folder of its own. Also run once under
  `python -X importtime`, which says whether torch or timm was imported and which imports cost most.
- status: `harness status` of a synthetic sweep of `--status-jobs` fine-tunings (default 1,000; a tenth finished).
- report: `harness report` of a synthetic sweep of `--report-results` finished fine-tunings (default 10,000: 100
  cells x 100 seeds, one 10 x 10 heatmap): cold (compile, collect, tables, the figure, HTML), after 1 % of the
  results changed (graph read back, figure drawn again: the usual case while a sweep runs), and unchanged (warm).
  Also, in this process: compiling that graph and collecting its results into the DataFrame.

Targets, judged here: plan warm under 2 s and cold under 5 s, under 300 MB, importing neither torch nor timm;
status warm under 0.5 s; report cold under 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import default_out, machine, table, verdict, write_result

__all__ = ["PARTS", "TARGETS", "add_arguments", "child", "run", "synthetic_sweep"]

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("startup", "plan", "status", "report")
# (part, phase) -> (what is judged, the limit)
TARGETS = {
    ("plan", "cold"): ("seconds", 5.0),
    ("plan", "warm"): ("seconds", 2.0),
    ("plan", "memory"): ("peak_mb", 300.0),
    ("status", "warm"): ("seconds", 0.5),
    ("report", "cold"): ("seconds", 5.0),
}
HEAVY_IMPORTS = ("torch", "timm")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--repeat", type=int, default=3, help="warm runs of each command")
    p.add_argument("--cold-repeat", type=int, default=1, help="cold runs of each command")
    p.add_argument("--sweeps", nargs="+", default=None, help="plan these (default: every sweeps/*.yaml)")
    p.add_argument("--status-jobs", type=int, default=1000, help="jobs of the status sweep (a multiple of 100)")
    p.add_argument("--report-results", type=int, default=10000, help="results of the report sweep (x100)")
    p.add_argument("--out", type=Path, default=None, help="folder of the JSON result (default: see bench --help)")


# ---------------------------------------------------------------------------------------------------------------
def child(args: list[str], env: dict | None = None, stderr: Path | None = None) -> dict:
    """Run `python args...` from the checkout in a fresh process: its seconds, peak resident MB and exit code."""
    with open(stderr or os.devnull, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {"seconds": seconds, "peak_mb": usage.ru_maxrss * scale / 2**20, "returncode": proc.returncode}


def _graphs(tmp: Path, part: str) -> Path:
    """The part's own graph cache: $HARNESS_CACHE of its commands (set in this process, inherited by each child)."""
    from harness.io import CACHE_ENV

    os.environ[CACHE_ENV] = str(tmp / f"{part}-cache")
    return tmp / f"{part}-cache" / "graphs"


def _runs(command: list[str], repeat: int, before=None, graphs: Path | None = None) -> list[dict]:
    """`repeat` runs of a command; with `graphs` (a results folder's graph cache), whether each one compiled a new
    graph: a warm run that does was not warm (the code, the config tree or a sweep file changed in between)."""
    out = []
    for _ in range(repeat):
        if before is not None:
            before()
        cached = set(graphs.glob("*.json")) if graphs is not None and graphs.is_dir() else set()
        out.append(child(command))
        if graphs is not None:
            out[-1]["compiled"] = bool(set(graphs.glob("*.json")) - cached)
    return out


def _summary(runs: list[dict]) -> dict:
    return {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "peak_mb": max(r["peak_mb"] for r in runs),
        "runs": runs,
        "ok": all(r["returncode"] in (0, 1) for r in runs),  # status exits 1 when a job failed
        "compiled": sum(r.get("compiled", False) for r in runs),
    }


SWEEP = """
name: {name}
title: {title}
overrides: [model=micro, data=fashion_mnist]
stages:
  finetune:
    grid:
      data.subset.seed: [{rows}]
      optim.weight_decay: [{cols}]
      seed: [{seeds}]
layout: {{rows: [data.subset.seed], cols: [optim.weight_decay]}}
figures:
  - {{name: grid, kind: heatmap, stage: finetune, rows: data.subset.seed, cols: optim.weight_decay}}
cells:
"""


def synthetic_sweep(folder: Path, name: str, jobs: int) -> Path:
    """A sweep of `jobs` fine-tunings: 10 x 10 cells (with the paper's value each) x `jobs / 100` seeds."""
    rows, cols, seeds = list(range(10)), [round(0.01 * (c + 1), 2) for c in range(10)], max(1, jobs // 100)
    text = SWEEP.format(
        name=name,
        title=f"{jobs} synthetic fine-tunings",
        rows=", ".join(map(str, rows)),
        cols=", ".join(map(str, cols)),
        seeds=", ".join(map(str, range(seeds))),
    )
    rng = random.Random(0)
    for r in rows:
        for c in cols:
            text += f"  - {{stage: finetune, keys: {{data.subset.seed: {r}, optim.weight_decay: {c}}}, "
            text += f"paper: {70 + rng.random() * 10:.1f}}}\n"
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def _finish(jobs: list, rng: random.Random) -> None:
    for job in jobs:
        job.run_dir.mkdir(parents=True, exist_ok=True)
        result = {"top1": 70 + rng.random() * 10, "gpu_hours": 0.1}
        (job.run_dir / "result.json").write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------------------------
def bench_startup(args, tmp: Path) -> dict:
    runs = _runs(["-m", "harness.cli", "--help"], 1 + args.repeat)
    return {"cold": _summary(runs[:1]), "warm": _summary(runs[1:])}


def _imports(stderr: Path) -> dict:
    """What `python -X importtime` wrote: torch / timm imported or not, the import total, the costliest imports."""
    cumulative, outermost = {}, {}
    for line in stderr.read_text(errors="replace").splitlines():
        parts = line.removeprefix("import time:").split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name, us = parts[2].strip(), int(parts[1])
        cumulative[name] = us
        if len(parts[2]) - len(parts[2].lstrip()) <= 1:  # imported by the program itself, not by another import
            outermost[name] = us
    return {
        "heavy": sorted(n for n in cumulative if n in HEAVY_IMPORTS),
        "modules": len(cumulative),
        "top": sorted(outermost.items(), key=lambda kv: -kv[1])[:6],
    }


def bench_plan(args, tmp: Path) -> dict:
    sweeps = args.sweeps or [str(p.relative_to(ROOT)) for p in sorted((ROOT / "sweeps").glob("*.yaml"))]
    results, graphs = tmp / "plan-results", _graphs(tmp, "plan")
    command = ["-m", "harness.cli", "plan", *sweeps, "--results", str(results)]
    # First: an empty cache (a new machine), so Hydra composes every set of config groups; cold: the job graph
    # compiled again (a sweep file or the code changed) from the config groups composed before.
    first = _runs(command, args.cold_repeat, before=lambda: shutil.rmtree(graphs.parent, ignore_errors=True))
    cold = _runs(command, args.cold_repeat, before=lambda: shutil.rmtree(graphs, ignore_errors=True))
    warm = _runs(command, args.repeat, graphs=graphs)
    stderr = tmp / "importtime.txt"
    child(["-X", "importtime", *command], stderr=stderr)
    return {
        "sweeps": sweeps,
        "first": _summary(first),
        "cold": _summary(cold),
        "warm": _summary(warm),
        "imports": _imports(stderr),
    }


def bench_status(args, tmp: Path) -> dict:
    from harness.sweep import Request, compile_request

    path = synthetic_sweep(tmp, "status_bench", args.status_jobs)
    results, graphs = tmp / "status-results", _graphs(tmp, "status")
    graph = compile_request(Request([str(path)], results=str(results)))
    jobs = list(graph.jobs.values())
    _finish(jobs[::10], random.Random(0))  # a tenth finished
    command = ["-m", "harness.cli", "status", str(path), "--results", str(results)]
    cold = _runs(command, args.cold_repeat, before=lambda: shutil.rmtree(graphs, ignore_errors=True))
    warm = _runs(command, args.repeat, graphs=graphs)
    return {"jobs": len(jobs), "cold": _summary(cold), "warm": _summary(warm)}


def bench_report(args, tmp: Path) -> dict:
    from harness.launch.state import observe
    from harness.report.collect import collect_graph
    from harness.sweep import Request, compile_request

    path = synthetic_sweep(tmp, "report_bench", args.report_results)
    results, reports, graphs = tmp / "report-results", tmp / "reports", _graphs(tmp, "report")
    req = Request([str(path)], results=str(results))
    start = time.perf_counter()
    graph = compile_request(req)
    compiled = time.perf_counter() - start
    jobs = list(graph.jobs.values())
    rng = random.Random(0)
    _finish(jobs, rng)
    start = time.perf_counter()
    frame = collect_graph(graph, observe(graph, req.results_dir))
    collected = time.perf_counter() - start
    command = ["-m", "harness.cli", "report", str(path), "--results", str(results), "--out", str(reports)]

    def from_scratch() -> None:
        shutil.rmtree(graphs, ignore_errors=True)
        shutil.rmtree(reports, ignore_errors=True)

    cold = _runs(command, args.cold_repeat, before=from_scratch)
    changed, warm = [], []
    for _ in range(args.repeat):
        _finish(jobs[:: max(1, len(jobs) // 100)], rng)  # 1 % of the results arrive or change
        changed += _runs(command, 1, graphs=graphs)
        warm += _runs(command, 1, graphs=graphs)
    return {
        "results": len(jobs),
        "rows": len(frame),
        "in_process": {"compile_s": compiled, "collect_s": collected},
        "cold": _summary(cold),
        "changed": _summary(changed),
        "warm": _summary(warm),
    }


BENCHES = {"startup": bench_startup, "plan": bench_plan, "status": bench_status, "report": bench_report}
WHAT = {
    "startup": "harness --help",
    "plan": "harness plan, {sweeps} sweep files",
    "status": "harness status, {jobs} jobs",
    "report": "harness report, {results} results",
}


def judge(part: str, record: dict) -> dict:
    """The targets of a part: {name: {"value", "limit", "ok"}}."""
    out = {}
    for (p, phase), (key, limit) in TARGETS.items():
        if p != part:
            continue
        if phase == "memory":
            value = max(record["cold"]["peak_mb"], record["warm"]["peak_mb"])
        else:
            value = record[phase][key]
        out[f"{phase} < {limit:g} {'s' if key == 'seconds' else 'MB'}"] = {
            "value": value,
            "limit": limit,
            "ok": value < limit,
        }
    if part == "plan":
        heavy = record["imports"]["heavy"]
        out["no torch/timm"] = {"value": heavy, "limit": [], "ok": not heavy}
    return out


def run(args, out) -> int:
    records = {}
    print(f"harness: {machine()['device']}, load {os.getloadavg()[0]:.2f}; warm = median of {args.repeat}", file=out)
    from harness.io import CACHE_ENV

    saved = os.environ.get(CACHE_ENV)  # each part sets its own graph cache (`_graphs`)
    with tempfile.TemporaryDirectory(prefix="bench-harness-") as tmp:
        for part in args.parts:
            record = BENCHES[part](args, Path(tmp))
            record["targets"] = judge(part, record)
            records[part] = record
            print(f"  {part}: cold {record['cold']['seconds']:.2f} s, warm {record['warm']['seconds']:.2f} s",
                  file=out, flush=True)  # fmt: skip
    if saved is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = saved
    print(_table(records), file=out)
    if "plan" in records:
        print(f"plan with an empty cache (a new machine: Hydra composes each of the config-group sets): "
              f"{records['plan']['first']['seconds']:.2f} s", file=out)  # fmt: skip
        imports = records["plan"]["imports"]
        top = ", ".join(f"{n} {us / 1e3:.0f} ms" for n, us in imports["top"])
        print(f"plan's imports (python -X importtime): {imports['modules']} modules; "
              f"torch/timm: {', '.join(imports['heavy']) or 'none'}; costliest: {top}", file=out)  # fmt: skip
    if "report" in records:
        r = records["report"]["in_process"]
        print(f"report, in this process: compile the graph {r['compile_s']:.1f} s, "
              f"observe + collect into the DataFrame {r['collect_s']:.1f} s", file=out)  # fmt: skip
    for part, r in records.items():
        if r["warm"]["compiled"]:
            print(f"note: {r['warm']['compiled']} of {len(r['warm']['runs'])} warm {part} runs compiled the graph "
                  "again: the code, the config tree or a sweep file changed in between (someone editing the "
                  "checkout?); those runs are cold ones", file=out)  # fmt: skip
    failed = [p for p, r in records.items() if not (r["cold"]["ok"] and r["warm"]["ok"])]
    if failed:
        print(f"a command failed (non-zero exit) in: {', '.join(failed)}", file=out)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {"machine": machine(), "settings": settings, "parts": records}
    print(f"JSON: {write_result(args.out or default_out(), 'harness', payload, args.command_line)}", file=out)
    return 1 if failed else 0


def _table(records: dict) -> str:
    headers = ["command", "cold s", "warm s", "changed s", "peak MB", "targets"]
    lines = []
    for part, r in records.items():
        what = WHAT[part].format(jobs=r.get("jobs"), results=r.get("results"), sweeps=len(r.get("sweeps", ())))
        targets = "; ".join(f"{name} {verdict(t['ok'])}" for name, t in r["targets"].items()) or "-"
        changed = f"{r['changed']['seconds']:.2f}" if "changed" in r else "-"
        peak = max(r["cold"]["peak_mb"], r["warm"]["peak_mb"])
        lines.append([what, f"{r['cold']['seconds']:.2f}", f"{r['warm']['seconds']:.2f}", changed, f"{peak:.0f}",
                      targets])  # fmt: skip
    return table(headers, lines)
