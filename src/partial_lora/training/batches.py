"""Batches for the training loop: checks, sharding over processes, a ready-made source.

The loop takes any re-iterable of dict batches (a list, a ``DataLoader``, or
:class:`TensorBatches`). With several processes each takes every ``n``-th batch
(:func:`shard`), so every process must be given the same batches in the same order: use a
source whose order is fixed per epoch (``set_epoch``), as :class:`TensorBatches` is.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Mapping

import torch


class TensorBatches:
    """Mini-batches of a dict of equally long tensors, reshuffled per epoch, reproducibly.

    Args:
        tensors: ``{name: tensor}`` with the examples along dimension 0 (``input_ids``
            ``[N, T]``, ``attention_mask`` ``[N, T]``, ``labels`` ``[N]``, ...).
        batch_size: examples per batch.
        shuffle: reorder the examples every epoch (the order depends only on ``seed`` and
            the epoch given to :meth:`set_epoch`).
        seed: seed of the shuffling.
        drop_last: drop the last, smaller batch.
    """

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not tensors:
            raise ValueError("tensors is empty; give at least {'input_ids': ..., 'labels': ...}")
        sizes = {name: len(t) for name, t in tensors.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"every tensor needs the same number of examples (dimension 0), got {sizes}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is invalid: expected an integer >= 1")
        self.tensors = dict(tensors)
        self.examples = next(iter(sizes.values()))
        if self.examples == 0:
            raise ValueError("the tensors hold no examples")
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Fix the order of the next iteration (the training loop calls this every epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.examples // self.batch_size
        return math.ceil(self.examples / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.examples, generator=generator)
        else:
            order = torch.arange(self.examples)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start:start + self.batch_size]
            yield {name: tensor[index] for name, tensor in self.tensors.items()}


def count_batches(batches: Iterable[Any]) -> int:
    """Number of batches one pass yields (``len`` if it has one, else one pass)."""
    if iter(batches) is batches:
        raise ValueError(
            f"the batches ({type(batches).__name__}) are a one-shot iterator; training needs a re-iterable source "
            "(a list, a DataLoader or partial_lora.training.TensorBatches)"
        )
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return sum(1 for _ in batches)


def shard(batches: Iterable[Any], rank: int, world: int, limit: int | None = None) -> Iterator[tuple[int, Any]]:
    """``(local index, batch)`` of process ``rank``: batches ``rank, rank + world, ...``.

    Stops after ``limit`` local batches (so every process takes the same number).
    """
    local = 0
    for index, batch in enumerate(batches):
        if limit is not None and local >= limit:
            return
        if index % world == rank:
            yield local, batch
            local += 1


def check_batch(batch: Any, where: str) -> None:
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"{where} is a {type(batch).__name__}; every batch must be a dict of tensors as the model takes "
            "them, e.g. {'input_ids': ..., 'attention_mask': ..., 'labels': ...}"
        )


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def nonfinite_inputs(batch: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``batch`` holding NaN or infinite values."""
    return [
        name for name, value in batch.items()
        if isinstance(value, torch.Tensor) and value.dtype.is_floating_point and not bool(torch.isfinite(value).all())
    ]
