"""Default evaluation: loss, accuracy and macro-F1 of a classifier.

The scores come from :mod:`partial_lora.metrics` (``classification_scores`` is re-exported here).

Used by the training loop when no ``evaluate`` callable is given. Works on one process or
several (an ``accelerate.Accelerator``): process ``k`` of ``n`` evaluates batches ``k, k + n,
...``, the predictions are gathered, and every process returns the same numbers.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import nn

from ..metrics import classification_scores
from .batches import check_batch, to_device
from .batches import shard as shard_batches

__all__ = ["classification_scores", "evaluate_classification", "output_field"]


@torch.no_grad()
def evaluate_classification(
    model: nn.Module, batches: Iterable[Any], *, accelerator: Any = None, shard: bool = True
) -> dict[str, float]:
    """Mean loss, accuracy and macro-F1 of ``model`` over ``batches``.

    Args:
        model: returns ``.loss`` (when batches hold ``labels``) and ``.logits`` ``[B, C]``.
        batches: dict batches; ``labels`` ``[B]`` integer classes.
        accelerator: optional ``accelerate.Accelerator``; with several processes the results
            of all processes are gathered.
        shard: with several processes, every process is given the same batches and takes
            every ``n``-th; False: each process evaluates all the batches it is given (its own shard).

    Returns:
        ``{"loss", "accuracy", "macro_f1"}``; ``accuracy`` and ``macro_f1`` only when labels
        are one class per example and logits ``[B, C]`` (not e.g. token-level LM labels).
    """
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    take_rank, take_every = (rank, world) if shard else (0, 1)
    device = accelerator.device if accelerator is not None else _device_of(model)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # sum of loss * examples, examples
    predictions, labels = [], []
    try:
        for index, batch in shard_batches(batches, take_rank, take_every):
            check_batch(batch, f"evaluation batch {index * take_every + take_rank}")
            batch = to_device(batch, device)
            outputs = model(**batch)
            target = batch.get("labels")
            loss = output_field(outputs, "loss")
            logits = output_field(outputs, "logits")
            if loss is not None and target is not None:
                loss_sum[0] += loss.detach().double() * len(target)
                loss_sum[1] += len(target)
            if (
                target is not None and logits is not None and target.dim() == 1
                and logits.dim() == 2 and len(logits) == len(target) and not target.dtype.is_floating_point
            ):
                predictions.append(logits.argmax(-1).long())
                labels.append(target.long())
    finally:
        model.train(was_training)
    local_predictions = torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long, device=device)
    local_labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    if world > 1:
        # Pad to the longest shard with label -1 (ignored), then gather everything everywhere.
        local_predictions = accelerator.pad_across_processes(local_predictions, dim=0, pad_index=-1)
        local_labels = accelerator.pad_across_processes(local_labels, dim=0, pad_index=-1)
        local_predictions = accelerator.gather(local_predictions)
        local_labels = accelerator.gather(local_labels)
        loss_sum = accelerator.reduce(loss_sum, reduction="sum")
    metrics: dict[str, float] = {}
    if float(loss_sum[1]) > 0:
        metrics["loss"] = float(loss_sum[0] / loss_sum[1])
    metrics.update(classification_scores(local_predictions.cpu(), local_labels.cpu()))
    return metrics


def output_field(outputs: Any, name: str) -> Any:
    """``outputs.name`` of a transformers ``ModelOutput`` or ``outputs[name]`` of a dict."""
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)


def _device_of(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")
