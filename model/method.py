"""The contract between a pre-training method and the one training loop that knows no method.

A method is an `nn.Module` whose `forward(*batch)` returns `(loss, logs)`: the scalar loss to minimise and a dict of
0-dim tensors to log (each loss term, accuracies). Logged values stay on the device; the loop reads them only at its
logging interval, so the step has no host synchronisation.

Everything else is optional and has a no-op default:

- `schedules()`: per-iteration values the method needs besides lr and weight decay (DINO's teacher temperature and
  teacher momentum). The loop precomputes each as an array, and before every step calls
  `set_schedule_values(name=value, ...)`, which sets them as plain float attributes.
- `after_backward(epoch)`: between backward and the optimiser step (DINO cancels its last layer's gradient during
  the first epoch).
- `after_step()`: after the optimiser step (DINO's EMA teacher update).
- `export_encoder`: the ViT whose weights fine-tuning and linear probing start from (`encoder` unless the method
  says otherwise: DINO exports its teacher).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import nn

__all__ = ["CosineSchedule", "Method"]


@dataclass(frozen=True)
class CosineSchedule:
    """Linear warm-up from `warmup_start` to `base` over `warmup_epochs`, then half-cosine from `base` to `final`.

    DINO's `cosine_scheduler`: with `base == final` it is a warm-up followed by a constant (the teacher
    temperature); with no warm-up it is a plain cosine (the teacher momentum 0.996 -> 1).
    """

    base: float
    final: float
    warmup_epochs: float = 0.0
    warmup_start: float = 0.0

    def array(self, epochs: float, iters_per_epoch: int, length: int | None = None) -> np.ndarray:
        """One value per iteration, `round(epochs * iters_per_epoch)` of them; only the first `length` if given (a
        run capped at a few iterations of a long schedule)."""
        total = max(1, round(epochs * iters_per_epoch))
        warmup = min(total, round(self.warmup_epochs * iters_per_epoch))
        n = total if length is None else max(0, min(total, length))
        ramp = np.linspace(self.warmup_start, self.base, warmup, endpoint=False)[:n] if warmup else np.empty(0)
        steps = np.arange(max(0, n - warmup))
        span = max(1, total - warmup - 1)
        decay = self.final + 0.5 * (self.base - self.final) * (1 + np.cos(math.pi * steps / span))
        return np.concatenate([ramp, decay])


class Method(nn.Module):
    """Base class for pre-training methods; see the module docstring for the contract."""

    encoder: nn.Module

    @property
    def export_encoder(self) -> nn.Module:
        return self.encoder

    def schedules(self) -> dict[str, CosineSchedule]:
        return {}

    def set_schedule_values(self, **values: float) -> None:
        known = self.schedules()
        for name, value in values.items():
            if name not in known:
                raise KeyError(f"{type(self).__name__} has no schedule {name!r}; it has {sorted(known) or 'none'}")
            setattr(self, name, float(value))

    def after_backward(self, epoch: int) -> None:
        pass

    def after_step(self) -> None:
        pass
