"""Crash-safe training checkpoints: safetensors and JSON, nothing pickled.

Layout under ``<output_dir>/checkpoint``::

    latest                              {"checkpoint": "checkpoint-00000006", "global_step": 6, ...}
    checkpoint-00000006/
        model.safetensors               trainable parameters and persistent buffers, by name
        training_state.safetensors      tensors of the optimizer, scheduler, grad scaler,
                                        callbacks and every process's RNG states
        trainer_state.json              counters, config, metrics history, the JSON skeleton
                                        of the training state (see :mod:`.flatten`), the
                                        sha256 of both tensor files and of itself

A checkpoint is written into ``checkpoint-<step>.tmp/`` (every file flushed to disk),
renamed to ``checkpoint-<step>/``, and only then is ``latest`` replaced atomically and
older checkpoints deleted. A crash at any moment leaves ``latest`` naming a whole
checkpoint: the previous one or the new one. Loading follows ``latest`` and verifies every
checksum; a damaged checkpoint raises :class:`CheckpointError` and is never half-used.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from ..files import DamagedFileError, atomic_save_tensors, atomic_write_bytes, read_document, read_tensors, sign
from .flatten import join_tensors, split_tensors

CHECKPOINT_DIR = "checkpoint"
POINTER_NAME = "latest"
MODEL_NAME = "model.safetensors"
STATE_NAME = "training_state.safetensors"
DOCUMENT_NAME = "trainer_state.json"
FORMAT = "partial-lora-training-checkpoint"
FORMAT_VERSION = 1
_NAME = re.compile(r"checkpoint-(\d+)")


class CheckpointError(DamagedFileError):
    """A training checkpoint that is missing, damaged, or made by another run."""


@dataclass
class Checkpoint:
    """One verified checkpoint.

    Attributes:
        path: its folder.
        document: the parsed ``trainer_state.json`` (``global_step``, ``epoch``,
            ``step_in_epoch``, ``config``, ``history``, ...).
        model: trainable parameters and persistent buffers, by full name (CPU tensors).
        state: the training-state tree (``optimizer``, ``scheduler``, ``scaler``,
            ``callbacks``, ``rng``, ``epoch_rng``) with its tensors put back.
    """

    path: Path
    document: dict[str, Any]
    model: dict[str, torch.Tensor]
    state: dict[str, Any]

    @property
    def global_step(self) -> int:
        return int(self.document["global_step"])


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}"


# -- writing ---------------------------------------------------------------------------
def write_checkpoint(
    root: str | Path,
    step: int,
    *,
    model_tensors: Mapping[str, torch.Tensor],
    state: Mapping[str, Any],
    document: Mapping[str, Any],
    keep: int = 1,
) -> Path:
    """Write the checkpoint of ``step`` under ``root`` and make it the latest.

    Args:
        root: the checkpoint folder (``<output_dir>/checkpoint``), created if needed.
        step: global optimizer step; names the folder.
        model_tensors: ``{name: tensor}`` of trainable parameters and buffers (no two may share memory).
        state: nested training state (tensors, dicts, lists, JSON scalars).
        document: JSON-able facts (counters, config, history).
        keep: how many checkpoints to keep, the new one included.

    Returns:
        the folder of the new checkpoint.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    final, temporary = root / name, root / f"{name}.tmp"
    if final.exists() and _pointer_target(root) == name:
        raise RuntimeError(f"checkpoint {final} is the latest one already; a step is never checkpointed twice")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    skeleton, tensors = split_tensors(dict(state), "state")
    body = dict(document)
    body.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        global_step=int(step),
        state=skeleton,
        files={
            MODEL_NAME: atomic_save_tensors(dict(model_tensors), temporary / MODEL_NAME),
            STATE_NAME: atomic_save_tensors(tensors, temporary / STATE_NAME),
        },
    )
    sign(body)
    atomic_write_bytes(temporary / DOCUMENT_NAME, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())
    if final.exists():  # left by a crash between rename and pointer update: never the latest
        shutil.rmtree(final)
    temporary.rename(final)  # made durable by the directory fsync of the pointer write below
    pointer = {"checkpoint": name, "global_step": int(step), "document_sha256": body["document_sha256"]}
    atomic_write_bytes(root / POINTER_NAME, (json.dumps(pointer, indent=1) + "\n").encode())
    _prune(root, name, keep)
    return final


