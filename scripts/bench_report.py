"""Benchmark: `harness report` over 10,000 synthetic results (100 cells x 100 seeds), on this machine's CPU.

    python scripts/bench_report.py            # prints the seconds of each phase and of the whole report

Writes a sweep and 10,000 run folders with a result.json each under a temporary folder, then times compiling the
graph (10,000 configs), reading the results into the DataFrame, and the whole `build_reports` (tables, a heatmap,
the HTML page) three ways: the first report, with nothing compiled or drawn before; a report after some results
changed (the graph was compiled by `harness run` or `status`, the figure is drawn again), the usual case while a
sweep runs; and a report rebuilt with nothing changed. Each is the best of `--repeat` runs (a shared machine is
noisy). Not a test: the time depends on the machine; the README quotes what it printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

SWEEP = """
name: bench
title: 10,000 synthetic results
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--cols", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from harness.launch.state import observe
    from harness.report.build import build_reports
    from harness.report.collect import collect_graph
    from harness.sweep import Request, compile_request

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows, cols = list(range(args.rows)), [round(0.01 * (c + 1), 2) for c in range(args.cols)]
        text = SWEEP.format(rows=", ".join(map(str, rows)), cols=", ".join(map(str, cols)),
                            seeds=", ".join(map(str, range(args.seeds))))  # fmt: skip
        rng = random.Random(0)
        for r in rows:
            for c in cols:
                text += f"  - {{stage: finetune, keys: {{data.subset.seed: {r}, optim.weight_decay: {c}}}, "
                text += f"paper: {70 + rng.random() * 10:.1f}}}\n"
        (tmp / "bench.yaml").write_text(text)
        req = Request([str(tmp / "bench.yaml")], results=str(tmp / "results"))

        start = time.perf_counter()
        graph = compile_request(req)
        compiled = time.perf_counter() - start
        for job in graph.jobs.values():
            job.run_dir.mkdir(parents=True)
            (job.run_dir / "result.json").write_text(json.dumps({"top1": 70 + rng.random() * 10, "gpu_hours": 0.1}))
        n = len(graph.jobs)

        start = time.perf_counter()
        df = collect_graph(graph, observe(graph, req.results_dir))
        collected = time.perf_counter() - start

        def report() -> float:
            start = time.perf_counter()
            build_reports(req, tmp / "reports", out=open(os.devnull, "w"))  # noqa: SIM115
            return time.perf_counter() - start

        first, changed, again = [], [], []
        for _ in range(args.repeat):
            shutil.rmtree(tmp / "results" / ".harness" / "graphs", ignore_errors=True)
            shutil.rmtree(tmp / "reports", ignore_errors=True)
            first.append(report())  # compiles the graph, draws the figure
            some = list(graph.jobs.values())[:: len(graph.jobs) // 100]
            for job in some:  # 1% of the results arrive or change
                (job.run_dir / "result.json").write_text(json.dumps({"top1": 70 + rng.random() * 10}))
            changed.append(report())  # the graph is read back, the figure drawn again
            again.append(report())  # nothing changed: the figure is kept
        print(f"{n} results, {len(df)} rows; best of {args.repeat}")
        print(f"compile the graph ({n} configs): {compiled:.1f} s")
        print(f"observe + collect into the DataFrame: {collected:.1f} s")
        print(f"harness report, first (compile, collect, tables, draw the figure, HTML): {min(first):.1f} s")
        print(f"harness report, 1% of results changed (graph read back, figure drawn again): {min(changed):.1f} s")
        print(f"harness report, nothing changed (graph and figure read back): {min(again):.1f} s")


if __name__ == "__main__":
    main()
