"""The settings of one ticket search, validated on creation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .heads import HEADS
from .metrics import get_metric
from .ticket import METHODS, THRESHOLD_MODES


def _fail(name: str, value: Any, fix: str) -> None:
    raise ValueError(f"{name}={value!r} is invalid: {fix}")


def _fraction(name: str, value: Any, *, closed_low: bool = False, open_high: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        _fail(name, value, "expected a number")
    value = float(value)
    low_ok = value >= 0.0 if closed_low else value > 0.0
    high_ok = value < 1.0 if open_high else value <= 1.0
    if not (low_ok and high_ok):
        interval = ("[0" if closed_low else "(0") + (", 1)" if open_high else ", 1]")
        _fail(name, value, f"it must lie in {interval}")
    return value


@dataclass
class TicketOptions:
    """How to search (see :func:`partial_lora.ticket.find_ticket` for each field)."""

    method: str = "svd"
    threshold: float = 0.9
    threshold_mode: str = "relative"
    metric: Any = "accuracy"
    head: str = "auto"
    ratio: float | None = None
    seed: int = 0
    f_tolerance: float = 0.01
    imp_rate: float = 0.2
    imp_max_rounds: int = 30
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            _fail("method", self.method, f"choose one of {', '.join(METHODS)}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not (0.0 < float(self.threshold) <= 1.0):
            _fail("threshold", self.threshold, "it must lie in (0, 1], e.g. 0.9 to keep 90% of the baseline "
                                               "score (relative to chance by default)")
        self.threshold = float(self.threshold)
        if self.threshold_mode not in THRESHOLD_MODES:
            _fail("threshold_mode", self.threshold_mode, f"choose one of {', '.join(THRESHOLD_MODES)}")
        self.metric = get_metric(self.metric)
        if self.head not in HEADS:
            _fail("head", self.head, f"choose one of {', '.join(HEADS)}")
        if self.method == "uniform":
            if self.ratio is None:
                _fail("ratio", None, "method='uniform' needs ratio=<keep ratio in (0, 1]> for every layer")
            self.ratio = _fraction("ratio", self.ratio)
        elif self.ratio is not None:
            _fail("ratio", self.ratio, f"ratio is only used by method='uniform'; method={self.method!r} "
                                       "derives the ratios itself")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            _fail("seed", self.seed, "the seed must be a non-negative integer")
        self.f_tolerance = _fraction("f_tolerance", self.f_tolerance)
        self.imp_rate = _fraction("imp_rate", self.imp_rate, open_high=True)
        if isinstance(self.imp_max_rounds, bool) or not isinstance(self.imp_max_rounds, int) \
                or self.imp_max_rounds < 1:
            _fail("imp_max_rounds", self.imp_max_rounds, "expected a positive integer")
