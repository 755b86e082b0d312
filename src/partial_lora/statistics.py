"""Paired comparisons of two methods on the same test examples, with bootstrap intervals.

A method and its reference (LoRA) are scored on the same test examples with the same seeds,
so their difference is measured per example. :func:`paired_difference` pools the seeds and
resamples the **examples** (the same resampled examples for every seed), which gives the
95 % interval of the difference in points (percentage points of accuracy or exact match).

:func:`verdict` turns an interval into a statement about the project's promise, "within one
point of LoRA":

==============  ====================================================================
verdict         the 95 % interval of (method - reference), in points
==============  ====================================================================
better          lies above 0
parity          lower end >= -margin (within ``margin`` points, not shown better)
worse           upper end < -margin (more than ``margin`` points below)
inconclusive    lower end < -margin <= upper end: it could be either
==============  ====================================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

VERDICTS = ("better", "parity", "worse", "inconclusive")
MARGIN_POINTS = 1.0


@dataclass(frozen=True)
class Comparison:
    """One paired comparison.

    Attributes:
        diff_points: mean of (method - reference) over seeds and examples, in points.
        ci_low, ci_high: the 95 % (``level``) percentile bootstrap interval of it, in points.
        verdict: one of :data:`VERDICTS` (see the module docstring).
        seeds: the seeds both were scored with (pooled).
        examples: test examples per seed.
    """

    diff_points: float
    ci_low: float
    ci_high: float
    verdict: str
    seeds: tuple[int, ...]
    examples: int

    def to_dict(self) -> dict:
        data = asdict(self)
        data["seeds"] = list(self.seeds)
        return data


def correctness_vector(text: str) -> np.ndarray:
    """``"0110..."`` (one character per test example, 1 = right) as a float array ``[N]``."""
    if not text or set(text) - {"0", "1"}:
        raise ValueError("a per-example correctness record is a non-empty string of 0s and 1s")
    return np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.float64) - ord("0")


def correctness_text(correct: Sequence[bool]) -> str:
    """Per-example correctness as a compact string of 0s and 1s (what results.json keeps)."""
    return "".join("1" if value else "0" for value in correct)


def paired_difference(
    method: Mapping[int, np.ndarray],
    reference: Mapping[int, np.ndarray],
    *,
    resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
    margin: float = MARGIN_POINTS,
) -> Comparison:
    """Difference method - reference with a paired bootstrap interval, seeds pooled.

    Args:
        method, reference: ``{seed: [N] per-example scores in [0, 1]}`` (1 = right) on the
            same ``N`` test examples in the same order; seeds present in both are used.
        resamples: bootstrap resamples of the examples.
        level: coverage of the interval (0.95).
        seed: seed of the resampling (results are reproducible).
        margin: the parity margin in points (:func:`verdict`).
    """
    seeds = tuple(sorted(set(method) & set(reference)))
    if not seeds:
        raise ValueError(f"no seed in common (method {sorted(method)}, reference {sorted(reference)})")
    a = np.stack([np.asarray(method[s], dtype=np.float64) for s in seeds])
    b = np.stack([np.asarray(reference[s], dtype=np.float64) for s in seeds])
    if a.shape != b.shape:
        raise ValueError(f"the two methods were scored on different test sets ({a.shape[1]} vs {b.shape[1]} examples)")
    per_example = (a - b).mean(axis=0)  # [N]: seeds pooled, pairs kept by example
    diff, low, high = _bootstrap(per_example, resamples, level, seed)
    return Comparison(diff, low, high, verdict(low, high, margin), seeds, per_example.shape[0])


def verdict(ci_low: float, ci_high: float, margin: float = MARGIN_POINTS) -> str:
    """The statement an interval (in points) supports; see the module docstring."""
    if ci_low > 0:
        return "better"
    if ci_low >= -margin:
        return "parity"
    if ci_high < -margin:
        return "worse"
    return "inconclusive"


def mean_interval(scores: Mapping[int, np.ndarray], *, resamples: int = 10_000, level: float = 0.95,
                  seed: int = 0) -> tuple[float, float, float]:
    """Mean score in points and its bootstrap interval (examples resampled, seeds pooled)."""
    per_example = np.stack([np.asarray(v, dtype=np.float64) for _, v in sorted(scores.items())]).mean(axis=0)
    return _bootstrap(per_example, resamples, level, seed)


def _bootstrap(per_example: np.ndarray, resamples: int, level: float, seed: int) -> tuple[float, float, float]:
    """``(mean, low, high)`` in points of the mean of ``per_example`` ``[N]`` over resampled examples."""
    examples = per_example.shape[0]
    generator = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # chunks keep the index array small
        count = min(1000, resamples - start)
        draws = generator.integers(0, examples, size=(count, examples))
        means[start:start + count] = per_example[draws].mean(axis=1)
    tail = (1.0 - level) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return 100 * float(per_example.mean()), 100 * float(low), 100 * float(high)
