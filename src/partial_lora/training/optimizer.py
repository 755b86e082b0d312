"""AdamW's parameter groups, and how the loop tells adapter tensors from the others.

The adapter protocol (:class:`AdapterModule`): a module that carries an adapter has a method

    adapter_parameters() -> list[nn.Parameter]

returning its adapter tensors only, never the base weight and bias it wraps. A
:class:`~partial_lora.PartialLoraLayer` returns ``[lora_A, lora_B]``, a Partial-AdaLoRA layer
``[lora_P, lora_E, lora_Q]``. The loop walks ``model.modules()`` and asks every module that
has the method; it knows nothing else about adapters, so any adapter type that follows the
protocol gets ``TrainingConfig.adapter_lr_scale``.

AdamW's groups, in this order, empty ones left out (a checkpoint stores the optimizer state
by group index, so the order is part of the checkpoint format)::

    group                            weight decay    learning rate
    other tensors, >= 2 dimensions   weight_decay    learning_rate
    other tensors, <  2 dimensions   0               learning_rate
    adapter tensors, >= 2 dimensions weight_decay    learning_rate * adapter_lr_scale
    adapter tensors, <  2 dimensions 0               learning_rate * adapter_lr_scale

Within a group the tensors keep the order of ``model.named_parameters()``.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from .config import TrainingConfig


@runtime_checkable
class AdapterModule(Protocol):
    """A module that carries an adapter (see the module docstring)."""

    def adapter_parameters(self) -> list[nn.Parameter]: ...


def adapter_parameter_ids(model: nn.Module) -> set[int]:
    """``id()`` of every tensor that a module of ``model`` names in ``adapter_parameters()``."""
    return {
        id(parameter)
        for module in model.modules() if isinstance(module, AdapterModule)
        for parameter in module.adapter_parameters()
    }


def parameter_groups(
    model: nn.Module, trainable: Sequence[nn.Parameter], config: TrainingConfig
) -> list[dict[str, Any]]:
    """AdamW's parameter groups for the ``trainable`` tensors of ``model`` (see the module docstring)."""
    adapters = adapter_parameter_ids(model)
    groups = []
    for adapter in (False, True):
        rate = config.learning_rate * (config.adapter_lr_scale if adapter else 1.0)
        chosen = [p for p in trainable if (id(p) in adapters) == adapter]
        groups.append({"params": [p for p in chosen if p.dim() >= 2], "weight_decay": config.weight_decay, "lr": rate})
        groups.append({"params": [p for p in chosen if p.dim() < 2], "weight_decay": 0.0, "lr": rate})
    return [group for group in groups if group["params"]]


def make_optimizer(model: nn.Module, trainable: Sequence[nn.Parameter], config: TrainingConfig) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups`, with the config's betas and epsilon."""
    return torch.optim.AdamW(
        parameter_groups(model, trainable, config), lr=config.learning_rate, betas=config.betas, eps=config.eps
    )
