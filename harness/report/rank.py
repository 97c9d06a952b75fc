"""Does our table order its cells as the paper's does? Kendall's τ-b between our means and the paper's values.

    agreement = rank_agreement(summary)      # the cells of `harness.report.table.summarize` with both numbers
    str(agreement)                           # "... Kendall τ_b +0.60 over 6 cells (15 pairs: 12 concordant, ...)"

A micro or smoke run is not the paper in absolute value, so its report compares the order of the cells: over every
pair of cells that both have (ours: the mean over seeds), the pair is concordant when ours and the paper's order them
the same way, discordant when the opposite, tied when either side is equal. τ-b = (concordant − discordant) /
sqrt((pairs − tied in ours) (pairs − tied in the paper)): 1 the same order, -1 the reverse, about 0 none; undefined
when one side ties every pair. Only cells of the same stage and metric are paired: a fine-tuning number is never
ranked against a linear probe's or a pre-training's hours. Pure Python over the pairs (a table has at most some
hundred cells): reports do not import scipy.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from itertools import combinations

import pandas as pd

__all__ = ["Agreement", "kendall_tau", "rank_agreement"]


@dataclass(frozen=True)
class Agreement:
    """Kendall's τ-b over `cells` cells and their `pairs` pairs (NaN when undefined)."""

    tau: float
    cells: int
    pairs: int
    concordant: int
    discordant: int
    tied_ours: int  # pairs tied in ours (in both sides too)
    tied_paper: int

    def __str__(self) -> str:
        if self.pairs == 0:
            return f"rank agreement with the paper: no pair of cells with both values yet ({self.cells} cells)"
        tau = "undefined (one side ties every pair)" if math.isnan(self.tau) else f"{self.tau:+.2f}"
        ties = self.pairs - self.concordant - self.discordant
        pairs = f"{self.pairs} pair" + ("" if self.pairs == 1 else "s")
        return (f"rank agreement with the paper: Kendall τ_b {tau} over {self.cells} cells ({pairs}: "
                f"{self.concordant} concordant, {self.discordant} discordant, {ties} tied)")  # fmt: skip


def kendall_tau(ours: Sequence[float], paper: Sequence[float], groups: Sequence[Hashable] | None = None) -> Agreement:
    """τ-b of two equally long sequences; with `groups`, only pairs within the same group count."""
    if len(ours) != len(paper) or (groups is not None and len(groups) != len(ours)):
        raise ValueError("kendall_tau: sequences of different lengths")
    groups = [None] * len(ours) if groups is None else list(groups)
    ours, paper = [float(v) for v in ours], [float(v) for v in paper]
    pairs = concordant = discordant = tied_ours = tied_paper = 0
    for i, j in combinations(range(len(ours)), 2):
        if groups[i] != groups[j]:
            continue
        pairs += 1
        sign = _sign(ours[i] - ours[j]) * _sign(paper[i] - paper[j])
        concordant += sign > 0
        discordant += sign < 0
        tied_ours += ours[i] == ours[j]
        tied_paper += paper[i] == paper[j]
    denominator = math.sqrt((pairs - tied_ours) * (pairs - tied_paper))
    tau = (concordant - discordant) / denominator if denominator else math.nan
    return Agreement(tau, len(ours), pairs, concordant, discordant, tied_ours, tied_paper)


def rank_agreement(summary: pd.DataFrame) -> Agreement:
    """τ-b over the cells of a table summary that have both our mean and the paper's value, per stage and metric."""
    both = summary[summary["mean"].notna() & summary["paper"].notna()] if len(summary) else summary
    if not len(both):
        return kendall_tau([], [])
    groups = list(zip(both["stage"], both["metric"]))
    return kendall_tau(both["mean"].astype(float).tolist(), both["paper"].astype(float).tolist(), groups)


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)
