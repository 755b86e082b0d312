"""partial_lora.metrics: one accuracy, macro-F1 and exact match, shared by tickets, training
and reports."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from partial_lora import metrics
from partial_lora.commands.generation import exact_match as generation_exact_match
from partial_lora.commands.task import classification_metrics
from partial_lora.ticket.metrics import get_metric
from partial_lora.ticket.outputs import Outputs
from partial_lora.training import classification_scores, evaluate_classification


@pytest.mark.parametrize("seed", range(6))
def test_accuracy_and_macro_f1_match_scikit_learn_on_random_predictions(seed):
    generator = torch.Generator().manual_seed(seed)
    classes = 2 + seed
    size = int(torch.randint(1, 60, (), generator=generator))
    labels = torch.randint(0, classes, (size,), generator=generator)
    predictions = torch.randint(0, classes + 1, (size,), generator=generator)  # one class never true
    truth, predicted = labels.numpy(), predictions.numpy()
    assert metrics.macro_f1(predictions, labels) == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert metrics.accuracy(predictions, labels) == pytest.approx(accuracy_score(truth, predicted))


@pytest.mark.parametrize("predictions, labels, expected", [
    # class 1 never predicted: F1 2/3 for class 0, 0 for class 1
    ([0, 0, 0, 0], [0, 0, 1, 1], (2 / 3 + 0) / 2),
    # class 2 only predicted: it counts with F1 0 (true-classes-only would give 0.8)
    ([0, 0, 2], [0, 0, 0], (4 / 5 + 0) / 2),
    # one class, all right
    ([1, 1, 1], [1, 1, 1], 1.0),
    # one class in the labels, all wrong
    ([0, 0], [1, 1], 0.0),
], ids=["class-never-predicted", "class-only-predicted", "one-class", "one-class-all-wrong"])
def test_macro_f1_averages_the_classes_in_labels_or_predictions(predictions, labels, expected):
    assert metrics.macro_f1(torch.tensor(predictions), torch.tensor(labels)) == pytest.approx(expected)
    assert metrics.macro_f1(predictions, labels) == pytest.approx(f1_score(labels, predictions, average="macro"))


def test_negative_labels_are_left_out_of_every_class_score():
    predictions = torch.tensor([0, 1, 3, 1, 2])
    labels = torch.tensor([0, 1, -100, 0, -1])
    kept_predictions, kept_labels = [0, 1, 1], [0, 1, 0]
    assert metrics.accuracy(predictions, labels) == pytest.approx(2 / 3)
    assert metrics.macro_f1(predictions, labels) == pytest.approx(
        f1_score(kept_labels, kept_predictions, average="macro"))
    assert metrics.neg_loss(torch.eye(5)[:, :4], labels) == pytest.approx(
        -float(torch.nn.functional.cross_entropy(torch.eye(5)[[0, 1, 3], :4], torch.tensor([0, 1, 0]))))


def test_no_labelled_example_gives_no_scores_or_a_clear_error():
    unlabelled = torch.tensor([-100, -100])
    assert classification_scores(torch.tensor([0, 1]), unlabelled) == {}
    assert metrics.classification_scores(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)) == {}
    for score in (metrics.accuracy, metrics.macro_f1):
        with pytest.raises(ValueError, match="at least one labelled example"):
            score(torch.tensor([0, 1]), unlabelled)
    with pytest.raises(ValueError, match="at least one labelled example"):
        metrics.neg_loss(torch.zeros(2, 3), unlabelled)


def test_predictions_and_labels_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match=r"one predicted class per label, both \[N\]"):
        metrics.macro_f1(torch.tensor([0, 1, 1]), torch.tensor([0, 1]))


def test_neg_loss_is_minus_the_mean_cross_entropy_in_nats():
    logits = torch.zeros(4, 3, dtype=torch.float64)
    assert metrics.neg_loss(logits, torch.tensor([0, 1, 2, 0])) == pytest.approx(-math.log(3))


def test_exact_match_compares_the_first_word_lower_cased_without_punctuation():
    assert metrics.normalise_answer("  Sport. and more") == "sport"
    assert metrics.normalise_answer("   ") == ""
    generated = ["Sport.", "business news", "(tech)", ""]
    answers = ["sport", "Business", "politics", "tech"]
    assert metrics.exact_match(generated, answers) == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="one generated text per answer"):
        metrics.exact_match(["sport"], ["sport", "tech"])


# -- one meaning everywhere ----------------------------------------------------------------
class FixedClassifier(torch.nn.Module):
    """Returns the stored logits ``[N, C]`` of the examples at ``index``."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", logits)

    def forward(self, index: torch.Tensor, labels: torch.Tensor | None = None) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[index])


def test_ticket_training_and_report_scores_agree_on_the_same_predictions():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(30, 4, generator=generator, dtype=torch.float64)
    logits[:5, 3] = 10.0  # class 3 is predicted but never true: the meanings used to differ here
    labels = torch.randint(0, 3, (30,), generator=generator)
    predictions = logits.argmax(1)
    batches = [{"index": torch.arange(i, min(i + 8, 30)), "labels": labels[i : i + 8]} for i in range(0, 30, 8)]
    model = FixedClassifier(logits)

    expected = {"accuracy": accuracy_score(labels.numpy(), predictions.numpy()),
                "macro_f1": f1_score(labels.numpy(), predictions.numpy(), average="macro")}
    ticket = Outputs("classification", labels=labels, logits=logits)
    assert get_metric("accuracy").score(ticket) == pytest.approx(expected["accuracy"])
    assert get_metric("macro_f1").score(ticket) == pytest.approx(expected["macro_f1"])
    assert classification_scores(predictions, labels) == pytest.approx(expected)
    assert evaluate_classification(model, batches) == pytest.approx(expected)
    assert classification_metrics(model, batches) == pytest.approx(expected)


class EchoTokenizer:
    """Word-level stand-in: prompts are encoded as their length; decoding looks a reply up."""

    pad_token, eos_token, pad_token_id = "<pad>", "<pad>", 0
    padding_side = truncation_side = "right"

    def __init__(self, replies: dict[int, str]) -> None:
        self.replies = replies

    def __call__(self, texts, **_options):
        if isinstance(texts, str):
            return {"input_ids": texts.split()}
        return {"input_ids": torch.tensor([[len(t)] for t in texts])}

    def batch_decode(self, generated: torch.Tensor, **_options) -> list[str]:
        return [self.replies[int(row[0])] for row in generated]


class EchoLM(torch.nn.Module):
    def generate(self, input_ids: torch.Tensor, **_options) -> torch.Tensor:
        return torch.cat([input_ids, input_ids], dim=1)  # the reply token is the prompt's id


def test_generation_exact_match_scores_every_batch_by_the_shared_rule():
    prompts = ["a", "bb", "ccc", "dddd", "eeeee"]
    answers = ["sport", "tech", "politics", "business", "sport"]
    tokenizer = EchoTokenizer({1: "Sport!", 2: "tech news", 3: "business", 4: "Business.", 5: "tech"})
    scores = generation_exact_match(EchoLM(), tokenizer, prompts, answers, batch_size=2)
    assert scores == {"exact_match": pytest.approx(3 / 5)}
    assert tokenizer.padding_side == "right"
