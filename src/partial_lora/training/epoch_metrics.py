"""The metrics of an epoch's end: an evaluation that leaves the training trajectory unchanged."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch

from .evaluate import evaluate_classification
from .rng import preserved_rng
from .setup import Prepared


def evaluate_epoch(
    prepared: Prepared,
    eval_batches: Iterable[Any],
    evaluate: Callable[..., Mapping[str, Any]] | None,
    accelerator: Any,
    shard: bool,
) -> dict[str, float]:
    """``evaluate(model, eval_batches)`` on the unwrapped model in eval mode, as ``{name: float}``.

    Without ``evaluate``: :func:`evaluate_classification` (loss, accuracy, macro-F1), over
    every process's share of the batches when ``shard``. The generators' states are put back
    afterwards and the model is left in training mode, so the next step is as without it.
    """
    model = prepared.unwrapped
    with preserved_rng():
        model.eval()
        try:
            if evaluate is None:
                metrics = evaluate_classification(model, eval_batches, accelerator=accelerator, shard=shard)
            else:
                metrics = evaluate(model, eval_batches)
        finally:
            prepared.model.train()
    return _numbers(metrics)


def _numbers(metrics: Any) -> dict[str, float]:
    """``{name: float}``; refuses anything but a dict of numbers (or one-element tensors)."""
    if not isinstance(metrics, Mapping):
        raise TypeError(f"evaluate must return a dict of numbers, got {type(metrics).__name__}")
    result = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"evaluate returned {name}={value!r}; every metric must be a number")
        result[str(name)] = float(value)
    return result