def _prune(root: Path, current: str, keep: int) -> None:
    """Delete temporary folders, checkpoints newer than ``current`` (an abandoned run) and
    all but the ``keep`` newest of the rest."""
    current_step = _step_of(current)
    older = []
    for path in root.iterdir():
        if not path.is_dir() or path.name == current:
            continue
        step = _step_of(path.name)
        if path.name.endswith(".tmp") or (step is not None and step > current_step):
            shutil.rmtree(path, ignore_errors=True)
        elif step is not None:
            older.append((step, path))
    for _, path in sorted(older, reverse=True)[keep - 1:]:
        shutil.rmtree(path, ignore_errors=True)


def _step_of(name: str) -> int | None:
    match = _NAME.fullmatch(name)
    return int(match.group(1)) if match else None


# -- reading ---------------------------------------------------------------------------
def latest_checkpoint(root: str | Path) -> Path | None:
    """The folder ``latest`` names under ``root``, or the newest complete one if there is
    no pointer (a crash before the first pointer was written); None when there is none."""
    root = Path(root)
    if not root.is_dir():
        return None
    target = _pointer_target(root)
    if target is not None:
        path = root / target
        if not path.is_dir():
            raise CheckpointError(
                f"{root / POINTER_NAME} names {target}, which does not exist; restore it, or delete "
                f"{root / POINTER_NAME} to resume from the newest checkpoint present"
            )
        return path
    complete = [(_step_of(p.name), p) for p in root.iterdir() if p.is_dir() and _step_of(p.name) is not None]
    complete = [(s, p) for s, p in complete if (p / DOCUMENT_NAME).is_file()]
    return max(complete)[1] if complete else None


def _pointer_target(root: Path) -> str | None:
    pointer = root / POINTER_NAME
    if not pointer.is_file():
        return None
    try:
        target = json.loads(pointer.read_text(encoding="utf-8"))["checkpoint"]
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError, TypeError):
        raise CheckpointError(
            f"{pointer} is damaged; delete it to resume from the newest checkpoint folder in {root}"
        ) from None
    if not isinstance(target, str) or _step_of(target) is None:
        raise CheckpointError(f"{pointer} names {target!r}, not a checkpoint folder; delete it and resume again")
    return target


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Load and verify one checkpoint folder.

    Raises:
        CheckpointError: a file is missing, unreadable, or does not match its checksum.
    """
    path = Path(path)
    document_path = path / DOCUMENT_NAME
    fix = (
        f"delete {path} (and {path.parent / POINTER_NAME}) to resume from an older checkpoint, or start "
        "over with resume=False in an empty output_dir"
    )
    if not document_path.is_file():
        raise CheckpointError(f"checkpoint {path} has no {DOCUMENT_NAME}; it is incomplete: {fix}")
    document = read_document(document_path, format=FORMAT, version=FORMAT_VERSION, error=CheckpointError,
                             what=f"a partial-lora training checkpoint: {fix}", fix=fix)
    files = document.get("files")
    if not isinstance(files, dict) or set(files) != {MODEL_NAME, STATE_NAME}:
        raise CheckpointError(f"{document_path} does not list its tensor files: {fix}")
    try:
        model = read_tensors(path / MODEL_NAME, files[MODEL_NAME])
        tensors = read_tensors(path / STATE_NAME, files[STATE_NAME])
        state = join_tensors(document["state"], tensors)
    except (DamagedFileError, KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} is damaged: {err}. To go on: {fix}") from None
    return Checkpoint(path=path, document=document, model=model, state=state)
