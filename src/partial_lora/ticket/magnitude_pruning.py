"""IMP: iterative magnitude pruning of the target weights, scored on the few-shot set.

Round ``j`` keeps the ``(1 - rate)^j`` fraction of all target-weight elements with the
largest magnitude, one threshold across every target layer (global pruning), so layers
whose weights are larger keep more. Pruning is applied to temporary copies (the weights
are restored afterwards). Rounds go on while the pruned model keeps the threshold; the
last round that kept it gives each layer's surviving density ``d_l`` and its keep ratio
``rho_l = sqrt(d_l)`` (rows and columns pruned together keep about ``rho^2`` of the
elements). Without retraining between rounds this is magnitude pruning searched over a
geometric schedule; one scoring pass per round. Row/column scores: surviving ``|W|`` sums.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import torch
from torch import nn

from ..layer import weight_matrix
from .scoring import Scorer
from .ticket import LayerTicket, equivalent_k


@contextlib.contextmanager
def masked_weights(targets: Mapping[str, nn.Module], masks: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Inside the block each target weight is multiplied by its mask (``[m, n]`` bool, out x in)."""
    saved = {}
    try:
        with torch.no_grad():
            for name, mask in masks.items():
                weight = targets[name].weight
                saved[name] = weight.detach().clone()
                weight_matrix(targets[name]).mul_(mask.to(weight.device, weight.dtype))
        yield
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                targets[name].weight.copy_(original)


def imp_layers(scorer: Scorer, targets: Mapping[str, nn.Module], *, rate: float,
               max_rounds: int) -> tuple[dict[str, LayerTicket], dict[str, float]]:
    """Ticket entries and a summary ``{rounds, global_density, final_score}``."""
    magnitudes = {name: weight_matrix(module).detach().abs().to("cpu", torch.float32)
                  for name, module in targets.items()}
    ordered = torch.sort(torch.cat([m.flatten() for m in magnitudes.values()]), descending=True).values
    total = ordered.numel()
    accepted = {name: torch.ones_like(m, dtype=torch.bool) for name, m in magnitudes.items()}
    density, score, rounds = 1.0, scorer.baseline, 0
    while rounds < max_rounds:
        candidate_density = density * (1.0 - rate)
        keep = int(round(candidate_density * total))
        if keep < len(targets):
            break
        cut = ordered[keep - 1]
        masks = {name: m >= cut for name, m in magnitudes.items()}
        with masked_weights(targets, masks):
            candidate_score = scorer.score(f"imp density {candidate_density:.3f}")
        rounds += 1
        if not scorer.keeps_threshold(candidate_score):
            break
        accepted, density, score = masks, candidate_density, candidate_score
    layers = {}
    for name, mask in accepted.items():
        shape = tuple(mask.shape)
        ratio = max(float(mask.double().mean()), 1.0 / mask.numel()) ** 0.5
        kept = magnitudes[name].double() * mask
        layers[name] = LayerTicket(ratio, equivalent_k(ratio, shape), shape, kept.sum(1), kept.sum(0))
    return layers, {"rounds": rounds, "global_density": density, "final_score": score}
