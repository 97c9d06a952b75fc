"""The baselines a profile runs beside a sweep's jobs (`baselines:` in harness/conf/profile/micro.yaml): one table
per sweep, the numbers a reader knows on each data set the sweep fine-tunes or probes on.

    frame = baseline_summary(graph, states, "t1_sample_efficiency")   # a row per (baseline, task, metric, data...)
    markdown(baseline_grid(frame))                                     # rows: baselines; columns: data sets

Rows: the random initialisation fine-tuned or probed with the sweep's own recipe (and its 20-NN), and the raw pixels'
converged logistic regression and 20-NN. Each value is the mean ± std over its seeds and their number n, as in the
sweep's table.
"""

from __future__ import annotations

import math

import pandas as pd

from harness.launch.state import JobState, State
from harness.report.table import spread
from harness.sweep import Graph
from harness.sweep.graph import BASELINE_STAGE

__all__ = ["baseline_grid", "baseline_summary"]

ROWS = {  # (baseline, task, metric) -> the row's name, in this order
    ("random", "finetune", "top1"): "random init, fine-tuned",
    ("random", "linear", "top1"): "random init, linear probe",
    ("random", "linear", "knn_top1"): "random init, 20-NN",
    ("pixels", "linear", "top1"): "raw pixels, linear probe",
    ("pixels", "linear", "knn_top1"): "raw pixels, 20-NN",
}
_FIXED = ("baseline", "task", "seed")  # the other keys (data, the sweep's own axes) name a column


def baseline_summary(graph: Graph, states: dict[str, JobState], sweep: str) -> pd.DataFrame:
    """Mean, std and n over seeds of each baseline of `sweep`, per (row, column); empty without baselines."""
    values: dict[tuple[str, str], list[float]] = {}
    for ref, job in graph.refs(sweep):
        if ref.stage != BASELINE_STAGE:
            continue
        column = " ".join(str(v) for k, v in ref.keys.items() if k not in _FIXED)
        st = states[job.id]
        for metric in ("top1", "knn_top1"):
            row = ROWS.get((ref.keys["baseline"], ref.keys["task"], metric))
            if row is None:
                continue
            bucket = values.setdefault((row, column), [])
            value = (st.result or {}).get(metric) if st.state is State.DONE else None
            if value is not None:
                bucket.append(float(value))
    out = []
    for (row, column), found in values.items():
        series = pd.Series(found, dtype=float)
        out.append({"row": row, "column": column, "n": len(found), "mean": series.mean() if found else math.nan,
                    "std": series.std() if len(found) > 1 else math.nan})  # fmt: skip
    return pd.DataFrame(out, columns=["row", "column", "n", "mean", "std"])


def baseline_grid(summary: pd.DataFrame) -> pd.DataFrame:
    """Display strings: a row per baseline (in `ROWS` order), a column per data set (and axis values)."""
    order = [name for name in ROWS.values() if name in set(summary["row"])]
    columns = list(dict.fromkeys(summary["column"]))
    table = {name: dict.fromkeys(columns, "") for name in order}
    for r in summary.itertuples():
        table[r.row][r.column] = spread(r.mean, r.std, r.n) if r.n else "not done"
    frame = pd.DataFrame.from_dict(table, orient="index").reindex(columns=columns)
    frame.index.name = "baseline"
    return frame
