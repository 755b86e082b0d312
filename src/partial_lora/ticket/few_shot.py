"""The few-shot set as a list of model-ready batches: validation, device, fingerprint.

``data`` is any iterable of batches, each a mapping of tensors with a ``labels`` entry
(the transformers convention): ``labels [B]`` (class indices) for classification, or
``labels [B, T]`` (token ids, ``-100`` where not scored) for causal language models. It is
read once into a list, because a ticket needs several passes over the same examples.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping

import torch

CLASSIFICATION = "classification"
CAUSAL_LM = "causal-lm"


def prepare_batches(data: Iterable[Mapping[str, Any]] | Mapping[str, Any],
                    device: torch.device) -> list[dict[str, Any]]:
    """Read ``data`` into a list of batches on ``device``; clear errors for bad input."""
    if data is None:
        raise ValueError("data=None: find_ticket needs the few-shot set, an iterable of batches "
                         "(dicts of tensors with 'labels')")
    if isinstance(data, Mapping):
        data = [data]  # one batch
    try:
        batches = list(data)
    except TypeError:
        raise ValueError(f"data must be an iterable of batches (dicts of tensors with 'labels'), "
                         f"got {type(data).__name__}") from None
    if not batches:
        raise ValueError("data is empty: give at least one batch of labelled examples")
    prepared, kind = [], None
    for index, batch in enumerate(batches):
        if not isinstance(batch, Mapping):
            raise ValueError(f"batch {index} is a {type(batch).__name__}; each batch must be a dict of tensors "
                             "with a 'labels' entry (the transformers convention)")
        if "labels" not in batch or batch["labels"] is None:
            raise ValueError(
                f"batch {index} has no 'labels' (keys: {sorted(batch)}); find_ticket needs labelled batches: "
                "labels [B] of class indices, or labels [B, T] of token ids (-100 = not scored) for causal LMs"
            )
        moved = {key: _to(value, device) for key, value in batch.items()}
        labels = moved["labels"]
        if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dim() not in (1, 2):
            raise ValueError(f"batch {index}: labels must be an integer tensor [B] or [B, T], got "
                             f"{getattr(labels, 'dtype', type(labels).__name__)} of shape "
                             f"{tuple(getattr(labels, 'shape', ()))}")
        this_kind = CLASSIFICATION if labels.dim() == 1 else CAUSAL_LM
        if kind is not None and this_kind != kind:
            raise ValueError(f"batch {index} has labels of shape {tuple(labels.shape)} while earlier batches "
                             "had another rank; all batches must be of one task")
        kind = this_kind
        if kind == CLASSIFICATION and (labels < 0).any():
            raise ValueError(f"batch {index}: class labels must be >= 0, got {int(labels.min())}")
        if kind == CAUSAL_LM and not (labels[:, 1:] != -100).any():
            raise ValueError(f"batch {index}: every label is -100, so nothing would be scored; "
                             "mark the answer tokens with their ids")
        prepared.append(moved)
    return prepared


def task_kind(batches: list[dict[str, Any]]) -> str:
    """``classification`` (labels [B]) or ``causal-lm`` (labels [B, T])."""
    return CLASSIFICATION if batches[0]["labels"].dim() == 1 else CAUSAL_LM


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch without its labels (the model is called without them; find_ticket scores itself)."""
    return {key: value for key, value in batch.items() if key != "labels"}


def example_count(batches: list[dict[str, Any]]) -> int:
    return sum(int(batch["labels"].shape[0]) for batch in batches)


def shots_per_class(batches: list[dict[str, Any]]) -> int:
    """Examples per class (the smallest class count); examples for causal LMs."""
    if task_kind(batches) == CAUSAL_LM:
        return example_count(batches)
    labels = torch.cat([batch["labels"].cpu() for batch in batches])
    counts = torch.bincount(labels)
    return int(counts[counts > 0].min())


def fingerprint(batches: list[dict[str, Any]]) -> str:
    """SHA-256 prefix (16 hex digits) of every tensor in the batches, in order."""
    digest = hashlib.sha256()
    for batch in batches:
        for key in sorted(batch):
            value = batch[key]
            digest.update(key.encode())
            if isinstance(value, torch.Tensor):
                tensor = value.detach().cpu().contiguous()
                digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
            else:
                digest.update(repr(value).encode())
    return digest.hexdigest()[:16]


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) and not isinstance(v, bool)
                                                         for v in value):
        return torch.tensor(value, device=device)
    return value
