"""The paper's claims as checks over table values, judged on the paper's numbers and on ours.

A claim lives in its sweep file, next to the cells it speaks of:

    claims:
      - text: SplitMask loses less than DINO when ImageNet shrinks from full to 1%
        cells: {sm_full: {method: splitmask, pretrain_data: in_full}, sm_1: {method: splitmask, pretrain_data: in_1},
                dino_full: {method: dino, pretrain_data: in_full}, dino_1: {method: dino, pretrain_data: in_1}}
        check: sm_full - sm_1 < dino_full - dino_1

    evaluate(check, {"sm_full": 75.4, ...})                       # exact numbers (the paper's): holds / fails
    judge(check, means, se={"sm_full": 0.4, "sm_1": None, ...})   # ours: the verdict and each comparison's margin

`check`'s grammar (numbers, the names of `cells`, + - * /, comparisons, and / or / not) is checked when the sweep is
read (`harness.sweep.expression`); here it is evaluated without `eval`.

The rule on our numbers (sweeps/README.md, "Verdicts on our numbers"). A cell is its mean over seeds with standard
error se = std / sqrt(n); the paper's numbers are exact (se 0), and with n = 1 the spread is unknown. Arithmetic
carries the first-order derivative of each value in every cell, so standard errors propagate (a sum or difference
adds variances, a constant scales, a product or quotient by the delta method) and a cell named twice is counted
once. A comparison `L op R` has a margin, signed so that positive is the claimed side (L - R for > and >=, R - L
for < and <=) and its standard error SE: it holds when the margin is above Z = 2 SE, fails when it is below -Z SE,
and is not shown in between (with SE 0: the plain comparison). `and`, `or` and `not` are Kleene's three-valued
logic; a comparison used as a number counts 1 (holds), 0 (fails) or the interval [0, 1] (not shown), and a
comparison of intervals is decided only if it is decided over the whole interval. `==` holds only on exact equal
numbers and fails when the difference is beyond Z SE.

A cell with one seed is judged twice: with infinite spread (every comparison it enters is not shown) and with none.
If the first decides, that is the verdict; if only the second does, the verdict says so: "holds (spread unknown:
1 seed)", never plain "holds". A cell without any result makes the claim "not enough results".
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping
from dataclasses import dataclass

from harness.sweep.expression import check_expression

__all__ = ["FAILS", "HOLDS", "NOT_ENOUGH", "NOT_SHOWN", "UNKNOWN_SPREAD", "Judgement", "Z", "evaluate", "judge"]

Z = 2.0  # standard errors a margin must clear
HOLDS, FAILS, NOT_SHOWN, NOT_ENOUGH = "holds", "fails", "not shown", "not enough results"
UNKNOWN_SPREAD = " (spread unknown: 1 seed)"  # appended to holds / fails decided only by ignoring a 1-seed spread

Truth = bool | None  # Kleene: True holds, False fails, None not shown


@dataclass(frozen=True)
class Judgement:
    """A claim's verdict, and one line per comparison: its margin, standard error and verdict."""

    verdict: str
    margins: tuple[str, ...] = ()


def evaluate(text: str, values: Mapping[str, float | None], se: Mapping[str, float | None] | None = None) -> str:
    """The verdict of the expression on `values` (None or NaN: that cell has no result); `se` as in `judge`."""
    return judge(text, values, se).verdict


def judge(text: str, values: Mapping[str, float | None], se: Mapping[str, float | None] | None = None) -> Judgement:
    """The verdict on `values` whose standard errors are `se` (default: all exact; None in it: one seed)."""
    tree = check_expression(text, set(values))
    if any(v is None or v != v for v in values.values()):
        return Judgement(NOT_ENOUGH)
    se = {name: 0.0 for name in values} | dict(se or {})
    unknown = {name for name, s in se.items() if s is None or s != s}
    strict = _Pass(values, {n: math.inf if n in unknown else float(s) for n, s in se.items()})
    loose = _Pass(values, {n: 0.0 if n in unknown else float(s) for n, s in se.items()})
    verdict = _word(strict.truth(tree.body), loose.truth(tree.body))
    lines = tuple(
        _line(a, b, sorted(unknown & b.cells)) for a, b in zip(strict.comparisons, loose.comparisons, strict=True)
    )
    return Judgement(verdict, lines)


def _word(strict: Truth, loose: Truth) -> str:
    if strict is not None:
        return HOLDS if strict else FAILS
    if loose is not None:
        return (HOLDS if loose else FAILS) + UNKNOWN_SPREAD
    return NOT_SHOWN


@dataclass(frozen=True)
class _Value:
    """A number: the interval [lo, hi] (a point unless a comparison not shown was counted) and its derivative in
    each cell (first-order propagation of the cells' standard errors)."""

    lo: float
    hi: float
    grad: Mapping[str, float]

    @property
    def mid(self) -> float:
        return (self.lo + self.hi) / 2


@dataclass(frozen=True)
class _Comparison:
    text: str
    lo: float  # the margin, positive on the claimed side (an interval when a verdict was counted)
    hi: float
    se: float
    truth: Truth
    cells: frozenset[str]  # the cells the margin depends on


def _combine(a: Mapping[str, float], b: Mapping[str, float], ka: float, kb: float) -> dict[str, float]:
    """ka * a + kb * b, derivative by derivative."""
    return {n: ka * a.get(n, 0.0) + kb * b.get(n, 0.0) for n in {*a, *b}}


