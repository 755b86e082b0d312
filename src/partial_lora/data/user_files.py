"""Reading user files: a ``.csv``, ``.jsonl`` / ``.json`` file or a folder written by
``datasets.save_to_disk``, with a text and a label column.

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
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any


from .examples import LabelledData
from .splits import SPLIT_NAMES

# -- reading ---------------------------------------------------------------
@dataclass
class _Table:
    """Rows as read, each with where it was found (``"line 5"``, ``"item 3"``, ``"row 7"``)."""

    columns: list[str]
    rows: list[tuple[str, dict[str, Any]]]
    class_names: dict[str, list[str]] = field(default_factory=dict)  # of ``datasets.ClassLabel`` columns


def read_tables(path: Path, source: str) -> dict[str, _Table]:
    """The tables of a user file (one, named ``""``) or ``datasets`` folder (one per split)."""
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


# -- examples and labels ---------------------------------------------------
def labelled_parts(tables: dict[str, _Table], text_column: str, label_column: str,
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
