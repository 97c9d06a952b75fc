"""The grammar of a claim's `check`: which expressions a sweep file may write, checked when the sweep is read.

    claims:
      - text: SplitMask loses less than DINO when ImageNet shrinks from full to 1%
        cells: {sm_full: {...}, sm_1: {...}, dino_full: {...}, dino_1: {...}}
        check: sm_full - sm_1 < dino_full - dino_1

`check` is a small arithmetic expression: numbers, the names of the claim's `cells`, + - * /, comparisons, and / or /
not. It is parsed with `ast`, never `eval`ed. The sweep reader (`harness.sweep.spec`) rejects anything else with the
claim's place in the file; `harness.report.claims` evaluates the parsed tree on table values, with their spread.
"""

from __future__ import annotations

import ast
import operator

__all__ = ["BINARY", "COMPARE", "check_expression"]

BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
COMPARE = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_ALLOWED = (
    ast.Expression, ast.Name, ast.Load, ast.Constant, ast.BinOp, ast.UnaryOp, ast.USub, ast.Not, ast.Compare,
    ast.BoolOp, ast.And, ast.Or, *BINARY, *COMPARE,
)  # fmt: skip


def check_expression(text: str, names: set[str]) -> ast.Expression:
    """Parse `text`, allowing only the grammar above and the given names; ValueError says what is not allowed."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as err:
        raise ValueError(f"not an expression: {text!r} ({err.msg})") from err
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in names:
            raise ValueError(f"'{node.id}' is not one of the claim's cells ({', '.join(sorted(names))})")
        ops = getattr(node, "ops", None) or [getattr(node, "op", None)]  # `a ** 2`: name the expression, not `**`
        if not isinstance(node, _ALLOWED) or any(op is not None and not isinstance(op, _ALLOWED) for op in ops):
            raise ValueError(f"'{ast.unparse(node)}' is not allowed in a claim (numbers, cell names, + - * /, <, and)")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float)):
            raise ValueError(f"only numbers may appear as constants, not {node.value!r}")
    return tree
