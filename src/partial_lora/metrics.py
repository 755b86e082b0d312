"""Scores of predictions: accuracy, macro-F1, negative loss and exact match of answers.

The one implementation of each score; tickets (:mod:`partial_lora.ticket.metrics`), the
training loop's default evaluation and the command reports all call these. Every score is
"higher is better"; accuracy, macro-F1 and exact match are fractions in ``[0, 1]``.

* **accuracy**: the fraction of examples whose predicted class is the label.
* **macro-F1**: the unweighted mean of per-class F1, ``2 tp / (2 tp + fp + fn)``, over the
  classes that occur in the labels *or* the predictions (scikit-learn's
  ``f1_score(average="macro")``, which computes it). A class that is predicted but never
  true counts with F1 0; a class absent from both counts for nothing.
* **neg_loss**: minus the mean cross-entropy, in nats per example.
* **exact match**: the fraction of generated answers whose :func:`normalise_answer` equals
  the reference's.

Class scores take integer class indices, ``predictions`` and ``labels`` both ``[N]`` (torch
tensors, numpy arrays or sequences); examples whose label is negative (e.g. the padding label
-100) are left out.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def accuracy(predictions: Any, labels: Any) -> float:
    """The fraction in ``[0, 1]`` of labelled examples with ``predictions == labels`` (both ``[N]``).

    Raises:
        ValueError: no example is labelled (``N`` is 0 or every label is negative).
    """
    # Imported on first use: sklearn (with scipy) adds about 2 s to importing this package.
    from sklearn.metrics import accuracy_score

    predicted, truth = _labelled(predictions, labels)
    return float(accuracy_score(truth, predicted))


def macro_f1(predictions: Any, labels: Any) -> float:
    """Macro-F1 in ``[0, 1]`` of ``predictions`` against ``labels`` (both ``[N]``).

    The mean per-class F1 over the classes present in the labels or the predictions, as
    ``sklearn.metrics.f1_score(average="macro")``.

    Raises:
        ValueError: no example is labelled (``N`` is 0 or every label is negative).
    """
    # Imported on first use: sklearn (with scipy) adds about 2 s to importing this package.
    from sklearn.metrics import f1_score

    predicted, truth = _labelled(predictions, labels)
    # Every class averaged over occurs somewhere, so 2 tp + fp + fn > 0: zero_division never applies.
    return float(f1_score(truth, predicted, average="macro", zero_division=0.0))


def classification_scores(predictions: Any, labels: Any) -> dict[str, float]:
    """``{"accuracy", "macro_f1"}`` (fractions) of integer ``predictions`` against ``labels``
    (both ``[N]``); labels < 0 are ignored, and ``{}`` is returned when no example is labelled."""
    predicted, truth = _labelled(predictions, labels, allow_empty=True)
    if truth.size == 0:
        return {}
    return {"accuracy": accuracy(predicted, truth), "macro_f1": macro_f1(predicted, truth)}


def neg_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Minus the mean cross-entropy, in nats per labelled example, of ``logits`` ``[N, C]``
    against class indices ``labels`` ``[N]``; labels < 0 are ignored.

    Raises:
        ValueError: no example is labelled.
    """
    keep = labels >= 0
    if not bool(keep.any()):
        raise ValueError("neg_loss needs at least one labelled example (a label >= 0)")
    return -float(F.cross_entropy(logits[keep], labels[keep].long()))


def normalise_answer(text: str) -> str:
    """The first word of ``text``, lower-cased, without surrounding punctuation ("" if none)."""
    words = text.strip().split()
    return words[0].strip(".,;:!?\"'()").lower() if words else ""


def answer_matches(generated: Sequence[str], answers: Sequence[str]) -> list[bool]:
    """Per example: whether the generated text's first word matches the answer's, both read by
    :func:`normalise_answer` (``generated`` and ``answers`` both length ``N``).

    Raises:
        ValueError: the lengths differ or ``N`` is 0.
    """
    if len(generated) != len(answers) or not answers:
        raise ValueError(f"exact_match needs one generated text per answer, and at least one; got "
                         f"{len(generated)} texts for {len(answers)} answers")
    return [normalise_answer(text) == normalise_answer(answer) for text, answer in zip(generated, answers)]


def exact_match(generated: Sequence[str], answers: Sequence[str]) -> float:
    """The fraction in ``[0, 1]`` of :func:`answer_matches`."""
    matches = answer_matches(generated, answers)
    return sum(matches) / len(matches)


def _labelled(predictions: Any, labels: Any, *, allow_empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(predictions, labels)`` as int64 arrays ``[M]``, without the examples labelled < 0."""
    predicted, truth = _as_array(predictions), _as_array(labels)
    if predicted.ndim != 1 or predicted.shape != truth.shape:
        raise ValueError(f"predictions have shape {predicted.shape} and labels {truth.shape}; give one "
                         "predicted class per label, both [N]")
    keep = truth >= 0
    if not allow_empty and not keep.any():
        raise ValueError("a class score needs at least one labelled example (a label >= 0)")
    return predicted[keep].astype(np.int64), truth[keep].astype(np.int64)


def _as_array(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
    return np.asarray(values)
