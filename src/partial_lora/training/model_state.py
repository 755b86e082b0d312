"""The part of a model a checkpoint holds: trainable parameters and persistent buffers.

Frozen weights are not saved (the run rebuilds them from the base model); buffers are, as
they may change while training (BatchNorm statistics, AdaLoRA rank masks) and are small.
"""

from __future__ import annotations

import torch
from torch import nn

from .checkpoint import Checkpoint, CheckpointError


def persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Buffers that belong to the model's state (BatchNorm statistics, index buffers, ...)."""
    found = {}
    for module_name, module in model.named_modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and name not in module._non_persistent_buffers_set:
                found[f"{module_name}.{name}" if module_name else name] = buffer
    return found


def model_tensors(model: nn.Module, trainable: list[str]) -> dict[str, torch.Tensor]:
    """Trainable parameters and persistent buffers by name; tensors sharing memory are copied."""
    parameters = dict(model.named_parameters())
    tensors = {name: parameters[name] for name in trainable}
    tensors.update({n: b for n, b in persistent_buffers(model).items() if n not in tensors})
    seen: set[int] = set()
    out = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(pointer)
        out[name] = tensor
    return out


@torch.no_grad()
def load_model_tensors(model: nn.Module, checkpoint: Checkpoint) -> None:
    """Copy a checkpoint's parameters and buffers into ``model`` after checking names, shapes, dtypes."""
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    targets = dict(trainable)
    targets.update({n: b for n, b in persistent_buffers(model).items() if n not in targets})
    saved_parameters = set(checkpoint.document.get("parameters", {}))
    missing, unexpected = sorted(set(trainable) - saved_parameters), sorted(saved_parameters - set(trainable))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} was made for other trainable parameters (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); build the model exactly as for the interrupted run"
        )
    for name, value in checkpoint.model.items():
        target = targets.get(name)
        if target is None:
            raise CheckpointError(f"checkpoint {checkpoint.path} holds {name!r}, which the model does not have")
        if tuple(target.shape) != tuple(value.shape) or target.dtype != value.dtype:
            raise CheckpointError(
                f"checkpoint {checkpoint.path}: {name!r} is {tuple(value.shape)} {value.dtype}, the model's is "
                f"{tuple(target.shape)} {target.dtype}; build the model exactly as for the interrupted run"
            )
        target.copy_(value)
