"""Reports from result trees written here: complete, partial, several seeds, a corrupt file; tables, claims, lint."""

from __future__ import annotations

import html
import json
import math
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.report import collect
from harness.report.build import build_reports, judge_claims
from harness.report.claims import FAILS, HOLDS, NOT_ENOUGH, evaluate
from harness.report.table import latex, layout, markdown, summarize
from harness.sweep import Request, SweepError, compile_request, load_sweep
from tests.helpers import write_sweep

# A T1-like table: methods x pre-training data, fine-tuned on one target; the paper's numbers are FACTS T1's.
T1 = """
title: Sample efficiency (T1-like)
stages:
  pretrain:
    grid:
      method: {dino: [method=dino], splitmask: [method=splitmask]}
      pretrain_data: {in_1: [data.subset.per_class=1], in_full: [data.subset.per_class=2]}
  finetune:
    grid:
      - from: pretrain
        seed: [0, 1]
layout: {rows: [method], cols: [pretrain_data]}
cell_defaults: {stage: finetune, metric: top1, tolerance: 0.5, protocol: {epochs: 1, epoch: last}}
cells:
  - {keys: {method: dino, pretrain_data: in_1}, paper: 70.1}
  - {keys: {method: dino, pretrain_data: in_full}, paper: 78.4}
  - {keys: {method: splitmask, pretrain_data: in_1}, paper: 74.8}
  - {keys: {method: splitmask, pretrain_data: in_full}, paper: 75.4}
figures:
  - {name: t1_bars, kind: bar, stage: finetune, x: pretrain_data, hue: method}
claims:
  - text: SplitMask loses less than DINO when ImageNet shrinks from full to 1%
    cells: {sm_1: {method: splitmask, pretrain_data: in_1}, sm_full: {method: splitmask, pretrain_data: in_full},
            dino_1: {method: dino, pretrain_data: in_1}, dino_full: {method: dino, pretrain_data: in_full}}
    check: sm_full - sm_1 < dino_full - dino_1
"""
GOLDEN = """\
| method | in_1 | in_full |
|---|---|---|
| dino | 70.0 ± 1.4 n=2 (70.1, -0.1 =) | not submitted (78.4) |
| splitmask | 76.0 n=1 (74.8, +1.2 +) | corrupt / not submitted (75.4) |"""
# The same results reported for a `--profile` run: the paper's value for reference, no difference, no mark.
GOLDEN_PROFILE = """\
| method | in_1 | in_full |
|---|---|---|
| dino | 70.0 ± 1.4 n=2 (paper 70.1) | not submitted (paper 78.4) |
| splitmask | 76.0 n=1 (paper 74.8) | corrupt / not submitted (paper 75.4) |"""


def _results(tmp_path: Path, epochs: int = 1, profile: str | None = None):
    """The T1-like sweep with: dino/in_1 two seeds, splitmask/in_1 one seed, splitmask/in_full corrupt, rest pending."""
    sweep = write_sweep(tmp_path, T1, "t1")
    req = Request([sweep], [f"optim.epochs={epochs}"], profile=profile, results=str(tmp_path / "results"))
    graph = compile_request(req)
    finetunes = {j.label: j for j in graph.jobs.values() if j.task == "finetune"}
    values = {
        "method=dino pretrain_data=in_1 seed=0": 69.0,
        "method=dino pretrain_data=in_1 seed=1": 71.0,
        "method=splitmask pretrain_data=in_1 seed=0": 76.0,
    }
    for label, top1 in values.items():
        run = finetunes[label].run_dir
        run.mkdir(parents=True)
        (run / "result.json").write_text(json.dumps({"top1": top1, "protocol": "finetune", "gpu_hours": 0.5}))
    corrupt = finetunes["method=splitmask pretrain_data=in_full seed=0"].run_dir
    corrupt.mkdir(parents=True)
    (corrupt / "result.json").write_text('{"top1": 7')
    return req, load_sweep(sweep)


