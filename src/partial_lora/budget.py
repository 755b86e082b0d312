"""Parameter-budget mode: rescale a ticket's keep ratios to meet a total parameter budget."""

from __future__ import annotations

import math
from typing import Mapping


def kept_count(ratio: float, size: int) -> int:
    """Rows (or columns) kept out of ``size`` at keep ratio ``ratio``: ``ceil(ratio * size)``."""
    # The small tolerance stops float noise (0.1 * 30 = 3.0000000000000004) adding a row.
    return max(1, min(size, math.ceil(ratio * size - 1e-9)))


def adapter_parameters(ratio: float, shape: tuple[int, int], rank: int) -> int:
    """Trainable parameters of one Partial-LoRA layer: ``rank * (|R| + |C|)``."""
    out_features, in_features = shape
    return rank * (kept_count(ratio, out_features) + kept_count(ratio, in_features))


def ratios_for_budget(
    ratios: Mapping[str, float],
    shapes: Mapping[str, tuple[int, int]],
    ranks: Mapping[str, int],
    budget: int,
) -> dict[str, float]:
    """Scale all ratios by one factor so the adapters total about ``budget`` parameters.

    The layers keep their relative sizes from the ticket; each ratio is clipped to (0, 1].
    The result never exceeds the budget unless even the smallest possible adapter (one row
    and one column per layer) does, which raises ``ValueError``.
    """
    if not ratios:
        raise ValueError("the ticket has no layers; nothing to distribute a budget over")
    missing = sorted(set(ratios) - set(shapes))
    if missing:
        raise ValueError(f"no layer shape for {missing[:3]}; the ticket must record every layer's shape")

    def total(scale: float) -> int:
        return sum(adapter_parameters(min(1.0, ratios[n] * scale), shapes[n], ranks[n]) for n in ratios)

    floor = sum(ranks[n] * 2 for n in ratios)
    if budget < floor:
        raise ValueError(
            f"budget={budget} is below the smallest possible adapter ({floor} parameters: one row and one "
            f"column per layer at these ranks); raise the budget or lower the rank"
        )
    low, high = 0.0, 1.0 / min(ratios.values())  # at `high` every layer is at ratio 1
    if total(high) <= budget:
        return {n: 1.0 for n in ratios}
    for _ in range(60):
        mid = (low + high) / 2
        if total(mid) <= budget:
            low = mid
        else:
            high = mid
    return {n: max(min(1.0, ratios[n] * low), 1e-12) for n in ratios}
