"""Saving what a method trained, each in its natural format.

* PEFT methods: ``model.save_pretrained(directory)`` (``adapter_model.safetensors``), plus
  ``training_metadata.json`` (:data:`METADATA_NAME`) when there is metadata or the method
  wrapped 1x1 convolutions: their names, under ``pointwise_convs_as_linear``
  (:data:`WRAPPED_CONVS_KEY`), are what reloading must wrap first;
* this package's methods: :func:`partial_lora.save`;
* full fine-tuning: the whole state in ``model.safetensors`` (:data:`FULL_WEIGHTS_NAME`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from ..adapter_files import WEIGHTS_NAME
from ..adapter_files import save as save_partial_lora
from ..files import atomic_write_bytes, give_plain_modes
from .partial_adalora import finalized
from .pointwise import wrapped_convs
from .registry import TICKET_METHODS, check_method

METADATA_NAME = "training_metadata.json"
FULL_WEIGHTS_NAME = "model.safetensors"
WRAPPED_CONVS_KEY = "pointwise_convs_as_linear"  # reload: wrap_pointwise_convs(base, these names) first


def save_method(
    model: nn.Module,
    method: str,
    directory: str | os.PathLike,
    *,
    metadata: Mapping[str, Any] | None = None,
) -> int:
    """Save what ``method`` trained in its natural format; return the tensor file's size in bytes.

    * PEFT methods: ``model.save_pretrained(directory)`` (``adapter_model.safetensors``);
    * this package's methods: :func:`partial_lora.save` (Partial-AdaLoRA is saved as the
      rank-pruned Partial-LoRA :func:`~partial_lora.methods.partial_adalora.finalize` gives;
      the model is left unchanged);
    * full: ``model.safetensors`` with the whole state (shared tensors stored once).

    ``metadata`` goes into the Partial-LoRA config, or ``training_metadata.json`` for the others.
    The size counts the tensor file only: configs and model cards are a few KB whatever the model.
    """
    check_method(method)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if method in TICKET_METHODS:
        if method == "partial-adalora":
            with finalized(model):
                save_partial_lora(model, directory, metadata=metadata)
        else:
            save_partial_lora(model, directory, metadata=metadata)
        return (directory / WEIGHTS_NAME).stat().st_size
    if method == "full":
        from safetensors.torch import save_model

        path = directory / FULL_WEIGHTS_NAME
        save_model(model, str(path), metadata={"format": "pt"})
    else:
        if not hasattr(model, "save_pretrained") or not hasattr(model, "peft_config"):
            raise ValueError(
                f"method {method!r} expects the PeftModel build_method returned, got {type(model).__name__}"
            )
        model.save_pretrained(str(directory))
        path = directory / WEIGHTS_NAME
    wrapped = wrapped_convs(model)
    if wrapped:
        metadata = {**dict(metadata or {}), WRAPPED_CONVS_KEY: wrapped}
    if metadata:
        text = json.dumps(dict(metadata), indent=2, default=str) + "\n"
        atomic_write_bytes(directory / METADATA_NAME, text.encode())
    give_plain_modes(directory)
    return path.stat().st_size
