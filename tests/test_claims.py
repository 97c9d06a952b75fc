"""The verdict of a claim on numbers with a spread (margins against Z standard errors, Kleene logic, one seed), and
Kendall's tau between our cells and the paper's."""

from __future__ import annotations

import ast
import itertools
import math
import random

import numpy as np
import pandas as pd
import pytest

from harness.report.claims import FAILS, HOLDS, NOT_ENOUGH, NOT_SHOWN, UNKNOWN_SPREAD, Z, evaluate, judge
from harness.report.rank import kendall_tau, rank_agreement


def se(std: float, n: int) -> float:
    return std / math.sqrt(n)


def test_a_margin_must_clear_two_standard_errors():
    spread = {"a": se(5, 3), "b": se(5, 3)}  # margin 2, std 5 over 3 seeds each: SE of the margin 4.08
    assert evaluate("a > b", {"a": 72.0, "b": 70.0}, spread) == NOT_SHOWN
    assert evaluate("a > b", {"a": 75.0, "b": 70.0}, {"a": se(0.5, 3), "b": se(0.5, 3)}) == HOLDS
    assert evaluate("a > b", {"a": 60.0, "b": 70.0}, {"a": se(0.5, 3), "b": se(0.5, 3)}) == FAILS
    assert evaluate("a < b", {"a": 60.0, "b": 70.0}, {"a": se(0.5, 3), "b": se(0.5, 3)}) == HOLDS
    assert evaluate("a > b", {"a": 72.0, "b": 70.0}) == HOLDS  # exact numbers (the paper's): the plain comparison
    assert evaluate("a > b", {"a": math.nan, "b": 70.0}, spread) == NOT_ENOUGH
    (line,) = judge("a > b", {"a": 72.0, "b": 70.0}, spread).margins
    assert line == f"a > b: margin +2.00 ± 4.08 (+0.5 SE; {Z:g} needed): not shown"


def test_standard_errors_propagate_through_the_arithmetic():
    values = {"a": 80.0, "b": 70.0, "c": 75.0, "d": 60.0}  # a - b < c - d: margin (c - d) - (a - b) = 5
    for ratio, verdict in ((2.1, HOLDS), (1.9, NOT_SHOWN)):
        s = 5 / ratio / math.sqrt(4)  # four equal errors: the margin's SE is 2 s
        judgement = judge("a - b < c - d", values, dict.fromkeys(values, s))
        assert judgement.verdict == verdict
        assert f"margin +5.00 ± {5 / ratio:.2f} (+{ratio:.1f} SE" in judgement.margins[0]
    # a constant scales, a cell named twice counts once (2a - a is a), a quotient by the delta method
    assert evaluate("0.5 * (a - b) > 4", {"a": 80.0, "b": 70.0}, {"a": 0.8, "b": 0.8}) == NOT_SHOWN  # SE 0.57
    assert evaluate("0.5 * (a - b) > 4", {"a": 80.0, "b": 70.0}, {"a": 0.6, "b": 0.6}) == HOLDS  # SE 0.42
    assert (
        judge("2 * a - a > b", {"a": 75.0, "b": 70.0}, {"a": 1.0, "b": 0.0})
        .margins[0]
        .startswith("2 * a - a > b: margin +5.00 ± 1.00")
    )
    a, b, sa, sb = 90.0, 80.0, 1.0, 2.0
    expected = math.hypot(sa / b, a * sb / b**2)
    (line,) = judge("a / b > 1", {"a": a, "b": b}, {"a": sa, "b": sb}).margins
    assert f"± {expected:.2f}" in line


def test_the_most_idiom_counts_an_undecided_comparison_as_zero_to_one():
    """(a > b) + (c > d) + (e > f) >= 2: decided only if it is decided whichever way c > d goes."""
    text = "(a > b) + (c > d) + (e > f) >= 2"
    spread = {"a": 0.1, "b": 0.1, "c": 5.0, "d": 5.0, "e": 0.1, "f": 0.1}  # c > d by 1: not shown
    base = {"a": 72.0, "b": 70.0, "c": 71.0, "d": 70.0}
    assert evaluate(text, base | {"e": 72.0, "f": 70.0}, spread) == HOLDS  # 2 or 3
    assert evaluate(text, base | {"e": 68.0, "f": 70.0}, spread) == NOT_SHOWN  # 1 or 2
    assert evaluate(text, base | {"a": 68.0, "e": 68.0, "f": 70.0}, spread) == FAILS  # 0 or 1
    margins = judge(text, base | {"e": 68.0, "f": 70.0}, spread).margins
    assert len(margins) == 4 and margins[-1] == f"{text}: margin -1.00 to +0.00: not shown"
    seven = " + ".join(f"(a{i} > b{i})" for i in range(7)) + " >= 4"  # a long count prints its first and last terms
    values = {f"{x}{i}": 1.0 + (x == "a") for i in range(7) for x in "ab"}
    assert judge(seven, values).margins[-1] == "(a0 > b0) + … + (a6 > b6) >= 4: margin +3.00: holds"


