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
* :func:`read_tensors`: safetensors only (nothing is ever unpickled), checked against the
  sha256 its document recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

DIGEST_FIELD = "document_sha256"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class DamagedFileError(ValueError):
    """A file this package reads that is missing, damaged, or not what it claims to be."""


# -- writing ---------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary_beside(path: Path) -> str:
    """A new temporary file next to ``path``, with a plain file's permissions (mkstemp gives 0600)."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_umask())
    return temporary


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
    """Write a safetensors file atomically; returns its sha256."""
    from safetensors.torch import save_file

    path = Path(path)
    temporary = _temporary_beside(path)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, temporary, metadata=metadata)
        os.chmod(temporary, 0o666 & ~_umask())  # safetensors re-creates the file with mode 0600
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        digest = file_sha256(temporary)
        os.replace(temporary, path)
        fsync_directory(path.parent)
        return digest
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def give_default_modes(folder: str | os.PathLike) -> None:
    """Give every file under ``folder`` the mode a plain write would (``0o666 & ~umask``; folders
    ``0o777 & ~umask``): for what other libraries write there (safetensors' ``save_file``, as PEFT
    and transformers call it, creates files with mode 0600)."""
    mask = _umask()
    for path in [Path(folder), *Path(folder).rglob("*")]:
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


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
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path} is missing: {fix}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise error(f"{path} is not valid JSON ({type(err).__name__}: {err}); the file is damaged: {fix}") from None
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
def read_tensors(path: str | os.PathLike, expected_sha256: str | None, *,
                 error: type[DamagedFileError] = DamagedFileError) -> dict[str, torch.Tensor]:
    """Load a safetensors file, refusing anything else and checking its sha256 (unless None)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        offered = [p.name for p in path.parent.glob("*") if p.suffix in PICKLE_SUFFIXES] if path.parent.is_dir() else []
        hint = f" (found {offered}: pickle-based files are never read; convert them to safetensors)" if offered else ""
        raise error(f"{path} is missing{hint}")
    if expected_sha256 is not None and file_sha256(path) != expected_sha256:
        raise error(
            f"{path} does not match the checksum its folder recorded (sha256 differs): it was changed or written "
            "only in part; restore it or write it again"
        )
    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
        return tensors
    except Exception as err:  # safetensors raises its own error types for damaged headers
        raise error(f"{path} is not a readable safetensors file ({err}); the file is damaged") from None
