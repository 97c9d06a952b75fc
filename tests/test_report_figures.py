"""Report figures and the HTML page: files written, the paper overlaid, missing cells shown, nothing external."""

from __future__ import annotations

import math
import re
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from harness.report.figures import draw_figure, figure_points, render_figures
from harness.report.html import write_html
from harness.sweep import load_sweep

SWEEP = """
name: figs
title: Sample efficiency and transfer (test)
stages:
  finetune:
    grid:
      method: {a: [], b: []}
      fraction: [1, 10, 100]
      target: {inat: [], food: []}
  linear:
    grid:
      method: {a: [], b: []}
      target: {inat: [], food: []}
figures:
  - {name: efficiency, kind: line, stage: finetune, x: fraction, hue: method, facet: target, logx: true}
  - {name: bars, kind: bar, stage: linear, x: target, hue: method}
  - {name: grid, kind: heatmap, stage: linear, rows: method, cols: target, title: Linear probe}
"""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def sweep(tmp_path: Path):
    path = tmp_path / "figs.yaml"
    path.write_text(textwrap.dedent(SWEEP))
    return load_sweep(path)


def row(index: int, stage: str, keys: dict, value: float, paper: float, seed: int = 0, state: str = "done") -> dict:
    """One (cell, job) row as `harness.report.collect` would write it (only the columns the figures read)."""
    return {
        "sweep": "figs", "cell_index": index, "stage": stage, "metric": "top1", "value": value, "paper": paper,
        "tolerance": 1.0, "seed": seed, "state": state, **{f"key.{k}": str(v) for k, v in keys.items()},
    }  # fmt: skip


@pytest.fixture
def results() -> pd.DataFrame:
    """Fine-tuning: a at fraction 100 has two seeds, b at 100 is pending. Linear: b on food failed."""
    rows = []
    for target in ("inat", "food"):
        for method, base in (("a", 60.0), ("b", 55.0)):
            for fraction in (1, 10, 100):
                keys, index = {"method": method, "fraction": fraction, "target": target}, len(rows)
                paper = base + 10 * math.log10(fraction)
                if method == "b" and fraction == 100:
                    rows.append([row(index, "finetune", keys, math.nan, paper, state="pending")])
                elif method == "a" and fraction == 100:
                    rows.append([row(index, "finetune", keys, paper + s, paper, seed=s) for s in (0, 1)])
                else:
                    rows.append([row(index, "finetune", keys, paper - 0.5, paper)])
    linear = [("a", "inat", 70.1, "done"), ("a", "food", 80.4, "done"), ("b", "inat", 68.0, "done"),
              ("b", "food", math.nan, "failed")]  # fmt: skip
    for method, target, value, state in linear:
        paper = 70.0 if target == "inat" else 80.0
        rows.append([row(len(rows), "linear", {"method": method, "target": target}, value, paper, state=state)])
    other = row(0, "finetune", {"method": "a", "fraction": 1, "target": "inat"}, 1.0, 2.0) | {"sweep": "other"}
    return pd.DataFrame([r for cell in rows for r in cell] + [other])


def test_points_average_seeds_and_keep_missing_cells(sweep, results):
    points = figure_points(sweep, sweep.figures[0], results)
    assert len(points) == 12  # 2 targets x 2 methods x 3 fractions; the other sweep's row is not one of them
    two = points[(points["hue"] == "a") & (points["x"] == "100") & (points["facet"] == "inat")].iloc[0]
    assert (two["n"], two["mean"], two["paper"]) == (2, pytest.approx(80.5), pytest.approx(80.0))
    assert two["std"] == pytest.approx(math.sqrt(0.5))
    pending = points[points["n"] == 0]
    assert len(pending) == 2 and set(pending["state"]) == {"pending"} and pending["paper"].notna().all()


def test_render_figures_writes_png_and_svg_with_the_paper_overlaid(sweep, results, tmp_path):
    paths = render_figures(sweep, results, tmp_path / "out")
    assert [p.name for p in paths] == ["efficiency.png", "bars.png", "grid.png"]
    for png in paths:
        assert png.read_bytes()[:8] == PNG_MAGIC
        svg = png.with_suffix(".svg").read_text()
        assert svg.lstrip().startswith("<?xml") and svg.rstrip().endswith("</svg>")
    # the paper's curve of each hue in each facet is its own dashed group in the SVG
    svg = (tmp_path / "out" / "efficiency.svg").read_text()
    for group in ("paper-line-0-0", "paper-line-0-1", "paper-line-1-0", "paper-line-1-1"):
        body = re.search(rf'<g id="{group}">(.*?)</g>', svg, re.S)
        assert body and "stroke-dasharray" in body.group(1), group
    assert 'id="paper-bar-0-1"' in (tmp_path / "out" / "bars.svg").read_text()


def test_line_figure_draws_ours_and_the_paper_per_hue(sweep, results):
    fig = draw_figure(sweep, sweep.figures[0], results)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_title() == "target = inat"
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert [list(line.get_xdata()) for line in dashed] == [[1.0, 10.0, 100.0]] * 2  # b's paper point at 100 too
    missing = [line for line in ax.get_lines() if line.get_marker() == "x" and len(line.get_xdata())]
    assert [list(line.get_xdata()) for line in missing] == [[100.0]]  # b at fraction 100: pending
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["a", "b", "ours (mean ± std)", "paper", "ours missing"]


