"""A sweep's `figures:` drawn from the long-format results (`harness.report.collect`), our values beside the paper's.

    paths = render_figures(sweep, df, "reports/robustness")    # <name>.png (150 dpi) and <name>.svg per figure

Seeds of a cell are averaged (std as error bars when there are several). The paper is always drawn in the hue's
colour: a dashed line with open markers (line), an open marker on the bar (bar), a second "Δ ours − paper" panel
(heatmap; with `compare=False`, for a profile's stand-in numbers, the paper's values on their own scale instead). A
cell without our value (pending, failed, ...) keeps its paper point and gets an × (and, where there is room, its
state written in), so a half-finished sweep already reads as one.

Figures are built with `matplotlib.figure.Figure`, never pyplot: nothing is registered globally, no backend has to be
selected (savefig picks Agg / SVG by suffix), and a figure is freed once it is out of scope. The look is
seaborn's whitegrid / paper style as matplotlib ships it (`seaborn-v0_8-*`), applied inside a context manager, so the
caller's rcParams are left as they were. seaborn itself is not imported: with the scipy.stats it pulls in it costs
~2 s a report, and all it did here (styles, a colour-blind palette, an annotated heatmap) matplotlib does.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib as mpl
import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator

from harness.io import atomic_write, under
from harness.sweep.spec import Figure, Sweep

__all__ = ["draw_figure", "figure_points", "render_figures"]

DPI = 150
METRIC_LABELS = {
    "top1": "top-1 accuracy (%)",
    "top5": "top-5 accuracy (%)",
    "best_top1": "best top-1 accuracy (%)",
    "best_top5": "best top-5 accuracy (%)",
    "final_loss": "final loss",
    "gpu_hours": "GPU-hours",
    "device_hours": "device-hours",
    "wall_clock_s": "wall clock (s)",
}
MISSING = "n/a"  # the label of a key a job does not have


def render_figures(sweep: Sweep, df: pd.DataFrame, out_dir: str | Path, compare: bool = True) -> list[Path]:
    """Write `<figure.name>.png` and `.svg` into `out_dir` for each of `sweep.figures`; returns the PNG paths.

    The PNGs come back in `sweep.figures` order (what `write_html` embeds); each SVG sits beside its PNG
    (`path.with_suffix(".svg")`). A figure whose selection is empty is still written, saying "no cells", so a
    report always has one image per declared figure.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for figure in sweep.figures:
        with _style():
            fig = draw_figure(sweep, figure, df, compare)
            png = under(out_dir, f"{figure.name}.png")  # the sweep file checked the name: this is the last guard
            atomic_write(png, lambda f, fig=fig: fig.savefig(f, format="png", dpi=DPI))
            fig.set_layout_engine("none")  # the SVG keeps the layout the PNG computed (~0.3 s a figure saved)
            # no date in the SVG: same results, same file
            atomic_write(
                png.with_suffix(".svg"), lambda f, fig=fig: fig.savefig(f, format="svg", metadata={"Date": None})
            )
            fig.clear()  # not a pyplot figure: nothing else holds it, clearing frees its artists right away
        paths.append(png)
    return paths


