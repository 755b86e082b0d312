"""Train / validation / test parts (:class:`Splits`, :func:`three_way_split`), carved seeded,
per class and disjoint, and seeded per-class few-shot samples (:func:`few_shot`)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .examples import LabelledData

SPLIT_NAMES = ("train", "validation", "test")
Size = int | float  # a count per class (int >= 1) or a fraction of the class (float in (0, 1))

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


def example_keys(data: LabelledData) -> list[Any]:
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
    for i, (key, label) in enumerate(zip(example_keys(data), data.labels)):
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
    chosen, copies = carve(data, [("test", test), ("validation", validation)], train, train_cap, seed)
    return Splits(*(data.subset(chosen[part]) for part in SPLIT_NAMES), copies_left_out=copies)


def carve(data: LabelledData, held: list[tuple[str, Size]], train: Size | None, train_cap: int | None,
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