def test_collect_reads_run_folders_into_a_long_dataframe(tmp_path):
    req, _ = _results(tmp_path)
    with pytest.warns(UserWarning, match=r"skipping .*result.json: (unreadable|corrupt)"):
        df = collect(req.sweeps, results=req.results, overrides=req.overrides)
    assert len(df) == 8  # 4 cells x 2 seeds
    done = df[df.state == "done"]
    assert sorted(done.value) == [69.0, 71.0, 76.0] and set(done.protocol) == {"finetune"}
    assert set(df.state) == {"done", "corrupt", "not submitted"}
    assert {"key.method", "key.pretrain_data", "key.seed"} <= set(df.columns)
    assert df[df.state != "done"].value.isna().all()


def test_table_in_the_papers_layout_matches_the_golden_markdown(tmp_path):
    req, sweep = _results(tmp_path)
    with pytest.warns(UserWarning):
        df = collect(req.sweeps, results=req.results, overrides=req.overrides)
    summary = summarize(sweep, df)
    assert markdown(layout(sweep, summary)) == GOLDEN
    row = summary.iloc[0]
    assert row["n"] == 2 and row["mean"] == 70.0 and row["verdict"] == "within"
    assert summary.iloc[2]["verdict"] == "above"
    tex = latex(layout(sweep, summary), sweep.title)
    assert "\\toprule" in tex and "$\\pm$" in tex and tex.count("\\\\") == 3
    assert markdown(layout(sweep, summarize(sweep, df, compare=False), compare=False)) == GOLDEN_PROFILE


def test_a_profile_report_has_no_delta_and_no_mark_and_both_show_the_rank_agreement(tmp_path, capsys):
    """Stand-in numbers (smoke, micro) are not the paper's: no ours - paper, no =/+/- marks; Kendall's tau always."""
    for profile, folder in ((None, "plain"), ("smoke", "profile")):
        (tmp_path / folder).mkdir()
        req, _ = _results(tmp_path / folder, profile=profile)
        with pytest.warns(UserWarning):
            (page,) = build_reports(req, tmp_path / folder / "reports")
        out = capsys.readouterr().out
        summary = (page.parent / "cells.csv").read_text()
        html = page.read_text()
        # dino/in_1 (70.0) < splitmask/in_1 (76.0) and 70.1 < 74.8: the one pair both have is concordant
        assert "rank agreement with the paper: Kendall τ_b +1.00 over 2 cells (1 pair: 1 concordant" in out
        assert "Kendall τ_b +1.00" in html
        if profile is None:
            assert GOLDEN in out and "-0.1 =" in html and ",within," in summary
        else:
            assert GOLDEN_PROFILE in out and "profile smoke: " in out and "paper 70.1" in html
            assert not re.search(r"[+-]\d+\.\d [=+-]\)", out + html) and "within" not in summary + html


def test_protocol_lint_flags_cells_produced_differently(tmp_path):
    req, sweep = _results(tmp_path, epochs=3)  # the paper's protocol says 1
    with pytest.warns(UserWarning):
        df = collect(req.sweeps, results=req.results, overrides=req.overrides)
    summary = summarize(sweep, df)
    row = summary.iloc[0]
    assert row["verdict"] == "protocol differs" and row["lint"] == "epochs 3 (paper: 1)"
    assert "!)" in markdown(layout(sweep, summary))


