"""The ``--out`` folder: refuse one that holds results, clear it for ``--overwrite``.

Commands call :func:`check_out` first, check all their input, and only then
:func:`prepare_out`, so bad input never costs the results already in ``--out``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .settings import Settings

PLOT_FILES = ("metric_vs_params.png", "keep_ratios.png")
RESULT_FILES = ("results.json", "report.md", "ticket.json", "adapters",
                "adapter_config.json", "adapter_model.safetensors", "config.json", "model.safetensors")


def check_out(settings: Settings, *, keep: bool = False) -> list[str]:
    """Refuse an ``--out`` that is a file, or holds results (unless --overwrite or --resume).

    Touches nothing: commands call it first, check their input, and only then
    :func:`prepare_out`, so bad input never costs the results already in ``--out``.
    """
    out = Path(settings.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give a folder")
    existing = [name for name in RESULT_FILES if (out / name).exists()] if out.is_dir() else []
    if existing and not (settings.overwrite or settings.resume or keep):
        raise FileExistsError(
            f"--out {out} already holds results ({', '.join(existing)}); pass --overwrite to replace them, "
            "--resume to continue that run, or choose another folder"
        )
    return existing


def prepare_out(settings: Settings, *, keep: bool = False) -> Path:
    """Create ``--out``; refuse one that already holds results unless --overwrite or --resume."""
    out = Path(settings.out)
    existing = check_out(settings, keep=keep)
    if existing and settings.overwrite and not settings.resume:
        for name in (*RESULT_FILES, *PLOT_FILES, "checkpoints", "partial", "tickets"):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out
