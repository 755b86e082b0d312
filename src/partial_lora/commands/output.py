"""The ``--out`` folder: a command never costs what it already holds.

A command writes into a **work folder** beside ``--out`` (``.<name>.partial-lora-work``) and
only when it has produced everything is the work folder put in place: renamed to ``--out``
when there was none, or exchanged with it atomically (``--overwrite``; the old results are
deleted only after the exchange). A run refused or failed at any point, or killed, leaves
``--out`` exactly as it was; the work folder it leaves behind is continued by ``--resume``
or discarded by ``--overwrite``.

``--resume`` continues the interrupted work folder if there is one, else the run in
``--out`` itself (whose results are rewritten, atomically, only at the end). Either way the
run must have been started with the same settings and data (:mod:`.fingerprint`).

Commands use it as a context manager (``with Output(settings) as output:``), call
:meth:`Output.check` first (it touches nothing), check all their input, and only then
:meth:`Output.open`; they finish with :meth:`Output.commit`. Leaving the ``with`` block,
finished or failed, releases the lock ``open`` took.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
from pathlib import Path

from ..files import fsync_directory
from .settings import Settings

PLOT_FILES = ("metric_vs_params.png", "keep_ratios.png")
RESULT_FILES = ("results.json", "report.md", "ticket.json", "adapters",
                "adapter_config.json", "adapter_model.safetensors", "config.json", "model.safetensors")
WORK_SUFFIX = ".partial-lora-work"
OLD_SUFFIX = ".partial-lora-old"
LOCK_SUFFIX = ".partial-lora-lock"


class Output:
    """The ``--out`` folder of one command and the work folder it writes into."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.out = Path(settings.out)
        self.work = self.out.parent / f".{self.out.name}{WORK_SUFFIX}"
        self.old = self.out.parent / f".{self.out.name}{OLD_SUFFIX}"
        self.lock_path = self.out.parent / f".{self.out.name}{LOCK_SUFFIX}"
        self.folder: Path | None = None  # where the command writes, once open()
        self._lock: int | None = None  # the open lock file, held from open() to commit()

    def __enter__(self) -> "Output":
        return self

    def __exit__(self, *exc_info) -> None:
        self._release_lock()  # a failed or interrupted command leaves --out free for the next one

    # -- before any work -------------------------------------------------------------
    def check(self) -> list[str]:
        """Refuse an ``--out`` that is a file, or holds results, or has an interrupted run beside
        it, unless ``--overwrite`` or ``--resume`` says what to do. Touches nothing (except to
        finish an exchange a crash interrupted). Returns the result files ``--out`` holds."""
        settings, out = self.settings, self.out
        self._finish_interrupted_exchange()
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"--out {out} is a file; give a folder")
        if self.work.exists() and not self.work.is_dir():
            raise FileExistsError(f"{self.work} is a file; remove it (partial-lora keeps the work of --out {out} there)")
        existing = [name for name in RESULT_FILES if (out / name).exists()] if out.is_dir() else []
        if existing and not (settings.overwrite or settings.resume):
            raise FileExistsError(
                f"--out {out} already holds results ({', '.join(existing)}); pass --overwrite to replace them, "
                "--resume to continue that run, or choose another folder"
            )
        if self.work.is_dir() and not (settings.overwrite or settings.resume):
            raise FileExistsError(
                f"--out {out}: an interrupted run of it is in {self.work}; pass --resume to continue it or --overwrite "
                "to start over (it is discarded; what --out holds stays until the new run has finished)"
            )
        return existing

    # -- the work --------------------------------------------------------------------
    def open(self) -> Path:
        """The folder to write into: the work folder (new, or the interrupted one for
        ``--resume``), or ``--out`` itself when ``--resume`` continues a run that is there.

        Holds an exclusive lock on ``--out`` until :meth:`commit` or the end of the ``with``
        block (or of the process): a second command writing the same ``--out`` meanwhile is
        refused before it touches anything."""
        self._take_lock()
        self.check()
        if self.settings.resume and not self.work.is_dir() and self.out.is_dir() and any(self.out.iterdir()):
            self.folder = self.out  # continue in place: results are rewritten atomically at the end
            return self.folder
        if self.work.is_dir() and not self.settings.resume:
            shutil.rmtree(self.work)  # --overwrite: an interrupted run is discarded
        self.work.mkdir(parents=True, exist_ok=self.settings.resume)
        self.folder = self.work
        return self.folder

    def _take_lock(self) -> None:
        import fcntl

        if not self.out.parent.exists():  # a file there fails below, as ENOTDIR
            self.out.parent.mkdir(parents=True)
        handle = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The holder removes the file when it ends; a lock taken on a file already removed
            # (opened just before) guards nothing, so it counts as held by another command.
            if not _same_file(handle, self.lock_path):
                raise BlockingIOError
        except BlockingIOError:
            os.close(handle)
            raise FileExistsError(
                f"--out {self.out}: another partial-lora command is writing it now; wait for it to finish, or "
                "choose another folder"
            ) from None
        self._lock = handle

    def _release_lock(self) -> None:
        if self._lock is not None:
            try:
                os.unlink(self.lock_path)  # removed while still held: nothing is left beside --out
            except FileNotFoundError:
                pass
            os.close(self._lock)  # closing releases the flock
            self._lock = None

    def commit(self) -> Path:
        """Put the finished work in place of ``--out`` (atomically); returns ``--out``."""
        if self.folder is None:
            raise RuntimeError("Output.commit() before open()")
        if self.folder == self.out:
            self._release_lock()
            return self.out
        out = self.out
        if out.is_dir() and any(out.iterdir()):
            _exchange(self.work, out, self.old)
            shutil.rmtree(self.work, ignore_errors=True)  # now the previous results
        else:
            if out.is_dir():
                out.rmdir()
            os.replace(self.work, out)
            fsync_directory(out.parent)
        self.folder = out
        self._release_lock()
        return out

    def _finish_interrupted_exchange(self) -> None:
        """A crash between the two renames of a non-atomic exchange leaves no ``--out`` but its
        previous content under the old name: put it back."""
        if self.old.is_dir() and not self.out.exists():
            os.replace(self.old, self.out)
        elif self.old.is_dir():
            shutil.rmtree(self.old, ignore_errors=True)


_RENAME_EXCHANGE = 2


def _same_file(handle: int, path: Path) -> bool:
    """Whether the open ``handle`` is the file at ``path`` now."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(handle)
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def _exchange(a: Path, b: Path, spare: Path) -> None:
    """Swap two folders: atomically with Linux ``renameat2(RENAME_EXCHANGE)``, else by two
    renames through ``spare`` (a crash between them is repaired by :meth:`Output.check`)."""
    libc_name = ctypes.util.find_library("c")
    renameat2 = getattr(ctypes.CDLL(libc_name, use_errno=True), "renameat2", None) if libc_name else None
    if renameat2 is not None:
        at_cwd = -100
        if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            fsync_directory(b.parent)
            return
    os.replace(b, spare)
    os.replace(a, b)
    os.replace(spare, a)
    fsync_directory(b.parent)
