"""The paper's claims as checks over table values, judged on the paper's numbers and on ours.

A claim lives in its sweep file, next to the cells it speaks of:

    claims:
      - text: SplitMask loses less than DINO when ImageNet shrinks from full to 1%
        cells: {sm_full: {method: splitmask, pretrain_data: in_full}, sm_1: {method: splitmask, pretrain_data: in_1},
                dino_full: {method: dino, pretrain_data: in_full}, dino_1: {method: dino, pretrain_data: in_1}}
        check: sm_full - sm_1 < dino_full - dino_1

`check`'s grammar (numbers, the names of `cells`, + - * /, comparisons, and / or / not) is checked when the sweep is
read (`harness.sweep.expression`); here it is evaluated without `eval`. Its verdict: holds, fails, or not enough
results.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping

from harness.sweep.expression import BINARY, COMPARE, check_expression

__all__ = ["FAILS", "HOLDS", "NOT_ENOUGH", "evaluate"]

HOLDS, FAILS, NOT_ENOUGH = "holds", "fails", "not enough results"


def evaluate(text: str, values: Mapping[str, float | None]) -> str:
    """The verdict of the expression on `values` (None or NaN: that cell has no result)."""
    tree = check_expression(text, set(values))
    if any(v is None or v != v for v in values.values()):
        return NOT_ENOUGH
    return HOLDS if _eval(tree.body, values) else FAILS


def _eval(node: ast.AST, values: Mapping[str, float]):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return float(values[node.id])
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, values)
        return -value if isinstance(node.op, ast.USub) else not value
    if isinstance(node, ast.BinOp):
        return BINARY[type(node.op)](_eval(node.left, values), _eval(node.right, values))
    if isinstance(node, ast.BoolOp):
        results = [_eval(v, values) for v in node.values]
        return all(results) if isinstance(node.op, ast.And) else any(results)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, values)
        for op, right_node in zip(node.ops, node.comparators):
            right = _eval(right_node, values)
            if not COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    raise ValueError(f"cannot evaluate {ast.unparse(node)}")
