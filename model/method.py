"""The contract between a pre-training method and the one training loop that knows no method.

A method is an `nn.Module` whose `forward(*batch)` returns `(loss, logs)`: the scalar loss to minimise and a dict of
0-dim tensors to log (each loss term, accuracies). Logged values stay on the device; the loop reads them only at its
logging interval, so the step has no host synchronisation.

Everything else is optional and has a no-op default:

- `schedules()`: per-iteration values the method needs besides lr and weight decay (DINO's teacher temperature and
  teacher momentum), each declared as a `Schedule`. The loop precomputes each as an array, and before every step calls
  `set_schedule_values(name=value, ...)`, which sets them as plain float attributes.
- `after_backward(epoch)`: between backward and the optimiser step (DINO cancels its last layer's gradient during
  the first epoch).
- `after_step()`: after the optimiser step (DINO's EMA teacher update).
- `views`, `labelled`, `takes_encoder` (class attributes): what the data pipeline gives the method, whether it
  learns from labels, whether it wraps an encoder it is given. The harness builds the pipeline from them and knows
  no method by name.
- `export_encoder`: the ViT whose weights fine-tuning and linear probing start from (`encoder` unless the method
  says otherwise: DINO exports its teacher).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

__all__ = ["Method", "Schedule"]


@dataclass(frozen=True)
class Schedule:
    """A value a method needs at every iteration, declared here and computed by the loop
    (`harness/train/schedules.py`): a linear warm-up from `warmup_start` to `base` over `warmup_epochs`, then a
    half-cosine from `base` to `final` (DINO's `cosine_scheduler`). `per_epoch`: the value changes once an epoch, as
    DINO's teacher-temperature schedule, which is indexed by epoch."""

    base: float
    final: float
    warmup_epochs: float = 0.0
    warmup_start: float = 0.0
    per_epoch: bool = False


class Method(nn.Module):
    """Base class for pre-training methods; see the module docstring for the contract."""

    encoder: nn.Module
    # What the data pipeline hands `forward`: "masked" (an image and its mask from `self.mask_generator`: SplitMask,
    # BEiT), "multi_crop" (DINO's crops), "labelled" (an augmented image and its label: fine-tuning, supervised) or
    # "probe" (a cropped image and its label, for a frozen encoder).
    views: ClassVar[str]
    labelled: ClassVar[bool] = False  # trained on labels and evaluated on the eval split
    takes_encoder: ClassVar[bool] = False  # wraps an encoder it is given (which `pretrained=` may load)
    uses_encoder: ClassVar[bool] = True  # builds on a ViT at all (False: the raw-pixel baseline)

    @property
    def export_encoder(self) -> nn.Module:
        return self.encoder

    def schedules(self) -> dict[str, Schedule]:
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
