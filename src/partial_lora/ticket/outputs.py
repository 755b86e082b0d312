"""What a scoring pass keeps of the model's predictions, and the loss used by SNIP.

A pass never keeps full language-model logits (``[B, T, V]``): each batch is reduced at
once to a few numbers per example, and metrics are computed from those.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .few_shot import CLASSIFICATION

IGNORE = -100


@dataclass
class Outputs:
    """Predictions of one pass over the few-shot set (CPU tensors).

    Attributes:
        kind: ``classification`` or ``causal-lm``.
        labels: classification: ``[N]`` class indices.
        logits: classification: ``[N, C]`` float64 scores.
        nll: causal LM: ``[N]`` summed next-token negative log-likelihood per sequence (nats).
        tokens: causal LM: ``[N]`` number of scored tokens per sequence.
        correct: causal LM: ``[N]`` scored tokens whose argmax prediction is right.
        targets: causal LM: per sequence, the scored target token ids (for chance floors).
        vocab_size: causal LM: V, the number of logits per token.
    """

    kind: str
    labels: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    nll: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    targets: list[torch.Tensor] = field(default_factory=list)
    vocab_size: int | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0] if self.kind == CLASSIFICATION else self.nll.shape[0])

    def subset(self, index: torch.Tensor) -> "Outputs":
        """The outputs of the examples at ``index`` (``[K]`` int64)."""
        if self.kind == CLASSIFICATION:
            return Outputs(self.kind, labels=self.labels[index], logits=self.logits[index])
        return Outputs(self.kind, nll=self.nll[index], tokens=self.tokens[index], correct=self.correct[index],
                       targets=[self.targets[i] for i in index.tolist()], vocab_size=self.vocab_size)


def reduce_batch(kind: str, logits: torch.Tensor, labels: torch.Tensor) -> Outputs:
    """Reduce one batch's logits (``[B, C]`` or ``[B, T, V]``) against its labels."""
    logits = logits.detach()
    if kind == CLASSIFICATION:
        if logits.dim() != 2 or logits.shape[0] != labels.shape[0]:
            raise ValueError(f"the scoring head gave logits of shape {tuple(logits.shape)} for {labels.shape[0]} "
                             "class labels; expected [B, C]")
        if int(labels.max()) >= logits.shape[1]:
            raise ValueError(f"a label is {int(labels.max())} but the head scores only {logits.shape[1]} classes; "
                             "give a head with one output per class (num_labels)")
        return Outputs(kind, labels=labels.cpu(), logits=logits.to("cpu", torch.float64))
    nll, tokens, correct, targets = _token_statistics(logits, labels)
    return Outputs(kind, nll=nll, tokens=tokens, correct=correct, targets=targets, vocab_size=logits.shape[-1])


def collect(kind: str, parts: list[Outputs]) -> Outputs:
    """Concatenate reduced batches into one :class:`Outputs`."""
    if kind == CLASSIFICATION:
        return Outputs(kind, labels=torch.cat([p.labels for p in parts]), logits=torch.cat([p.logits for p in parts]))
    return Outputs(
        kind, nll=torch.cat([p.nll for p in parts]), tokens=torch.cat([p.tokens for p in parts]),
        correct=torch.cat([p.correct for p in parts]), targets=[t for p in parts for t in p.targets],
        vocab_size=parts[0].vocab_size,
    )


def task_loss(kind: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed loss of one batch (differentiable): cross-entropy over examples, or over scored
    next tokens for causal LMs. Divide by the example (token) count for a mean."""
    if kind == CLASSIFICATION:
        return F.cross_entropy(logits.float(), labels, reduction="sum")
    shifted, targets = _shift(logits, labels)
    return F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


def loss_denominator(kind: str, batches: list[dict]) -> int:
    """Examples (classification) or scored next tokens (causal LM) in the few-shot set."""
    if kind == CLASSIFICATION:
        return sum(int(b["labels"].shape[0]) for b in batches)
    return sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)


def _shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.dim() != 3 or logits.shape[:2] != labels.shape:
        raise ValueError(f"labels of shape {tuple(labels.shape)} need token logits [B, T, V] of a causal LM; the "
                         f"model gave {tuple(logits.shape)}. Classification batches have labels of shape [B].")
    return logits[:, :-1], labels[:, 1:]


def _token_statistics(logits: torch.Tensor, labels: torch.Tensor):
    shifted, targets = _shift(logits, labels)
    mask = targets != IGNORE
    nll = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]).float(), targets.reshape(-1),
                          ignore_index=IGNORE, reduction="none").view(targets.shape)
    hits = (shifted.argmax(-1) == targets) & mask
    per_sequence_targets = [targets[b][mask[b]].cpu() for b in range(targets.shape[0])]
    return (nll.sum(1).to("cpu", torch.float64), mask.sum(1).cpu(), hits.sum(1).cpu(), per_sequence_targets)
