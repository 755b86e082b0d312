"""What a training run returns, and how it fails when the loss blows up."""

from __future__ import annotations

import resource
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch


class TrainingDiverged(RuntimeError):
    """The loss (or a gradient, input or parameter) became NaN or infinite.

    Attributes:
        step: the optimizer step (1-based) being computed when it happened.
        value: the offending value (``float('nan')`` or ``inf``).
        checkpoint: folder of the last good checkpoint, untouched; None if none was written.
    """

    def __init__(self, step: int, value: float, reason: str, checkpoint: Path | None) -> None:
        self.step, self.value, self.checkpoint = step, value, checkpoint
        if checkpoint is not None:
            kept = f"The last good checkpoint is kept at {checkpoint}."
        else:
            kept = "No checkpoint was written before it (set checkpoint_every and output_dir to keep one)."
        super().__init__(
            f"training diverged at step {step}: {reason}. {kept} Lower the learning_rate, set "
            "max_grad_norm, or check the data for NaN/inf values."
        )


@dataclass
class TrainResult:
    """Outcome of :func:`partial_lora.training.train`.

    Attributes:
        metrics: the last epoch's entry of ``history`` without its counters: ``train_loss``,
            ``learning_rate`` and the evaluation metrics prefixed ``eval_``.
        history: one dict per epoch: ``epoch`` (1-based), ``step``, ``train_loss`` (mean over
            the epoch's steps), ``learning_rate`` (of its last step), ``eval_*``.
        log_history: every ``log_every`` steps: ``step``, ``epoch``, ``loss`` (mean since the
            last entry), ``learning_rate``, ``grad_norm`` (before clipping; None without clipping).
        train_seconds: wall-clock seconds of training, summed over resumed segments.
        steps: optimizer steps done (the global step at the end).
        peak_rss_bytes: peak resident memory of this process (``ru_maxrss``), bytes.
        peak_gpu_bytes: peak CUDA memory allocated by torch on this process; None on CPU.
        optimizer_state_bytes: bytes of all optimizer state tensors (AdamW: two moments per
            trainable entry plus step counters).
        trainable_parameters: number of trained parameter entries.
        checkpoint: folder of the last checkpoint written or resumed from; None without checkpoints.
        resumed_from_step: global step of the checkpoint this run resumed from; None for a fresh run.
    """

    metrics: dict[str, float]
    history: list[dict[str, Any]]
    log_history: list[dict[str, Any]]
    train_seconds: float
    steps: int
    peak_rss_bytes: int
    peak_gpu_bytes: int | None
    optimizer_state_bytes: int
    trainable_parameters: int
    checkpoint: str | None = None
    resumed_from_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def peak_gpu_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in ``optimizer.state``."""
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )
