"""A task: the data split, the model factory, batching and evaluation for one dataset.

Everything a command needs to train or score a method on a dataset, built once from the
settings: a seeded stratified train/test split (the same for every training seed, so seeds
measure training variance only), the few-shot set for the ticket, and functions that make
batches and evaluate.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .. import data as data_lib
from ..metrics import classification_scores
from ..models import load_model
from .generation import exact_match
from .settings import Settings

SPLIT_SEED = 0


@dataclass
class Task:
    settings: Settings
    train: Any
    test: Any
    label_names: list[str]
    kind: str  # classification | image-classification | causal-lm
    tokenizer: Any = None

    @property
    def metrics(self) -> list[str]:
        return ["exact_match"] if self.kind == "causal-lm" else ["accuracy", "macro_f1"]

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

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

    def evaluator(self) -> Callable[[torch.nn.Module, Any], dict[str, float]]:
        """``evaluate(model, eval_data) -> {metric: fraction}`` for the training loop."""
        if self.kind == "causal-lm":
            test = self.test

            def evaluate(model: torch.nn.Module, _batches: Any = None) -> dict[str, float]:
                return exact_match(model, self.tokenizer, test.prompts, test.answers,
                                   batch_size=self.settings.batch_size, max_length=self.settings.max_length or 256)

            return evaluate
        return classification_metrics


@torch.no_grad()
def classification_metrics(model: torch.nn.Module, batches: Any) -> dict[str, float]:
    """``{"accuracy", "macro_f1"}`` (fractions, see :mod:`partial_lora.metrics`) of argmax
    predictions over ``batches``."""
    was_training = model.training
    model.eval()
    predictions, labels = [], []
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        predictions.append(model(**inputs).logits.argmax(-1).cpu())
        labels.append(batch["labels"].cpu())
    model.train(was_training)
    return classification_scores(torch.cat(predictions), torch.cat(labels))


def build_task(settings: Settings) -> Task:
    """Load the dataset, split it (seeded, stratified) and trim it to the per-class sizes."""
    dataset = data_lib.load_dataset(
        settings.dataset, task=settings.task, text_column=settings.text_column, label_column=settings.label_column,
    )
    train, test = data_lib.stratified_split(dataset, test_fraction=settings.test_fraction, seed=SPLIT_SEED)
    if settings.train_per_class:
        train = _at_most_per_class(train, settings.train_per_class)
    if settings.test_per_class:
        test = _at_most_per_class(test, settings.test_per_class)
    return Task(settings=settings, train=train, test=test, label_names=list(dataset.label_names), kind=settings.task)


def _at_most_per_class(dataset: Any, count: int) -> Any:
    """A seeded sample of ``count`` per class (fewer where a class has fewer).

    Each class keeps ``min(count, its size)``: one small class does not shrink the others
    (and a later "too few for --shots" error names the class that really is small). Draws as
    :func:`partial_lora.data.few_shot` does, so balanced data gives the same sample.
    """
    rng = random.Random(SPLIT_SEED)
    chosen: list[int] = []
    for label in range(len(dataset.label_names)):
        members = [i for i, value in enumerate(dataset.labels) if value == label]
        chosen += rng.sample(members, min(count, len(members)))
    return dataset.subset(sorted(chosen))
