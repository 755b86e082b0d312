"""The ticket: per-layer keep ratios and row/column importance scores, with provenance.

A :class:`Ticket` is what :func:`partial_lora.ticket.find_ticket` returns and what
:meth:`partial_lora.PartialLoraConfig.from_ticket` consumes. On disk it is two files:

* ``ticket.json``: ``{"format": ..., "layers": {module name: {"keep_ratio", "k", "shape"}},
  "provenance": {...}, "scores": {"file": ..., "sha256": ...} | null}``;
* ``ticket.scores.safetensors`` (the sidecar): float32 tensors ``row_scores/<module name>``
  (``[out]``) and ``column_scores/<module name>`` (``[in]``). Read with safetensors only.

The JSON names the sidecar's SHA-256, so a stale or damaged sidecar is refused on load.
Both files are written atomically (temporary file + ``os.replace``), sidecar first.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..checks import invalid
from ..files import DamagedFileError, atomic_write_bytes, read_regular_file

FORMAT = "partial-lora-ticket/1"
METHODS = ("svd", "svd-layerwise", "snip", "imp", "uniform")
THRESHOLD_MODES = ("relative", "absolute")


class TicketFileError(DamagedFileError):
    """A ticket file (JSON or score sidecar) is damaged, incomplete or not a ticket."""


@dataclass
class LayerTicket:
    """One layer's entry.

    Attributes:
        keep_ratio: fraction of rows and of columns the adapter keeps, in (0, 1].
        k: the size behind the ratio, ``1 <= k <= min(out, in)``; for ``svd`` the number of
            output directions kept, for the other methods ``ceil(keep_ratio * min(out, in))``.
        shape: ``(out_features, in_features)`` of the layer.
        row_scores: ``[out]`` float32, non-negative importance of each output feature, or None.
        column_scores: ``[in]`` float32, non-negative importance of each input feature, or None.
    """

    keep_ratio: float
    k: int
    shape: tuple[int, int]
    row_scores: torch.Tensor | None = None
    column_scores: torch.Tensor | None = None

    def __post_init__(self) -> None:
        ratio = self.keep_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (0.0 < float(ratio) <= 1.0):
            invalid("keep_ratio", ratio, "a keep ratio must be a number in (0, 1]")
        self.keep_ratio = float(ratio)
        shape = self.shape
        if (not isinstance(shape, (tuple, list)) or len(shape) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
            invalid("shape", shape, "expected (out_features, in_features), two positive integers")
        self.shape = (int(shape[0]), int(shape[1]))
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not (1 <= self.k <= min(self.shape)):
            invalid("k", self.k, f"expected an integer in [1, {min(self.shape)}] (min of the shape {self.shape})")
        self.row_scores = _check_scores("row_scores", self.row_scores, self.shape[0])
        self.column_scores = _check_scores("column_scores", self.column_scores, self.shape[1])
        if (self.row_scores is None) != (self.column_scores is None):
            raise ValueError("give both row_scores and column_scores, or neither")


def _check_scores(name: str, scores: Any, size: int) -> torch.Tensor | None:
    if scores is None:
        return None
    scores = torch.as_tensor(scores).detach().to("cpu", torch.float32).contiguous()
    if scores.shape != (size,):
        invalid(name, f"tensor of shape {tuple(scores.shape)}", f"expected shape ({size},), one score per feature")
    if not torch.isfinite(scores).all() or (scores < 0).any():
        invalid(name, "tensor with negative or non-finite entries", "scores must be finite and >= 0")
    return scores


def recorded_targets(target_modules: Sequence[str] | str) -> list[str] | str:
    """``target_modules`` as :attr:`Provenance.target_modules` records it: the one string (a
    regular expression or ``"all-linear"``) as given, name suffixes as a list."""
    return target_modules if isinstance(target_modules, str) else list(target_modules)


@dataclass
class Provenance:
    """Where a ticket came from and what it cost.

    Attributes:
        method: ``svd``, ``svd-layerwise``, ``snip``, ``imp`` or ``uniform``.
        threshold: tau in (0, 1] (for ``snip`` the saliency-mass fraction; for ``uniform`` the ratio).
        threshold_mode: ``relative`` (above the metric's chance floor) or ``absolute``.
        metric: name of the metric the threshold was applied to.
        head: scoring head used: ``own``, ``probe``, ``zero-shot`` (None for ``uniform``).
        model_name: the model's name or path.
        data_fingerprint: SHA-256 prefix of the few-shot batches (inputs and labels).
        shots: examples per class (the smallest class count) or, for causal LMs, examples.
        examples: number of examples in the few-shot set.
        seed: the seed of every random choice (probe split).
        baseline_score: metric of the unchanged model on the scored examples.
        floor: the metric's chance floor on the same examples.
        required_score: the score the pruned model had to keep.
        final_score: metric at the final ticket (None if not measured).
        final_f: final energy fraction f (``svd`` only).
        forward_equivalents: full passes over the few-shot set (a backward pass counts as two).
        seconds: wall-clock seconds.
        target_modules: the target patterns given.
        notes: free-form remarks (for example why a relative threshold fell back to absolute).
    """

    method: str
    threshold: float | None = None
    threshold_mode: str = "relative"
    metric: str | None = None
    head: str | None = None
    model_name: str | None = None
    data_fingerprint: str | None = None
    shots: int | None = None
    examples: int | None = None
    seed: int = 0
    baseline_score: float | None = None
    floor: float | None = None
    required_score: float | None = None
    final_score: float | None = None
    final_f: float | None = None
    forward_equivalents: float = 0.0
    seconds: float = 0.0
    target_modules: list[str] | str | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            invalid("method", self.method, f"choose one of {', '.join(METHODS)}")
        if self.threshold_mode not in THRESHOLD_MODES:
            invalid("threshold_mode", self.threshold_mode, f"choose one of {', '.join(THRESHOLD_MODES)}")
        for name in ("threshold", "baseline_score", "floor", "required_score", "final_score", "final_f",
                     "forward_equivalents", "seconds"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                invalid(name, value, "expected a finite number or null")
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        self.notes = [str(n) for n in self.notes]


@dataclass
class Ticket:
    """Per-layer keep ratios and scores for one model and task.

    Attributes:
        layers: ``{full module name: LayerTicket}`` in model order.
        provenance: how the ticket was made.
    """

    layers: dict[str, LayerTicket]
    provenance: Provenance

    def __post_init__(self) -> None:
        if not isinstance(self.layers, Mapping) or not self.layers:
            raise ValueError("a ticket needs at least one layer; layers={} is empty")
        for name, layer in self.layers.items():
            if not isinstance(name, str) or not name or not isinstance(layer, LayerTicket):
                raise ValueError(f"layers[{name!r}] must map a module name to a LayerTicket, got {type(layer).__name__}")
        self.layers = dict(self.layers)

    # -- what PartialLoraConfig.from_ticket and apply() use ---------------------------------
    def keep_ratios(self) -> dict[str, float]:
        """``{module name: keep ratio in (0, 1]}``."""
        return {name: layer.keep_ratio for name, layer in self.layers.items()}

    def layer_shapes(self) -> dict[str, tuple[int, int]]:
        """``{module name: (out_features, in_features)}``."""
        return {name: layer.shape for name, layer in self.layers.items()}

    @property
    def scores(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{module name: (row_scores [out], column_scores [in])}`` for layers that have scores."""
        return {
            name: (layer.row_scores, layer.column_scores)
            for name, layer in self.layers.items()
            if layer.row_scores is not None
        }

    @property
    def method(self) -> str:
        return self.provenance.method

    @property
    def threshold(self) -> float | None:
        return self.provenance.threshold

    def fingerprint(self) -> str:
        """SHA-256 of everything but the timing: equal for tickets made the same way (same seed)."""
        digest = hashlib.sha256()
        document = self.to_dict()
        document["provenance"].pop("seconds")
        digest.update(json.dumps(document, sort_keys=True).encode())
        for name, (rows, columns) in sorted(self.scores.items()):
            digest.update(name.encode() + rows.numpy().tobytes() + columns.numpy().tobytes())
        return digest.hexdigest()

    # -- files -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON document, without the scores."""
        return {
            "format": FORMAT,
            "layers": {
                name: {"keep_ratio": layer.keep_ratio, "k": layer.k, "shape": list(layer.shape)}
                for name, layer in self.layers.items()
            },
            "provenance": asdict(self.provenance),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (JSON) and, if the ticket has scores, its sidecar; both atomically.

        Returns the JSON path.
        """
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; give a file name such as {path / 'ticket.json'}")
        path.parent.mkdir(parents=True, exist_ok=True)
        document = self.to_dict()
        document["scores"] = None
        scores = self.scores
        if scores:
            from safetensors.torch import save as save_tensors

            tensors = {}
            for name, (rows, columns) in scores.items():
                tensors[f"row_scores/{name}"] = rows.contiguous()
                tensors[f"column_scores/{name}"] = columns.contiguous()
            blob = save_tensors(tensors, metadata={"format": FORMAT})
            sidecar = scores_path(path)
            atomic_write_bytes(sidecar, blob)
            document["scores"] = {"file": sidecar.name, "sha256": hashlib.sha256(blob).hexdigest()}
        text = json.dumps(document, indent=2, allow_nan=False) + "\n"
        atomic_write_bytes(path, text.encode())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Ticket":
        """Read a ticket saved by :meth:`save`; damaged files raise :class:`TicketFileError`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ticket at {path}; create one with find_ticket(...).save(path) "
                                    "or `partial-lora ticket`")
        raw = _read(path)
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise TicketFileError(
                f"{path} is not a valid ticket: the JSON is damaged ({err}). Re-create the ticket "
                "with find_ticket(...).save(path) or `partial-lora ticket`."
            ) from None
        return cls.from_dict(document, scores=_read_scores(path, document), source=str(path))

    @classmethod
    def from_dict(cls, document: Any, *, scores: Mapping[str, torch.Tensor] | None = None,
                  source: str = "ticket") -> "Ticket":
        """Build a ticket from its JSON document and the sidecar tensors (if any)."""
        def fail(problem: str) -> None:
            raise TicketFileError(f"{source} is not a valid ticket: {problem}")

        if not isinstance(document, dict):
            fail(f"expected a JSON object, got {type(document).__name__}")
        if document.get("format", FORMAT) != FORMAT:
            fail(f"format {document.get('format')!r} is not {FORMAT!r} (written by another version?)")
        layers_doc, provenance_doc = document.get("layers"), document.get("provenance")
        if not isinstance(layers_doc, dict) or not layers_doc:
            fail("'layers' must be a non-empty object {module name: {keep_ratio, k, shape}}")
        if not isinstance(provenance_doc, dict):
            fail("'provenance' must be an object")
        known = {f.name for f in fields(Provenance)}
        unknown = sorted(set(provenance_doc) - known)
        if unknown:
            fail(f"unknown provenance fields {unknown}; allowed: {sorted(known)}")
        scores = dict(scores or {})
        layers = {}
        for name, entry in layers_doc.items():
            if not isinstance(entry, dict) or set(entry) != {"keep_ratio", "k", "shape"}:
                fail(f"layer {name!r} must have exactly keep_ratio, k and shape, got {entry!r}")
            rows = scores.pop(f"row_scores/{name}", None)
            columns = scores.pop(f"column_scores/{name}", None)
            if document.get("scores") and (rows is None or columns is None):
                fail(f"the score sidecar has no scores for layer {name!r}")
            try:
                shape = entry["shape"]
                layers[name] = LayerTicket(entry["keep_ratio"], entry["k"],
                                           tuple(shape) if isinstance(shape, list) else shape, rows, columns)
            except ValueError as err:
                fail(f"layer {name!r}: {err}")
        if scores:
            fail(f"the score sidecar has scores for layers the JSON does not list: {sorted(scores)[:3]}")
        try:
            provenance = Provenance(**provenance_doc)
        except (TypeError, ValueError) as err:
            fail(f"provenance: {err}")
        return cls(layers, provenance)


def _read(path: Path) -> bytes:
    """A ticket file's bytes; a pipe, device or folder in its place is a damaged ticket, not a hang."""
    try:
        return read_regular_file(path)
    except (OSError, ValueError) as err:
        raise TicketFileError(f"{path} cannot be read as a ticket file ({err}); re-create the ticket") from None


def scores_path(path: str | os.PathLike) -> Path:
    """The sidecar next to a ticket JSON: ``ticket.json`` -> ``ticket.scores.safetensors``."""
    path = Path(path)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return path.with_name(stem + ".scores.safetensors")


def _read_scores(path: Path, document: Any) -> dict[str, torch.Tensor]:
    reference = document.get("scores") if isinstance(document, dict) else None
    if reference is None:
        return {}
    if not isinstance(reference, dict) or not isinstance(reference.get("file"), str) \
            or not isinstance(reference.get("sha256"), str):
        raise TicketFileError(f"{path} is not a valid ticket: 'scores' must be null or {{file, sha256}}")
    sidecar = path.with_name(Path(reference["file"]).name)  # never leave the ticket's folder
    if not sidecar.is_file():
        raise TicketFileError(
            f"{path} refers to the score sidecar {sidecar.name}, which is missing; copy it next to the "
            "ticket, or re-create the ticket"
        )
    blob = _read(sidecar)
    if hashlib.sha256(blob).hexdigest() != reference["sha256"]:
        raise TicketFileError(
            f"the score sidecar {sidecar} does not match {path} (checksum differs): it is damaged or "
            "belongs to another ticket; re-create the ticket"
        )
    from safetensors.torch import load as load_tensors

    try:
        tensors = load_tensors(blob)
    except Exception as err:  # safetensors raises its own error types
        raise TicketFileError(f"the score sidecar {sidecar} cannot be read: {err}") from None
    for key, tensor in tensors.items():
        if tensor.dtype != torch.float32 or tensor.dim() != 1:
            raise TicketFileError(f"the score sidecar {sidecar}: {key} must be a 1-D float32 tensor")
    return tensors


def equivalent_k(ratio: float, shape: tuple[int, int]) -> int:
    """The rank-like size behind a keep ratio: ``ceil(ratio * min(out, in))`` (at least 1)."""
    from ..budget import kept_count

    return kept_count(ratio, min(shape))
