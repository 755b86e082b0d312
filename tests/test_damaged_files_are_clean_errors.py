"""A damaged adapter, ticket or checkpoint file raises a clean error that names it.

Every file of each is truncated, bit-flipped, emptied, deleted or replaced by a folder; the
reader must raise a :class:`DamagedFileError` subclass, a ``ValueError`` or a
``FileNotFoundError`` (what the CLI reports with exit status 2, no traceback), whose message
names the file or its folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import partial_lora
from partial_lora import PartialLoraConfig
from partial_lora.files import DamagedFileError
from partial_lora.ticket import LayerTicket, Provenance, Ticket
from partial_lora.training.checkpoint import latest_checkpoint, read_checkpoint, write_checkpoint

from conftest import small_mlp

CLEAN = (DamagedFileError, ValueError, FileNotFoundError)
MUTATIONS = ["truncate-third", "truncate-last-byte", "flip-early", "flip-middle", "flip-last", "empty", "delete",
             "folder"]


def write_adapter(root: Path) -> Path:
    model = partial_lora.apply(small_mlp(), PartialLoraConfig(r=4, target_modules=["0", "2"], keep_ratio=0.5,
                                                              modules_to_save=["4"]))
    return partial_lora.save(model, root / "adapter")


def write_ticket(root: Path) -> Path:
    layers = {name: LayerTicket(0.5, 32, (64, 64), torch.rand(64), torch.rand(64)) for name in ("0", "2")}
    Ticket(layers, Provenance(method="uniform", threshold=0.5)).save(root / "ticket" / "ticket.json")
    return root / "ticket"


def write_run(root: Path) -> Path:
    write_checkpoint(root / "checkpoint", 4, model_tensors={"w": torch.arange(3.0)},
                     state={"optimizer": {"step": torch.tensor(4), "lr": 0.1}}, document={"epoch": 1})
    return root / "checkpoint"


KINDS = {
    "adapter": (write_adapter, lambda folder: partial_lora.load(small_mlp(), folder)),
    "ticket": (write_ticket, lambda folder: Ticket.load(folder / "ticket.json")),
    "checkpoint": (write_run, lambda folder: read_checkpoint(latest_checkpoint(folder))),
}


def damage(path: Path, mutation: str) -> None:
    data = bytearray(path.read_bytes())
    if mutation in ("delete", "folder"):
        path.unlink()
        if mutation == "folder":
            path.mkdir()
        return
    if mutation == "truncate-third":
        data = data[: len(data) // 3]
    elif mutation == "truncate-last-byte":
        data = data[:-1]
    elif mutation == "empty":
        data = bytearray()
    else:
        position = {"flip-early": 9, "flip-middle": len(data) // 2, "flip-last": len(data) - 2}[mutation]
        data[position] ^= 0x04
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_damaged_file_is_a_clean_error_naming_it(tmp_path, kind):
    write, read = KINDS[kind]
    pristine = write(tmp_path / "pristine")
    read(pristine)  # whole, it reads
    names = sorted(str(p.relative_to(pristine)) for p in pristine.rglob("*") if p.is_file())
    assert names
    for name in names:
        for mutation in MUTATIONS:
            folder = tmp_path / "damaged"
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(pristine, folder)
            damage(folder / name, mutation)
            try:
                read(folder)
            except CLEAN as err:
                message = str(err)
                assert str(folder) in message or Path(name).name in message, (name, mutation, message)
            else:
                # Only a checkpoint pointer that is gone (the newest checkpoint is read, as documented)
                # or damage that left valid JSON that passed validation: a trailing newline cut, or a
                # flipped letter in a part no checksum covers (the ticket JSON is not signed; the
                # pointer's copy of the checkpoint's checksum is not needed to read it).
                if name == "latest" and mutation in ("delete", "folder"):
                    continue
                assert name.endswith((".json", "latest")), (name, mutation)
                json.loads((folder / name).read_text(encoding="utf-8"))


def test_a_pipe_or_device_in_place_of_an_adapter_file_is_refused_not_read_forever(tmp_path):
    import os
    import threading

    import partial_lora
    from conftest import tiny_bert
    from partial_lora import AdapterFileError, PartialLoraConfig

    folder = tmp_path / "adapter"
    partial_lora.save(partial_lora.apply(tiny_bert(), PartialLoraConfig(r=2, keep_ratio=0.5)), folder)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (folder / name).rename(folder / (name + ".kept"))
        os.mkfifo(folder / name)
        outcome = {}

        def load() -> None:
            try:
                partial_lora.load(tiny_bert(), folder)
            except AdapterFileError as err:
                outcome["error"] = str(err)

        reader = threading.Thread(target=load, daemon=True)
        reader.start()
        reader.join(timeout=20)
        assert not reader.is_alive(), f"loading blocked on a pipe named {name}"
        assert "not a regular file" in outcome.get("error", ""), outcome
        (folder / name).unlink()
        (folder / (name + ".kept")).rename(folder / name)
