"""Before the first step: the accelerator, the trainable tensors, the number of steps, and the
model, optimizer and scheduler as accelerate prepares them.

:func:`plan_run` checks everything that can be checked before training starts and returns a
:class:`Plan`, the same on every process; :func:`prepare` builds AdamW (:mod:`.optimizer`) and
the schedule and hands them to accelerate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

from .batches import count_batches
from .config import TrainingConfig
from .optimizer import make_optimizer
from .schedule import make_scheduler

logger = logging.getLogger("partial_lora.training")


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


@dataclass(frozen=True)
class Plan:
    """What a run is fixed to before its first step.

    Attributes:
        accelerator: the ``accelerate.Accelerator`` (one process or DDP).
        trainable: ``(name, parameter)`` of every parameter that requires gradients, in
            ``named_parameters()`` order.
        steps_per_epoch: optimizer steps of a full epoch on each process.
        total_steps: optimizer steps of the whole run.
    """

    accelerator: Any
    trainable: list[tuple[str, nn.Parameter]]
    steps_per_epoch: int
    total_steps: int

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def plan_run(model: nn.Module, batches: Iterable[Any], config: TrainingConfig, accelerator: Any = None) -> Plan:
    """Check the model, the accelerator and the batches, and count the steps."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(
            "the model has no trainable parameters; add an adapter first (partial_lora.apply, a PEFT "
            "config) or unfreeze parameters with requires_grad_(True)"
        )
    accelerator = accelerator if accelerator is not None else make_accelerator(config)
    check_accelerator(accelerator, config)
    per_epoch = _steps_per_epoch(batches, config, accelerator, len(trainable))
    return Plan(accelerator, trainable, per_epoch, config.max_steps or config.epochs * per_epoch)


def refuse_sharded(distributed_type: Any, user: str) -> None:
    """Raise ``ValueError`` unless ``distributed_type`` keeps whole tensors on every process.

    Checkpoints and adapter files are written from one process's whole tensors. FSDP,
    DeepSpeed and Megatron-LM shard parameters and optimizer state across processes, so their
    state would be saved in part or not at all; XLA (TPU) is refused with them, as the saving
    does not handle it. DDP keeps a whole copy on every process and works. ``user`` names what
    refuses, for the message.
    """
    from accelerate.utils import DistributedType

    sharded = (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM)
    if distributed_type in sharded or distributed_type == DistributedType.XLA:
        name = getattr(distributed_type, "value", distributed_type)
        why = ("it shards parameters and optimizer state across processes, while Partial-LoRA checkpoints and "
               "adapter files are written from whole tensors, so the state would not be saved"
               if distributed_type in sharded else "Partial-LoRA checkpoints and adapter files are not written on XLA")
        raise ValueError(
            f"{user} does not support {name}: {why}. Use DDP, which keeps a whole copy of the (small) adapters on "
            "every process: accelerate launch --multi_gpu --num_processes N (or torchrun --nproc_per_node N)"
        )


def check_accelerator(accelerator: Any, config: TrainingConfig) -> None:
    """Refuse what the loop and its checkpoints do not handle: sharded states, accumulation,
    a precision other than the config's."""
    refuse_sharded(accelerator.distributed_type, "the training loop")
    if accelerator.gradient_accumulation_steps != 1:
        raise ValueError(
            "the accelerator accumulates gradients; the loop takes one step per batch: build bigger batches"
        )
    if accelerator.mixed_precision != config.mixed_precision:
        raise ValueError(
            f"the accelerator uses mixed_precision={accelerator.mixed_precision!r} but "
            f"TrainingConfig.mixed_precision={config.mixed_precision!r}; make them agree"
        )


def _steps_per_epoch(batches: Iterable[Any], config: TrainingConfig, accelerator: Any, tensors: int) -> int:
    """Batches each process takes per epoch; every process must agree (collective with several)."""
    world = accelerator.num_processes
    total = count_batches(batches)
    per_process = total // world if config.shard_batches else total
    if per_process < 1:
        raise ValueError(f"{total} training batches cannot feed {world} processes; give more batches")
    if config.shard_batches and total % world and accelerator.is_main_process:
        logger.warning("%d batches over %d processes: the last %d of each epoch are not used",
                       total, world, total % world)
    if world > 1:
        counts = torch.tensor([per_process, tensors], device=accelerator.device)
        gathered = accelerator.gather(counts[None]).cpu()
        if not bool((gathered == gathered[0]).all()):
            raise ValueError(
                f"processes disagree on (steps per epoch, trainable tensors): {gathered.tolist()}; every "
                "process must get the same batches (or, with shard_batches=False, equally many) and the same model"
            )
    return per_process


# What accelerate's prepare() sets on the model object itself (an autocast forward, a mark).
_PREPARE_MARKS = ("forward", "_original_forward", "_is_accelerate_prepared")


@dataclass(frozen=True)
class Prepared:
    """The objects accelerate prepared, and what :func:`unprepare` needs to undo it.

    Attributes:
        model: what the loop calls (wrapped in DDP with several processes).
        unwrapped: the caller's model: what callbacks, evaluation and checkpoints see.
        optimizer: AdamW, wrapped by accelerate (mixed precision, skipped fp16 steps).
        scheduler: the learning-rate schedule, stepped by the loop itself once per optimizer step.
        marks: the model's own values of the attributes prepare() overwrites.
        was_training: the model's mode before the run.
    """

    model: nn.Module
    unwrapped: nn.Module
    optimizer: Any
    scheduler: Any
    marks: dict[str, Any]
    was_training: bool


def prepare(model: nn.Module, plan: Plan, config: TrainingConfig) -> Prepared:
    """AdamW (:mod:`.optimizer`) and its schedule, and the model, passed through ``accelerator.prepare``."""
    was_training = model.training
    marks = {k: model.__dict__[k] for k in _PREPARE_MARKS if k in model.__dict__}
    optimizer = make_optimizer(model, [p for _, p in plan.trainable], config)
    # Stepped by hand once per optimizer step: every process counts its own steps, while
    # accelerate's scheduler wrapper would step once per process.
    scheduler = make_scheduler(
        optimizer, warmup=config.warmup_for(plan.total_steps), total=plan.total_steps, schedule=config.schedule
    )
    wrapped, optimizer, _ = plan.accelerator.prepare(model, optimizer, scheduler)
    return Prepared(wrapped, plan.accelerator.unwrap_model(wrapped), optimizer, scheduler, marks, was_training)


def unprepare(model: nn.Module, prepared: Prepared) -> None:
    """Undo what prepare() did to the model object, so it runs as before and can be trained again."""
    for key in _PREPARE_MARKS:
        model.__dict__.pop(key, None)
    model.__dict__.update(prepared.marks)
    model.train(prepared.was_training)
