"""Passes over the few-shot set, with a progress bar and a cost count.

Cost is counted in **forward-equivalents**: one full forward pass over the few-shot set is
1; a forward + backward pass counts 3 (a backward pass costs about two forwards).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from tqdm.auto import tqdm


class PassCounter:
    """Counts forward-equivalents."""

    def __init__(self) -> None:
        self.forward_equivalents = 0.0

    def add(self, amount: float) -> None:
        self.forward_equivalents += amount


def run_pass(batches: list[dict[str, Any]], step: Callable[[dict[str, Any]], Any], *, counter: PassCounter,
             progress: bool, description: str, cost: float = 1.0, grad: bool = False) -> list[Any]:
    """Call ``step(batch)`` on every batch (under ``no_grad`` unless ``grad``); list the results."""
    results = []
    with torch.set_grad_enabled(grad):
        for batch in tqdm(batches, desc=description, disable=not progress, leave=False, unit="batch"):
            results.append(step(batch))
    counter.add(cost)
    return results
