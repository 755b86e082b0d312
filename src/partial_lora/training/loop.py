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

Checkpoints (:mod:`.checkpoint`) hold everything a step depends on, so a resumed run ends
bit-identical (on CPU) to an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..surgery import adapter_layers
from .batches import check_batch, count_batches, nonfinite_inputs, shard, to_device
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    checkpoint_name,
    checkpoint_root,
    latest_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from .config import TRAJECTORY_FIELDS, TrainingConfig
from .evaluate import evaluate_classification, output_field
from .model_state import load_model_tensors, model_tensors
from .result import TrainingDiverged, TrainResult, optimizer_state_bytes, peak_gpu_bytes, peak_rss_bytes
from .rng import capture_rng, preserved_rng, restore_rng
from .schedule import make_scheduler

logger = logging.getLogger("partial_lora.training")
_PREPARE_MARKS = ("forward", "_original_forward", "_is_accelerate_prepared")

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
        accelerator: an ``accelerate.Accelerator`` to use (e.g. with an FSDP plugin);
            default: one made from ``config.mixed_precision`` and ``config.cpu``.

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
    run = _Run(model, train_batches, config, accelerator, eval_batches, evaluate, extra_loss, list(callbacks or []))
    return run.execute(resume)


def make_accelerator(config: TrainingConfig) -> Any:
    """An ``accelerate.Accelerator`` for ``config`` (CPU or not, mixed precision).

    accelerate keeps one process-wide state; in a single process whose state was made with
    other settings (a second run in the same Python session) it is reset. With several
    processes the launcher's settings must match the config.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    settings = {"cpu": config.cpu, "mixed_precision": config.mixed_precision, "step_scheduler_with_optimizer": False}
    try:
        return Accelerator(**settings)
    except ValueError as err:
        if "already been initialized" not in str(err) or PartialState().num_processes > 1:
            raise
    AcceleratorState._reset_state(reset_partial_state=True)  # single process: nothing to tear down
    return Accelerator(**settings)


class _Run:
    """State of one call to :func:`train`."""

    def __init__(self, model, batches, config, accelerator, eval_batches, evaluate, extra_loss, callbacks):
        self.config, self.batches, self.eval_batches = config, batches, eval_batches
        self.evaluate_fn, self.extra_loss, self.callbacks = evaluate, extra_loss, callbacks
        self.step_hooks, self.epoch_hooks = _hooks(callbacks)
        self.model = model
        self.trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.trainable:
            raise ValueError(
                "the model has no trainable parameters; add an adapter first (partial_lora.apply, a PEFT "
                "config) or unfreeze parameters with requires_grad_(True)"
            )
        self.accelerator = accelerator if accelerator is not None else make_accelerator(config)
        self._check_accelerator()
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.main = self.accelerator.is_main_process
        self.root = checkpoint_root(config.output_dir) if config.output_dir is not None else None
        self._count_steps()
        # counters (restored on resume)
        self.global_step, self.epoch, self.step_in_epoch = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.log_history: list[dict[str, Any]] = []
        self.epoch_loss = [0.0, 0]  # sum of step losses, steps, of the current epoch
        self.log_loss = [0.0, 0]  # since the last log entry
        self.seconds_before = 0.0
        self.epoch_rng: dict[str, torch.Tensor] | None = None
        self.pending_rng: tuple[dict, dict] | None = None  # (epoch start, step) states to restore
        self.last_checkpoint: Path | None = None
        self.resumed_from: int | None = None
        self.last_lr = 0.0

    # -- setup ---------------------------------------------------------------------------
    def _check_accelerator(self) -> None:
        accelerator, config = self.accelerator, self.config
        from accelerate.utils import DistributedType

        sharded = (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM, DistributedType.XLA)
        if accelerator.distributed_type in sharded:
            raise ValueError(
                f"distributed_type {accelerator.distributed_type} is not supported: the loop and its checkpoints "
                "handle one process or DDP (accelerate launch --multi_gpu, torchrun); sharded states are not saved"
            )
        if accelerator.gradient_accumulation_steps != 1:
            raise ValueError(
                "the accelerator accumulates gradients; the loop takes one step per batch: build bigger batches"
            )
        if accelerator.mixed_precision != config.mixed_precision:
            raise ValueError(
                f"the accelerator uses mixed_precision={accelerator.mixed_precision!r} but "
                f"TrainingConfig.mixed_precision={config.mixed_precision!r}; make them agree"
            )

    def _count_steps(self) -> None:
        batches = count_batches(self.batches)
        per_process = batches // self.world if self.config.shard_batches else batches
        if per_process < 1:
            raise ValueError(f"{batches} training batches cannot feed {self.world} processes; give more batches")
        if self.config.shard_batches and batches % self.world and self.main:
            logger.warning("%d batches over %d processes: the last %d of each epoch are not used",
                           batches, self.world, batches % self.world)
        if self.world > 1:
            counts = torch.tensor([per_process, len(self.trainable)], device=self.accelerator.device)
            gathered = self.accelerator.gather(counts[None]).cpu()
            if not bool((gathered == gathered[0]).all()):
                raise ValueError(
                    f"processes disagree on (steps per epoch, trainable tensors): {gathered.tolist()}; every "
                    "process must get the same batches (or, with shard_batches=False, equally many) and the same model"
                )
        self.steps_per_epoch = per_process
        self.total_steps = self.config.max_steps or self.config.epochs * per_process

    def _prepare(self) -> None:
        config = self.config
        adapters = {  # the adapter tensors of every Partial-LoRA (and Partial-AdaLoRA) layer, not its base
            id(parameter) for layer in adapter_layers(self.model).values()
            for name, parameter in layer.named_parameters(recurse=False) if name not in ("weight", "bias")
        }
        groups = []
        for adapter in (False, True):
            rate = config.learning_rate * (config.adapter_lr_scale if adapter else 1.0)
            chosen = [p for _, p in self.trainable if (id(p) in adapters) == adapter]
            groups.append({"params": [p for p in chosen if p.dim() >= 2], "weight_decay": config.weight_decay, "lr": rate})
            groups.append({"params": [p for p in chosen if p.dim() < 2], "weight_decay": 0.0, "lr": rate})
        optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=config.learning_rate, betas=config.betas, eps=config.eps
        )
        # Stepped by hand once per optimizer step: every process counts its own steps, while
        # accelerate's scheduler wrapper would step once per process.
        self.scheduler = make_scheduler(
            optimizer, warmup=config.warmup_for(self.total_steps), total=self.total_steps, schedule=config.schedule
        )
        self.wrapped, self.optimizer, _ = self.accelerator.prepare(self.model, optimizer, self.scheduler)
        self.unwrapped = self.accelerator.unwrap_model(self.wrapped)
        self.device = self.accelerator.device

    # -- the run -------------------------------------------------------------------------
    def execute(self, resume: bool | str) -> TrainResult:
        was_training = self.model.training
        patched = {k: self.model.__dict__[k] for k in _PREPARE_MARKS if k in self.model.__dict__}
        found = self._find_checkpoint(resume)
        self._prepare()
        if found is not None:
            self._restore(read_checkpoint(found))
        else:
            from accelerate.utils import set_seed

            set_seed(self.config.seed)
        self._started = time.perf_counter()
        self.progress = self._progress_bar()
        try:
            while self.global_step < self.total_steps:
                self._run_epoch()
        finally:
            self.progress.close()
            # accelerate patches the model object (autocast forward, a "prepared" mark); undo
            # that, so the model runs as before and can be trained again.
            for key in _PREPARE_MARKS:
                self.model.__dict__.pop(key, None)
            self.model.__dict__.update(patched)
            self.model.train(was_training)
        return self._result(self.seconds_before + time.perf_counter() - self._started)

    def _find_checkpoint(self, resume: bool | str) -> Path | None:
        if self.root is None:
            if resume is True:
                raise ValueError("resume=True needs TrainingConfig.output_dir, where the checkpoints are")
            return None
        found = latest_checkpoint(self.root)
        if resume is True and found is None:
            raise CheckpointError(f"resume=True but there is no checkpoint in {self.root}; start with resume=False")
        if resume is False and found is not None:
            raise CheckpointError(
                f"{self.root} already holds a checkpoint ({found.name}); pass resume=True to continue that run, "
                "or choose another output_dir (or delete it) to start over"
            )
        return found

    def _run_epoch(self) -> None:
        config = self.config
        steps_this_epoch = min(self.steps_per_epoch, self.total_steps - self.epoch * self.steps_per_epoch)
        skip = self.step_in_epoch
        if self.pending_rng is not None:  # resuming: iterate this epoch from the state it began in
            epoch_start, at_step = self.pending_rng
            restore_rng(epoch_start if skip else at_step)
            if not skip:
                self.pending_rng = None
        self.epoch_rng = capture_rng()
        if hasattr(self.batches, "set_epoch"):
            self.batches.set_epoch(self.epoch)
        self.wrapped.train()
        rank, world = (self.rank, self.world) if config.shard_batches else (0, 1)
        for local, batch in shard(self.batches, rank, world, steps_this_epoch):
            if local < skip:
                continue  # consumed before the checkpoint this run resumed from
            if self.pending_rng is not None:  # the skipped batches are behind us: the checkpoint's state
                restore_rng(self.pending_rng[1])
                self.pending_rng = None
            check_batch(batch, f"training batch {local} of epoch {self.epoch}")
            self._step(batch)
            self.step_in_epoch += 1
            if self.step_in_epoch < steps_this_epoch:
                self._maybe_checkpoint()
        if self.step_in_epoch < steps_this_epoch:
            raise ValueError(
                f"epoch {self.epoch} gave {self.step_in_epoch} batches to process {self.rank}, expected "
                f"{steps_this_epoch}; the training batches must yield the same number every pass"
            )
        self._end_epoch()
        self._maybe_checkpoint()

    def _step(self, batch: Mapping[str, Any]) -> None:
        step = self.global_step + 1
        bad_inputs = nonfinite_inputs(batch)
        batch = to_device(batch, self.device)
        outputs = self.wrapped(**batch)
        loss = output_field(outputs, "loss")
        if loss is None:
            raise ValueError(
                "the model returned no loss: every training batch needs 'labels' (or the model must compute a loss)"
            )
        if self.extra_loss is not None:
            loss = loss + self.extra_loss(self.unwrapped, step)
        value = self._check_loss(step, loss, bad_inputs)
        self.accelerator.backward(loss)
        grad_norm = None
        if self.config.max_grad_norm is not None:
            norm = self.accelerator.clip_grad_norm_([p for _, p in self.trainable], self.config.max_grad_norm)
            grad_norm = float(norm)
            if not math.isfinite(grad_norm) and self.accelerator.scaler is None:
                self._diverged(step, grad_norm, f"the gradient norm is {grad_norm}")
        self.last_lr = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        if not self.accelerator.optimizer_step_was_skipped:  # fp16 overflow: the scaler skipped it
            self.scheduler.step()
        self.global_step = step
        for hook in self.step_hooks:
            hook(self.unwrapped, step)
        self.optimizer.zero_grad(set_to_none=True)
        self._log(value, grad_norm)

    def _check_loss(self, step: int, loss: torch.Tensor, bad_inputs: list[str]) -> float:
        """The loss averaged over processes; raises on NaN/inf anywhere (on every process alike)."""
        if loss.dim() != 0:
            raise ValueError(f"the loss must be a scalar, got shape {tuple(loss.shape)}")
        flags = torch.stack([loss.detach().float(), torch.tensor(float(bool(bad_inputs)), device=loss.device)])
        if self.world > 1:
            flags = self.accelerator.reduce(flags, reduction="sum")
        value, bad = float(flags[0]) / self.world, float(flags[1])
        if bad_inputs:
            self._diverged(step, float("nan"), f"the batch's {', '.join(map(repr, bad_inputs))} holds NaN/inf values")
        if bad > 0:
            self._diverged(step, float("nan"), "a batch on another process holds NaN/inf values")
        if not math.isfinite(value):
            self._diverged(step, value, f"the loss is {value}")
        return value

    def _diverged(self, step: int, value: float, reason: str) -> None:
        raise TrainingDiverged(step, value, reason, self.last_checkpoint)

    def _log(self, loss: float, grad_norm: float | None) -> None:
        self.epoch_loss[0] += loss
        self.epoch_loss[1] += 1
        self.log_loss[0] += loss
        self.log_loss[1] += 1
        self.progress.update(1)
        if self.global_step % self.config.log_every == 0 or self.global_step == self.total_steps:
            mean = self.log_loss[0] / self.log_loss[1]
            entry = {"step": self.global_step, "epoch": self.epoch + 1, "loss": mean,
                     "learning_rate": self.last_lr, "grad_norm": grad_norm}
            self.log_history.append(entry)
            self.log_loss = [0.0, 0]
            self.progress.set_postfix(loss=f"{mean:.4f}", lr=f"{self.last_lr:.2e}")
            if self.main:
                logger.info("step %d/%d epoch %d loss %.4f lr %.3e", self.global_step, self.total_steps,
                            self.epoch + 1, mean, self.last_lr)

    def _end_epoch(self) -> None:
        last = self.global_step >= self.total_steps
        entry: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.global_step,
                                 "train_loss": self.epoch_loss[0] / max(1, self.epoch_loss[1]),
                                 "learning_rate": self.last_lr}
        if self.eval_batches is not None and (self.config.eval_every_epoch or last):
            entry.update({f"eval_{k}": v for k, v in self._evaluate().items()})
        self.history.append(entry)
        if self.main:
            logger.info("epoch %d: %s", self.epoch + 1, {k: v for k, v in entry.items() if k != "epoch"})
        for hook in self.epoch_hooks:
            hook(self.unwrapped, self.epoch + 1, dict(entry))
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_loss = [0.0, 0]

    def _evaluate(self) -> dict[str, float]:
        with preserved_rng():
            self.unwrapped.eval()
            try:
                if self.evaluate_fn is None:
                    metrics = evaluate_classification(
                        self.unwrapped, self.eval_batches, accelerator=self.accelerator, shard=self.config.shard_batches
                    )
                else:
                    metrics = self.evaluate_fn(self.unwrapped, self.eval_batches)
            finally:
                self.wrapped.train()
        if not isinstance(metrics, Mapping):
            raise TypeError(f"evaluate must return a dict of numbers, got {type(metrics).__name__}")
        result = {}
        for name, value in metrics.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"evaluate returned {name}={value!r}; every metric must be a number")
            result[str(name)] = float(value)
        return result

    # -- checkpoints ---------------------------------------------------------------------
    def _maybe_checkpoint(self) -> None:
        every = self.config.checkpoint_every
        if every is None or self.root is None:
            return
        if self.global_step % every == 0 or self.global_step == self.total_steps:
            self._checkpoint()

    def _checkpoint(self) -> None:
        for name, parameter in self.trainable:
            if not bool(torch.isfinite(parameter).all()):
                reason = f"parameter {name!r} holds NaN/inf values after the step"
                self._diverged(self.global_step, float("nan"), reason)
        rng = self._gather_rng(capture_rng())
        epoch_rng = self._gather_rng(self.epoch_rng if self.step_in_epoch else capture_rng())
        if self.main:
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None,
                "callbacks": {str(i): c.state_dict() for i, c in enumerate(self.callbacks) if _stateful(c)},
                "rng": rng,
                "epoch_rng": epoch_rng,
            }
            tensors = model_tensors(self.unwrapped, [n for n, _ in self.trainable])
            self.last_checkpoint = write_checkpoint(
                self.root, self.global_step, model_tensors=tensors, state=state,
                document=self._document(tensors), keep=self.config.keep_checkpoints,
            )
        else:
            self.last_checkpoint = self.root / checkpoint_name(self.global_step)
        self.accelerator.wait_for_everyone()

    def _gather_rng(self, states: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Every process's generator states, indexed by process (collective)."""
        if self.world == 1:
            return [states]
        gathered = {k: self.accelerator.gather(v[None].to(self.device)).cpu() for k, v in sorted(states.items())}
        return [{k: v[rank] for k, v in gathered.items()} for rank in range(self.world)]

    def _document(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        trainable = {n for n, _ in self.trainable}
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "world_size": self.world,
            "config": self.config.to_dict(),
            "history": self.history,
            "log_history": self.log_history,
            "epoch_loss": self.epoch_loss,
            "log_loss": self.log_loss,
            "last_lr": self.last_lr,
            "train_seconds": self.seconds_before + time.perf_counter() - self._started,
            "parameters": {n: [list(t.shape), str(t.dtype)] for n, t in tensors.items() if n in trainable},
            "buffers": {n: [list(t.shape), str(t.dtype)] for n, t in tensors.items() if n not in trainable},
            "callbacks": [type(c).__name__ for c in self.callbacks],
        }

    def _restore(self, checkpoint: Checkpoint) -> None:
        document, state = checkpoint.document, checkpoint.state
        self._check_same_run(checkpoint)
        load_model_tensors(self.unwrapped, checkpoint)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.accelerator.scaler is not None and state.get("scaler") is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        for index, callback in enumerate(self.callbacks):
            if _stateful(callback) and str(index) in state["callbacks"]:
                callback.load_state_dict(state["callbacks"][str(index)])
            elif self.main:
                logger.warning("callback %s has no saved state (state_dict/load_state_dict); resume may not be exact",
                               type(callback).__name__)
        self.global_step = checkpoint.global_step
        self.epoch, self.step_in_epoch = int(document["epoch"]), int(document["step_in_epoch"])
        self.history, self.log_history = list(document["history"]), list(document["log_history"])
        self.epoch_loss, self.log_loss = list(document["epoch_loss"]), list(document["log_loss"])
        self.last_lr = float(document["last_lr"])
        self.seconds_before = float(document["train_seconds"])
        self.pending_rng = (state["epoch_rng"][self.rank], state["rng"][self.rank])
        self.last_checkpoint, self.resumed_from = checkpoint.path, checkpoint.global_step
        if self.main:
            logger.info("resumed from %s (step %d of %d)", checkpoint.path, self.global_step, self.total_steps)

    def _check_same_run(self, checkpoint: Checkpoint) -> None:
        document = checkpoint.document
        saved = document.get("config", {})
        now = self.config.to_dict()
        pairs = [(k, saved.get(k), now[k]) for k in TRAJECTORY_FIELDS]
        pairs += [(k, document.get(k), have) for k, have in
                  (("world_size", self.world), ("steps_per_epoch", self.steps_per_epoch), ("total_steps", self.total_steps))]
        changed = [f"{key}: {then!r} in the checkpoint, {have!r} now" for key, then, have in pairs if then != have]
        if changed:
            raise CheckpointError(
                f"checkpoint {checkpoint.path} belongs to a run with other settings ({'; '.join(changed)}). An exact "
                "resume needs the same settings, batches and number of processes; to train on from its weights with "
                "new settings, load checkpoint.model into the model and start a new run in another output_dir"
            )

    # -- output --------------------------------------------------------------------------
    def _progress_bar(self):
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, initial=self.global_step, desc="train", unit="step",
                    disable=not (self.config.progress and self.main), dynamic_ncols=True)

    def _result(self, seconds: float) -> TrainResult:
        final = self.history[-1] if self.history else {}
        return TrainResult(
            metrics={k: v for k, v in final.items() if k not in ("epoch", "step")},
            history=self.history,
            log_history=self.log_history,
            train_seconds=seconds,
            steps=self.global_step,
            peak_rss_bytes=peak_rss_bytes(),
            peak_gpu_bytes=peak_gpu_bytes(self.device),
            optimizer_state_bytes=optimizer_state_bytes(self.optimizer),
            trainable_parameters=sum(p.numel() for _, p in self.trainable),
            checkpoint=str(self.last_checkpoint) if self.last_checkpoint is not None else None,
            resumed_from_step=self.resumed_from,
        )


def _hooks(callbacks: list[Any]) -> tuple[list[Callable], list[Callable]]:
    """``(on_step_end hooks, on_epoch_end hooks)``; a plain function counts as ``on_step_end``."""
    step_hooks, epoch_hooks = [], []
    for callback in callbacks:
        on_step, on_epoch = getattr(callback, "on_step_end", None), getattr(callback, "on_epoch_end", None)
        if on_step is None and on_epoch is None and callable(callback):
            on_step = callback
        if on_step is None and on_epoch is None:
            raise TypeError(
                f"callback {callback!r} has neither on_step_end(model, step) nor on_epoch_end(model, epoch, metrics)"
            )
        step_hooks += [on_step] if on_step is not None else []
        epoch_hooks += [on_epoch] if on_epoch is not None else []
    return step_hooks, epoch_hooks


def _stateful(callback: Any) -> bool:
    return callable(getattr(callback, "state_dict", None)) and callable(getattr(callback, "load_state_dict", None))
