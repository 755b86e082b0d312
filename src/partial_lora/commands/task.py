"""A task: the three data splits, the model factory, batching and scoring for one dataset.

Everything a command needs to train or score a method on a dataset, built once from the
settings: seeded, stratified, disjoint train / validation / test splits (the same for every
method and training seed, so seeds measure training variance only; a ``datasets`` folder's
own validation / test splits are used as given), the few-shot set for the ticket (from the
training split only), and functions that make batches and score a model.

Validation is what training reports (after the last epoch, or after every epoch) and what
every choice (a learning rate) is made on; test is scored once per trained model, at the end,
by :meth:`Task.score`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .. import data as data_lib
from ..metrics import answer_matches, classification_scores
from ..models import load_model
from .generation import generate_answers
from .settings import Settings

SPLIT_SEED = 0
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Scores:
    """A model's scores on one split.

    Attributes:
        metrics: ``{metric: fraction}`` (``accuracy`` and ``macro_f1``, or ``exact_match``).
        correct: per example, in split order, whether the model got it right (for paired
            comparisons of methods on the same examples).
    """

    metrics: dict[str, float]
    correct: list[bool]


@dataclass
class Task:
    settings: Settings
    train: Any
    validation: Any
    test: Any
    label_names: list[str]
    kind: str  # classification | image-classification | causal-lm
    tokenizer: Any = None
    given_splits: tuple[str, ...] = ()

    @property
    def metrics(self) -> list[str]:
        return ["exact_match"] if self.kind == "causal-lm" else ["accuracy", "macro_f1"]

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

    def split(self, name: str) -> Any:
        if name not in SPLITS:
            raise ValueError(f"split={name!r} is invalid: choose one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def new_model(self) -> torch.nn.Module:
        """A fresh base model (new head when the dataset's labels need one)."""
        model, tokenizer = load_model(
            self.settings.model, task=self.kind,
            num_labels=None if self.kind == "causal-lm" else len(self.label_names),
        )
        if self.tokenizer is None:
            self.tokenizer = tokenizer
        return model

    def batches(self, dataset: Any, *, shuffle: bool, seed: int, batch_size: int | None = None) -> Any:
        size = batch_size or self.settings.batch_size
        if self.kind == "classification":
            return data_lib.text_batches(dataset, self.tokenizer, size, max_length=self.settings.max_length,
                                         shuffle=shuffle, seed=seed)
        if self.kind == "image-classification":
            return data_lib.image_batches(dataset, size, shuffle=shuffle, seed=seed)
        return data_lib.generation_batches(dataset, self.tokenizer, size, max_length=self.settings.max_length,
                                           shuffle=shuffle, seed=seed)

    def shots(self, seed: int, shots: int | None = None) -> Any:
        """The few-shot set for a ticket: ``shots`` per class from the training split."""
        return data_lib.few_shot(self.train, shots or self.settings.shots, seed=seed)

    @torch.no_grad()
    def score(self, model: torch.nn.Module, split: str) -> Scores:
        """The model's metrics and per-example correctness on ``split`` (model left as it was)."""
        data = self.split(split)
        if self.kind == "causal-lm":
            generated = generate_answers(model, self.tokenizer, data.prompts, data.answers,
                                         batch_size=self.settings.batch_size,
                                         max_length=self.settings.max_length or 256)
            correct = answer_matches(generated, data.answers)
            return Scores({"exact_match": sum(correct) / len(correct)}, correct)
        was_training = model.training
        model.eval()
        predictions, labels = [], []
        try:
            for batch in self.batches(data, shuffle=False, seed=0):
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                predictions.append(model(**inputs).logits.argmax(-1).cpu())
                labels.append(batch["labels"].cpu())
        finally:
            model.train(was_training)
        predicted, truth = torch.cat(predictions), torch.cat(labels)
        return Scores(classification_scores(predicted, truth), (predicted == truth).tolist())

    def evaluator(self, split: str = "validation") -> Callable[[torch.nn.Module, Any], dict[str, float]]:
        """``evaluate(model, _ignored) -> {metric: fraction}`` on ``split``, for the training loop."""

        def evaluate(model: torch.nn.Module, _batches: Any = None) -> dict[str, float]:
            return self.score(model, split).metrics

        return evaluate


@torch.no_grad()
def classification_metrics(model: torch.nn.Module, batches: Any) -> dict[str, float]:
    """``{"accuracy", "macro_f1"}`` (fractions, see :mod:`partial_lora.metrics`) of argmax
    predictions over ``batches``."""
    was_training = model.training
    model.eval()
    predictions, labels = [], []
    try:
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            predictions.append(model(**inputs).logits.argmax(-1).cpu())
            labels.append(batch["labels"].cpu())
    finally:
        model.train(was_training)
    return classification_scores(torch.cat(predictions), torch.cat(labels))


def build_task(settings: Settings) -> Task:
    """Load the dataset and split it: seeded, stratified, disjoint train / validation / test.

    Sizes per class come from the settings (``test_per_class`` or ``test_fraction`` of each
    class; ``validation_per_class`` or ``validation_fraction`` of what remains; at most
    ``train_per_class`` of the rest for training).
    """
    splits = data_lib.load_splits(
        settings.dataset, task=settings.task, text_column=settings.text_column, label_column=settings.label_column,
        test=settings.test_per_class or settings.test_fraction,
        validation=settings.validation_per_class or settings.validation_fraction,
        train_cap=settings.train_per_class, seed=SPLIT_SEED,
    )
    return Task(settings=settings, train=splits.train, validation=splits.validation, test=splits.test,
                label_names=list(splits.label_names), kind=settings.task, given_splits=splits.given)