class _Pass:
    """One evaluation of a check, given each cell's standard error; records every comparison on the way."""

    def __init__(self, values: Mapping[str, float], se: Mapping[str, float]) -> None:
        self.values, self.se = values, se
        self.comparisons: list[_Comparison] = []

    def number(self, node: ast.AST) -> _Value:
        if isinstance(node, ast.Constant):
            return _Value(float(node.value), float(node.value), {})
        if isinstance(node, ast.Name):
            value = float(self.values[node.id])
            return _Value(value, value, {node.id: 1.0})
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            v = self.number(node.operand)
            return _Value(-v.hi, -v.lo, {n: -g for n, g in v.grad.items()})
        if isinstance(node, ast.BinOp):
            a, b = self.number(node.left), self.number(node.right)
            if isinstance(node.op, ast.Add):
                return _Value(a.lo + b.lo, a.hi + b.hi, _combine(a.grad, b.grad, 1.0, 1.0))
            if isinstance(node.op, ast.Sub):
                return _Value(a.lo - b.hi, a.hi - b.lo, _combine(a.grad, b.grad, 1.0, -1.0))
            if isinstance(node.op, ast.Mult):
                corners = [x * y for x in (a.lo, a.hi) for y in (b.lo, b.hi)]
                return _Value(min(corners), max(corners), _combine(a.grad, b.grad, b.mid, a.mid))
            corners = [x / y for x in (a.lo, a.hi) for y in (b.lo, b.hi)]  # ZeroDivisionError as Python's
            return _Value(min(corners), max(corners), _combine(a.grad, b.grad, 1 / b.mid, -a.mid / b.mid**2))
        truth = self.truth(node)  # a verdict counted: 1, 0 or either
        return _Value(0.0 if truth is None else float(truth), 1.0 if truth is None else float(truth), {})

    def truth(self, node: ast.AST) -> Truth:
        if isinstance(node, ast.BoolOp):
            truths = [self.truth(v) for v in node.values]  # all evaluated: both passes see the same comparisons
            if isinstance(node.op, ast.And):
                return False if False in truths else None if None in truths else True
            return True if True in truths else None if None in truths else False
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            truth = self.truth(node.operand)
            return None if truth is None else not truth
        if isinstance(node, ast.Compare):
            truths, left = [], node.left
            for op, right in zip(node.ops, node.comparators):
                truths.append(self.compare(left, op, right))
                left = right
            return False if False in truths else None if None in truths else True
        return self.compare(node, ast.NotEq(), ast.Constant(0))  # a number as a condition: non-zero

    def compare(self, left: ast.AST, op: ast.cmpop, right: ast.AST) -> Truth:
        a, b = self.number(left), self.number(right)
        if isinstance(op, (ast.Lt, ast.LtE)):
            a, b = b, a  # the margin is positive on the claimed side
        lo, hi, grad = a.lo - b.hi, a.hi - b.lo, _combine(a.grad, b.grad, 1.0, -1.0)
        terms = [(g * self.se[n]) ** 2 for n, g in grad.items() if g != 0 and self.se[n] != 0]
        se = math.sqrt(sum(terms))
        need = Z * se
        if isinstance(op, (ast.Gt, ast.Lt)):
            truth = True if lo > need else False if hi <= -need else None
        elif isinstance(op, (ast.GtE, ast.LtE)):
            truth = True if lo >= need else False if hi < -need else None
        else:  # == and !=: equality is shown only on exact numbers
            equal = True if se == 0 and lo == hi == 0 else False if lo > need or hi < -need else None
            truth = equal if isinstance(op, ast.Eq) or equal is None else not equal
        text = f"{_short(ast.unparse(left))} {_SYMBOL[type(op)]} {_short(ast.unparse(right))}"
        cells = frozenset(n for n, g in grad.items() if g != 0)
        self.comparisons.append(_Comparison(text, lo, hi, se, truth, cells))
        return truth


_SYMBOL = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}


def _short(text: str, width: int = 80) -> str:
    """A side of a comparison as printed: a long sum of verdicts keeps its first and last terms (or words)."""
    if len(text) <= width:
        return text
    terms = text.split(" + ")
    if len(terms) > 2 and len(terms[0]) + len(terms[-1]) + 9 <= width:
        return f"{terms[0]} + … + {terms[-1]}"
    words = text.split(" ")
    head = next(i for i in range(len(words), -1, -1) if len(" ".join(words[:i])) <= width // 2)
    tail = next(i for i in range(len(words), -1, -1) if len(" ".join(words[len(words) - i :])) <= width // 2)
    return " ".join([*words[:head], "…", *words[len(words) - tail :]]) if head or tail else text


def _line(strict: _Comparison, loose: _Comparison, unknown: list[str]) -> str:
    """`a > b: margin +4.10 ± 1.20 (3.4 SE; 2 needed): holds`, from both passes of one comparison."""
    c = loose  # the margin and the standard error of the cells whose spread is known
    margin = f"{c.lo:+.2f}" if c.lo == c.hi else f"{c.lo:+.2f} to {c.hi:+.2f}"
    if c.se > 0:
        margin += f" ± {c.se:.2f}"
        if c.lo == c.hi:
            margin += f" ({c.lo / c.se:+.1f} SE; {Z:g} needed)"
    if unknown:
        margin += f", spread unknown for {', '.join(unknown)} (1 seed)"
    return f"{c.text}: margin {margin}: {_word(strict.truth, loose.truth)}"
