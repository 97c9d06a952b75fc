"""A sweep's cells, ours beside the paper's: one summary row per cell, then the paper's layout.

    summary = summarize(sweep, df)          # a row per cell: mean, std, n, paper, delta, verdict, state, lint
    grid = layout(sweep, summary)           # display strings, rows x columns as in the paper
    markdown(grid), latex(grid, caption)    # and summary.to_csv(...)

A cell reads "ours (paper)": the mean ± std over its finished seeds and their number n (`70.0 ± 1.4 n=2`; one seed:
`76.0 n=1`), then the paper's value, the difference and a mark: `=` within tolerance, `+` above, `-` below. A cell
without a result shows its jobs' state. A cell whose jobs ran with another protocol than the paper's (epochs,
pre-training epochs, image size, probed layer, fine-tune vs linear) is flagged `!` and not compared (protocol lint).

With `compare=False` (a report of a `--profile` run: smoke or micro stand-ins, whose numbers are not the paper's in
absolute value) there is no difference and no mark: the paper's value is shown for reference, labelled
(`49.3 ± 1.2 n=3 (paper 74.8)`); such a table is read through its claims and its rank agreement (`harness.report.rank`).
"""

from __future__ import annotations

import math

import pandas as pd

from harness.sweep import Cell, Sweep

__all__ = ["DEFAULT_TOLERANCE", "MARKS", "latex", "layout", "legend", "lint", "markdown", "spread", "summarize"]

DEFAULT_TOLERANCE = 1.0  # points of top-1, when a cell gives none
# LaTeX's ten special characters as text, in one pass (so `\` -> `\textbackslash{}` keeps its braces), ± and − in
# math mode, and a line break as a space (a blank line inside \caption is an error).
TEX = str.maketrans({
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "−": r"$-$", "\n": " ", "\r": " ",
})  # fmt: skip
MARKS = {"within": "=", "above": "+", "below": "-", "protocol differs": "!"}


def lint(cell: Cell, rows: pd.DataFrame) -> list[str]:
    """How the cell's jobs differ from the protocol the paper's number was produced with."""
    problems = []
    p = cell.protocol
    checks = [("task", "protocol"), ("epochs", "epochs"), ("pretrain_epochs", "pretrain_epochs"),
              ("img_size", "img_size"), ("layer", "layer")]  # fmt: skip
    for key, column in checks:
        if p.get(key) is None:
            continue
        seen = sorted({str(v) if isinstance(v, str) else f"{float(v):g}" for v in rows[column] if v == v})
        want = str(p[key]) if isinstance(p[key], str) else f"{float(p[key]):g}"
        if seen and seen != [want]:
            problems.append(f"{key} {'/'.join(seen)} (paper: {want})")
    return problems


def summarize(sweep: Sweep, df: pd.DataFrame, compare: bool = True) -> pd.DataFrame:
    """One row per cell of `sweep`, from the long-format DataFrame of `collect`; `compare=False`: no delta and no
    verdict against the paper (a profile's stand-in numbers), only the protocol lint."""
    mine = df[df.sweep == sweep.name] if len(df) else df
    out = []
    for index, cell in enumerate(sweep.cells):
        rows = mine[mine.cell_index == index] if len(mine) else mine
        done = rows[rows.value.notna()] if len(rows) else rows
        values = done.value.astype(float) if len(done) else pd.Series(dtype=float)
        mean = float(values.mean()) if len(values) else math.nan
        std = float(values.std()) if len(values) > 1 else math.nan
        tolerance = cell.tolerance if cell.tolerance is not None else DEFAULT_TOLERANCE
        problems = lint(cell, done) if len(done) else []
        delta = mean - cell.paper if compare and cell.paper is not None and len(values) else math.nan
        if problems and len(values) and cell.paper is not None:
            verdict = "protocol differs"
        elif math.isnan(delta):
            verdict = ""
        else:
            verdict = "within" if abs(delta) <= tolerance else "above" if delta > 0 else "below"
        states = rows.state.value_counts().to_dict() if len(rows) else {}
        out.append({
            "cell_index": index,
            "stage": cell.stage or "external",
            "metric": cell.metric,
            **{f"key.{k}": v for k, v in cell.keys.items()},
            "n": len(values),
            "jobs": len(rows),
            "mean": mean,
            "std": std,
            "paper": math.nan if cell.paper is None else cell.paper,
            "tolerance": tolerance,
            "delta": delta,
            "verdict": verdict,
            "state": "quoted" if cell.external else ", ".join(f"{n} {s}" for s, n in states.items()),
            "lint": "; ".join(problems),
        })  # fmt: skip
    return pd.DataFrame(out)