def test_claims_on_the_papers_numbers_and_on_partial_results(tmp_path):
    req, sweep = _results(tmp_path)
    with pytest.warns(UserWarning):
        df = collect(req.sweeps, results=req.results, overrides=req.overrides)
    (claim,) = judge_claims(sweep, summarize(sweep, df))
    assert claim["paper"] == HOLDS  # 75.4 - 74.8 = 0.6 < 78.4 - 70.1 = 8.3 (FACTS T1)
    assert claim["ours"] == NOT_ENOUGH and "sm_full" in claim["detail"]
    assert evaluate("a - b < c", {"a": 1.0, "b": 0.0, "c": 0.5}) == FAILS
    assert evaluate("a > b and not b > a", {"a": 2.0, "b": 1.0}) == HOLDS
    assert evaluate("a > b", {"a": math.nan, "b": 1.0}) == NOT_ENOUGH


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        ("{text: t, cells: {a: {method: dino}}, check: a > 1}", r"claims\[0\].cells.a: .* selects 2 cells"),
        ("{text: t, cells: {a: {method: dino, pretrain_data: in_1}}, check: b > 1}", r"'b' is not one of"),
        ("{text: t, cells: {a: {method: dino, pretrain_data: in_1}}, check: __import__('os')}", r"not allowed"),
        ("{text: t, cells: {a: {method: dino, pretrain_data: in_1}}, check: a ** 2 > 1}", r"'a \*\* 2' is not allowed"),
    ],
)
def test_claims_are_checked_when_the_sweep_is_read(tmp_path, claim, expected):
    text = T1.split("claims:")[0] + f"claims: [{claim}]\n"
    with pytest.raises(SweepError, match=expected):
        load_sweep(write_sweep(tmp_path, text, "bad"))


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_claims_on_our_numbers_print_their_margin_and_spread(tmp_path, capsys):
    """Every cell with two seeds: the claim's margin against its standard error, in the printed report and the page."""
    sweep = write_sweep(tmp_path, T1, "t1")
    req = Request([sweep], ["optim.epochs=1"], results=str(tmp_path / "results"))
    values = {"dino pretrain_data=in_1": (69.0, 71.0), "dino pretrain_data=in_full": (78.0, 79.0),
              "splitmask pretrain_data=in_1": (76.0, 76.5),
              "splitmask pretrain_data=in_full": (77.0, 77.5)}  # fmt: skip
    jobs = {j.label: j for j in compile_request(req).jobs.values() if j.task == "finetune"}
    for cell, seeds in values.items():
        for seed, top1 in enumerate(seeds):
            run = jobs[f"method={cell} seed={seed}"].run_dir
            run.mkdir(parents=True)
            (run / "result.json").write_text(json.dumps({"top1": top1, "protocol": "finetune"}))
    (page,) = build_reports(req, tmp_path / "reports")
    out = capsys.readouterr().out
    # (78.5 - 70) - (77.25 - 76.25) = 7.5; SE sqrt(1^2 + 0.5^2 + 0.25^2 + 0.25^2) = 1.17
    margin = "sm_full - sm_1 < dino_full - dino_1: margin +7.50 ± 1.17 (+6.4 SE; 2 needed): holds"
    assert "paper holds, ours holds\n  " + margin in out
    assert html.escape(margin) in page.read_text()
    assert "| dino | 70.0 ± 1.4 n=2 (70.1, -0.1 =) | 78.5 ± 0.7 n=2 (78.4, +0.1 =) |" in out


def test_report_writes_tables_figures_and_a_self_contained_page(tmp_path, capsys):
    req, _ = _results(tmp_path)
    with pytest.warns(UserWarning):
        (page,) = build_reports(req, tmp_path / "reports")
    out = capsys.readouterr().out
    assert GOLDEN in out and f"report: {page}" in out
    assert "claim: SplitMask loses less than DINO" in out and "paper holds, ours not enough results" in out
    folder = page.parent
    for name in ("table.md", "table.tex", "cells.csv", "results.csv", "t1_bars.png", "t1_bars.svg"):
        assert (folder / name).stat().st_size > 0, name
    parser = _Tags()
    parser.feed(page.read_text())
    images = [a for t, a in parser.tags if t == "img"]
    assert len(images) == 1 and images[0]["src"].startswith("data:image/png;base64,")
    assert sum(t == "table" for t, _ in parser.tags) >= 3  # the layout, every cell, the claims
    assert not any(str(a.get("src", a.get("href", ""))).startswith("http") for _, a in parser.tags)
    assert "git sha" in page.read_text()
    umask = os.umask(0)
    os.umask(umask)
    assert page.stat().st_mode & 0o777 == 0o666 & ~umask  # readable by colleagues as any file they write


