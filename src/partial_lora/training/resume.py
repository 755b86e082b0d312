"""Writing a run's checkpoints and resuming from one; the files themselves: :mod:`.checkpoint`.

A checkpoint holds everything a step depends on: the trainable tensors and buffers, the
optimizer, scheduler and grad-scaler states, the callbacks' states, every process's
generator states (now, and at the start of the current epoch, to replay its batch order)
and the :class:`RunState`. A run resumes only with the settings that shape its trajectory
(``TRAJECTORY_FIELDS``), the same number of processes and the same step counts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .callbacks import is_stateful
from .checkpoint import Checkpoint, CheckpointError, checkpoint_name, latest_checkpoint, write_checkpoint
from .config import TRAJECTORY_FIELDS, TrainingConfig
from .model_state import load_model_tensors, model_tensors
from .rng import capture_rng
from .setup import Plan, Prepared
from .state import RunState

logger = logging.getLogger("partial_lora.training")

RngStates = dict[str, torch.Tensor]


def find_checkpoint(root: Path | None, resume: bool | str) -> Path | None:
    """The checkpoint to resume from, or None to start fresh; refuses what ``resume`` rules out."""
    if root is None:
        if resume is True:
            raise ValueError("resume=True needs TrainingConfig.output_dir, where the checkpoints are")
        return None
    found = latest_checkpoint(root)
    if resume is True and found is None:
        raise CheckpointError(f"resume=True but there is no checkpoint in {root}; start with resume=False")
    if resume is False and found is not None:
        raise CheckpointError(
            f"{root} already holds a checkpoint ({found.name}); pass resume=True to continue that run, "
            "or choose another output_dir (or delete it) to start over"
        )
    return found


class Checkpointer:
    """Saves and restores the checkpoints of one run under ``root`` (``<output_dir>/checkpoint``)."""

    def __init__(self, root: Path, config: TrainingConfig, plan: Plan, prepared: Prepared, callbacks: Sequence[Any]):
        self.root, self.config, self.plan, self.prepared, self.callbacks = root, config, plan, prepared, callbacks

    def save(self, state: RunState, epoch_rng: RngStates | None, seconds: float) -> Path:
        """Write the checkpoint of ``state.global_step`` (collective); returns its folder.

        ``epoch_rng`` is the generators' state when the current epoch began, needed when the
        checkpoint falls inside an epoch; ``seconds`` is the training time so far.
        """
        accelerator = self.plan.accelerator
        rng = self._gather_rng(capture_rng())
        epoch_rng = self._gather_rng(epoch_rng if state.step_in_epoch else capture_rng())
        if not self.plan.main:
            accelerator.wait_for_everyone()
            return self.root / checkpoint_name(state.global_step)
        training_state = {
            "optimizer": self.prepared.optimizer.state_dict(),
            "scheduler": self.prepared.scheduler.state_dict(),
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "callbacks": {str(i): c.state_dict() for i, c in enumerate(self.callbacks) if is_stateful(c)},
            "rng": rng,
            "epoch_rng": epoch_rng,
        }
        tensors = model_tensors(self.prepared.unwrapped, [n for n, _ in self.plan.trainable])
        path = write_checkpoint(
            self.root, state.global_step, model_tensors=tensors, state=training_state,
            document=self._document(tensors, state, seconds), keep=self.config.keep_checkpoints,
        )
        accelerator.wait_for_everyone()
        return path

    def restore(self, checkpoint: Checkpoint) -> tuple[RunState, tuple[RngStates, RngStates]]:
        """Load ``checkpoint`` into the model, optimizer, scheduler, scaler and callbacks.

        Returns:
            the run's state, and this process's generator states ``(at the start of the
            checkpoint's epoch, at its step)`` for the loop to put back.
        """
        accelerator, state = self.plan.accelerator, checkpoint.state
        self._check_same_run(checkpoint)
        load_model_tensors(self.prepared.unwrapped, checkpoint)
        self.prepared.optimizer.load_state_dict(state["optimizer"])
        self.prepared.scheduler.load_state_dict(state["scheduler"])
        if accelerator.scaler is not None and state.get("scaler") is not None:
            accelerator.scaler.load_state_dict(state["scaler"])
        for index, callback in enumerate(self.callbacks):
            if is_stateful(callback) and str(index) in state["callbacks"]:
                callback.load_state_dict(state["callbacks"][str(index)])
            elif self.plan.main:
                logger.warning("callback %s has no saved state (state_dict/load_state_dict); resume may not be exact",
                               type(callback).__name__)
        rank = self.plan.rank
        return RunState.from_document(checkpoint.document, checkpoint.global_step), (
            state["epoch_rng"][rank], state["rng"][rank]
        )

    def _gather_rng(self, states: RngStates) -> list[RngStates]:
        """Every process's generator states, indexed by process (collective)."""
        world, accelerator = self.plan.world, self.plan.accelerator
        if world == 1:
            return [states]
        gathered = {k: accelerator.gather(v[None].to(accelerator.device)).cpu() for k, v in sorted(states.items())}
        return [{k: v[rank] for k, v in gathered.items()} for rank in range(world)]

    def _document(self, tensors: Mapping[str, torch.Tensor], state: RunState, seconds: float) -> dict[str, Any]:
        trainable = {n for n, _ in self.plan.trainable}
        return {
            **state.to_document(),
            "steps_per_epoch": self.plan.steps_per_epoch,
            "total_steps": self.plan.total_steps,
            "world_size": self.plan.world,
            "config": self.config.to_dict(),
            "train_seconds": seconds,
            "parameters": {n: [list(t.shape), str(t.dtype)] for n, t in tensors.items() if n in trainable},
            "buffers": {n: [list(t.shape), str(t.dtype)] for n, t in tensors.items() if n not in trainable},
            "callbacks": [type(c).__name__ for c in self.callbacks],
        }

    def _check_same_run(self, checkpoint: Checkpoint) -> None:
        document, plan = checkpoint.document, self.plan
        saved, now = document.get("config", {}), self.config.to_dict()
        pairs = [(k, saved.get(k), now[k]) for k in TRAJECTORY_FIELDS]
        counts = {"world_size": plan.world, "steps_per_epoch": plan.steps_per_epoch, "total_steps": plan.total_steps}
        pairs += [(k, document.get(k), have) for k, have in counts.items()]
        changed = [f"{key}: {then!r} in the checkpoint, {have!r} now" for key, then, have in pairs if then != have]
        if changed:
            raise CheckpointError(
                f"checkpoint {checkpoint.path} belongs to a run with other settings ({'; '.join(changed)}). An exact "
                "resume needs the same settings, batches and number of processes; to train on from its weights with "
                "new settings, load checkpoint.model into the model and start a new run in another output_dir"
            )
