"""The training loop: AdamW, warm-up and decay, clipping, evaluation, exact resume.

Built on ``accelerate``: the same code runs on one CPU, one GPU, or several processes on
several machines when started with ``accelerate launch`` or ``torchrun`` (DDP). Only
parameters with ``requires_grad`` are trained, so it serves Partial-LoRA, PEFT adapters
(LoRA, AdaLoRA, VeRA, DoRA) and full fine-tuning alike.

One optimizer step, on every process::

    loss = model(**batch).loss (+ extra_loss(model, step))      NaN/inf -> TrainingDiverged
    backward; clip the gradient norm; optimizer.step(); scheduler.step()
    callback.on_step_end(model, step)                            gradients still present
    optimizer.zero_grad()

The pieces: :mod:`.setup` (accelerator, step count, AdamW and its schedule), :mod:`.optimizer`
(parameter groups; the adapter protocol), :mod:`.state` (counters and histories),
:mod:`.divergence` (NaN/inf checks), :mod:`.resume` (checkpoints: they hold everything a step
depends on, so a resumed run ends bit-identical, on CPU, to an uninterrupted one).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from .batches import check_batch, nonfinite_inputs, shard, to_device
from .callbacks import split_hooks
from .checkpoint import Checkpoint, checkpoint_root, read_checkpoint
from .config import TrainingConfig
from .divergence import check_grad_norm, check_parameters, checked_loss
from .epoch_metrics import evaluate_epoch
from .evaluate import output_field
from .result import TrainResult, optimizer_state_bytes, peak_gpu_bytes, peak_rss_bytes
from .resume import Checkpointer, find_checkpoint
from .rng import capture_rng, restore_rng
from .setup import plan_run, prepare, unprepare
from .state import RunState

logger = logging.getLogger("partial_lora.training")

Evaluate = Callable[[nn.Module, Iterable[Any]], Mapping[str, float]]
ExtraLoss = Callable[[nn.Module, int], torch.Tensor]


def train(
    model: nn.Module,
    train_batches: Iterable[Mapping[str, Any]],
    config: TrainingConfig,
    *,
    eval_batches: Iterable[Mapping[str, Any]] | None = None,
    evaluate: Evaluate | None = None,
    resume: bool | str = False,
    extra_loss: ExtraLoss | None = None,
    callbacks: Sequence[Any] | None = None,
    accelerator: Any = None,
) -> TrainResult:
    """Train the parameters of ``model`` that require gradients.

    Args:
        model: returns ``.loss`` from ``model(**batch)`` (the transformers convention).
            Trained in place.
        train_batches: a re-iterable of dict batches holding ``labels``. If it has
            ``set_epoch(epoch)``, that is called before every epoch (0-based), so the order
            of each epoch is fixed. With several processes every process is given the same
            batches and takes every ``n``-th (see ``TrainingConfig.shard_batches``).
        config: the run's settings.
        eval_batches: evaluated at the end of every epoch (or only the last, see
            ``config.eval_every_epoch``).
        evaluate: ``evaluate(model, eval_batches) -> {name: number}``; default: loss,
            accuracy and macro-F1 of a classifier (:func:`evaluate_classification`). Called
            on every process with the unwrapped model; the generators' states are restored
            afterwards, so evaluation never changes the training trajectory.
        resume: True: continue from the latest checkpoint in ``config.output_dir`` (error
            if there is none); ``"auto"``: continue if there is one; False: start fresh
            (error if a checkpoint exists, so a finished run is never overwritten by mistake).
        extra_loss: ``extra_loss(model, step) -> scalar`` added to the loss (AdaLoRA's
            orthogonal penalty); ``step`` is the 1-based step being computed.
        callbacks: objects with any of ``on_step_end(model, step)`` (after
            ``optimizer.step()``, before ``zero_grad()``: AdaLoRA's rank allocation) and
            ``on_epoch_end(model, epoch, metrics)``. A callback with ``state_dict()`` and
            ``load_state_dict(state)`` (tensors, lists, dicts, numbers) is checkpointed too.
        accelerator: an ``accelerate.Accelerator`` to use, for one process or DDP (sharded
            set-ups such as FSDP or DeepSpeed are refused); default: one made from
            ``config.mixed_precision`` and ``config.cpu`` (:func:`make_accelerator`).

    Returns:
        a :class:`TrainResult` (metrics, per-epoch history, time, peak memory, ...).

    Raises:
        TrainingDiverged: a NaN/inf loss, gradient norm, input or parameter; the last good
            checkpoint is left untouched.
        CheckpointError: ``resume`` found a damaged checkpoint or one from another run.
        ValueError: wrong arguments (no trainable parameters, one-shot batches, ...).
    """
    if not isinstance(config, TrainingConfig):
        raise TypeError(f"config must be a TrainingConfig, got {type(config).__name__}")
    if resume not in (True, False, "auto"):
        raise ValueError(f"resume={resume!r} is invalid: use True, False or 'auto'")
    if evaluate is not None and not callable(evaluate):
        raise TypeError("evaluate must be a callable evaluate(model, eval_batches) -> dict")
    loop = _Loop(model, train_batches, config, accelerator, eval_batches, evaluate, extra_loss, list(callbacks or []))
    return loop.run(resume)


class _Loop:
    """One call to :func:`train`: the epochs and steps of a planned run."""

    def __init__(self, model, batches, config, accelerator, eval_batches, evaluate, extra_loss, callbacks):
        self.model, self.batches, self.config, self.callbacks = model, batches, config, callbacks
        self.eval_batches, self.evaluate_fn, self.extra_loss = eval_batches, evaluate, extra_loss
        self.step_hooks, self.epoch_hooks = split_hooks(callbacks)
        self.plan = plan_run(model, batches, config, accelerator)
        self.accelerator = self.plan.accelerator
        self.root = checkpoint_root(config.output_dir) if config.output_dir is not None else None
        self.state = RunState()
        self.epoch_rng: dict[str, torch.Tensor] | None = None  # the generators when this epoch began
        self.pending_rng: tuple[dict, dict] | None = None  # resuming: (epoch start, step) states to put back
        self.last_checkpoint: Path | None = None
        self.resumed_from: int | None = None

    def run(self, resume: bool | str) -> TrainResult:
        found = find_checkpoint(self.root, resume)
        self.prepared = prepare(self.model, self.plan, self.config)
        self.checkpointer = None
        if self.root is not None:
            self.checkpointer = Checkpointer(self.root, self.config, self.plan, self.prepared, self.callbacks)
        if found is not None:
            self._resume(read_checkpoint(found))
        else:
            from accelerate.utils import set_seed

            set_seed(self.config.seed)
        self.started = time.perf_counter()
        self.bar = self._progress_bar()
        try:
            while self.state.global_step < self.plan.total_steps:
                self._run_epoch()
        finally:
            self.bar.close()
            unprepare(self.model, self.prepared)
        return self._result()

    def _resume(self, checkpoint: Checkpoint) -> None:
        self.state, self.pending_rng = self.checkpointer.restore(checkpoint)
        self.last_checkpoint, self.resumed_from = checkpoint.path, checkpoint.global_step
        if self.plan.main:
            logger.info("resumed from %s (step %d of %d)", checkpoint.path, checkpoint.global_step,
                        self.plan.total_steps)

    def _run_epoch(self) -> None:
        state, plan = self.state, self.plan
        steps_this_epoch = min(plan.steps_per_epoch, plan.total_steps - state.epoch * plan.steps_per_epoch)
        skip = state.step_in_epoch
        if self.pending_rng is not None:  # resuming: iterate this epoch from the state it began in
            epoch_start, at_step = self.pending_rng
            restore_rng(epoch_start if skip else at_step)
            if not skip:
                self.pending_rng = None
        self.epoch_rng = capture_rng()
        if hasattr(self.batches, "set_epoch"):
            self.batches.set_epoch(state.epoch)
        self.prepared.model.train()
        rank, world = (plan.rank, plan.world) if self.config.shard_batches else (0, 1)
        for local, batch in shard(self.batches, rank, world, steps_this_epoch):
            if local < skip:
                continue  # consumed before the checkpoint this run resumed from
            if self.pending_rng is not None:  # the skipped batches are behind us: the checkpoint's state
                restore_rng(self.pending_rng[1])
                self.pending_rng = None
            check_batch(batch, f"training batch {local} of epoch {state.epoch}")
            self._step(batch)
            state.step_in_epoch += 1
            if state.step_in_epoch < steps_this_epoch:
                self._maybe_checkpoint()
        if state.step_in_epoch < steps_this_epoch:
            raise ValueError(
                f"epoch {state.epoch} gave {state.step_in_epoch} batches to process {plan.rank}, expected "
                f"{steps_this_epoch}; the training batches must yield the same number every pass"
            )
        self._end_epoch()
        self._maybe_checkpoint()

    def _step(self, batch: Mapping[str, Any]) -> None:
        accelerator, prepared = self.accelerator, self.prepared
        step = self.state.global_step + 1
        bad_inputs = nonfinite_inputs(batch)
        loss = output_field(prepared.model(**to_device(batch, accelerator.device)), "loss")
        if loss is None:
            raise ValueError(
                "the model returned no loss: every training batch needs 'labels' (or the model must compute a loss)"
            )
        if self.extra_loss is not None:
            loss = loss + self.extra_loss(prepared.unwrapped, step)
        value = checked_loss(loss, bad_inputs, step, accelerator, self.last_checkpoint)
        accelerator.backward(loss)
        grad_norm = None
        if self.config.max_grad_norm is not None:
            parameters = [p for _, p in self.plan.trainable]
            grad_norm = float(accelerator.clip_grad_norm_(parameters, self.config.max_grad_norm))
            check_grad_norm(grad_norm, step, accelerator, self.last_checkpoint)
        self.state.last_lr = float(prepared.optimizer.param_groups[0]["lr"])
        prepared.optimizer.step()
        if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: the scaler skipped it
            prepared.scheduler.step()
        self.state.global_step = step
        for hook in self.step_hooks:
            hook(prepared.unwrapped, step)
        prepared.optimizer.zero_grad(set_to_none=True)
        self._log(value, grad_norm)

    def _log(self, loss: float, grad_norm: float | None) -> None:
        entry = self.state.add_step_loss(loss, grad_norm, self.config.log_every, self.plan.total_steps)
        self.bar.update(1)
        if entry is not None:
            self.bar.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['learning_rate']:.2e}")
            if self.plan.main:
                logger.info("step %d/%d epoch %d loss %.4f lr %.3e", entry["step"], self.plan.total_steps,
                            entry["epoch"], entry["loss"], entry["learning_rate"])

    def _end_epoch(self) -> None:
        last = self.state.global_step >= self.plan.total_steps
        evaluated = self.eval_batches is not None and (self.config.eval_every_epoch or last)
        metrics = evaluate_epoch(self.prepared, self.eval_batches, self.evaluate_fn, self.accelerator,
                                 self.config.shard_batches) if evaluated else {}
        entry = self.state.add_epoch_entry(metrics)
        if self.plan.main:
            logger.info("epoch %d: %s", entry["epoch"], {k: v for k, v in entry.items() if k != "epoch"})
        for hook in self.epoch_hooks:
            hook(self.prepared.unwrapped, entry["epoch"], dict(entry))
        self.state.start_next_epoch()

    def _maybe_checkpoint(self) -> None:
        every, step = self.config.checkpoint_every, self.state.global_step
        if every is None or self.checkpointer is None:
            return
        if step % every == 0 or step == self.plan.total_steps:
            check_parameters(self.plan.trainable, step, self.last_checkpoint)
            self.last_checkpoint = self.checkpointer.save(self.state, self.epoch_rng, self._seconds())

    def _seconds(self) -> float:
        return self.state.seconds_before + time.perf_counter() - self.started

    def _progress_bar(self):
        from tqdm.auto import tqdm

        return tqdm(total=self.plan.total_steps, initial=self.state.global_step, desc="train", unit="step",
                    disable=not (self.config.progress and self.plan.main), dynamic_ncols=True)

    def _result(self) -> TrainResult:
        final = self.state.history[-1] if self.state.history else {}
        return TrainResult(
            metrics={k: v for k, v in final.items() if k not in ("epoch", "step")},
            history=self.state.history,
            log_history=self.state.log_history,
            train_seconds=self._seconds(),
            steps=self.state.global_step,
            peak_rss_bytes=peak_rss_bytes(),
            peak_gpu_bytes=peak_gpu_bytes(self.accelerator.device),
            optimizer_state_bytes=optimizer_state_bytes(self.prepared.optimizer),
            trainable_parameters=sum(p.numel() for _, p in self.plan.trainable),
            checkpoint=str(self.last_checkpoint) if self.last_checkpoint is not None else None,
            resumed_from_step=self.resumed_from,
        )

