"""Where a run is and what it has recorded: the counters and histories a checkpoint restores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass
class RunState:
    """The counters and records of one run.

    Attributes:
        global_step: optimizer steps done.
        epoch: the epoch being run (0-based).
        step_in_epoch: steps of that epoch done.
        history: one entry per finished epoch (``epoch``, ``step``, ``train_loss``,
            ``learning_rate``, ``eval_*``).
        log_history: one entry every ``log_every`` steps (``step``, ``epoch``, ``loss``,
            ``learning_rate``, ``grad_norm``).
        epoch_loss: ``[sum of step losses, steps]`` of the current epoch.
        log_loss: the same since the last log entry.
        last_lr: the learning rate of the last step (of AdamW's first group).
        seconds_before: training time of the runs this one resumed.
    """

    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    epoch_loss: list = field(default_factory=lambda: [0.0, 0])
    log_loss: list = field(default_factory=lambda: [0.0, 0])
    last_lr: float = 0.0
    seconds_before: float = 0.0

    def add_step_loss(self, loss: float, grad_norm: float | None, log_every: int, total_steps: int) -> dict | None:
        """Count the loss of the step just taken; returns the new log entry if this step is logged."""
        self.epoch_loss[0] += loss
        self.epoch_loss[1] += 1
        self.log_loss[0] += loss
        self.log_loss[1] += 1
        if self.global_step % log_every and self.global_step != total_steps:
            return None
        entry = {"step": self.global_step, "epoch": self.epoch + 1, "loss": self.log_loss[0] / self.log_loss[1],
                 "learning_rate": self.last_lr, "grad_norm": grad_norm}
        self.log_history.append(entry)
        self.log_loss = [0.0, 0]
        return entry

    def add_epoch_entry(self, metrics: Mapping[str, float]) -> dict[str, Any]:
        """Record the epoch just finished, with its evaluation ``metrics`` (named ``eval_<name>``)."""
        entry: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.global_step,
                                 "train_loss": self.epoch_loss[0] / max(1, self.epoch_loss[1]),
                                 "learning_rate": self.last_lr}
        entry.update({f"eval_{k}": v for k, v in metrics.items()})
        self.history.append(entry)
        return entry

    def start_next_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_loss = [0.0, 0]

    def to_document(self) -> dict[str, Any]:
        """The fields a checkpoint's ``trainer_state.json`` holds (its ``global_step`` is written apart)."""
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "history": self.history,
            "log_history": self.log_history,
            "epoch_loss": self.epoch_loss,
            "log_loss": self.log_loss,
            "last_lr": self.last_lr,
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any], global_step: int) -> RunState:
        """The state a checkpoint's document describes; its ``train_seconds`` become ``seconds_before``."""
        return cls(
            global_step=global_step,
            epoch=int(document["epoch"]),
            step_in_epoch=int(document["step_in_epoch"]),
            history=list(document["history"]),
            log_history=list(document["log_history"]),
            epoch_loss=list(document["epoch_loss"]),
            log_loss=list(document["log_loss"]),
            last_lr=float(document["last_lr"]),
            seconds_before=float(document["train_seconds"]),
        )
