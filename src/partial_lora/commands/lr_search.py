"""Choosing a learning rate on validation data: the grid, its ends, and extending past them.

A search trains at every rate of ``--lr-grid`` and keeps the one with the best mean
validation metric (ties: the lower rate). A search whose **only** best rate is the highest
(or lowest) rate tried is *open* at that end: the grid may have stopped short. With
``--lr-grid-extend N`` it then also tries twice (half) that rate, up to ``N`` more rates, and
stops as soon as it is no longer open (the best lies inside the rates tried, or ties with a
neighbour). Every rate here is in LoRA's units (methods scale it, see
:func:`~partial_lora.methods.method_learning_rate`).
"""

from __future__ import annotations

from typing import Mapping

EXTENSION_FACTOR = 2.0  # each added rate doubles the highest rate tried (or halves the lowest)


def best_rate(scores: Mapping[float, float]) -> float:
    """The rate with the highest score; of equal scores the lowest rate."""
    return max(sorted(scores), key=lambda rate: scores[rate])


def open_end(scores: Mapping[float, float]) -> str | None:
    """``"top"`` or ``"bottom"`` when the one best of two or more rates is the highest or lowest rate tried.

    ``scores`` maps each rate tried to its validation score. A best shared with another rate
    (a flat stretch, e.g. a method at chance everywhere) is not open: a rate beyond it has
    nothing to suggest it would do better.
    """
    if len(scores) < 2:
        return None  # one rate is no search
    best = max(scores.values())
    leaders = [rate for rate, score in scores.items() if score == best]
    if len(leaders) > 1:
        return None
    if leaders[0] == max(scores):
        return "top"
    return "bottom" if leaders[0] == min(scores) else None


def rate_beyond(scores: Mapping[float, float], end: str) -> float:
    """The next rate past ``end`` (``"top"`` or ``"bottom"``) of the rates tried: twice the highest or half the lowest."""
    rate = max(scores) * EXTENSION_FACTOR if end == "top" else min(scores) / EXTENSION_FACTOR
    return float(f"{rate:.12g}")  # 0.01 * 2 is 0.02, not 0.020000000000000004


def next_rate(scores: Mapping[float, float], added: int, extend: int) -> float | None:
    """The rate a search goes on with (``added`` rates already added of the ``extend`` allowed), or None: it has ended."""
    end = open_end(scores) if added < extend else None
    return None if end is None else rate_beyond(scores, end)


def extension_range(grid: list[float], extensions: int) -> tuple[float, float]:
    """The lowest and highest rate a search of ``grid`` may reach with ``extensions`` added rates."""
    return min(grid) / EXTENSION_FACTOR ** extensions, max(grid) * EXTENSION_FACTOR ** extensions


def end_note(label: str, scores: Mapping[float, float], *, extend_given: bool) -> str | None:
    """What a report says of a search left open at an end of its rates (None if it was not); rates in LoRA's units."""
    end = open_end(scores)
    if end is None:
        return None
    beyond, word = ("higher", "highest") if end == "top" else ("lower", "lowest")
    fix = ("widen --lr-grid or raise --lr-grid-extend" if extend_given else
           "widen --lr-grid, or pass --lr-grid-extend N to let the search go on past its ends")
    return (f"{label}: the best validation score is at {best_rate(scores):g} (in --lr-grid's units), the {word} rate "
            f"tried; a {beyond} rate might score better ({fix})")
