"""SNIP: connection saliency from one backward pass over the few-shot set.

Saliency of weight element ``(i, j)``: ``S_ij = |W_ij * dL/dW_ij|``, with ``L`` the mean loss
over the whole few-shot set (cross-entropy of the scoring head, or the next-token loss of
a causal LM); the gradient is accumulated batch by batch, so batching does not change it.

**Density at the saliency-mass threshold**: sort a layer's ``m * n`` saliencies in
descending order; ``d_l`` is the smallest fraction of elements whose saliency adds up to at
least ``tau`` of the layer's total (``1 / (m n)`` if the layer has no saliency at all).
Rows and columns are pruned together, so keeping a fraction ``rho`` of each keeps about
``rho^2`` of the elements: the keep ratio is ``rho_l = sqrt(d_l)``. Row scores are
``sum_j S_ij``, column scores ``sum_i S_ij``.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..layer import weight_matrix
from .ticket import LayerTicket, equivalent_k
from .outputs import loss_denominator, task_loss
from .passes import run_pass
from .scoring import Scorer

BACKWARD_COST = 3.0  # forward + backward, in forward-equivalents


def saliency(scorer: Scorer, targets: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    """``{name: S [m, n]}`` (float64, CPU). The model's weights and gradients are left as found."""
    model = scorer.model
    weights = {name: module.weight for name, module in targets.items()}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    grads = {name: w.grad for name, w in weights.items()}
    denominator = loss_denominator(scorer.kind, scorer.batches)
    try:
        model.requires_grad_(False)
        for w in weights.values():
            w.grad = None
            w.requires_grad_(True)

        def step(batch):
            logits = scorer.head.logits(model, batch)
            (task_loss(scorer.kind, logits, batch["labels"]) / denominator).backward()

        run_pass(scorer.batches, step, counter=scorer.counter, progress=scorer.progress,
                 description="snip saliency", cost=BACKWARD_COST, grad=True)
        saliencies = {name: (w.detach() * (w.grad if w.grad is not None else torch.zeros_like(w))).abs()
                      for name, w in weights.items()}
        return {name: weight_matrix(targets[name], s).to("cpu", torch.float64) for name, s in saliencies.items()}
    finally:
        for name, w in weights.items():
            w.grad = grads[name]
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def density_at_mass(saliencies: torch.Tensor, mass: float) -> float:
    """Smallest fraction of elements carrying ``mass`` of the total saliency."""
    flat = saliencies.flatten()
    total = float(flat.sum())
    if total <= 0.0:
        return 1.0 / flat.numel()
    cumulative = torch.cumsum(torch.sort(flat, descending=True).values, 0)
    count = int(torch.searchsorted(cumulative, torch.tensor(mass * total, dtype=cumulative.dtype))) + 1
    return min(count, flat.numel()) / flat.numel()


def snip_layers(scorer: Scorer, targets: Mapping[str, nn.Module], mass: float) -> dict[str, LayerTicket]:
    """Ticket entries: ``rho = sqrt(density at the saliency mass)``; saliency sums as scores."""
    layers = {}
    for name, s in saliency(scorer, targets).items():
        shape = tuple(weight_matrix(targets[name]).shape)
        ratio = density_at_mass(s, mass) ** 0.5
        layers[name] = LayerTicket(ratio, equivalent_k(ratio, shape), shape, s.sum(1), s.sum(0))
    return layers
