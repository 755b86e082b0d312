"""Choosing a learning rate on validation data: the grid, its ends, and extending past them.

A search trains at every rate of ``--lr-grid`` and keeps the one with the best mean
validation metric (ties: the lower rate). A best rate at the highest (or lowest) rate tried
says the grid may have stopped short; with ``--lr-grid-extend N`` the search then also tries
twice (half) that rate, up to ``N`` more rates, and stops as soon as the best lies inside the
rates tried. Every rate here is in LoRA's units (methods scale it, see
:func:`~partial_lora.methods.method_learning_rate`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

EXTENSION_FACTOR = 2.0  # each added rate doubles the highest rate tried (or halves the lowest)


def best_rate(scores: Mapping[float, float]) -> float:
    """The rate with the highest score; of equal scores the lowest rate."""
    return max(sorted(scores), key=lambda rate: scores[rate])


def grid_end(tried: Sequence[float], chosen: float) -> str | None:
    """``"top"`` or ``"bottom"`` when ``chosen`` is the highest or lowest of two or more rates tried, else None."""
    rates = sorted(tried)
    if len(rates) < 2:
        return None  # one rate is no search
    if chosen == rates[-1]:
        return "top"
    if chosen == rates[0]:
        return "bottom"
    return None


def rate_beyond(tried: Sequence[float], end: str) -> float:
    """The next rate past ``end`` (``"top"`` or ``"bottom"``) of the rates tried: twice the highest or half the lowest."""
    rate = max(tried) * EXTENSION_FACTOR if end == "top" else min(tried) / EXTENSION_FACTOR
    return float(f"{rate:.12g}")  # 0.01 * 2 is 0.02, not 0.020000000000000004


def extension_range(grid: Sequence[float], extensions: int) -> tuple[float, float]:
    """The lowest and highest rate a search of ``grid`` may reach with ``extensions`` added rates."""
    return min(grid) / EXTENSION_FACTOR ** extensions, max(grid) * EXTENSION_FACTOR ** extensions


def end_note(label: str, tried: Sequence[float], chosen: float, *, extend_given: bool) -> str | None:
    """What a report says of a search that ended at an end of its rates (None if it did not)."""
    end = grid_end(tried, chosen)
    if end is None:
        return None
    beyond, word = ("higher", "highest") if end == "top" else ("lower", "lowest")
    fix = ("widen --lr-grid or raise --lr-grid-extend" if extend_given else
           "widen --lr-grid, or pass --lr-grid-extend N to let the search go on past its ends")
    return (f"{label}: the best validation score is at {chosen:g}, the {word} rate tried; a {beyond} rate might "
            f"score better ({fix})")
