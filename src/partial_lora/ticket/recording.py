"""Forward pre-hooks that record each target layer's inputs as a second-moment matrix.

For a layer with ``n`` input features the recorder keeps ``S = sum_t x_t x_t^T`` (float64,
``[n, n]``) and the row count ``N`` over every input row ``x_t`` it saw: tokens for text
(padding excluded when the batch has an ``attention_mask`` of matching shape), patches,
or pixels of a 1x1 convolution. ``covariance(name) = S / N`` is the uncentered input
covariance ``X^T X / N`` of the spec. Layers that receive the very same input tensor (the
query, key and value of one attention block) share one matrix.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn


class InputRecorder:
    """Context manager recording the inputs of ``modules`` (``{full name: module}``)."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self.modules = dict(modules)
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.owner: dict[str, str] = {}  # layer -> layer whose matrix it shares (itself if none)
        self.attention_mask: torch.Tensor | None = None
        self._seen: list[tuple[torch.Tensor, str]] = []
        self._handles: list = []

    def __enter__(self) -> "InputRecorder":
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._seen.clear()

    def begin_batch(self, attention_mask: torch.Tensor | None) -> None:
        """Call before each batch: sets the padding mask and forgets the last batch's tensors."""
        self.attention_mask = attention_mask
        self._seen.clear()

    def covariance(self, name: str) -> torch.Tensor:
        """``X^T X / N`` of layer ``name``, ``[n, n]`` float64 on the CPU."""
        owner = self.owner.get(name)
        if owner is None or self.counts.get(owner, 0) == 0:
            raise RuntimeError(f"layer {name!r} never ran during the recording pass; it is not used by this "
                               "model's forward on these batches (drop it from target_modules)")
        return (self.sums[owner] / self.counts[owner]).cpu()

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            x = args[0]
            for tensor, first in self._seen:
                if tensor is x:
                    previous = self.owner.setdefault(name, first)
                    if previous != first:
                        raise RuntimeError(f"layer {name!r} shares its input with {first!r} in one batch and with "
                                           f"{previous!r} in another; record these layers separately")
                    return
            self._seen.append((x, name))  # the reference also keeps the address from being reused
            if self.owner.setdefault(name, name) != name:
                raise RuntimeError(f"layer {name!r} shared its input with {self.owner[name]!r} before, not now")
            rows = _rows(module, x.detach(), self.attention_mask).to(torch.float64)
            if name not in self.sums:
                self.sums[name] = torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64, device=rows.device)
                self.counts[name] = 0
            self.sums[name].addmm_(rows.T, rows)
            self.counts[name] += rows.shape[0]

        return hook


def _rows(module: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The input as ``[rows, n]``: feature vectors of every token/patch/pixel."""
    if isinstance(module, nn.Conv2d):
        return x.movedim(1, -1).reshape(-1, x.shape[1])
    if mask is not None and x.dim() == 3 and tuple(mask.shape) == tuple(x.shape[:2]):
        return x[mask.bool()]
    return x.reshape(-1, x.shape[-1])
