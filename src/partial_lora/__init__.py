"""Partial-LoRA: LoRA adapters pruned, layer by layer, to a sparsity derived from a few examples.

The package reads as the method, in order:

* :mod:`partial_lora.ticket` - per-layer keep ratios from a few labelled examples;
* :mod:`partial_lora.selection` - which rows and columns each layer keeps;
* :mod:`partial_lora.layer` - the compact adapter layer;
* :mod:`partial_lora.surgery` - putting adapters into a model, merging them out;
* :mod:`partial_lora.summary` - what a model trains, per layer, against a dense LoRA;
* :mod:`partial_lora.adapter_files` and :mod:`partial_lora.peft_interop` - saving, loading, PEFT folders;
* :mod:`partial_lora.methods` - every method of the comparison (PEFT baselines, Partial-AdaLoRA) by name;
* :mod:`partial_lora.training` and :mod:`partial_lora.cli` - training and the command line;
* :mod:`partial_lora.integrations` - the Hugging Face ``Trainer`` (imported on its own: it needs transformers).
"""

from .config import PartialLoraConfig
from .adapter_files import AdapterFileError, load, load_weights, save
from .layer import PartialLoraLayer
from .peft_interop import export_peft, import_peft
from .summary import AdapterSummary, adapter_summary, print_trainable_parameters
from .surgery import adapter_layers, apply, disable_adapters, merge, trainable_parameters
from .ticket import Ticket, find_ticket

__version__ = "0.1.0"

__all__ = [
    "AdapterFileError",
    "AdapterSummary",
    "PartialLoraConfig",
    "PartialLoraLayer",
    "Ticket",
    "adapter_layers",
    "adapter_summary",
    "apply",
    "disable_adapters",
    "export_peft",
    "find_ticket",
    "import_peft",
    "load",
    "load_weights",
    "merge",
    "print_trainable_parameters",
    "save",
    "trainable_parameters",
]
