"""Scoring the model on the few-shot set: the baseline pass, the threshold, later passes.

:func:`prepare_scoring` runs the one pass over the unchanged model (recording target-layer
inputs at the same time when given a recorder), fits the probe if the head is one, and
fixes the baseline score ``a*``, the chance floor and the score every pruned variant must
keep. :meth:`Scorer.score` then scores the model as it currently computes (with whatever
projection or pruning is active) in one more pass.

With a probe head the few-shot set is split per class (seeded) into two halves and scores
are cross-fitted: a probe fitted on each half scores the other, so every example is scored
held-out (the baseline does not saturate at 100 %) and all of them count (half the noise of
scoring one half). The probes are fitted once, on the unchanged model, and every pruned
variant is scored with the same probes (as a trained head would be). Other heads fit
nothing and score every example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .few_shot import CLASSIFICATION
from .heads import ProbeHead
from .metrics import Metric, passes, required_score
from .outputs import Outputs, collect, reduce_batch
from .passes import PassCounter, run_pass
from .recording import InputRecorder


@dataclass
class Scorer:
    """Everything needed to score the model again, and the threshold it must keep."""

    model: nn.Module
    batches: list[dict[str, Any]]
    head: Any
    kind: str
    metric: Metric
    counter: PassCounter
    progress: bool
    baseline: float = 0.0
    floor: float = 0.0
    required: float = 0.0
    notes: list[str] = field(default_factory=list)
    features: torch.Tensor | None = None  # probe head: [N, H] head inputs of the unchanged model
    labels: torch.Tensor | None = None  # probe head: [N]

    def outputs(self, description: str) -> Outputs:
        """One pass with the model as it currently computes."""
        if isinstance(self.head, ProbeHead):
            features = torch.cat(run_pass(self.batches, lambda batch: self.head.features(self.model, batch)[0],
                                          counter=self.counter, progress=self.progress, description=description))
            return Outputs(CLASSIFICATION, labels=self.labels.cpu(), logits=self.head.held_out_logits(features))
        parts = run_pass(self.batches, lambda batch: reduce_batch(self.kind, self.head.logits(self.model, batch),
                                                                  batch["labels"]),
                         counter=self.counter, progress=self.progress, description=description)
        return collect(self.kind, parts)

    def score(self, description: str) -> float:
        """The metric of the model as it currently computes (one pass)."""
        return self.metric.score(self.outputs(description))

    def keeps_threshold(self, score: float) -> bool:
        return passes(score, self.required)


def stratified_halves(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split example indices per class into two halves; the first gets the odd one."""
    generator = torch.Generator().manual_seed(seed)
    first, second = [], []
    for c in torch.unique(labels).tolist():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        half = (members.numel() + 1) // 2
        first.append(members[:half])
        second.append(members[half:])
    first_index, second_index = torch.sort(torch.cat(first)).values, torch.sort(torch.cat(second)).values
    if second_index.numel() == 0:
        raise ValueError("the few-shot set is too small for a probe: it needs at least two examples of some class "
                         "(one to fit a probe, one to score it); give more shots")
    return first_index, second_index


def prepare_scoring(model: nn.Module, batches: list[dict[str, Any]], head: Any, kind: str, metric: Metric, *,
                    threshold: float, threshold_mode: str, seed: int, counter: PassCounter, progress: bool,
                    recorder: InputRecorder | None = None) -> Scorer:
    """The baseline pass (recording too, if ``recorder``), the probe fit and the threshold."""
    def with_mask(batch: dict[str, Any]) -> None:
        if recorder is not None:
            recorder.begin_batch(batch.get("attention_mask"))

    scorer = Scorer(model, batches, head, kind, metric, counter, progress)
    description = "recording" if recorder is not None else "baseline"
    if isinstance(head, ProbeHead):
        def step(batch):
            with_mask(batch)
            return head.features(model, batch)[0].detach()

        features = torch.cat(run_pass(batches, step, counter=counter, progress=progress, description=description))
        labels = torch.cat([b["labels"] for b in batches]).to(features.device)
        first, second = (index.to(features.device) for index in stratified_halves(labels.cpu(), seed))
        head.fit_folds(features, labels, [(first, second), (second, first)])
        scorer.features, scorer.labels = features, labels
        outputs = Outputs(CLASSIFICATION, labels=labels.cpu(), logits=head.held_out_logits(features))
    else:
        def step(batch):
            with_mask(batch)
            return reduce_batch(kind, head.logits(model, batch), batch["labels"])

        outputs = collect(kind, run_pass(batches, step, counter=counter, progress=progress, description=description))
    scorer.baseline = metric.score(outputs)
    scorer.floor = metric.floor(outputs)
    scorer.required, note = required_score(scorer.baseline, scorer.floor, threshold, threshold_mode)
    if note:
        scorer.notes.append(note)
    return scorer