def figure_points(sweep: Sweep, figure: Figure, df: pd.DataFrame) -> pd.DataFrame:
    """One row per plotted point: its coordinates, our mean / std / number of values, the paper value, the state.

    Coordinates are the columns `facet`, `hue`, `x` (line, bar) or `facet`, `row`, `col` (heatmap), as strings;
    only the roles the figure uses are present. Rows are the sweep's cells of `figure.stage` and `figure.metric`,
    in the sweep's cell order; the seeds of a cell are one point. `state` is "done", or why ours is missing
    ("pending", "failed, pending") or partial ("1/3 done").
    """
    roles = {"facet": figure.facet}
    if figure.kind == "heatmap":
        roles |= {"row": figure.rows, "col": figure.cols}
    else:
        roles |= {"hue": figure.hue, "x": figure.x}
    roles = {role: key for role, key in roles.items() if key}
    columns = [*roles, "mean", "std", "n", "paper", "tolerance", "state"]
    if df.empty or "sweep" not in df:
        return pd.DataFrame(columns=columns)
    rows = df[(df["sweep"] == sweep.name) & (df["stage"] == figure.stage) & (df["metric"] == figure.metric)]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    rows = rows.assign(**{role: _labels(rows, key) for role, key in roles.items()})
    rows = rows.sort_values("cell_index", kind="stable")
    points = []
    for _, group in rows.groupby(["cell_index", *roles], sort=False):
        done = group["value"].dropna()
        states = sorted(set(group["state"]) - {"done"})
        if len(done) == len(group):
            state = "done"
        elif len(done):
            state = f"{len(done)}/{len(group)} done"
        else:
            state = ", ".join(states) or "no value"  # done, but result.json lacks the metric
        point = {role: group[role].iloc[0] for role in roles}
        point |= {
            "mean": done.mean() if len(done) else math.nan,
            "std": done.std() if len(done) > 1 else math.nan,
            "n": len(done),
            "paper": _first(group["paper"]),
            "tolerance": _first(group["tolerance"]),
            "state": state,
        }
        points.append(point)
    points = pd.DataFrame(points, columns=columns)
    if roles and points.duplicated(list(roles)).any():
        warnings.warn(
            f"figure '{figure.name}': several cells share the same {', '.join(roles.values())}; "
            "keeping the first of each (a `hue` or `facet` key would separate them)",
            stacklevel=2,
        )
        points = points.drop_duplicates(list(roles))
    return points.reset_index(drop=True)


def draw_figure(sweep: Sweep, figure: Figure, df: pd.DataFrame, compare: bool = True) -> MplFigure:
    """The matplotlib figure of `figure` (not saved); what `render_figures` writes, handy in a notebook."""
    points = figure_points(sweep, figure, df)
    if points.empty:
        return _empty(sweep, figure)
    if figure.kind == "heatmap":
        fig = _heatmap(figure, points, compare)
    else:
        fig = {"line": _line, "bar": _bar}[figure.kind](figure, points)
    fig.suptitle(figure.title or sweep.title)
    return fig


# ---------------------------------------------------------------------------------------------------------------
def _style():
    """seaborn's whitegrid look at paper scale, for the duration of a `with` (rcParams are global)."""
    later = {  # seaborn since 0.9: hollow markers (the paper's) keep an edge; fixed ids keep the SVG stable
        "lines.markeredgewidth": 1.0,
        "patch.linewidth": 1.0,
        "svg.hashsalt": "splitmask-harness",
        "svg.fonttype": "none",  # text stays text in the SVG: searchable, editable, a third smaller, faster
    }
    return mpl.style.context(["seaborn-v0_8-whitegrid", "seaborn-v0_8-paper", later])


def _labels(rows: pd.DataFrame, key: str) -> pd.Series:
    """A key's values as strings: the job key `key.<key>`, else a plain column (`stage`, `protocol`, ...)."""
    column = f"key.{key}" if f"key.{key}" in rows else key
    if column not in rows:
        warnings.warn(
            f"no job has a key '{key}' (a figure's x / hue / facet / rows / cols): shown as '{MISSING}'", stacklevel=3
        )
        return pd.Series(MISSING, index=rows.index)
    return rows[column].map(lambda v: MISSING if pd.isna(v) else str(v))


def _first(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.iloc[0]) if len(values) else math.nan


def _order(values: pd.Series) -> list[str]:
    """Distinct values: numerically sorted when all are numbers, else in the sweep's cell order."""
    distinct = list(pd.unique(values))
    numbers = _numbers(distinct)
    return [v for _, v in sorted(zip(numbers, distinct))] if numbers else distinct


