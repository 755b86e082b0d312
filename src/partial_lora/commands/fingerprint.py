"""What a run was started with, so ``--resume`` continues only the same run.

``run.json`` in the run's folder records the settings that shape what is trained (everything
but where it goes and how it is shown) and a fingerprint of each data split's contents.
``--resume`` compares them with the new command's and refuses, naming every difference;
settings that only add runs (more seeds, methods, thresholds or ranks, a larger
``--lr-grid-extend``) may change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..files import atomic_write_json
from .settings import Settings
from .task import SPLITS, Task

RUN_FILE = "run.json"
# Settings that neither shape a trained model nor its data: they may differ on --resume.
FREE_SETTINGS = ("out", "overwrite", "resume", "progress", "checkpoint_every", "validate_every_epoch")
# Settings that only add runs to a comparison: a resumed compare may extend them.
EXTENDING_SETTINGS = ("methods", "seeds", "thresholds", "ranks")
# Counts that only let a comparison train more: a resumed compare may raise them. (A raised
# --lr-grid-extend may move a search's kept rate; the runs at the old rate stay in partial/.)
GROWING_SETTINGS = ("lr_grid_extend",)


def run_record(command: str, settings: Settings, task: Task) -> dict[str, Any]:
    """``{command, settings, data}`` of a run (JSON-able)."""
    shaping = {k: v for k, v in settings.to_dict().items() if k not in FREE_SETTINGS}
    return {"command": command, "settings": shaping,
            "data": {split: task.split(split).fingerprint() for split in SPLITS}}


def check_resumed(folder: Path, record: dict[str, Any]) -> None:
    """Refuse to resume a run started with other settings or data (``ValueError`` naming them).

    A folder without ``run.json`` (written before it existed) is resumed unchecked.
    """
    path = folder / RUN_FILE
    if not path.is_file():
        return
    try:
        then = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(then, dict) and isinstance(then.get("settings"), dict) and isinstance(then.get("data"), dict)
    except (ValueError, AssertionError):
        raise ValueError(f"{path} is damaged; pass --overwrite to start the run over") from None
    changes = []
    if then.get("command") != record["command"]:
        changes.append(f"the command ({then.get('command')} then, {record['command']} now)")
    for key, value in record["settings"].items():
        before, now = then["settings"].get(key), _jsonable(value)
        if key in EXTENDING_SETTINGS and isinstance(before, list) and isinstance(now, list):
            dropped = [item for item in before if item not in now]
            if dropped:  # the results would lose the runs of these
                changes.append(f"{key}: {dropped!r} no longer given ({before!r} then, {now!r} now; a resumed run may "
                               "add to these, not drop any)")
            continue
        if key in GROWING_SETTINGS and isinstance(now, int) and (before is None or isinstance(before, int)):
            if before is not None and now < before:  # absent before: a run started before the setting existed, at 0
                changes.append(f"{key}: {now!r} is below the {before!r} it was resumed or started with (it may be "
                               f"raised, which trains more, not lowered); pass {before} or more")
            continue
        if before != now:
            changes.append(f"{key} ({before!r} then, {value!r} now)")
    for split, digest in record["data"].items():
        if then["data"].get(split) != digest:
            changes.append(f"the {split} split's contents (the dataset or its split sizes changed)")
    if changes:
        raise ValueError(
            f"--resume: the run in {folder} was started with other settings or data: {'; '.join(changes)}. Resume "
            "with the settings it was started with, or pass --overwrite to start a new run (what --out holds stays "
            "until it has finished)"
        )


def write_record(folder: Path, record: dict[str, Any]) -> None:
    atomic_write_json(folder / RUN_FILE, record, default=str)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