def legend(profile: str | None = None) -> str:
    """What a cell of `layout` says, for the line under a table (`profile`: the report of a `--profile` run)."""
    ours = "ours: mean ± std over n seeds"
    if profile is None:
        return f"{ours}; (paper, ours − paper, mark): = within tolerance, + above, - below, ! another protocol"
    return (f"profile {profile}: {ours}, stand-in numbers not comparable to the paper's in absolute value; "
            "(paper x): the paper's value, for reference only; compare the claims and the rank agreement")  # fmt: skip


def spread(mean: float, std: float, n: int) -> str:
    """A value over n >= 1 seeds as every table prints it: `70.0 ± 1.4 n=2`, or `76.0 n=1`."""
    return f"{mean:.1f} n=1" if n == 1 else f"{mean:.1f} ± {std:.1f} n={n}"


def _display(row: pd.Series, compare: bool = True) -> str:
    paper = row["paper"]
    if row["state"] == "quoted":  # an external cell: the paper quotes another paper's number
        return f"quoted ({paper:.1f})" if paper == paper else "quoted"
    if row["n"] == 0:
        pending = [s.split(" ", 1)[1] for s in row["state"].split(", ") if s and not s.endswith(" done")]
        ours = " / ".join(pending) or "no job"
    else:
        ours = spread(row["mean"], row["std"], row["n"])
    if paper != paper:  # no paper value
        return ours
    if not compare:
        lint = ", !" if row["verdict"] == "protocol differs" else ""
        return f"{ours} (paper {paper:.1f}{lint})"
    if row["n"] == 0:
        return f"{ours} ({paper:.1f})"
    mark = MARKS.get(row["verdict"], "")
    return f"{ours} ({paper:.1f}, {row['delta']:+.1f} {mark})"


def layout(sweep: Sweep, summary: pd.DataFrame, compare: bool = True) -> pd.DataFrame:
    """Display strings in the paper's layout: `layout.rows` keys down, `layout.cols` keys across (default: stage);
    `compare` as in `summarize`."""
    rows_by = list(sweep.layout.get("rows", ())) or [k[4:] for k in summary.columns if k.startswith("key.")][:1]
    cols_by = list(sweep.layout.get("cols", ())) or ["stage"]
    table: dict[str, dict[str, str]] = {}
    columns: list[str] = []
    for _, row in summary.iterrows():
        keys = {k[4:]: v for k, v in row.items() if k.startswith("key.") and v == v}
        keys |= {"stage": row["stage"], "metric": row["metric"]}
        name = " ".join(str(keys.get(k, "")) for k in rows_by).strip() or "-"
        col = " ".join(str(keys.get(k, "")) for k in cols_by).strip() or row["metric"]
        if col not in columns:
            columns.append(col)
        table.setdefault(name, {})[col] = _display(row, compare)
    frame = pd.DataFrame.from_dict(table, orient="index").reindex(columns=columns).fillna("")
    frame.index.name = " / ".join(rows_by)
    return frame


def markdown(grid: pd.DataFrame) -> str:
    """A pipe table; a `|` in a value is escaped and a line break becomes a space, so each row stays one row."""

    def md(text) -> str:
        return " ".join(str(text).replace("|", "\\|").splitlines())

    head = [grid.index.name or "", *grid.columns]
    lines = ["| " + " | ".join(map(md, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(md, [name, *row])) + " |" for name, row in zip(grid.index, grid.values.tolist())]
    return "\n".join(lines)


def latex(grid: pd.DataFrame, caption: str) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); every text escaped (`TEX`), ± and − in math mode."""

    def tex(text) -> str:
        return str(text).translate(TEX)

    spec = "l" + "c" * len(grid.columns)
    lines = [
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{tex(caption)}}}",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join([tex(grid.index.name or ""), *map(tex, grid.columns)]) + " \\\\",
        "\\midrule",
    ]
    lines += [" & ".join([tex(name), *map(tex, row)]) + " \\\\" for name, row in zip(grid.index, grid.values.tolist())]
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines)
