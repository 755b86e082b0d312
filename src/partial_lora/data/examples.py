"""A labelled dataset (:class:`LabelledData`) and the prompt that turns one into a generation task."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Sequence

import torch


KINDS = ("text", "image", "generation")
ARTICLE_WORDS = 64
PROMPT = ("Read the news article and answer with its topic, one of: {choices}.\n\n"
          "Article: {article}\n\nTopic:")


@dataclass(frozen=True)
class LabelledData:
    """Examples with integer labels.

    Attributes:
        examples: a list of texts, or a ``uint8`` tensor of images ``[N, C, H, W]``.
        labels: class index of each example.
        label_names: name of each class index.
        kind: ``text`` (classification), ``image`` or ``generation`` (prompt -> label word).
        source: where it came from (for messages and provenance).
    """

    examples: Sequence[str] | torch.Tensor
    labels: list[int]
    label_names: list[str]
    kind: str = "text"
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r} is invalid: choose one of {', '.join(KINDS)}")
        if len(self.examples) != len(self.labels):
            raise ValueError(f"{self.source}: {len(self.examples)} examples but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> "LabelledData":
        index = list(indices)
        if isinstance(self.examples, torch.Tensor):
            examples: Any = self.examples[torch.as_tensor(index, dtype=torch.long)]
        else:
            examples = [self.examples[i] for i in index]
        return LabelledData(examples, [self.labels[i] for i in index], self.label_names, self.kind, self.source)

    def class_counts(self) -> dict[str, int]:
        counts = {name: 0 for name in self.label_names}
        for label in self.labels:
            counts[self.label_names[label]] += 1
        return counts

    def fingerprint(self) -> str:
        """SHA-256 prefix (16 hex digits) of the examples and labels, in order."""
        digest = hashlib.sha256()
        if isinstance(self.examples, torch.Tensor):
            digest.update(self.examples.contiguous().numpy().tobytes())
        else:
            for text in self.examples:
                digest.update(text.encode("utf-8") + b"\0")
        digest.update(json.dumps([self.labels, self.label_names]).encode())
        return digest.hexdigest()[:16]

    # -- generation tasks --------------------------------------------------------------
    @property
    def prompts(self) -> list[str]:
        """Prompts asking for the label word (generation datasets)."""
        self._require_generation()
        choices = ", ".join(self.label_names)
        return [PROMPT.format(choices=choices, article=_first_words(text, ARTICLE_WORDS)) for text in self.examples]

    @property
    def answers(self) -> list[str]:
        """The label word of each example (generation datasets)."""
        self._require_generation()
        return [self.label_names[label] for label in self.labels]

    def _require_generation(self) -> None:
        if self.kind != "generation":
            raise ValueError(f"{self.source} is a {self.kind} dataset; prompts and answers exist for generation tasks")


def _first_words(text: str, count: int) -> str:
    words = text.split()
    return " ".join(words[:count]) + (" ..." if len(words) > count else "")
