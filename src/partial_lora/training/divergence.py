"""Stopping a run that diverged: NaN/inf in a loss, a gradient norm, an input or a parameter.

Every check raises :class:`TrainingDiverged` with the step, the value, the reason and the last
good checkpoint. Parameters are checked before a checkpoint is written, so a diverged state
never replaces a good one. With several processes the loss check is collective, so every
process stops at the same step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .result import TrainingDiverged


def checked_loss(loss: torch.Tensor, bad_inputs: list[str], step: int, accelerator: Any, last: Path | None) -> float:
    """The loss averaged over processes; raises if it, or an input of any process, is NaN/inf.

    Args:
        loss: this process's scalar loss.
        bad_inputs: names of this batch's tensors that hold NaN/inf values.
        step: the 1-based step being computed.
        accelerator: the run's ``accelerate.Accelerator``.
        last: the last checkpoint written, reported with the error.
    """
    if loss.dim() != 0:
        raise ValueError(f"the loss must be a scalar, got shape {tuple(loss.shape)}")
    world = accelerator.num_processes
    flags = torch.stack([loss.detach().float(), torch.tensor(float(bool(bad_inputs)), device=loss.device)])
    if world > 1:
        flags = accelerator.reduce(flags, reduction="sum")
    value, bad = float(flags[0]) / world, float(flags[1])
    if bad_inputs:
        reason = f"the batch's {', '.join(map(repr, bad_inputs))} holds NaN/inf values"
        raise TrainingDiverged(step, float("nan"), reason, last)
    if bad > 0:
        raise TrainingDiverged(step, float("nan"), "a batch on another process holds NaN/inf values", last)
    if not math.isfinite(value):
        raise TrainingDiverged(step, value, f"the loss is {value}", last)
    return value


def check_grad_norm(norm: float, step: int, accelerator: Any, last: Path | None) -> None:
    """Raise on a NaN/inf gradient norm, unless an fp16 grad scaler will skip the step itself."""
    if not math.isfinite(norm) and accelerator.scaler is None:
        raise TrainingDiverged(step, norm, f"the gradient norm is {norm}", last)


def check_parameters(trainable: Sequence[tuple[str, nn.Parameter]], step: int, last: Path | None) -> None:
    """Raise if a trainable parameter holds NaN/inf values after ``step``."""
    for name, parameter in trainable:
        if not bool(torch.isfinite(parameter).all()):
            reason = f"parameter {name!r} holds NaN/inf values after the step"
            raise TrainingDiverged(step, float("nan"), reason, last)