def test_figures_are_drawn_again_only_when_what_they_plot_changes(tmp_path, monkeypatch):
    import importlib.metadata

    req, _ = _results(tmp_path)  # drawn again: written anew (another inode); not: the same file
    with pytest.warns(UserWarning):
        (page,) = build_reports(req, tmp_path / "reports", out=open(os.devnull, "w"))  # noqa: SIM115
    png = page.parent / "t1_bars.png"
    drawn = png.stat().st_ino
    with pytest.warns(UserWarning):
        build_reports(req, tmp_path / "reports", out=open(os.devnull, "w"))  # noqa: SIM115
    assert png.stat().st_ino == drawn  # same results: the figure is not drawn again
    real = importlib.metadata.version
    with monkeypatch.context() as patch:  # another matplotlib draws (styles, layout) differently: drawn again
        patch.setattr(importlib.metadata, "version", lambda p: "0.0-other" if p == "matplotlib" else real(p))
        with pytest.warns(UserWarning):
            build_reports(req, tmp_path / "reports", out=open(os.devnull, "w"))  # noqa: SIM115
    assert png.stat().st_ino != drawn
    drawn = png.stat().st_ino
    graph = compile_request(req)
    run = next(j for j in graph.jobs.values() if j.label == "method=dino pretrain_data=in_full seed=0").run_dir
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({"top1": 77.0, "protocol": "finetune"}))
    with pytest.warns(UserWarning):
        build_reports(req, tmp_path / "reports", out=open(os.devnull, "w"))  # noqa: SIM115
    assert png.stat().st_ino != drawn


def test_quoted_cells_and_the_hours_metric(tmp_path):
    """An external cell shows the paper's number alone; `wall_clock_hours` is read from a run's wall clock."""
    text = """
stages:
  pretrain:
    grid: {method: {splitmask: [method=splitmask]}}
layout: {rows: [method], cols: [metric]}
cells:
  - {stage: pretrain, keys: {method: splitmask}, metric: wall_clock_hours, paper: 34.0, tolerance: 10}
  - {external: "MoCo v3 (Chen et al. 2021), quoted", keys: {method: mocov3}, metric: top1, paper: 81.4}
"""
    sweep_path = write_sweep(tmp_path, text, "hours")
    req = Request([sweep_path], [], results=str(tmp_path / "results"))
    (job,) = compile_request(req).jobs.values()
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "result.json").write_text(json.dumps({"wall_clock_s": 30 * 3600.0}))
    df = collect(req.sweeps, results=req.results)
    assert list(df.value) == [30.0]  # the quoted cell has no job, hence no row
    grid = layout(load_sweep(sweep_path), summarize(load_sweep(sweep_path), df))
    assert grid.loc["splitmask", "wall_clock_hours"] == "30.0 n=1 (34.0, -4.0 =)"
    assert grid.loc["mocov3", "top1"] == "quoted (81.4)"


BASELINES = """\
| baseline | fashion_mnist |
|---|---|
| random init, fine-tuned | 51.0 ± 1.4 n=2 |
| raw pixels, linear probe | 70.0 n=1 |
| raw pixels, 20-NN | 65.0 n=1 |"""


