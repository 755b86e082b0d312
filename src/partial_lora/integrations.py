"""Training a Partial-LoRA model with the Hugging Face ``transformers.Trainer``.

A plain ``Trainer`` saves with ``model.save_pretrained``: the whole model, frozen base
included, in a file that ``from_pretrained`` reads back without the adapter layers; it
resumes by loading that full state dict. It has no hook for another format, so
:class:`PartialLoraTrainerMixin` overrides the three Trainer methods that move model
weights, and nothing else:

* ``_save`` (checkpoints and ``save_model``): :func:`partial_lora.save`, the adapters and the
  modules trained in full, atomic and checksummed. The Trainer still writes its own files
  next to it (optimizer and scheduler state of the trainable tensors only, RNG states,
  ``trainer_state.json``, ``training_args.bin``), plus the tokenizer or processor if it has one;
* ``_load_from_checkpoint`` (``train(resume_from_checkpoint=...)``) and ``_load_best_model``
  (``load_best_model_at_end=True``): :func:`partial_lora.load_weights`, which copies the saved
  tensors into the model's adapters after checking they are the same adapters.

A folder written by ``save_model`` is a Partial-LoRA adapter folder: reload it with
``partial_lora.load(base_model, folder)``, export it with ``partial-lora export``. Sharded
set-ups (FSDP, DeepSpeed) are refused when the trainer is built; DDP works.

Usage::

    model = partial_lora.apply(base_model, config)
    trainer = PartialLoraTrainer(model=model, args=TrainingArguments(...), train_dataset=...)
    trainer.train()
    trainer.save_model("adapter/")

With another ``Trainer`` subclass, put the mixin first::

    from trl import SFTTrainer

    class PartialLoraSFTTrainer(PartialLoraTrainerMixin, SFTTrainer):
        pass

This module imports transformers; ``import partial_lora`` does not import it.
"""

from __future__ import annotations

import logging
import os

import torch
from accelerate.utils import DistributedType
from torch import nn
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME

from .adapter_files import load_weights, save
from .surgery import adapter_layers
from .training.setup import refuse_sharded

logger = logging.getLogger("partial_lora.integrations")


class PartialLoraTrainerMixin:
    """Makes a ``transformers.Trainer`` (or any subclass of it) save, resume and reload Partial-LoRA
    adapters in this package's format. Put it before the Trainer class in the bases."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        kind = self.accelerator.distributed_type
        if getattr(self, "is_fsdp_enabled", False):
            kind = DistributedType.FSDP
        elif getattr(self, "is_deepspeed_enabled", False):
            kind = DistributedType.DEEPSPEED
        refuse_sharded(kind, type(self).__name__)
        if not adapter_layers(self._partial_lora_model()):
            raise ValueError(
                f"{type(self).__name__} trains a model with Partial-LoRA adapters; call partial_lora.apply(model, "
                "config) first (for a model without them, use transformers.Trainer)"
            )

    def _partial_lora_model(self, model: nn.Module | None = None) -> nn.Module:
        """The user's model, without the wrappers (DDP, torch.compile) the Trainer may have added."""
        unwrapped = self.accelerator.unwrap_model(model if model is not None else self.model)
        return getattr(unwrapped, "_orig_mod", unwrapped)  # torch.compile keeps the module here

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write the adapter folder (``save_model`` and every checkpoint come here), on the main process."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        logger.info("saving the Partial-LoRA adapter to %s", output_dir)
        save(self._partial_lora_model(), output_dir)
        tokenizer = getattr(self, "processing_class", None)
        if tokenizer is None:
            tokenizer = getattr(self.data_collator, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))  # the Trainer's own record of the run

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Resuming: the checkpoint's adapter tensors go into the model's adapters, verified first."""
        logger.info("resuming the Partial-LoRA adapter from %s", resume_from_checkpoint)
        load_weights(self._partial_lora_model(model), resume_from_checkpoint)

    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: the best checkpoint's adapter tensors go into the model's adapters."""
        logger.info("loading the best Partial-LoRA adapter from %s (%s %s)", self.state.best_model_checkpoint,
                    self.args.metric_for_best_model, self.state.best_metric)
        load_weights(self._partial_lora_model(), self.state.best_model_checkpoint)


class PartialLoraTrainer(PartialLoraTrainerMixin, Trainer):
    """``transformers.Trainer`` for a model with Partial-LoRA adapters: a drop-in replacement
    whose checkpoints and ``save_model`` folders hold only the adapter (see the module docstring)."""