def test_heatmap_has_ours_and_delta_panels(sweep, results):
    fig = draw_figure(sweep, sweep.figures[2], results)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert [ax.get_title() for ax in panels] == ["ours", "Δ ours − paper"]
    texts = [t.get_text() for t in panels[1].texts]
    assert "+0.1" in texts and "-2.0" in texts and "failed" in texts  # b on food: state written in
    assert fig.get_suptitle() == "Linear probe"
    stand_ins = draw_figure(sweep, sweep.figures[2], results, compare=False)  # a profile's numbers: no delta
    panels = [ax for ax in stand_ins.axes if ax.get_label() != "<colorbar>"]
    assert [ax.get_title() for ax in panels] == ["ours", "paper, for reference"]
    assert not any(t.get_text().startswith("+") for t in panels[1].texts)


@pytest.mark.parametrize("frame", ["no rows", "no columns"])
def test_empty_selection_renders_a_placeholder(sweep, results, tmp_path, frame):
    df = results.iloc[0:0] if frame == "no rows" else pd.DataFrame(columns=["sweep", "stage", "metric", "value"])
    paths = render_figures(sweep, df, tmp_path)
    assert len(paths) == 3 and all(p.read_bytes()[:8] == PNG_MAGIC for p in paths)


class Tags(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def named(self, name: str) -> list[dict]:
        return [attrs for tag, attrs in self.tags if tag == name]


def test_html_page_is_self_contained(sweep, results, tmp_path):
    pngs = render_figures(sweep, results, tmp_path / "figs")
    tables = [
        ("Table 1 <finetune>", pd.DataFrame({"inat": ["80.5 ± 0.7 (80.0)"], "food": ["pending (75.0)"]}, index=["a"])),
        ("Table 2", pd.DataFrame({"method": ["a", "b"], "top1": ["70.1 (70.0)", "failed (80.0)"]})),
    ]
    claims = [
        {"claim": "SplitMask matches BEiT", "paper": "holds", "ours": "fails", "detail": "-2.0 on food"},
        {"claim": "More labels help", "paper": "holds", "ours": "not enough results", "detail": "b pending"},
        {"claim": "a beats b", "paper": "holds", "ours": "not shown", "detail": "a > b",
         "margins": ["a > b: margin +2.00 ± 2.89 (+0.7 SE; 2 needed): not shown"]},
        {"claim": "b beats c", "paper": "fails", "ours": "holds (spread unknown: 1 seed)", "detail": "b > c"},
    ]  # fmt: skip
    ranks = ["rank agreement with the paper: Kendall τ_b +1.00 over 2 cells (1 pair: 1 concordant, 0 discordant)"]
    provenance = {"sweep file": "sweeps/figs.yaml", "git sha": "abc1234", "GPU-hours": "12.5"}
    title = "Report <script>alert(1)</script>"
    path = write_html(tmp_path / "report" / "index.html", title=title, tables=tables, figures=pngs, claims=claims,
                      provenance=provenance, ranks=ranks)  # fmt: skip
    page = path.read_text()
    parser = Tags()
    parser.feed(page)
    text = "".join(parser.text)

    images = parser.named("img")
    assert len(images) == len(pngs) and all(i["src"].startswith("data:image/png;base64,") for i in images)
    assert len(parser.named("table")) == len(tables) + 1  # + the claims table
    assert not parser.named("script") and not parser.named("link")
    urls = [v for _, attrs in parser.tags for k, v in attrs.items() if k in ("src", "href")]
    assert not any(u.startswith(("http://", "https://", "//")) for u in urls)
    assert "http://" not in page and "https://" not in page
    assert title in text and parser.named("title")
    assert all(key in text for key in provenance) and "abc1234" in text
    assert [c["class"] for c in parser.named("td") if "verdict" in c.get("class", "")] == [
        "verdict holds", "verdict fails", "verdict holds", "verdict insufficient", "verdict holds",
        "verdict unshown", "verdict fails", "verdict weak holds",
    ]  # fmt: skip
    assert ranks[0] in text and "+0.7 SE; 2 needed" in text and len(parser.named("li")) == 1
    assert "Table 1 <finetune>" in text and "efficiency" in text


@pytest.mark.parametrize(
    ("numbers", "logx", "spread"),
    [
        ([0, 100, 300, 500, 1000, 1500, 2000, 2500, 3000, 5000], False, False),  # F-how-long: labels would collide
        ([3000, 5000, 10000, 15000], False, True),  # F3
        ([1, 10, 100], True, True),  # F-sample on a log axis
        ([1, 2, 4, 6, 8, 10, 11, 12], False, True),  # F2's blocks
    ],
)
def test_a_tick_per_value_only_when_the_labels_fit(numbers, logx, spread):
    from harness.report.figures import _spread_out

    assert _spread_out(numbers, logx) is spread


def test_a_figure_name_cannot_lead_out_of_the_folder(sweep, results, tmp_path):
    """Issue 15 item 1: the sweep file refuses such a name; drawing refuses it too, before writing anything."""
    import dataclasses

    escaping = dataclasses.replace(sweep.figures[1], name="../../figescape")
    with pytest.raises(ValueError, match="outside"):
        render_figures(dataclasses.replace(sweep, figures=(escaping,)), results, tmp_path / "a" / "out")
    assert not list(tmp_path.rglob("figescape*"))
