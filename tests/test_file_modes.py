"""Everything the package writes gets a plain file's permissions under the umask: 0644 files
and 0755 folders under umask 022 (temporary-file helpers such as mkstemp would give 0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import partial_lora
from partial_lora import PartialLoraConfig
from partial_lora.commands.report import write_report, write_results
from partial_lora.methods.saving import save_method
from partial_lora.models.smollm2 import publish_folder
from partial_lora.ticket import LayerTicket, Provenance, Ticket
from partial_lora.training.checkpoint import write_checkpoint

from conftest import small_mlp


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def modes(root: Path) -> dict[str, int]:
    """``{relative path: permission bits}`` of ``root`` and everything below it."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return found


def write_everything(out: Path) -> None:
    """Every kind of file the package writes, under ``out``."""
    model = partial_lora.apply(small_mlp(), PartialLoraConfig(r=4, target_modules=["0", "2"], keep_ratio=0.5,
                                                              modules_to_save=["4"]))
    partial_lora.save(model, out / "adapter")
    partial_lora.save(model, out / "adapter")  # replacing an adapter keeps the modes
    partial_lora.export_peft(model, out / "peft")
    save_method(model, "partial-lora", out / "method", metadata={"run": 1})
    layer = LayerTicket(0.5, 32, (64, 64), torch.rand(64), torch.rand(64))
    Ticket({"0": layer}, Provenance(method="uniform", threshold=0.5)).save(out / "tickets" / "ticket.json")
    write_checkpoint(out / "run" / "checkpoint", 1, model_tensors={"w": torch.zeros(3)},
                     state={"step": torch.tensor(1)}, document={"epoch": 0})
    write_checkpoint(out / "run" / "checkpoint", 2, model_tensors={"w": torch.ones(3)},
                     state={"step": torch.tensor(2)}, document={"epoch": 0})
    (out / "report").mkdir()
    write_results(out / "report", {"results": []})
    write_report(out / "report", title="t", settings={}, table="", verdict="", plots=[])

    def cache(staging: Path) -> None:  # the SmolLM2 cache folder, without converting the model
        (staging / "config.json").write_text("{}")
        save_file({"w": torch.zeros(2)}, str(staging / "model.safetensors"))  # 0o600, as save_pretrained writes it

    publish_folder(out / "cache" / "smollm2", cache)


def test_files_are_0644_and_folders_0755_under_umask_022(tmp_path, umask):
    out = tmp_path / "out"
    out.mkdir()
    write_everything(out)
    found = modes(out)
    wrong = {name: oct(mode) for name, mode in found.items()
             if mode != (0o755 if (out / name).is_dir() else 0o644)}
    assert not wrong, wrong
    names = set(found)
    assert {"adapter/adapter_model.safetensors", "peft/partial_lora_base.json", "tickets/ticket.scores.safetensors",
            "run/checkpoint/latest", "run/checkpoint/checkpoint-00000002/trainer_state.json", "report/report.md",
            "cache/smollm2/model.safetensors"} <= names
    assert not [name for name in names if name.endswith(".tmp")]


def test_a_stricter_umask_is_respected(tmp_path, umask):
    umask(0o077)
    out = tmp_path / "out"
    out.mkdir()
    write_everything(out)
    wrong = {name: oct(mode) for name, mode in modes(out).items()
             if mode != (0o700 if (out / name).is_dir() else 0o600)}
    assert not wrong, wrong
