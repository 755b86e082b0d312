"""The task-aware spectrum of a layer and projection onto its top output directions.

For a layer ``y = W x + b`` (``W``: ``m x n``) with uncentered input covariance
``C = X^T X / N`` on the task's data, take ``L`` with ``L L^T = C`` (``L = V diag(sqrt(e))``
from ``C = V diag(e) V^T``). The singular values ``s_i`` of ``W L`` are those of the layer's
outputs ``W X^T / sqrt(N)``: ``s_i^2`` is the mean output energy (squared output units per
input row) along the output direction ``U[:, i]``. ``k(f)`` is the smallest number of top
directions carrying a fraction ``f`` of the total energy.

Projection replaces ``W`` by ``U_k U_k^T W`` in the forward, through a forward hook on the
layer's output (``y' = b + U_k U_k^T (y - b)``): the model's weights are never touched.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
from torch import nn

RELATIVE_EPSILON = 1e-10


@dataclass
class Spectrum:
    """One layer's task-aware spectrum.

    Attributes:
        energies: ``[r]`` float64, ``s_i^2`` in descending order, ``r = min(m, n)``.
        directions: ``[m, r]`` float64, the output directions ``U``.
    """

    energies: torch.Tensor
    directions: torch.Tensor

    def k(self, fraction: float) -> int:
        """Smallest ``k >= 1`` whose top-``k`` energies reach ``fraction`` of the total."""
        total = float(self.energies.sum())
        if total <= 0.0:
            return 1
        cumulative = torch.cumsum(self.energies, 0) / total
        reached = (cumulative >= fraction - RELATIVE_EPSILON).nonzero()
        return int(reached[0]) + 1 if reached.numel() else int(self.energies.numel())

    def rank(self) -> int:
        """Directions with non-negligible energy (``k(1.0)``)."""
        return self.k(1.0)


def layer_spectrum(weight: torch.Tensor, covariance: torch.Tensor) -> Spectrum:
    """Singular values and left singular vectors of ``W L`` (``L L^T = covariance``).

    Args:
        weight: ``[m, n]``.
        covariance: ``[n, n]`` uncentered input covariance.
    """
    w = weight.detach().to("cpu", torch.float64)
    c = covariance.to("cpu", torch.float64)
    values, vectors = torch.linalg.eigh((c + c.T) / 2)
    root = vectors * values.clamp_min(0.0).sqrt()  # L, with L L^T = C
    directions, singular, _ = torch.linalg.svd(w @ root, full_matrices=False)
    return Spectrum(energies=singular ** 2, directions=directions)


def row_scores(spectrum: Spectrum, k: int) -> torch.Tensor:
    """Leverage of each output feature in the top-``k`` directions: ``||U[i, :k]||^2``, ``[m]``."""
    return (spectrum.directions[:, :k] ** 2).sum(1)


def column_scores(weight: torch.Tensor, spectrum: Spectrum, k: int, covariance: torch.Tensor) -> torch.Tensor:
    """How much each input feature feeds the top-``k`` directions, weighted by its second
    moment on the data: ``||U_k^T W[:, j]||^2 * C[j, j]``, ``[n]``."""
    w = weight.detach().to("cpu", torch.float64)
    fed = ((spectrum.directions[:, :k].T @ w) ** 2).sum(0)
    return fed * covariance.diagonal().to(torch.float64).clamp_min(0.0)


@contextlib.contextmanager
def projected(modules: Mapping[str, nn.Module], bases: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Inside the block, layer ``name`` outputs ``b + U U^T (y - b)`` with ``U = bases[name]`` (``[m, k]``).

    Layers whose basis spans every output (``k == m``) are left alone.
    """
    handles = []
    try:
        for name, basis in bases.items():
            module = modules[name]
            if basis.shape[1] >= basis.shape[0]:
                continue
            weight = module.weight
            basis = basis.to(weight.device, weight.dtype)
            handles.append(module.register_forward_hook(_projection_hook(basis, module)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _projection_hook(basis: torch.Tensor, module: nn.Module):
    conv = isinstance(module, nn.Conv2d)

    def hook(mod: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        y = output.movedim(1, -1) if conv else output
        bias = mod.bias
        centred = y - bias if bias is not None else y
        result = (centred @ basis) @ basis.T
        if bias is not None:
            result = result + bias
        return result.movedim(-1, 1) if conv else result

    return hook
