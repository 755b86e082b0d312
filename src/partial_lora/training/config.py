"""Configuration of a training run.

A :class:`TrainingConfig` holds the optimiser, schedule, checkpoint and logging settings of
:func:`partial_lora.training.train`. Batches are built by the caller, so batch size and
sequence length are not here. It is validated on creation: every wrong value raises
:class:`ValueError` naming the field, the value and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, NoReturn

from ..checks import invalid, is_int, is_number, known_fields

SCHEDULES = ("linear", "cosine", "constant")
MIXED_PRECISION = ("no", "fp16", "bf16")

# Fields that shape the trajectory: a run may only be resumed with the same values.
TRAJECTORY_FIELDS = (
    "learning_rate", "weight_decay", "betas", "eps", "epochs", "max_steps", "warmup_ratio",
    "warmup_steps", "schedule", "max_grad_norm", "seed", "mixed_precision", "shard_batches", "adapter_lr_scale",
)


def _fail(name: str, value: Any, allowed: str) -> NoReturn:
    invalid(f"TrainingConfig.{name}", value, allowed)


@dataclass
class TrainingConfig:
    """How to train.

    Attributes:
        learning_rate: peak learning rate of AdamW (> 0).
        weight_decay: AdamW's decoupled weight decay (>= 0), applied to trainable tensors
            with two or more dimensions (not to biases and norm scales).
        betas: AdamW's ``(beta1, beta2)``, each in [0, 1).
        eps: AdamW's epsilon (> 0).
        epochs: passes over the training batches (>= 1); ignored when ``max_steps`` is set.
        max_steps: total optimizer steps; overrides ``epochs`` (the last epoch is cut short).
        warmup_ratio: fraction of the total steps with a linear warm-up, in [0, 1).
        warmup_steps: warm-up length in steps; set this or ``warmup_ratio``, not both.
        schedule: after warm-up, ``"linear"`` decay to 0, ``"cosine"`` decay to 0, or ``"constant"``.
        max_grad_norm: clip the global L2 norm of the gradients to this value; None disables.
        adapter_lr_scale: learning-rate multiplier for the adapter tensors, those a module
            returns from ``adapter_parameters()`` (see :mod:`.optimizer`): Partial-LoRA's
            ``lora_A``/``lora_B``, Partial-AdaLoRA's ``P``/``E``/``Q``, never a base weight or
            bias; other trainable tensors (e.g. a new head) train at ``learning_rate`` (> 0).
        checkpoint_every: write a checkpoint every this many optimizer steps (and at the
            end) into ``output_dir/checkpoint``; None writes none.
        keep_checkpoints: how many of the newest checkpoints to keep (>= 1).
        eval_every_epoch: evaluate on the evaluation batches at the end of every epoch
            (otherwise only after the last one).
        seed: seeds python, numpy and torch on every process (>= 0).
        output_dir: folder of the run (checkpoints go to ``output_dir/checkpoint``).
        mixed_precision: ``"no"``, ``"fp16"`` or ``"bf16"`` (passed to accelerate).
        log_every: log the mean loss every this many steps (>= 1).
        progress: show a tqdm progress bar on the main process.
        cpu: train on the CPU even when an accelerator is present.
        shard_batches: with several processes, process ``k`` of ``n`` takes batches
            ``k, k + n, ...`` of the (identical) batches every process is given. Set False
            when each process is already given its own shard.
    """

    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    epochs: int = 3
    max_steps: int | None = None
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None
    schedule: str = "linear"
    max_grad_norm: float | None = 1.0
    adapter_lr_scale: float = 1.0
    checkpoint_every: int | None = None
    keep_checkpoints: int = 1
    eval_every_epoch: bool = True
    seed: int = 0
    output_dir: str | None = None
    mixed_precision: str = "no"
    log_every: int = 10
    progress: bool = True
    cpu: bool = False
    shard_batches: bool = True

    def __post_init__(self) -> None:
        if not is_number(self.learning_rate) or self.learning_rate <= 0:
            _fail("learning_rate", self.learning_rate, "expected a positive number, e.g. 2e-4")
        if not is_number(self.weight_decay) or self.weight_decay < 0:
            _fail("weight_decay", self.weight_decay, "expected a number >= 0, e.g. 0.01")
        betas = self.betas
        if (
            not isinstance(betas, (tuple, list)) or len(betas) != 2
            or not all(is_number(b) and 0 <= b < 1 for b in betas)
        ):
            _fail("betas", betas, "expected two numbers in [0, 1), e.g. (0.9, 0.999)")
        self.betas = (float(betas[0]), float(betas[1]))
        if not is_number(self.eps) or self.eps <= 0:
            _fail("eps", self.eps, "expected a positive number, e.g. 1e-8")
        if not is_int(self.epochs) or self.epochs < 1:
            _fail("epochs", self.epochs, "expected an integer >= 1")
        if self.max_steps is not None and (not is_int(self.max_steps) or self.max_steps < 1):
            _fail("max_steps", self.max_steps, "expected None or an integer >= 1")
        if not is_number(self.warmup_ratio) or not 0 <= self.warmup_ratio < 1:
            _fail("warmup_ratio", self.warmup_ratio, "expected a fraction in [0, 1), e.g. 0.06")
        if self.warmup_steps is not None:
            if not is_int(self.warmup_steps) or self.warmup_steps < 0:
                _fail("warmup_steps", self.warmup_steps, "expected None or an integer >= 0")
            if self.warmup_ratio > 0:
                _fail("warmup_steps", self.warmup_steps, f"set warmup_steps or warmup_ratio (={self.warmup_ratio}), not both")
        if self.schedule not in SCHEDULES:
            _fail("schedule", self.schedule, f"choose one of {', '.join(SCHEDULES)}")
        if not is_number(self.adapter_lr_scale) or self.adapter_lr_scale <= 0:
            _fail("adapter_lr_scale", self.adapter_lr_scale, "expected a positive factor (1.0 = learning_rate)")
        if self.max_grad_norm is not None and (not is_number(self.max_grad_norm) or self.max_grad_norm <= 0):
            _fail("max_grad_norm", self.max_grad_norm, "expected a positive number, e.g. 1.0, or None to disable clipping")
        if self.checkpoint_every is not None:
            if not is_int(self.checkpoint_every) or self.checkpoint_every < 1:
                _fail("checkpoint_every", self.checkpoint_every, "expected None or a number of steps >= 1")
            if self.output_dir is None:
                _fail("checkpoint_every", self.checkpoint_every, "checkpoints need an output_dir; set output_dir")
        if not is_int(self.keep_checkpoints) or self.keep_checkpoints < 1:
            _fail("keep_checkpoints", self.keep_checkpoints, "expected an integer >= 1")
        for name in ("eval_every_epoch", "progress", "cpu", "shard_batches"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, getattr(self, name), "expected True or False")
        if not is_int(self.seed) or self.seed < 0:
            _fail("seed", self.seed, "expected a non-negative integer")
        if self.output_dir is not None:
            if not isinstance(self.output_dir, str) and hasattr(self.output_dir, "__fspath__"):
                self.output_dir = str(self.output_dir)
            if not isinstance(self.output_dir, str) or not self.output_dir:
                _fail("output_dir", self.output_dir, "expected a folder path or None")
        if self.mixed_precision not in MIXED_PRECISION:
            _fail("mixed_precision", self.mixed_precision, f"choose one of {', '.join(MIXED_PRECISION)}")
        if not is_int(self.log_every) or self.log_every < 1:
            _fail("log_every", self.log_every, "expected an integer >= 1")

    def warmup_for(self, total_steps: int) -> int:
        """Warm-up length in steps for a run of ``total_steps`` steps."""
        if self.warmup_steps is not None:
            return min(self.warmup_steps, total_steps)
        return int(math.ceil(self.warmup_ratio * total_steps))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainingConfig":
        return cls(**known_fields(cls, data, "a training config"))
