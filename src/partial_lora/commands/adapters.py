"""``partial-lora eval | export | merge``: use a saved adapter (its base is rebuilt from its metadata)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .. import adapter_files
from ..files import give_plain_modes
from ..peft_interop import export_peft
from ..surgery import merge
from .output import Output
from .settings import Settings, resolve
from .task import Task, build_task


def _base_for_adapter(settings: Settings, adapter: Path) -> tuple[Task, torch.nn.Module, dict[str, Any]]:
    document = adapter_files.read_config(adapter)
    metadata = document.get("metadata") or {}
    split_keys = ("train_per_class", "validation_per_class", "test_per_class", "validation_fraction", "test_fraction")
    updates = {k: metadata[k] for k in ("model", "dataset", "max_length", *split_keys)
               if metadata.get(k) and
               getattr(settings, k) in (None, Settings().__getattribute__(k))}
    settings = resolve(replace(settings, **updates))
    task = build_task(settings)
    return task, task.new_model(), document


def eval_command(settings: Settings, args: Any) -> int:
    task, base, _ = _base_for_adapter(settings, Path(args.adapter))
    model = adapter_files.load(base, args.adapter)
    metrics = task.score(model, "test").metrics
    print(json.dumps(metrics, indent=2))
    return 0


def export_command(settings: Settings, args: Any) -> int:
    with Output(settings) as output:  # holds --out's lock until the command ends
        output.check()
        _, base, _ = _base_for_adapter(settings, Path(args.adapter))
        model = adapter_files.load(base, args.adapter)
        export_peft(model, output.open())
        out = output.commit()
        print(f"wrote a PEFT LoRA folder to {out}")
        return 0


def merge_command(settings: Settings, args: Any) -> int:
    with Output(settings) as output:  # holds --out's lock until the command ends
        output.check()
        task, base, _ = _base_for_adapter(settings, Path(args.adapter))
        model = merge(adapter_files.load(base, args.adapter))
        work = output.open()
        model.save_pretrained(work, safe_serialization=True)
        if task.tokenizer is not None:
            task.tokenizer.save_pretrained(work)
        give_plain_modes(work)
        out = output.commit()
        print(f"wrote the merged model to {out}")
        return 0
