"""How much two tickets agree on *which* rows and columns matter (the seed's Fig. 13).

For each layer both tickets score, take the top rows (and columns) of each by score, a
fraction ``top`` of them (``0 < top <= 1``) or the ``top`` best (an integer >= 1), and
measure their Jaccard overlap ``|A & B| / |A | B|`` (1 = the same set, 0 = disjoint). Ties
are broken by the lower index, as in the targeted selection. Use it to compare tickets
from different shot counts, seeds or methods.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .ticket import Ticket


def top_indices(scores: torch.Tensor, top: float | int) -> set[int]:
    """Indices of the ``top`` best scores (a fraction, or a count)."""
    size = scores.numel()
    count = top if isinstance(top, int) else math.ceil(top * size - 1e-9)
    count = max(1, min(size, count))
    order = torch.sort(scores.to(torch.float64), descending=True, stable=True).indices
    return set(order[:count].tolist())


def jaccard(a: set[int], b: set[int]) -> float:
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def ticket_overlap(a: Ticket, b: Ticket, top: float | int = 0.1) -> dict[str, Any]:
    """Jaccard overlap of the top rows and columns, per layer and on average.

    Returns:
        ``{"top": top, "layers": {name: {"rows": j, "columns": j}}, "mean": {"rows": j, "columns": j}}``
        over the layers both tickets have.
    """
    if isinstance(top, bool) or not isinstance(top, (int, float)) or \
            (isinstance(top, int) and top < 1) or (isinstance(top, float) and not 0.0 < top <= 1.0):
        raise ValueError(f"top={top!r} is invalid: give a fraction in (0, 1] (e.g. 0.1) or a count >= 1")
    scores_a, scores_b = a.scores, b.scores
    common = [name for name in scores_a if name in scores_b]
    if not common:
        raise ValueError("the two tickets share no scored layer: were they made for the same model and "
                         f"target_modules? (first has {list(scores_a)[:3]}, second {list(scores_b)[:3]})")
    layers = {}
    for name in common:
        if a.layers[name].shape != b.layers[name].shape:
            raise ValueError(f"layer {name!r} has shape {a.layers[name].shape} in one ticket and "
                             f"{b.layers[name].shape} in the other: the tickets are for different models")
        (rows_a, columns_a), (rows_b, columns_b) = scores_a[name], scores_b[name]
        layers[name] = {
            "rows": jaccard(top_indices(rows_a, top), top_indices(rows_b, top)),
            "columns": jaccard(top_indices(columns_a, top), top_indices(columns_b, top)),
        }
    mean = {key: sum(entry[key] for entry in layers.values()) / len(layers) for key in ("rows", "columns")}
    return {"top": top, "layers": layers, "mean": mean}
