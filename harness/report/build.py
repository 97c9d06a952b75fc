"""`harness report`: for each sweep, reports/<sweep>/ with its table (Markdown, LaTeX, CSV), figures, claims, its
rank agreement with the paper and one self-contained HTML page, all from the run folders.

A report of a `--profile` run (smoke, micro: stand-in data and models) shows the paper's values for reference only,
with no ours − paper difference (`harness.report.table`); it is read through the claims, judged on ours with their
spread (`harness.report.claims`), and through Kendall's τ between our cells and the paper's (`harness.report.rank`).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.metadata
import math
import sys
from pathlib import Path

import pandas as pd

from harness.io import atomic_write_text, under
from harness.launch.state import State, observe
from harness.provenance import git_sha
from harness.report.baselines import baseline_grid, baseline_summary
from harness.report.claims import NOT_ENOUGH, evaluate, judge
from harness.report.collect import collect_graph
from harness.report.rank import rank_agreement
from harness.report.table import latex, layout, legend, markdown, summarize
from harness.sweep import Request, Sweep, SweepError, compile_request

__all__ = ["build_reports", "judge_claims", "report"]


def judge_claims(sweep: Sweep, summary: pd.DataFrame) -> list[dict]:
    """Each claim's verdict on the paper's values (exact) and on ours: the mean over seeds of each named cell, with
    its standard error (std / sqrt(n); unknown with one seed). "margins": one line per comparison of ours."""
    out = []
    for claim in sweep.claims:
        rows = {name: summary.iloc[index] for name, index in claim.cells.items()}
        paper = evaluate(claim.check, {n: r["paper"] for n, r in rows.items()})
        se = {n: r["std"] / math.sqrt(r["n"]) if r["n"] >= 2 else None for n, r in rows.items()}
        judgement = judge(claim.check, {n: r["mean"] for n, r in rows.items()}, se)
        ours = judgement.verdict
        missing = [n for n, r in rows.items() if r["n"] == 0]
        linted = [n for n, r in rows.items() if r["lint"]]
        detail = claim.check
        if ours == NOT_ENOUGH and missing:
            detail += f"; no result yet for {', '.join(missing)}"
        if linted:
            detail += f"; ours ran with another protocol than the paper for {', '.join(linted)}"
        out.append({"claim": claim.text, "paper": paper, "ours": ours, "detail": detail,
                    "margins": list(judgement.margins)})  # fmt: skip
    return out


def _place(sweep: Sweep, root: str | Path, name: str, key: str) -> Path:
    """`root/name` for a name of the sweep file (checked there: `harness.sweep.spec.NAME`), refused with the file and
    the key when it would still lead out of `root` (through a symbolic link, say)."""
    try:
        return under(root, name)
    except ValueError as err:
        raise SweepError(f"{sweep.path}: {key}: {err}") from err


def _figure_code() -> bytes:
    """What draws a figure besides its data: the drawing module and the matplotlib release (its styles, its
    layout), read from the package metadata so that a report with nothing to draw never imports matplotlib."""
    try:
        matplotlib = importlib.metadata.version("matplotlib")
    except importlib.metadata.PackageNotFoundError:
        matplotlib = "not installed"
    return (Path(__file__).parent / "figures.py").read_bytes() + f"\0matplotlib {matplotlib}".encode()


def _figures(sweep: Sweep, df: pd.DataFrame, folder: Path, compare: bool = True) -> list[Path]:
    """The sweep's figures as PNG (and SVG), drawn again only when what they plot changed: matplotlib takes
    seconds to import and draw, and a report is often rebuilt with the same results. The key of a figure is its
    spec, the sweep's name and title, `compare` (a heatmap's ours − paper panel), the drawing code (`_figure_code`)
    and every column `figure_points` reads."""
    code = _figure_code()
    stale, pngs = [], []
    for figure in sweep.figures:
        rows = df[(df.stage == figure.stage) & (df.metric == figure.metric)] if len(df) else df
        used = [c for c in ("sweep", "cell_index", "value", "paper", "tolerance", "state") if c in rows.columns]
        used += sorted(c for c in rows.columns if c.startswith("key."))
        data = rows[used].to_csv(index=False).encode() if len(rows) else b""
        key = hashlib.sha256(repr((figure, sweep.name, sweep.title, compare)).encode() + code + data).hexdigest()
        png = _place(sweep, folder, f"{figure.name}.png", "figures.name")
        stamp = png.with_suffix(".key")
        pngs.append(png)
        fresh = png.exists() and png.with_suffix(".svg").exists() and stamp.exists() and stamp.read_text() == key
        if not fresh:
            stale.append((figure, stamp, key))
    if stale:
        from harness.report.figures import render_figures  # matplotlib: only when drawing

        render_figures(dataclasses.replace(sweep, figures=tuple(f for f, _, _ in stale)), df, folder, compare)
        for _, stamp, key in stale:
            atomic_write_text(stamp, key)
    return pngs


def build_reports(req: Request, out_root: str | Path = "reports", out=None) -> list[Path]:
    """Write reports/<sweep>/ for every sweep of `req`; print each table; return the HTML pages' paths."""
    from harness.report.html import write_html

    out = out or sys.stdout
    graph = compile_request(req)
    states = observe(graph, req.results_dir)
    df = collect_graph(graph, states)
    compare = req.profile is None  # a profile's stand-in numbers are not the paper's in absolute value
    pages = []
    for sweep in graph.sweeps:
        folder = _place(sweep, out_root, sweep.name, "name")
        folder.mkdir(parents=True, exist_ok=True)
        mine = df[df.sweep == sweep.name] if len(df) else df
        summary = summarize(sweep, df, compare)
        grid = layout(sweep, summary, compare)
        table_md = markdown(grid)
        note = legend(req.profile)
        base = baseline_summary(graph, states, sweep.name)
        base_md = ""
        if len(base):
            base_grid = baseline_grid(base)
            base_md = (f"\n\nBaselines on the same data, recipes and seeds (top-1 %, mean ± std over n seeds):\n\n"
                       f"{markdown(base_grid)}")  # fmt: skip
        atomic_write_text(folder / "table.md", f"{sweep.title}\n\n{table_md}\n\n{note}{base_md}\n")
        atomic_write_text(folder / "table.tex", latex(grid, f"{sweep.title}. {note}") + "\n")
        atomic_write_text(folder / "cells.csv", summary.to_csv(index=False))
        atomic_write_text(folder / "results.csv", mine.to_csv(index=False))
        figures = _figures(sweep, mine, folder, compare)
        claims = judge_claims(sweep, summary)
        ranks = [str(rank_agreement(summary))] if len(summary) and summary["paper"].notna().any() else []
        sweep_jobs = sorted({job.id for _, job in graph.refs(sweep.name)})  # pre-trainings too
        finished = [states[j].result for j in sweep_jobs if states[j].state is State.DONE]
        gpu_hours = sum(r.get("gpu_hours") or 0.0 for r in finished)
        device_hours = sum(r.get("device_hours") or 0.0 for r in finished)
        provenance = {
            "sweep file": str(sweep.path),
            "source of the paper's values": sweep.source or "-",
            "git sha": git_sha() or "unknown",
            "profile": req.profile or "none",
            "results": str(req.results_dir),
            "jobs (config hashes)": f"{len(sweep_jobs)}: " + ", ".join(sweep_jobs),
            "finished runs": str(len(finished)),
            "GPU-hours spent": f"{gpu_hours:.2f} (device-hours, CPU included: {device_hours:.2f})",
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        }
        tables = [(f"{sweep.title}. {note}", grid.reset_index()), ("Every cell", summary)]
        if len(base):
            tables.insert(1, ("Baselines on the same data, recipes and seeds", base_grid.reset_index()))
        page = write_html(folder / "index.html", title=sweep.title, tables=tables, figures=figures, claims=claims,
                          provenance=provenance, ranks=ranks)  # fmt: skip
        pages.append(page)
        print(f"\n{sweep.title}\n\n{table_md}\n\n{note}{base_md}", file=out)
        flagged = summary[summary["lint"] != ""] if len(summary) else summary
        if len(flagged):
            print(f"\n! {len(flagged)} cells ran with another protocol than the paper's (not compared): "
                  + "; ".join(sorted(set(flagged["lint"])))[:300], file=out)  # fmt: skip
        if claims or ranks:
            print("", file=out)
        for line in ranks:
            print(line, file=out)
        for claim in claims:
            print(f"claim: {claim['claim']}: paper {claim['paper']}, ours {claim['ours']}", file=out)
            for margin in claim["margins"]:
                print(f"  {margin}", file=out)
        print(f"\nreport: {page}", file=out)
    return pages


def report(req: Request, out_root: str | Path | None = None, out=None) -> int:
    """`harness report`: the reports of `req` under `out_root` (default reports/); the exit status, 0."""
    build_reports(req, out_root or "reports", out)
    return 0
