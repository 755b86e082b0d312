"""A linear probe: multinomial logistic regression fitted on frozen features with L-BFGS.

The seed's "separate training phase" for models whose task head is new: the head's own
inputs, recorded on the few-shot set, are the features. Fitting is full-batch and starts
from zeros, so it is deterministic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, classes: int,
                     *, max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``logits = features @ weight.T + bias``.

    Features are standardised for the fit (the result is folded back, so it applies to raw
    features); the L2 penalty ``||W||^2 / (2 N)`` on standardised features matches
    scikit-learn's ``LogisticRegression(C=1)``.

    Args:
        features: ``[N, H]`` float features of the fit examples.
        labels: ``[N]`` class indices in ``[0, classes)``.
        classes: C, the number of outputs.

    Returns:
        ``(weight [C, H], bias [C])``, float64.
    """
    x = features.detach().to(torch.float64)
    y = labels.detach().to(torch.int64).to(x.device)
    if x.dim() != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"probe features must be [N, H] with one label each; got {tuple(x.shape)} and {tuple(y.shape)}")
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(1e-8)
    z = (x - mean) / std
    weight = torch.zeros(classes, x.shape[1], dtype=torch.float64, device=x.device, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, device=x.device, requires_grad=True)
    l2 = 1.0 / x.shape[0]
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y) + 0.5 * l2 * (weight ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    weight = weight.detach()
    return weight / std, bias.detach() - (mean / std) @ weight.T
