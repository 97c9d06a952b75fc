"""The paper's numbers (FACTS.md §2) as data: `sweeps/paper/facts.yaml`, one `Fact` per published value.

    facts = load_facts()            # FactsError names the file, the block and the key
    index = fact_index(facts)       # (sweep, stage, frozenset(keys.items()), metric) -> Fact

A block of the file is one table (or part of one): `fixed` keys shared by its values, optional `rows` and `cols`
(`{key, labels}`), and `values` as rows x cols (null: no value). A `cols` or `rows` key `metric` gives each value's
metric instead of a key. tests/test_paper_facts.py checks every sweep's `paper` values against these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.sweep.spec import SweepError, read_yaml

__all__ = ["FACTS_FILE", "Fact", "FactsError", "fact_index", "load_facts"]

FACTS_FILE = Path(__file__).resolve().parents[2] / "sweeps" / "paper" / "facts.yaml"
BLOCK_KEYS = ("table", "source", "sweep", "stage", "metric", "fixed", "rows", "cols", "values")
REQUIRED_KEYS = ("table", "source", "sweep", "stage", "values")
AXIS_KEYS = ("key", "labels")


class FactsError(ValueError):
    """A facts file that does not read as the paper's tables: the message names the file, the block and the key."""


@dataclass(frozen=True)
class Fact:
    """One published number: the sweep and cell (stage, keys, metric) that carry it, and where it was read."""

    table: str
    sweep: str
    stage: str
    keys: dict[str, str]
    metric: str
    value: float
    source: str


def load_facts(path: str | Path = FACTS_FILE) -> list[Fact]:
    """Every value of the facts file, in file order, nulls skipped; FactsError on anything malformed."""
    path = Path(path)
    try:
        data = read_yaml(path)  # a duplicate key is an error, not the last value silently
    except SweepError as err:
        raise FactsError(str(err)) from err
    if not isinstance(data, dict) or set(data) != {"tables"} or not isinstance(data["tables"], list):
        raise FactsError(f"{path}: expected one top-level key `tables`, a list of blocks")
    facts = []
    for i, block in enumerate(data["tables"]):
        facts += _block_facts(block, f"{path}: tables[{i}]")
    return facts


def fact_index(facts: list[Fact]) -> dict[tuple[str, str, frozenset, str], Fact]:
    """Facts by (sweep, stage, frozenset(keys.items()), metric): a sweep cell's identity. Raises on duplicates."""
    index: dict[tuple[str, str, frozenset, str], Fact] = {}
    for fact in facts:
        key = (fact.sweep, fact.stage, frozenset(fact.keys.items()), fact.metric)
        if key in index:
            raise FactsError(
                f"two values for {fact.sweep} {fact.stage} {fact.keys} {fact.metric}: "
                f"{index[key].value} ({index[key].table}) and {fact.value} ({fact.table})"
            )
        index[key] = fact
    return index


def _block_facts(block: Any, where: str) -> list[Fact]:
    if not isinstance(block, dict):
        raise FactsError(f"{where}: expected a mapping, got {block!r}")
    for key in block:
        if key not in BLOCK_KEYS:
            raise FactsError(f"{where}.{key}: unknown key; valid keys: {', '.join(BLOCK_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in block:
            raise FactsError(f"{where}.{key}: missing")
    fixed = block.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise FactsError(f"{where}.fixed: expected a mapping of key: label, got {fixed!r}")
    rows, cols = _axis(block.get("rows"), f"{where}.rows"), _axis(block.get("cols"), f"{where}.cols")
    metric_axis = any(axis and axis[0] == "metric" for axis in (rows, cols))
    if ("metric" in block) == metric_axis:
        raise FactsError(f"{where}.metric: give either `metric` or an axis with key `metric`, exactly one")

    facts = []
    for (row_label, col_label), value in _cells(block["values"], rows, cols, f"{where}.values"):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FactsError(f"{where}.values: {value!r} at ({row_label}, {col_label}) is not a number")
        keys = {str(k): str(v) for k, v in fixed.items()}
        metric = block.get("metric")
        for axis, label in ((rows, row_label), (cols, col_label)):
            if axis and axis[0] == "metric":
                metric = label
            elif axis:
                keys[axis[0]] = label
        facts.append(
            Fact(
                table=str(block["table"]),
                sweep=str(block["sweep"]),
                stage=str(block["stage"]),
                keys=keys,
                metric=str(metric),
                value=float(value),
                source=str(block["source"]),
            )
        )
    return facts


def _axis(spec: Any, where: str) -> tuple[str, list[str]] | None:
    """`{key, labels}` -> (key, labels as strings), or None when the block has no such axis."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or set(spec) != set(AXIS_KEYS) or not isinstance(spec["labels"], list):
        raise FactsError(f"{where}: expected {{key: <name>, labels: [<label>, ...]}}, got {spec!r}")
    return str(spec["key"]), [str(label) for label in spec["labels"]]


def _cells(values: Any, rows, cols, where: str) -> list[tuple[tuple[str | None, str | None], Any]]:
    """Pair each value with its (row label, col label), checking that `values` has the shape rows x cols."""

    def sized(items: Any, axis: tuple[str, list[str]], what: str) -> list:
        if not isinstance(items, list) or len(items) != len(axis[1]):
            got = f"{len(items)}" if isinstance(items, list) else repr(items)
            raise FactsError(f"{where}: expected {len(axis[1])} {what} (one per `{axis[0]}` label), got {got}")
        return items

    if rows and cols:
        grid = [sized(row, cols, f"values in row {r!r}") for row, r in zip(sized(values, rows, "rows"), rows[1])]
    elif rows or cols:
        grid = sized(values, rows or cols, "values")
        grid = [[value] for value in grid] if rows else [grid]
    else:
        grid = [[values]]
    row_labels = rows[1] if rows else [None]
    col_labels = cols[1] if cols else [None]
    return [((r, c), value) for r, row in zip(row_labels, grid) for c, value in zip(col_labels, row)]
