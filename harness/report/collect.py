"""Run folders into one long-format DataFrame: a row per (sweep, cell, job), never parsing stdout.

    df = collect(["sweeps/smoke.yaml"])            # also what `harness report` starts from; handy in a notebook
    df[df.state == "done"].groupby(["stage", "cell"]).value.mean()

Columns: sweep, table (the sweep's title), cell_index (the cell's place in the sweep's `cells`), stage, cell (the
cell's keys as `k=v ...`), job (the job's keys), metric, value (NaN until done), paper, tolerance, seed, protocol
(finetune / linear / layer; from result.json or the config), epoch_rule (the cell's: last or best), epochs,
pretrain_epochs (the upstream's), layer (linear probe), img_size, job_id, config_hash, state (the job's
`harness.launch.state.State` as its plain string: done, pending...), gpu_hours, run_dir, and one `key.<name>` column
per job key. A corrupt or incomplete result.json (`harness.launch.state.read_result`: not JSON, not an object, a
metric that is not a number) is skipped with a warning naming the file (its row's state says "corrupt").
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pandas as pd

from harness.launch.state import JobState, State, observe, read_result
from harness.sweep import Cell, Graph, Request, compile_request
from harness.train import RESULT_FILE

__all__ = ["COLUMNS", "collect", "collect_graph"]

COLUMNS = [
    "sweep", "table", "cell_index", "stage", "cell", "job", "metric", "value", "paper", "tolerance", "seed",
    "protocol", "epoch_rule", "epochs", "pretrain_epochs", "layer", "img_size", "job_id", "config_hash", "state",
    "gpu_hours", "run_dir",
]  # fmt: skip


def collect(
    sweeps: list[str | Path],
    results: str | Path | None = None,
    profile: str | None = None,
    overrides: list[str] | None = None,
) -> pd.DataFrame:
    """The long-format results of `sweeps` (files), read from `results` (default: $HARNESS_RESULTS or ./results)."""
    req = Request([str(s) for s in sweeps], list(overrides or []), profile=profile, results=results)
    graph = compile_request(req)
    return collect_graph(graph, observe(graph, req.results_dir))


def _metric_key(cell: Cell) -> str:
    """`top1` with protocol `epoch: best` reads `best_top1`; other metrics are read as named."""
    if cell.protocol.get("epoch") == "best" and cell.metric in ("top1", "top5"):
        return f"best_{cell.metric}"
    return cell.metric


def _metric(result: dict, key: str) -> float | None:
    if key == "wall_clock_hours":  # T6's "Hours": the pre-training's wall clock
        seconds = result.get("wall_clock_s")
        return None if seconds is None else seconds / 3600
    return result.get(key)


def _read(run_dir: Path, state: JobState) -> tuple[dict | None, str]:
    path = run_dir / RESULT_FILE
    result, corrupt = read_result(path)
    if corrupt:
        warnings.warn(f"skipping {path}: corrupt result ({corrupt})", stacklevel=3)
        return None, State.CORRUPT.value
    if result is None:
        return None, state.state.value
    return result, State.DONE.value


def collect_graph(graph: Graph, states: dict[str, JobState]) -> pd.DataFrame:
    rows = []
    cache: dict[str, tuple[dict | None, str]] = {}
    for sweep in graph.sweeps:
        for index, cell in enumerate(sweep.cells):
            label = " ".join(f"{k}={v}" for k, v in cell.keys.items()) or "-"
            if cell.external is not None:
                continue  # a quoted number: the table shows the paper's value alone
            for ref, job in graph.select(sweep.name, cell.stage, cell.keys):
                if job.id not in cache:
                    st = states[job.id]  # observe() has parsed the result of a done job already
                    cache[job.id] = (st.result, State.DONE.value) if st.state is State.DONE else _read(job.run_dir, st)
                result, state = cache[job.id]
                value = math.nan
                if result is not None:
                    key = _metric_key(cell)
                    raw = _metric(result, key)
                    if raw is None:
                        warnings.warn(f"{job.run_dir / RESULT_FILE}: no '{key}'", stacklevel=2)
                    elif isinstance(raw, bool) or not isinstance(raw, (int, float)):
                        warnings.warn(f"{job.run_dir / RESULT_FILE}: '{key}' is not a number", stacklevel=2)
                    else:
                        value = float(raw)
                cfg = job.container  # plain dicts: building DictConfigs would dominate a 10,000-job report
                upstream = graph.jobs[job.upstream].container if job.upstream else None
                layer = cfg["linear"]["layer"] if cfg["task"] == "linear" else None
                protocol = (result or {}).get("protocol") or ("layer" if layer else cfg["task"])
                row = {
                    "sweep": sweep.name,
                    "table": sweep.title,
                    "cell_index": index,
                    "stage": cell.stage,
                    "cell": label,
                    "job": ref.label,
                    "metric": cell.metric,
                    "value": value,
                    "paper": math.nan if cell.paper is None else cell.paper,
                    "tolerance": math.nan if cell.tolerance is None else cell.tolerance,
                    "seed": int(cfg["seed"]),
                    "protocol": protocol,
                    "epoch_rule": cell.protocol.get("epoch", "last"),
                    "epochs": float(cfg["optim"]["epochs"]),
                    "pretrain_epochs": float(upstream["optim"]["epochs"]) if upstream is not None else math.nan,
                    "layer": math.nan if layer is None else int(layer),
                    "img_size": int(cfg["data"]["img_size"]),
                    "job_id": states[job.id].job_id,
                    "config_hash": job.id,
                    "state": state,
                    "gpu_hours": (result or {}).get("gpu_hours", math.nan),
                    "run_dir": str(job.run_dir),
                }
                row.update({f"key.{k}": v for k, v in ref.keys.items()})
                rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS)
    return frame[COLUMNS + sorted(c for c in frame.columns if c.startswith("key."))]
