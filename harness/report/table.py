"""A sweep's cells as a Markdown table: rows and columns from its `layout`, each cell "ours (paper)"."""

from __future__ import annotations

import statistics

from harness.launch.state import JobState
from harness.sweep import Cell, Graph, Sweep

__all__ = ["cell_values", "markdown_table"]


def cell_values(sweep: Sweep, graph: Graph, states: dict[str, JobState]) -> list[tuple[Cell, list[float], str]]:
    """Per cell: our values (one per finished job of the cell, e.g. per seed) and the cell's jobs' states."""
    out = []
    for cell in sweep.cells:
        jobs = [
            job
            for ref, job in graph.refs(sweep.name)
            if ref.stage == cell.stage and all(ref.keys.get(k) == v for k, v in cell.keys.items())
        ]
        values = [
            float(states[j.id].result[cell.metric])
            for j in jobs
            if states[j.id].state == "done" and states[j.id].result.get(cell.metric) is not None
        ]
        pending = sorted({states[j.id].state for j in jobs if states[j.id].state != "done"})
        out.append((cell, values, ", ".join(pending)))
    return out


def _format(values: list[float], paper: float | None, pending: str) -> str:
    if not values:
        text = pending or "no result"
    elif len(values) == 1:
        text = f"{values[0]:.1f}"
    else:
        text = f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"
    return f"{text} ({paper:.1f})" if paper is not None else text


def markdown_table(sweep: Sweep, graph: Graph, states: dict[str, JobState]) -> str:
    """Rows are the values of `layout.rows` keys, columns of `layout.cols` keys (`stage` may be one of them)."""
    rows_by = sweep.layout.get("rows", ())
    cols_by = sweep.layout.get("cols", ("stage",))
    table: dict[tuple, dict[tuple, str]] = {}
    columns: list[tuple] = []
    for cell, values, pending in cell_values(sweep, graph, states):
        keys = {**cell.keys, "stage": cell.stage, "metric": cell.metric}
        row = tuple(keys.get(k, "") for k in rows_by)
        col = tuple(keys.get(k, "") for k in cols_by)
        if col not in columns:
            columns.append(col)
        table.setdefault(row, {})[col] = _format(values, cell.paper, pending)
    head = [" / ".join(rows_by) or "cell", *[" ".join(c) for c in columns]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, cells in table.items():
        lines.append("| " + " | ".join([" ".join(row), *[cells.get(c, "") for c in columns]]) + " |")
    return "\n".join(lines)