def _numbers(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def _palette(hues: list) -> dict:
    """Petroff's 10 colours, chosen to stay apart under colour-vision deficiency; more hues sample a colour map."""
    if len(hues) <= 10:
        return dict(zip(hues, mpl.color_sequences["petroff10"]))
    return dict(zip(hues, mpl.colormaps["turbo"](np.linspace(0.05, 0.95, len(hues)))))


def _panels(figure: Figure, points: pd.DataFrame, width: float, height: float, ncols: int = 1):
    """(figure, [(facet value, its points, its axes row)]): one row of `ncols` axes per facet value."""
    facets = _order(points["facet"]) if "facet" in points else [None]
    if figure.kind == "heatmap":
        fig = MplFigure(figsize=(width * ncols, height * len(facets)), layout="constrained")
        axes = fig.subplots(len(facets), ncols, squeeze=False)
    else:
        fig = MplFigure(figsize=(width * len(facets) + 1.8, height), layout="constrained")  # +1.8: the legend
        axes = fig.subplots(1, len(facets), squeeze=False).T
    out = []
    for facet, row in zip(facets, axes):
        sub = points if facet is None else points[points["facet"] == facet]
        if facet is not None:
            for ax in row:
                ax.set_title(f"{figure.facet} = {facet}")
        out.append((facet, sub, row))
    return fig, out


def _legend(fig: MplFigure, figure: Figure, colors: dict, kind: str) -> None:
    """Hue colours, then what the marks mean: ours (solid, filled), paper (dashed / open), ours missing (×)."""
    handles = [Line2D([], [], color=c, marker="o", lw=2, label=str(h)) for h, c in colors.items() if h is not None]
    if kind == "line":
        ours = Line2D([], [], color="0.25", marker="o", lw=1.5, label="ours (mean ± std)")
        paper = Line2D([], [], color="0.25", marker="o", mfc="none", ls="--", lw=1.5, label="paper")
    else:
        ours = Patch(color="0.45", label="ours (mean ± std)")
        paper = Line2D([], [], color="0.25", marker="o", mfc="white", ls="none", label="paper")
    missing = Line2D([], [], color="0.25", marker="x", ls="none", mew=2, label="ours missing")
    fig.legend(
        handles=[*handles, ours, paper, missing],
        loc="outside right center",
        title=figure.hue if handles else None,
        frameon=False,
    )


def _mark_missing(ax, pos, paper) -> None:
    """× where our value should be: at the paper's value, or at the bottom of the axes when there is none."""
    pos, paper = np.asarray(pos, float), np.asarray(paper, float)
    known = ~np.isnan(paper)
    if known.any():
        ax.plot(pos[known], paper[known], "x", color="0.2", mew=2, ms=8, zorder=4)
    if not known.all():  # an empty line drawn in axes coordinates would drag constrained layout to the origin
        ax.plot(pos[~known], np.full((~known).sum(), 0.04), "x", color="0.2", mew=2, ms=8, zorder=4,
                transform=ax.get_xaxis_transform(), clip_on=False)  # fmt: skip


def _spread_out(numbers: list[float], logx: bool) -> bool:
    """True when no two x values are closer than 1/15 of the axis (F-how-long's 0, 100, 300, 500 ... 5000 are not)."""
    values = np.log10(numbers) if logx else np.asarray(numbers, dtype=float)
    values = np.sort(values)
    span = values[-1] - values[0]
    return bool(len(values) < 2 or span == 0 or np.diff(values).min() >= span / 15)


def _line(figure: Figure, points: pd.DataFrame) -> MplFigure:
    xs = _order(points["x"])
    numbers = _numbers(xs)
    pos = dict(zip(xs, numbers)) if numbers else {x: i for i, x in enumerate(xs)}
    logx = figure.logx and numbers is not None and min(numbers) > 0
    if figure.logx and not logx:
        warnings.warn(f"figure '{figure.name}': logx needs positive numbers on x, got {xs}", stacklevel=3)
    hues = _order(points["hue"]) if "hue" in points else [None]
    colors = _palette(hues)
    fig, panels = _panels(figure, points, 3.8, 3.4)
    for f, (_, sub, (ax,)) in enumerate(panels):
        for h, hue in enumerate(hues):
            cur = sub if hue is None else sub[sub["hue"] == hue]
            cur = cur.assign(pos=cur["x"].map(pos)).sort_values("pos")
            ours, paper, missing = cur[cur["n"] > 0], cur[cur["paper"].notna()], cur[cur["n"] == 0]
            ax.plot(ours["pos"], ours["mean"], "-o", color=colors[hue], lw=1.5, ms=5, zorder=3)
            spread = ours[ours["n"] > 1]
            if len(spread):
                ax.errorbar(
                    spread["pos"], spread["mean"], yerr=spread["std"], fmt="none", ecolor=colors[hue], capsize=3
                )
            ax.plot(paper["pos"], paper["paper"], "--o", color=colors[hue], mfc="none", lw=1.5, ms=6,
                    gid=f"paper-line-{f}-{h}")  # fmt: skip
            _mark_missing(ax, missing["pos"], missing["paper"])
        if logx:
            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(NullLocator())
        if not numbers or (len(xs) <= 12 and _spread_out(numbers, logx)):
            ax.set_xticks([pos[x] for x in xs], xs)  # one tick per value, unless labels would collide
        if not numbers:
            ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.set_xlabel(figure.xlabel or figure.x)
    panels[0][2][0].set_ylabel(figure.ylabel or METRIC_LABELS.get(figure.metric, figure.metric))
    _legend(fig, figure, colors, "line")
    return fig


def _bar(figure: Figure, points: pd.DataFrame) -> MplFigure:
    xs = _order(points["x"])
    hues = _order(points["hue"]) if "hue" in points else [None]
    colors = _palette(hues)
    width = 0.8 / len(hues)
    fig, panels = _panels(figure, points, 1.2 + 0.9 * len(xs) * max(1, len(hues) / 2), 3.4)
    for f, (_, sub, (ax,)) in enumerate(panels):
        for h, hue in enumerate(hues):
            cur = sub if hue is None else sub[sub["hue"] == hue]
            cur = cur.assign(pos=cur["x"].map({x: i for i, x in enumerate(xs)}) + (h - (len(hues) - 1) / 2) * width)
            ours, paper, missing = cur[cur["n"] > 0], cur[cur["paper"].notna()], cur[cur["n"] == 0]
            ax.bar(ours["pos"], ours["mean"], width * 0.92, color=colors[hue], zorder=2)
            spread = ours[ours["n"] > 1]
            if len(spread):
                ax.errorbar(spread["pos"], spread["mean"], yerr=spread["std"], fmt="none", ecolor="0.2", capsize=3)
            ax.plot(paper["pos"], paper["paper"], "o", color=colors[hue], mfc="white", mew=1.8, ms=7, zorder=3,
                    gid=f"paper-bar-{f}-{h}")  # fmt: skip
            _mark_missing(ax, missing["pos"], missing["paper"])
            for p, state in zip(missing["pos"], missing["state"]):
                ax.text(p, 0.1, state, rotation=90, ha="center", va="bottom", fontsize=7, color="0.35",
                        transform=ax.get_xaxis_transform())  # fmt: skip
        ax.set_xticks(range(len(xs)), xs)
        ax.set_xlabel(figure.xlabel or figure.x)
        ax.grid(axis="x", visible=False)
    panels[0][2][0].set_ylabel(figure.ylabel or METRIC_LABELS.get(figure.metric, figure.metric))
    _legend(fig, figure, colors, "bar")
    return fig


def _heatmap(figure: Figure, points: pd.DataFrame, compare: bool = True) -> MplFigure:
    """Per facet, two panels: ours (annotated), and ours − paper on a diverging scale centred at 0 (`compare`) or
    the paper's values on their own scale (a profile's numbers are not the paper's in absolute value)."""
    rows, cols = _order(points["row"]), _order(points["col"])
    delta_all = points["mean"] - points["paper"]
    span = float(np.nanmax(np.abs(delta_all))) if delta_all.notna().any() else 1.0
    ours_all, paper_all = points["mean"].dropna(), points["paper"].dropna()
    lims = (ours_all.min(), ours_all.max()) if len(ours_all) else (0.0, 1.0)  # one colour scale for all facets
    paper_lims = (paper_all.min(), paper_all.max()) if len(paper_all) else (0.0, 1.0)
    label = METRIC_LABELS.get(figure.metric, figure.metric)
    fig, panels = _panels(figure, points, 1.6 + 0.9 * len(cols), 0.9 + 0.45 * len(rows), ncols=2)
    for facet, sub, (ax_ours, ax_delta) in panels:
        grid = sub.set_index(["row", "col"])
        ours, std, paper = (_matrix(grid[c], rows, cols) for c in ("mean", "std", "paper"))
        states = grid["state"].unstack("col").reindex(index=rows, columns=cols).astype(object)
        states = states.fillna("no cell").to_numpy()
        delta = ours - paper
        ours_text = _text(ours, "{:.1f}") + np.where(np.isnan(std), "", _text(std, "\n±{:.1f}"))
        _heat(ax_ours, ours, ours_text, "viridis", *lims, label)
        note = {"ha": "center", "va": "center", "fontsize": 7, "color": "0.3", "in_layout": False}
        where = "" if facet is None else f" ({figure.facet} = {facet})"
        ax_ours.set_title(f"ours{where}")
        for i, j in zip(*np.nonzero(np.isnan(ours))):
            ax_ours.text(j + 0.5, i + 0.5, states[i, j], **note)
        if not compare:
            _heat(ax_delta, paper, _text(paper, "{:.1f}"), "viridis", *paper_lims, f"paper: {label}")
            for i, j in zip(*np.nonzero(np.isnan(paper))):
                ax_delta.text(j + 0.5, i + 0.5, "no paper", **note)
            ax_delta.set_title(f"paper, for reference{where}")
        else:
            _heat(ax_delta, delta, _text(delta, "{:+.1f}"), "RdBu", -span, span, f"Δ {label}")
            for i, j in zip(*np.nonzero(np.isnan(ours))):
                ax_delta.text(j + 0.5, i + 0.5, states[i, j], **note)
            for i, j in zip(*np.nonzero(~np.isnan(ours) & np.isnan(paper))):
                ax_delta.text(j + 0.5, i + 0.5, "no paper", **note)
            ax_delta.set_title(f"Δ ours − paper{where}")
        for ax in (ax_ours, ax_delta):
            ax.set_xticks(np.arange(len(cols)) + 0.5, cols)
            ax.set_yticks(np.arange(len(rows)) + 0.5, rows, rotation=0)
            ax.set_xlabel(figure.xlabel or figure.cols)
            ax.set_ylabel(figure.ylabel or figure.rows)
    return fig


def _matrix(values: pd.Series, rows: list[str], cols: list[str]) -> np.ndarray:
    """A (row, col)-indexed column as a rows x cols float array, NaN where there is no cell."""
    return values.unstack("col").reindex(index=rows, columns=cols).to_numpy(dtype=float)


def _text(values: np.ndarray, fmt: str) -> np.ndarray:
    return np.array([[fmt.format(v) for v in row] for row in values], dtype=object)


def _heat(ax, values: np.ndarray, text: np.ndarray, cmap: str, vmin: float, vmax: float, label: str) -> None:
    """An annotated heatmap; missing cells are left out of the colour scale and drawn light grey."""
    if vmin == vmax:
        vmin, vmax = vmin - 1, vmax + 1
    mesh = ax.pcolormesh(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax, edgecolors="white",
                         linewidth=1)  # fmt: skip
    ax.figure.colorbar(mesh, ax=ax, label=label).outline.set_visible(False)
    rgb = mesh.cmap(mesh.norm(values))[..., :3]
    luminance = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4) @ [0.2126, 0.7152, 0.0722]
    for i, j in zip(*np.nonzero(~np.isnan(values))):  # white on dark cells; not measured by the layout (inside)
        ax.text(j + 0.5, i + 0.5, text[i, j], ha="center", va="center", fontsize=8, in_layout=False,
                color="white" if luminance[i, j] < 0.408 else "0.15")  # fmt: skip
    ax.set_ylim(len(values), 0)  # the first row on top, as in a table
    ax.set_facecolor("0.92")
    ax.spines[:].set_visible(False)
    ax.grid(False)


def _empty(sweep: Sweep, figure: Figure) -> MplFigure:
    fig = MplFigure(figsize=(5, 2.5), layout="constrained")
    ax = fig.subplots()
    ax.set_axis_off()
    ax.text(0.5, 0.5, f"no cells: sweep '{sweep.name}' has no '{figure.metric}' rows\nof stage '{figure.stage}'",
            ha="center", va="center", color="0.35")  # fmt: skip
    fig.suptitle(figure.title or sweep.title)
    return fig
