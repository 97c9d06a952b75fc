"""Per-iteration schedules as precomputed arrays (DINO's `cosine_scheduler`, dinov2's `CosineScheduler`): the lr,
the weight decay and whatever a method declares (`Method.schedules()`: DINO's teacher temperature and momentum).
The loop only indexes them.

    lr = cosine(1.5e-3, 1e-5, epochs=300, iters_per_epoch=625, warmup_epochs=10)   # one value per iteration
    lr = steps(1e-4, epochs=36, iters_per_epoch=7330, milestones=[27, 33], warmup_iters=500)  # Mask R-CNN 3x
    lr = poly(7e-4, 0.0, epochs=127, iters_per_epoch=1263, warmup_iters=1500)  # BEiT's UperNet on ADE20k

The dense tasks' schedules are mmcv's (the runner of mmdet and mmseg, which the paper's detection and segmentation
recipes come from): a linear warm-up over iterations that multiplies the regular lr, from `warmup_factor` x it to 1.
"""

from __future__ import annotations

import math

import numpy as np

from model.method import Schedule

__all__ = ["array", "cosine", "lr_schedule", "poly", "steps"]


def _lengths(epochs: float, iters_per_epoch: int, length: int | None) -> tuple[int, int]:
    """(iterations of the whole schedule, how many of them to compute: the first `length` when given)."""
    total = max(1, round(epochs * iters_per_epoch))
    return total, total if length is None else max(0, min(total, length))


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
    total, n = _lengths(epochs, iters_per_epoch, length)
    warmup = min(total, round(warmup_epochs * iters_per_epoch))
    ramp = np.linspace(warmup_start, base, warmup, endpoint=False)[:n] if warmup else np.empty(0)
    steps = np.arange(max(0, n - warmup))
    span = max(1, total - warmup - 1)
    decay = final + 0.5 * (base - final) * (1 + np.cos(math.pi * steps / span))
    return np.concatenate([ramp, decay])


def _mmcv_warmup(values: np.ndarray, warmup_iters: int, warmup_factor: float) -> np.ndarray:
    """mmcv's linear warm-up: iteration i < warmup_iters runs at regular_lr x (1 - (1 - i / warmup_iters) x (1 -
    warmup_factor)), i.e. from warmup_factor x the lr at 0 to the full lr at warmup_iters."""
    i = np.arange(min(len(values), warmup_iters))
    values = values.copy()
    values[: len(i)] *= 1 - (1 - i / warmup_iters) * (1 - warmup_factor)
    return values


def steps(
    base: float,
    epochs: float,
    iters_per_epoch: int,
    milestones: list[float],
    factor: float = 0.1,
    warmup_iters: int = 0,
    warmup_factor: float = 0.001,
    length: int | None = None,
) -> np.ndarray:
    """Step decay (mmdet's `policy='step'`): `base`, times `factor` after each milestone epoch (the lr of epoch e is
    base x factor^(milestones <= e)); the first `warmup_iters` iterations warm up (see `_mmcv_warmup`)."""
    _, n = _lengths(epochs, iters_per_epoch, length)
    # A milestone's first iteration, rounded (a micro run's scaled milestones are fractional epochs).
    first = np.round(np.asarray(milestones, dtype=float) * iters_per_epoch)
    passed = (np.arange(n)[:, None] >= first[None, :]).sum(1) if len(first) else np.zeros(n)
    return _mmcv_warmup(base * factor ** np.asarray(passed, dtype=float) * np.ones(n), warmup_iters, warmup_factor)


def poly(
    base: float,
    final: float,
    epochs: float,
    iters_per_epoch: int,
    power: float = 1.0,
    warmup_iters: int = 0,
    warmup_factor: float = 1e-6,
    length: int | None = None,
) -> np.ndarray:
    """Polynomial decay over the whole run (mmseg's `policy='poly'`): (base - final) x (1 - i / total)^power + final,
    the first `warmup_iters` iterations warmed up (see `_mmcv_warmup`)."""
    total, n = _lengths(epochs, iters_per_epoch, length)
    i = np.arange(n)
    return _mmcv_warmup((base - final) * (1 - i / total) ** power + final, warmup_iters, warmup_factor)


def lr_schedule(
    spec: dict | None,
    base: float,
    final: float,
    epochs: float,
    iters_per_epoch: int,
    warmup_epochs: float,
    epoch_scale: float = 1.0,
    length: int | None = None,
) -> np.ndarray:
    """The lr of every iteration from a job's `optim`: its cosine (`spec` None, the classification tasks), or the
    `optim.schedule` a dense task's recipe names ({name: step, milestones, factor, warmup_iters, warmup_factor} or
    {name: poly, power, warmup_iters, warmup_factor}). `epochs` is the run's (epoch_scale applied): a micro run's
    milestones and warm-up iterations shrink by `epoch_scale` with it, so its schedule has the recipe's shape."""
    if spec is None:
        return cosine(base, final, epochs, iters_per_epoch, warmup_epochs=warmup_epochs, length=length)
    spec = dict(spec)
    name = spec.pop("name")
    spec["warmup_iters"] = round(spec.get("warmup_iters", 0) * epoch_scale)
    if name == "step":
        spec["milestones"] = [m * epoch_scale for m in spec["milestones"]]
        return steps(base, epochs, iters_per_epoch, length=length, **spec)
    if name == "poly":
        return poly(base, final, epochs, iters_per_epoch, length=length, **spec)
    raise ValueError(f"optim.schedule.name must be step or poly (or no optim.schedule: cosine), got {name!r}")


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
