"""Per-iteration schedules as precomputed arrays (DINO's `cosine_scheduler`, dinov2's `CosineScheduler`): the lr,
the weight decay and whatever a method declares (`Method.schedules()`: DINO's teacher temperature and momentum).
The loop only indexes them.

    lr = cosine(1.5e-3, 1e-5, epochs=300, iters_per_epoch=625, warmup_epochs=10)   # one value per iteration
"""

from __future__ import annotations

import math

import numpy as np

from model.method import Schedule

__all__ = ["array", "cosine"]


def cosine(
    base: float,
    final: float,
    epochs: float,
    iters_per_epoch: int,
    warmup_epochs: float = 0.0,
    warmup_start: float = 0.0,
    length: int | None = None,
) -> np.ndarray:
    """Linear warm-up from `warmup_start` to `base` over `warmup_epochs`, then half-cosine from `base` to `final`.

    One value per iteration, `round(epochs * iters_per_epoch)` of them; only the first `length` if given (a run capped
    at a few iterations of a long schedule computes only those). With `base == final` it is a warm-up followed by a
    constant; with no warm-up, a plain cosine (DINO's teacher momentum 0.996 -> 1).
    """
    total = max(1, round(epochs * iters_per_epoch))
    warmup = min(total, round(warmup_epochs * iters_per_epoch))
    n = total if length is None else max(0, min(total, length))
    ramp = np.linspace(warmup_start, base, warmup, endpoint=False)[:n] if warmup else np.empty(0)
    steps = np.arange(max(0, n - warmup))
    span = max(1, total - warmup - 1)
    decay = final + 0.5 * (base - final) * (1 + np.cos(math.pi * steps / span))
    return np.concatenate([ramp, decay])


def _per_epoch(spec: Schedule, epochs: float, iters_per_epoch: int, length: int | None) -> np.ndarray:
    """One value per epoch, repeated over its iterations: DINO's teacher temperature, `np.linspace(warmup_start,
    base, warmup_epochs)` over the first epochs (the last warm-up epoch already at `base`), then a cosine to `final`
    over the rest (a constant when `base == final`, as in DINO)."""
    num_epochs = max(1, math.ceil(epochs))
    warmup = min(num_epochs, round(spec.warmup_epochs))
    ramp = np.linspace(spec.warmup_start, spec.base, warmup) if warmup else np.empty(0)
    rest = cosine(spec.base, spec.final, num_epochs - warmup, 1) if num_epochs > warmup else np.empty(0)
    values = np.repeat(np.concatenate([ramp, rest]), iters_per_epoch)
    total = max(1, round(epochs * iters_per_epoch))
    return values[: total if length is None else max(0, min(total, length))]


def array(spec: Schedule, epochs: float, iters_per_epoch: int, length: int | None = None) -> np.ndarray:
    """The per-iteration values of a method's declared `Schedule` (see `cosine`; `per_epoch` ones step once an
    epoch, as DINO's teacher temperature does)."""
    if spec.per_epoch:
        return _per_epoch(spec, epochs, iters_per_epoch, length)
    return cosine(spec.base, spec.final, epochs, iters_per_epoch, spec.warmup_epochs, spec.warmup_start, length)
