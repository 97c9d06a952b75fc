"""The paper's numbers: sweeps/paper/facts.yaml reads as FACTS.md §2, and every sweep carries exactly those values."""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import pytest

from harness.sweep import load_sweep
from harness.sweep.facts import FACTS_FILE, FactsError, fact_index, load_facts

ROOT = Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted(p for p in (ROOT / "sweeps").glob("*.yaml") if p.name != "smoke.yaml")
COUNTS = {
    "T1": 15, "F-sample": 36, "T2": 4, "T3": 46, "ADE20k": 5, "T4": 6,
    "F2": 16, "T5": 59, "T6": 12, "F-how-long": 10, "F3": 4, "robustness": 28,
}  # fmt: skip


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "facts.yaml"
    path.write_text(textwrap.dedent(text))
    return path


BLOCK = """
tables:
  - table: T
    source: "[WS] Table 1"
    sweep: s
    stage: finetune
    metric: top1
    rows: {{key: method, labels: [a, b]}}
    cols: {{key: layer, labels: [1, 2]}}
    values: {values}
"""


# ---------------------------------------------------------------------------------------------------------------
# load_facts on small files


def test_labels_are_strings_and_nulls_are_skipped(tmp_path):
    facts = load_facts(write(tmp_path, BLOCK.format(values="[[1.0, 2], [null, 4.5]]")))
    assert [(f.keys, f.value) for f in facts] == [
        ({"method": "a", "layer": "1"}, 1.0),
        ({"method": "a", "layer": "2"}, 2.0),
        ({"method": "b", "layer": "2"}, 4.5),
    ]
    assert {(f.table, f.sweep, f.stage, f.metric, f.source) for f in facts} == {
        ("T", "s", "finetune", "top1", "[WS] Table 1")
    }


def test_metric_axis_and_fixed_keys(tmp_path):
    text = """
    tables:
      - {table: T3, source: x, sweep: coco, stage: detect, fixed: {backbone: vit_s},
         cols: {key: metric, labels: [box_ap, mask_ap]}, values: [45.3, 40.6]}
      - {table: T4, source: y, sweep: imnet, stage: external, metric: top1, fixed: {method: mocov3}, values: 81.4}
    """
    facts = load_facts(write(tmp_path, text))
    assert [(f.keys, f.metric, f.value) for f in facts] == [
        ({"backbone": "vit_s"}, "box_ap", 45.3),
        ({"backbone": "vit_s"}, "mask_ap", 40.6),
        ({"method": "mocov3"}, "top1", 81.4),
    ]


@pytest.mark.parametrize(
    "values, message",
    [
        ("[[1.0, 2.0]]", "expected 2 rows (one per `method` label), got 1"),
        ("[[1.0, 2.0], [3.0]]", "expected 2 values in row 'b' (one per `layer` label), got 1"),
        ("[[1.0, 2.0], [3.0, high]]", "'high' at (b, 2) is not a number"),
    ],
)
def test_shape_and_value_errors_name_the_file_and_block(tmp_path, values, message):
    path = write(tmp_path, BLOCK.format(values=values))
    with pytest.raises(FactsError, match=r"facts\.yaml: tables\[0\]\.values") as err:
        load_facts(path)
    assert message in str(err.value)


def test_unknown_key_is_named(tmp_path):
    path = write(tmp_path, BLOCK.format(values="[[1, 2], [3, 4]]") + "    note: hello\n")
    with pytest.raises(FactsError, match=r"facts\.yaml: tables\[0\]\.note: unknown key"):
        load_facts(path)


def test_a_key_given_twice_is_refused_not_overwritten(tmp_path):
    path = write(tmp_path, BLOCK.format(values="[[1, 2], [3, 4]]") + "    values: [[5, 6], [7, 8]]\n")
    with pytest.raises(FactsError, match=r"facts\.yaml:\d+:\d+: YAML: duplicate key 'values'"):
        load_facts(path)


def test_duplicate_facts_are_refused(tmp_path):
    text = """
    tables:
      - {table: T, source: x, sweep: s, stage: finetune, metric: top1, cols: {key: m, labels: [a, a]}, values: [1, 2]}
    """
    with pytest.raises(FactsError, match="two values for s finetune"):
        fact_index(load_facts(write(tmp_path, text)))


def test_facts_file_has_every_table_of_the_paper():
    facts = load_facts()
    assert Counter(f.table for f in facts) == COUNTS
    assert len(facts) == sum(COUNTS.values()) == 241
    assert len(fact_index(facts)) == 241


# ---------------------------------------------------------------------------------------------------------------
# The sweeps carry exactly the facts


def paper_cells():
    """(sweep file, cell index, identity, paper value) of every sweep cell with a paper value."""
    for path in SWEEP_FILES:
        sweep = load_sweep(path)
        for i, cell in enumerate(sweep.cells):
            if cell.paper is not None:
                stage = "external" if getattr(cell, "external", None) else cell.stage
                yield path.name, i, (sweep.name, stage, frozenset(cell.keys.items()), cell.metric), cell.paper


def test_every_sweep_named_by_the_facts_exists():
    names = {load_sweep(path).name for path in SWEEP_FILES}
    missing = sorted({f.sweep for f in load_facts()} - names)
    assert not missing, f"{FACTS_FILE} names sweeps with no sweeps/<name>.yaml: {missing}"


def test_every_paper_value_of_a_sweep_is_a_fact():
    index = fact_index(load_facts())
    for file, i, identity, paper in paper_cells():
        _, stage, keys, metric = identity
        where = f"sweeps/{file}: cells[{i}] ({stage}, {dict(sorted(keys))}, {metric})"
        assert identity in index, f"{where}: paper value {paper} has no fact in {FACTS_FILE.name}"
        assert paper == index[identity].value, (
            f"{where}: paper {paper} but {FACTS_FILE.name} has {index[identity].value}"
        )


def test_every_fact_is_carried_by_exactly_one_cell():
    carried = Counter(identity for _, _, identity, _ in paper_cells())
    problems = [
        f"{f.table} {f.sweep} {f.stage} {f.keys} {f.metric} = {f.value}: {carried[key]} cells"
        for key, f in fact_index(load_facts()).items()
        if carried[key] != 1
    ]
    assert not problems, "facts not carried by exactly one sweep cell:\n" + "\n".join(problems)