def test_a_profiles_baselines_are_shared_jobs_beside_the_cells_and_get_their_table(tmp_path, monkeypatch, capsys):
    """`baselines:` adds, on each downstream job's data and seed, the job with no encoder and the raw-pixel probe:
    jobs shared by every method's fine-tuning, outside every cell, reported in their own table."""
    from harness.sweep import graph as graph_module

    profile = graph_module.Profile("with-baselines", baselines={"finetune": ("random", "pixels")})
    monkeypatch.setattr(graph_module, "load_profile", lambda name: profile)
    sweep = write_sweep(tmp_path, T1, "t1")
    req = Request([sweep], [], profile="with-baselines", results=str(tmp_path / "results"))
    graph = compile_request(req)
    base = {j.id: j for r, j in graph.refs("t1") if r.stage == "baselines"}
    random = sorted((j for j in base.values() if j.task == "finetune"), key=lambda j: j.container["seed"])
    pixels = sorted((j for j in base.values() if j.task == "linear"), key=lambda j: j.container["seed"])
    assert len(base) == 4 and len(random) == len(pixels) == 2  # 4 fine-tunings x 2 seeds: one per seed and kind
    assert all(j.upstream is None and j.container["pretrained"] is None for j in base.values())
    assert [j.container["seed"] for j in random] == [0, 1] and {j.container["method"]["name"] for j in pixels} == {
        "pixels"
    }
    ft = next(j for j in graph.jobs.values() if j.task == "finetune" and j.upstream and j.container["seed"] == 0)
    assert random[0].container["optim"] == ft.container["optim"]  # the sweep's own recipe
    cells = [j for cell in load_sweep(sweep).cells for _, j in graph.select("t1", "finetune", cell.keys)]
    assert not set(base) & {j.id for j in cells}
    for job, result in zip([*random, pixels[0]], [{"top1": 50.0}, {"top1": 52.0}, {"top1": 70.0, "knn_top1": 65.0}]):
        job.run_dir.mkdir(parents=True)
        (job.run_dir / "result.json").write_text(json.dumps(result))
    (page,) = build_reports(req, tmp_path / "reports")
    out = capsys.readouterr().out
    assert BASELINES in out and BASELINES in (page.parent / "table.md").read_text()
    assert "raw pixels, linear probe" in page.read_text()


def test_a_profile_with_unknown_baselines_is_refused():
    from harness.sweep.graph import _check_baselines

    with pytest.raises(SweepError, match=r"micro\.yaml: baselines\.pretrain: expected a mapping finetune\|linear"):
        _check_baselines({"pretrain": ["random"]}, Path("micro.yaml"))
    with pytest.raises(SweepError, match=r"baselines\.linear: .*got \['imagenet'\]"):
        _check_baselines({"linear": ["imagenet"]}, Path("micro.yaml"))


def test_latex_and_markdown_escape_every_special_character():
    """Issue 15 item 12: `$ { } ~ ^` (and `& % # _ \\`) in a key, a label or a caption are text in the LaTeX table;
    a `|` or a line break in a value keeps the Markdown row one row."""
    import pandas as pd

    grid = pd.DataFrame({"a_b": ["$5 {x} ~ ^2 & 10% #1 \\ 7 ± 1 −"]}, index=pd.Index(["r|1\nr2"], name="k~"))
    tex = latex(grid, "T {1}: $")
    assert "\\caption{T \\{1\\}: \\$}" in tex
    assert "k\\textasciitilde{} & a\\_b \\\\" in tex
    body = r"\$5 \{x\} \textasciitilde{} \textasciicircum{}2 \& 10\% \#1 \textbackslash{} 7 $\pm$ 1 $-$"
    assert f"r|1 r2 & {body} \\\\" in tex
    assert markdown(grid).splitlines()[2] == "| r\\|1 r2 | $5 {x} ~ ^2 & 10% #1 \\ 7 ± 1 − |"


def test_a_report_never_writes_outside_its_folder(tmp_path):
    """Issue 15 item 1: a name that leads out of `--out` is refused by the sweep file (tests/test_sweep.py); a
    folder of `--out` that is a link out of it is refused by the report, with the file and the key."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "t1").symlink_to(outside)
    req, _ = _results(tmp_path)
    with pytest.warns(UserWarning), pytest.raises(SweepError, match=r"t1\.yaml: name: .* outside"):
        build_reports(req, tmp_path / "reports", out=open(os.devnull, "w"))  # noqa: SIM115
    assert list(outside.iterdir()) == []
    sweep = write_sweep(tmp_path, T1.replace("name: t1_bars", "name: ../../../figescape"), "escape")
    with pytest.raises(SweepError, match=r"figures\[0\]\.name: expected a simple name"):
        build_reports(Request([sweep], results=str(tmp_path / "results")), tmp_path / "reports")
    assert not list(tmp_path.glob("**/figescape*")) and not list(Path("/").glob("figescape*"))
