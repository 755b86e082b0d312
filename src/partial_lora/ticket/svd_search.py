"""The SVD ticket: from task-aware spectra to per-layer ranks, by the paper's performance rule.

``joint_search`` (method ``svd``, the default): project every target layer at once onto its
top-``k_l(f)`` output directions and raise the energy fraction ``f`` from ``tau`` towards 1 by
bisection until the score keeps the threshold. Costs the recording pass plus one pass at
``f = tau`` plus about ``log2((1 - tau) / f_tolerance)`` passes (fewer when a midpoint gives
the same ranks as a point already scored).

``layerwise_search`` (method ``svd-layerwise``, **an ablation only**): the literal reading of
the seed: truncate one layer at a time and bisect its rank. About ``log2(min(m, n))`` passes
per layer. On the packaged MiniLM with BBC News it is degenerate: truncating any single
layer, even to rank 1, keeps the score, so every layer gets ``k = 1``.
"""

from __future__ import annotations

from typing import Mapping

from torch import nn

from .scoring import Scorer
from ..layer import weight_matrix
from .svd import Spectrum, column_scores, layer_spectrum, projected, row_scores
from .ticket import LayerTicket
from .recording import InputRecorder


def spectra_of(targets: Mapping[str, nn.Module], recorder: InputRecorder) -> dict[str, Spectrum]:
    """Each target layer's task-aware spectrum from the recorded input covariance."""
    return {name: layer_spectrum(weight_matrix(module), recorder.covariance(name)) for name, module in targets.items()}


def layer_entries(targets: Mapping[str, nn.Module], spectra: Mapping[str, Spectrum], ks: Mapping[str, int],
                  recorder: InputRecorder) -> dict[str, LayerTicket]:
    """Ticket entries for ranks ``ks``: ratio ``k / min(m, n)``, leverage and input-feed scores."""
    layers = {}
    for name, module in targets.items():
        weight = weight_matrix(module)
        shape = (int(weight.shape[0]), int(weight.shape[1]))
        k = ks[name]
        layers[name] = LayerTicket(
            keep_ratio=k / min(shape), k=k, shape=shape,
            row_scores=row_scores(spectra[name], k),
            column_scores=column_scores(weight, spectra[name], k, recorder.covariance(name)),
        )
    return layers


def joint_search(scorer: Scorer, targets: Mapping[str, nn.Module], spectra: Mapping[str, Spectrum], *,
                 threshold: float, tolerance: float) -> tuple[dict[str, int], float, float]:
    """Smallest ``f`` in ``[tau, 1]`` (to ``tolerance``) whose joint projection keeps the threshold.

    Returns ``(ranks {name: k_l(f)}, f, score at f)``; ``f = 1`` keeps every direction that
    carries energy, which reproduces the layer outputs on the data, so it is not scored.
    """
    def ranks(fraction: float) -> tuple[int, ...]:
        return tuple(spectra[name].k(fraction) for name in targets)

    def score(fraction: float) -> float:
        key = ranks(fraction)
        bases = {name: spectra[name].directions[:, :k] for name, k in zip(targets, key)}
        with projected(targets, bases):
            return scorer.score(f"scoring f={fraction:.4f}")

    known: dict[tuple[int, ...], float] = {}

    def score_of(fraction: float) -> float:
        key = ranks(fraction)
        if key not in known:
            known[key] = score(fraction)
        return known[key]

    first = score_of(threshold)
    if scorer.keeps_threshold(first):
        return dict(zip(targets, ranks(threshold))), threshold, first
    low, high, high_score = threshold, 1.0, scorer.baseline
    known[ranks(1.0)] = scorer.baseline
    while high - low > tolerance:
        middle = (low + high) / 2
        middle_score = score_of(middle)
        if scorer.keeps_threshold(middle_score):
            high, high_score = middle, middle_score
        else:
            low = middle
    return dict(zip(targets, ranks(high))), high, high_score


def layerwise_search(scorer: Scorer, targets: Mapping[str, nn.Module],
                     spectra: Mapping[str, Spectrum]) -> dict[str, int]:
    """Per layer, alone: the smallest rank (by bisection) whose projection keeps the threshold."""
    ranks = {}
    for name in targets:
        spectrum = spectra[name]
        low, high = 0, spectrum.rank()  # rank 0 is taken to fail, the full rank to pass
        while high - low > 1:
            middle = (low + high) // 2
            with projected(targets, {name: spectrum.directions[:, :middle]}):
                score = scorer.score(f"{name} k={middle}")
            if scorer.keeps_threshold(score):
                high = middle
            else:
                low = middle
        ranks[name] = high
    return ranks
