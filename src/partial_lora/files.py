"""Durable files: atomic writes, checksums, signed JSON documents, safetensors reading.

Everything this package writes (adapters, training checkpoints, tickets, reports) goes
through these helpers, and every reader refuses a damaged file with a subclass of
:class:`DamagedFileError` that names the file and the fix:

* :func:`atomic_write_bytes` / :func:`atomic_save_tensors`: write to a temporary name in
  the same folder, flush to disk, rename into place, flush the folder, so a crash leaves the
  old file or the new one, never a mix. The file gets the permissions a plain ``open(path,
  "w")`` would give under the current umask;
* :func:`sign` / :func:`read_document`: a JSON document carries the sha256 of its own
  canonical form (``document_sha256``) and a ``format`` / ``format_version`` pair, checked on
  reading;
* :func:`read_tensors`: safetensors only (nothing is ever unpickled), read once and checked
  against the sha256 its document recorded;
* :func:`folder_lock`: an advisory lock on a folder, exclusive for a writer replacing the
  files in it, shared for readers, so a reader sees the old or the new files whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

try:
    import fcntl
except ImportError:  # Windows: folders are not locked there (see folder_lock)
    fcntl = None

DIGEST_FIELD = "document_sha256"
JSON_LIMIT = 64 * 2**20  # bytes: far more than any document this package writes
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class DamagedFileError(ValueError):
    """A file this package reads that is missing, damaged, or not what it claims to be."""


# -- writing ---------------------------------------------------------------------------
def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _temporary_beside(path: Path) -> str:
    """A new, empty temporary file next to ``path``, with a plain file's permissions.

    Created with mode ``0o666`` and ``O_EXCL``: the kernel applies the umask, as for
    ``open(path, "w")`` (``tempfile.mkstemp`` would give ``0o600``; reading the umask to
    fix that up afterwards is not thread-safe).
    """
    while True:
        temporary = _temporary_name(path)
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666))
            return str(temporary)
        except FileExistsError:
            continue


def give_plain_modes(folder: str | os.PathLike) -> None:
    """Give every file and folder below ``folder`` the permissions a plain ``open(path, "w")``
    (``mkdir``) gives under the umask: for folders filled by other libraries' writers, such
    as ``save_pretrained``, whose safetensors files come out ``0o600``."""
    folder = Path(folder)
    probe = Path(_temporary_beside(folder / "mode"))  # the umask applied by the kernel (reading it is not thread-safe)
    try:
        file_mode = stat.S_IMODE(probe.stat().st_mode)
    finally:
        probe.unlink()
    folder_mode = file_mode | ((file_mode & 0o444) >> 2)  # x wherever r: rw-r--r-- gives rwxr-xr-x
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(folder_mode if path.is_dir() else file_mode)


def make_temporary_folder(path: str | os.PathLike) -> Path:
    """A new, empty folder next to ``path`` (to fill, then rename to ``path``), with a plain
    folder's permissions under the umask (``tempfile.mkdtemp`` would give ``0o700``)."""
    path = Path(path)
    while True:
        temporary = _temporary_name(path)
        try:
            os.mkdir(temporary, 0o777)
            return temporary
        except FileExistsError:
            continue


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    temporary = _temporary_beside(path)
    try:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
        fsync_directory(path.parent)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, document: Any, *, indent: int | None = 2, **dumps: Any) -> None:
    """``json.dumps(document)`` plus a newline, written with :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, (json.dumps(document, indent=indent, **dumps) + "\n").encode())


def atomic_save_tensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                        metadata: dict[str, str] | None = None) -> str:
    """Write a safetensors file atomically; returns its sha256.

    The file is serialised in memory and written by :func:`atomic_write_bytes`
    (safetensors' own ``save_file`` replaces the file with a new one of mode ``0o600``).
    """
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_directory(directory: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename in it) to disk, where the platform allows it."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# -- locking ---------------------------------------------------------------------------
@contextmanager
def folder_lock(directory: str | os.PathLike, *, shared: bool = False) -> Iterator[bool]:
    """Hold an advisory lock on ``directory`` for the duration of the ``with`` block.

    ``shared=False`` (a writer replacing files in the folder) waits until no one else holds
    the lock; ``shared=True`` (readers) waits only for a writer. The lock is ``flock`` on
    the folder itself, so there is no lock file to create (a read-only folder is locked as
    well) and none left behind; the kernel releases it when the holder exits, even on
    ``kill -9``. It only orders processes that use it, and only on the same machine.

    Yields True while locked, False where the folder cannot be locked (no ``fcntl``, as on
    Windows; a folder that cannot be opened; a file system without ``flock``): the block
    then runs unlocked, and readers must be ready for a file replaced under them.
    """
    descriptor = None
    if fcntl is not None:
        try:
            descriptor = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            descriptor = None
    try:
        locked = False
        if descriptor is not None:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
                locked = True
            except OSError:
                pass
        yield locked
    finally:
        if descriptor is not None:
            os.close(descriptor)  # releases the lock


# -- signed JSON documents -------------------------------------------------------------
def document_digest(document: Mapping[str, Any]) -> str:
    """sha256 of the document without its own checksum field (canonical JSON)."""
    body = {k: v for k, v in document.items() if k != DIGEST_FIELD}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sign(document: dict[str, Any]) -> dict[str, Any]:
    """Set ``document["document_sha256"]`` to the digest of the rest; returns the document."""
    document[DIGEST_FIELD] = document_digest(document)
    return document


def read_json_object(path: str | os.PathLike, *, error: type[DamagedFileError], fix: str) -> dict[str, Any]:
    """Parse a JSON file that must hold an object; a missing or damaged file raises ``error``."""
    path = Path(path)
    try:
        document = json.loads(read_regular_file(path, JSON_LIMIT).decode("utf-8"))
    except FileNotFoundError:
        raise error(f"{path} is missing: {fix}") from None
    except OSError as err:  # a folder in its place, no permission to read it, ...
        raise error(f"{path} cannot be read ({err.strerror or err}); check that it is a readable file") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise error(f"{path} is not valid JSON ({type(err).__name__}: {err}); the file is damaged: {fix}") from None
    except ValueError as err:  # not a regular file, or far too large for what it claims to be
        raise error(f"{err}: {fix}") from None
    if not isinstance(document, dict):
        raise error(f"{path} must hold a JSON object: {fix}")
    return document


def check_signed(document: Mapping[str, Any], path: str | os.PathLike, *, format: str,
                 version: int | tuple[int, ...], error: type[DamagedFileError], what: str, fix: str) -> None:
    """Check a parsed document's ``format``, ``format_version`` and own checksum.

    Args:
        document: the parsed JSON object.
        path: where it was read from (for messages).
        format, version: the ``format`` it must carry, and the ``format_version`` (or versions) read.
        error: the :class:`DamagedFileError` subclass to raise.
        what: what the file is, for messages (``"a Partial-LoRA adapter config"``).
        fix: what the user can do about a damaged file (appended to messages).
    """
    versions = version if isinstance(version, tuple) else (version,)
    if document.get("format") != format:
        raise error(f"{path} is not {what} (format={document.get('format')!r})")
    found = document.get("format_version")
    if isinstance(found, bool) or found not in versions:
        readable = " or ".join(map(str, versions))
        raise error(f"{path} has format_version {found!r}; this partial-lora reads {readable}")
    if document.get(DIGEST_FIELD) != document_digest(document):
        raise error(f"{path} does not match its checksum: it was changed or damaged; {fix}")


def read_document(path: str | os.PathLike, *, format: str, version: int, error: type[DamagedFileError],
                  what: str, fix: str) -> dict[str, Any]:
    """:func:`read_json_object` then :func:`check_signed`."""
    document = read_json_object(path, error=error, fix=fix)
    check_signed(document, path, format=format, version=version, error=error, what=what, fix=fix)
    return document


# -- tensors ---------------------------------------------------------------------------
def read_regular_file(path: Path, limit: int | None = None) -> bytes:
    """The bytes of ``path`` if it is a regular file (not a FIFO, a device or a socket, which
    could be read forever), at most ``limit`` bytes (``ValueError`` beyond it)."""
    import stat

    # O_NONBLOCK: opening a FIFO would otherwise wait for a writer before fstat could refuse it.
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(descriptor, "rb") as stream:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise IsADirectoryError(path) if stat.S_ISDIR(info.st_mode) else ValueError(
                f"{path} is not a regular file (a pipe, device or socket); give a file")
        if limit is not None and info.st_size > limit:
            raise ValueError(f"{path} holds {info.st_size:,} bytes, more than the {limit:,} such a file can need")
        return stream.read()


def read_tensors(path: str | os.PathLike, expected_sha256: str | None, *,
                 error: type[DamagedFileError] = DamagedFileError) -> dict[str, torch.Tensor]:
    """Load a safetensors file, refusing anything else and checking its sha256 (unless None).

    The file is read once, and the bytes checked are the bytes parsed: a file replaced
    meanwhile gives either its old or its new content, never a mix or a checksum of the other.
    """
    from safetensors.torch import load as load_tensors

    path = Path(path)
    try:
        data = read_regular_file(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        offered = [p.name for p in path.parent.glob("*") if p.suffix in PICKLE_SUFFIXES] if path.parent.is_dir() else []
        hint = f" (found {offered}: pickle-based files are never read; convert them to safetensors)" if offered else ""
        raise error(f"{path} is missing{hint}") from None
    except OSError as err:
        raise error(f"{path} cannot be read ({err.strerror or err}); check that it is a readable file") from None
    except ValueError as err:
        raise error(str(err)) from None
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise error(
            f"{path} does not match the checksum its folder recorded (sha256 differs): it was changed or written "
            "only in part; restore it or write it again"
        )
    try:
        return load_tensors(data)
    except Exception as err:  # safetensors raises its own error types for damaged headers
        raise error(f"{path} is not a readable safetensors file ({err}); the file is damaged") from None