def test_one_seed_is_at_best_holds_with_the_spread_unknown():
    values = {"a": 90.0, "b": 70.0}
    judgement = judge("a > b", values, {"a": None, "b": 0.5})  # a has one seed: its spread is unknown
    assert judgement.verdict == HOLDS + UNKNOWN_SPREAD == "holds (spread unknown: 1 seed)"
    assert judgement.margins == (
        "a > b: margin +20.00 ± 0.50 (+40.0 SE; 2 needed), spread unknown for a (1 seed): "
        "holds (spread unknown: 1 seed)",
    )
    assert evaluate("a < b", values, {"a": None, "b": None}) == FAILS + UNKNOWN_SPREAD
    assert evaluate("a > b", {"a": 71.0, "b": 70.0}, {"a": None, "b": 1.0}) == NOT_SHOWN  # the known spread counts
    # shown by the cells whose spread is known, whatever the 1-seed comparison does: plain fails
    four = {"a": 90.0, "b": 70.0, "c": 60.0, "d": 70.0}
    assert evaluate("a > b and c > d", four, {"a": None, "b": 0.5, "c": 0.5, "d": 0.5}) == FAILS
    assert evaluate("a > b and d > c", four, {"a": None, "b": 0.5, "c": 0.5, "d": 0.5}) == HOLDS + UNKNOWN_SPREAD
    assert evaluate("a > b or c > d", four, {"a": None, "b": 0.5, "c": 0.5, "d": 0.5}) == HOLDS + UNKNOWN_SPREAD


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a > b and c > d", NOT_SHOWN),  # true and unknown
        ("a > b and a > d", HOLDS),
        ("b > a and c > d", FAILS),  # false and unknown
        ("a > b or c > d", HOLDS),  # true or unknown
        ("b > a or c > d", NOT_SHOWN),  # false or unknown
        ("b > a or d > a", FAILS),
        ("not c > d", NOT_SHOWN),
        ("not a > b", FAILS),
        ("not (b > a or c > d)", NOT_SHOWN),
        ("-1 <= c - d <= 3", HOLDS),  # a chain is an `and`: -1 <= 1 by 2 SE of 0.7, 1 <= 3 likewise
        ("-1 <= c - d <= 2", NOT_SHOWN),
    ],
)
def test_and_or_not_are_kleene_logic(text, expected):
    """a > b holds (margin 10, SE 0.1), c > d is not shown (margin 1, SE 0.71)."""
    values = {"a": 80.0, "b": 70.0, "c": 71.0, "d": 70.0}
    assert evaluate(text, values, {"a": 0.1, "b": 0.0, "c": 0.5, "d": 0.5}) == expected


def test_exact_numbers_are_judged_as_python_compares_them():
    """The paper's numbers (no spread): holds / fails exactly as the plain expression, ties and chains included."""
    texts = [
        "a - b < c - d", "a >= b", "a > b", "a <= b <= c", "0.5 * (a - b) > c - d or not a == b",
        "(a >= b) + (c >= d) + (a > c) >= 2", "a / b < 1.1 and a != c", "-0.5 <= a - b <= 0.5",
    ]  # fmt: skip
    rng = random.Random(0)
    for text, _ in itertools.product(texts, range(40)):
        values = {n: rng.choice([70.0, 70.1, 74.8, 75.4, 78.4]) for n in "abcd"}
        expected = HOLDS if eval(compile(ast.parse(text, mode="eval"), "", "eval"), {}, dict(values)) else FAILS
        assert evaluate(text, values) == expected, (text, values)


# ---------------------------------------------------------------------------------------------------------------
# Kendall's tau-b


def brute_tau_b(x, y) -> float:
    """tau-b as the correlation of the pairwise sign matrices (an independent formulation)."""
    sx = np.sign(np.subtract.outer(x, x))
    sy = np.sign(np.subtract.outer(y, y))
    return float((sx * sy).sum() / math.sqrt((sx**2).sum() * (sy**2).sum()))


def test_tau_known_values():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]).tau == 1.0
    assert kendall_tau([1, 2, 3, 4], [40, 30, 20, 10]).tau == -1.0
    ties = kendall_tau([1, 2, 2, 3], [1, 2, 3, 4])  # 6 pairs, 1 tied in ours: 5 / sqrt(5 * 6)
    assert ties.tau == pytest.approx(5 / math.sqrt(30)) and (ties.concordant, ties.discordant) == (5, 0)
    assert (ties.pairs, ties.tied_ours, ties.tied_paper) == (6, 1, 0)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]).tau)  # ours ties every pair
    assert kendall_tau([1.0], [2.0]).pairs == 0
    assert str(kendall_tau([1, 2, 2, 3], [1, 2, 3, 4])) == (
        "rank agreement with the paper: Kendall τ_b +0.91 over 4 cells (6 pairs: 5 concordant, 0 discordant, 1 tied)"
    )


def test_tau_matches_a_brute_force_computation_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(3, 12))
        x, y = rng.integers(0, 4, n).astype(float), rng.integers(0, 4, n).astype(float)
        if len(set(x)) == 1 or len(set(y)) == 1:
            continue
        assert kendall_tau(list(x), list(y)).tau == pytest.approx(brute_tau_b(x, y))
    stats = pytest.importorskip("scipy.stats")  # scipy is no dependency of the reports; here only a reference
    x, y = rng.normal(size=20).round(1), rng.normal(size=20).round(1)
    assert kendall_tau(list(x), list(y)).tau == pytest.approx(stats.kendalltau(x, y, variant="b").statistic)


def test_rank_agreement_pairs_cells_of_the_same_stage_and_metric_only():
    summary = pd.DataFrame({
        "stage": ["finetune"] * 3 + ["linear"] * 3,
        "metric": ["top1"] * 6,
        "mean": [50.0, 60.0, 70.0, 30.0, 20.0, math.nan],  # the last has no result of ours: left out
        "paper": [75.0, 80.0, 85.0, 60.0, 70.0, 65.0],
    })  # fmt: skip
    agreement = rank_agreement(summary)
    assert (agreement.cells, agreement.pairs, agreement.concordant, agreement.discordant) == (5, 4, 3, 1)
    assert agreement.tau == pytest.approx(0.5)
