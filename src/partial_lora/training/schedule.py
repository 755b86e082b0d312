"""Learning-rate schedules: linear warm-up, then linear, cosine or no decay.

The multiplier is a pure function of the number of optimizer steps already taken, so a
resumed run gets exactly the learning rates of an uninterrupted one. It matches
``transformers.get_linear_schedule_with_warmup`` (and its cosine twin): step ``i`` (0-based)
of warm-up ``W`` runs at ``i / W`` of the peak, then the factor falls to 0 at step ``T``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_factor(step: int, *, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak learning rate for the optimizer step after ``step`` steps."""
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))
    raise ValueError(f"schedule={schedule!r} is unknown; choose linear, cosine or constant")


def make_scheduler(optimizer: torch.optim.Optimizer, *, warmup: int, total: int, schedule: str) -> LambdaLR:
    """A ``LambdaLR`` stepping :func:`lr_factor` once per optimizer step.

    ``functools.partial`` (not a lambda or closure) so the scheduler's ``state_dict`` holds
    no callable state: the schedule is rebuilt from the config on resume.
    """
    factor = functools.partial(lr_factor, warmup=warmup, total=total, schedule=schedule)
    return LambdaLR(optimizer, factor)
