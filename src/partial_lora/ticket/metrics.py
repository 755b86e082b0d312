"""Metrics a ticket's threshold is applied to, each with its chance floor.

Every metric is "higher is better" and is computed from :class:`Outputs`. Its **floor** is
the score of a predictor that ignores the input, on the same examples:

============  =====================================  =========================================
metric        classification (labels ``[B]``)        causal LM (labels ``[B, T]``)
============  =====================================  =========================================
accuracy      fraction right; floor: majority class  scored next tokens right; floor: the most
                                                     frequent target token's share
macro_f1      mean per-class F1; floor: macro-F1 of  (not defined)
              always predicting the majority class
exact_match   same as accuracy                       sequences with every scored token right
                                                     (teacher-forced argmax); floor: 0
neg_loss      minus mean cross-entropy (nats);       minus mean next-token loss (nats/token);
              floor: -log C (uniform predictor)      floor: -log V (uniform over the vocabulary)
callable      ``fn(logits [N, C], labels [N])``;     (not supported)
              floor: fn of the majority-class
              constant predictor
============  =====================================  =========================================

**Threshold rule** (:func:`required_score`), with ``a*`` the unchanged model's score:

* ``relative``: ``score - floor >= tau * (a* - floor)``: keep a fraction ``tau`` of what the
  model gains over chance. For ``neg_loss`` that is a fraction ``tau`` of the model's gain,
  in nats per token, over a uniform predictor; in perplexity terms
  ``ppl <= V ** (1 - tau) * ppl* ** tau``, i.e. perplexity may grow by a factor up to
  ``(V / ppl*) ** (1 - tau)`` (about 2.9 for V = 49k, tau = 0.9). Use ``tau`` of 0.97-0.99,
  or ``absolute``, when the loss itself must stay close.
* ``absolute``: the paper's ``score >= tau * a*``. For a negative baseline (``neg_loss``)
  that rule would demand a *better* score, so it is read as ``loss <= loss* / tau``
  (``score >= a* / tau``).

If the baseline is not above the floor, "relative" has no meaning (the model is at chance on
these examples); the absolute rule is used and a note says so.

Classification scores are computed by :mod:`partial_lora.metrics` (macro-F1 over the classes in
the labels or the predictions, scikit-learn's meaning); the causal-LM scores are computed here
from the token statistics that a scoring pass keeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..metrics import accuracy, macro_f1, neg_loss
from .few_shot import CAUSAL_LM, CLASSIFICATION
from .outputs import Outputs

TOLERANCE = 1e-9


@dataclass(frozen=True)
class Metric:
    """A named score of :class:`Outputs` (higher is better) and its chance floor."""

    name: str
    score: Callable[[Outputs], float]
    floor: Callable[[Outputs], float]
    kinds: tuple[str, ...] = (CLASSIFICATION, CAUSAL_LM)

    def check_kind(self, kind: str) -> None:
        if kind not in self.kinds:
            raise ValueError(f"metric={self.name!r} is not defined for {kind} data; for {kind} use one of "
                             f"{', '.join(n for n, m in BUILTIN.items() if kind in m.kinds)}")


# -- classification ------------------------------------------------------------------------
def _predictions(out: Outputs) -> torch.Tensor:
    return out.logits.argmax(dim=1)


def _majority(labels: torch.Tensor) -> int:
    return int(torch.bincount(labels).argmax())


def _accuracy(out: Outputs) -> float:
    if out.kind == CLASSIFICATION:
        return accuracy(_predictions(out), out.labels)
    return float(out.correct.sum()) / float(out.tokens.sum())


def _accuracy_floor(out: Outputs) -> float:
    if out.kind == CLASSIFICATION:
        return float(torch.bincount(out.labels).max()) / out.labels.numel()
    targets = torch.cat(out.targets)
    return float(torch.bincount(targets).max()) / targets.numel()


def _macro_f1(out: Outputs) -> float:
    return macro_f1(_predictions(out), out.labels)


def _macro_f1_floor(out: Outputs) -> float:
    constant = torch.full_like(out.labels, _majority(out.labels))
    return macro_f1(constant, out.labels)


def _exact_match(out: Outputs) -> float:
    if out.kind == CLASSIFICATION:
        return _accuracy(out)
    return float((out.correct == out.tokens).double().mean())


def _exact_match_floor(out: Outputs) -> float:
    return _accuracy_floor(out) if out.kind == CLASSIFICATION else 0.0


def _neg_loss(out: Outputs) -> float:
    if out.kind == CLASSIFICATION:
        return neg_loss(out.logits, out.labels)
    return -float(out.nll.sum()) / float(out.tokens.sum())


def _neg_loss_floor(out: Outputs) -> float:
    classes = out.logits.shape[1] if out.kind == CLASSIFICATION else out.vocab_size
    return -math.log(classes)


BUILTIN: dict[str, Metric] = {
    "accuracy": Metric("accuracy", _accuracy, _accuracy_floor),
    "macro_f1": Metric("macro_f1", _macro_f1, _macro_f1_floor, kinds=(CLASSIFICATION,)),
    "exact_match": Metric("exact_match", _exact_match, _exact_match_floor),
    "neg_loss": Metric("neg_loss", _neg_loss, _neg_loss_floor),
}


def get_metric(metric: str | Metric | Callable) -> Metric:
    """A :class:`Metric` from a name (``neg-loss`` and ``neg_loss`` both work), a Metric, or a
    callable ``fn(logits [N, C], labels [N]) -> float`` (higher is better)."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        key = metric.strip().lower().replace("-", "_")
        if key not in BUILTIN:
            raise ValueError(f"metric={metric!r} is unknown; known metrics: {', '.join(BUILTIN)} "
                             "(or pass a callable fn(logits, labels) -> float, higher is better)")
        return BUILTIN[key]
    if callable(metric):
        name = getattr(metric, "__name__", type(metric).__name__)

        def score(out: Outputs) -> float:
            return float(metric(out.logits, out.labels))

        def floor(out: Outputs) -> float:
            constant = torch.zeros_like(out.logits)
            constant[:, _majority(out.labels)] = 1.0
            return float(metric(constant, out.labels))

        return Metric(name, score, floor, kinds=(CLASSIFICATION,))
    raise ValueError(f"metric={metric!r} is invalid: give a name ({', '.join(BUILTIN)}) or a callable")


def required_score(baseline: float, floor: float, threshold: float, mode: str) -> tuple[float, str | None]:
    """The score a pruned model must keep, and a note if the relative rule had to fall back."""
    note = None
    if mode == "relative":
        if baseline > floor:
            return floor + threshold * (baseline - floor), None
        note = (f"baseline score {baseline:.4g} is not above the chance floor {floor:.4g}: the relative "
                "threshold is undefined, the absolute rule was used")
    required = threshold * baseline if baseline >= 0 else baseline / threshold
    return required, note


def passes(score: float, required: float) -> bool:
    """``score >= required`` up to float rounding."""
    return score >= required - TOLERANCE * max(1.0, abs(required))
