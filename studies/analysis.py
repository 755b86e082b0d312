"""The numbers behind the document's claims: configurations, paired differences, LoRA's front.

Every difference the document states is a paired bootstrap interval over the test examples
(:func:`partial_lora.statistics.paired_difference`, seeds pooled): every compare folder of a
setting scores the same test split in the same order, so two configurations are paired by seed
and example even across folders. Every point's metric comes with the bootstrap interval of its
mean (:func:`partial_lora.statistics.mean_interval`).

**LoRA's front and a point's position.** The front is LoRA's rank sweep (every LoRA
configuration of the setting: ranks 1, 2, 4, 8, 16 and the matched rank), each at its own
validation-selected rate, reduced to its Pareto-optimal points (no LoRA with as few or fewer
parameters has a higher mean test metric). Between two front points, the front at ``p``
trainable parameters is their linear interpolation in ``log p``, taken **per test example**:
``(1 - w) * correct_i + w * correct_j`` with ``w = (log p - log p_i) / (log p_j - log p_i)``, so
its mean is the interpolated mean. Outside the front's range it is the nearest end point (flat).
A point's position is read from the paired interval of ``point - front at its p``:
*above* if the interval lies above 0, *below* if it lies below 0, *on* otherwise (the two cannot
be told apart). A point left of the range (fewer parameters than any LoRA run) that is *below*
the flat extension is not dominated by a measured LoRA; the position says "left of the range".
The front's own sampling error enters through the pairing; its interpolation is an assumption.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any, Iterable, Sequence

import numpy as np

from partial_lora.statistics import correctness_vector, mean_interval, paired_difference

from .runs import SettingRuns


class Group:
    """One configuration: its reported rows over seeds (same part, folder and label)."""

    def __init__(self, rows: list[dict[str, Any]], metric: str) -> None:
        self.rows, self.metric = rows, metric
        first = rows[0]
        self.label, self.part, self.folder = first["label"], first["part"], first["folder"]
        self.method = first["method"]
        self.rank, self.threshold = first.get("rank"), first.get("threshold")
        self.threshold_mode = first.get("threshold_mode", "relative")

    @property
    def key(self) -> tuple[str, str, str]:
        return self.part, self.folder, self.label

    @property
    def scores(self) -> list[float]:
        return [r[self.metric] for r in self.rows if r.get(self.metric) is not None]

    @property
    def seeds(self) -> list[int]:
        return sorted(r["seed"] for r in self.rows)

    def mean_of(self, key: str) -> float | None:
        values = [float(r[key]) for r in self.rows if r.get(key) is not None]
        return statistics.fmean(values) if values else None

    @property
    def params(self) -> float:
        return self.mean_of("trainable_params") or 0.0

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.scores) if len(self.scores) > 1 else 0.0

    @property
    def rates(self) -> list[float]:
        """The learning rate(s) the seeds trained at (one, the selected one, unless a part is mixed)."""
        return sorted({r["learning_rate"] for r in self.rows})

    @property
    def grid(self) -> list[float]:
        return sorted({rate for r in self.rows for rate in r.get("lr_grid") or [r["learning_rate"]]})

    @property
    def selected_on(self) -> list[str]:
        return sorted({r.get("lr_selected_on") or "unknown" for r in self.rows})

    def vectors(self) -> dict[int, np.ndarray]:
        """``{seed: [N] per-example correctness on test}`` of the seeds that kept it."""
        return {r["seed"]: correctness_vector(r["test_correct"]) for r in self.rows if r.get("test_correct")}


def group_rows(rows: Iterable[dict[str, Any]], metric: str) -> list[Group]:
    """Rows by configuration (part, folder, label), in first-seen order, seeds sorted."""
    grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[(row["part"], row["folder"], row["label"])].append(row)
    return [Group(sorted(members, key=lambda r: r["seed"]), metric) for members in grouped.values()]


class Evidence:
    """The configurations of one setting, with cached intervals and every comparison made.

    Attributes:
        runs: what was read.
        groups: every configuration with reported rows.
        lora: LoRA at the main part's rank (the reference of every "vs LoRA"), or None.
        comparisons: every paired difference computed so far (for study.json), in order.
        problems: comparisons that could not be made, and why.
    """

    def __init__(self, runs: SettingRuns) -> None:
        self.runs, self.metric = runs, runs.metric
        self.groups = group_rows(runs.rows, runs.metric)
        self.lora = self.find("main", "lora")
        self.comparisons: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self._compared: dict[tuple, dict[str, Any] | None] = {}
        self._positions: dict[tuple, dict[str, Any] | None] = {}
        self._intervals: dict[tuple, tuple[float, float, float] | None] = {}

    def find(self, part: str, method: str, *, rank: int | None = None, threshold: float | None = None,
             mode: str | None = None, folder: str | None = None) -> Group | None:
        """The first configuration matching every given attribute."""
        for g in self.groups:
            if g.part == part and g.method == method and (rank is None or g.rank == rank) \
                    and (threshold is None or g.threshold == threshold) and (mode is None or g.threshold_mode == mode) \
                    and (folder is None or g.folder == folder):
                return g
        return None

    def lora_rank(self) -> int:
        """The main part's rank (LoRA's reference rank)."""
        return self.lora.rank if self.lora else 8

    def in_parts(self, *parts: str, methods: Sequence[str] | None = None) -> list[Group]:
        return [g for g in self.groups if g.part in parts and (methods is None or g.method in methods)]

    def interval(self, group: Group) -> tuple[float, float, float] | None:
        """Mean test metric in points and its 95 % bootstrap interval (examples resampled, seeds pooled)."""
        if group.key not in self._intervals:
            vectors = group.vectors()
            self._intervals[group.key] = mean_interval(vectors) if vectors else None
        return self._intervals[group.key]

    def compare(self, group: Group, reference: Group | None) -> dict[str, Any] | None:
        """``group - reference`` in points, paired over common seeds and test examples (cached, recorded)."""
        if reference is None or group.key == reference.key:
            return None
        key = (group.key, reference.key)
        if key not in self._compared:
            self._compared[key] = self._paired(group, group.vectors(), reference, reference.vectors(), kind="paired")
        return self._compared[key]

    def _paired(self, group: Group, vectors: dict[int, np.ndarray], reference: Group | None,
                against: dict[int, np.ndarray], *, kind: str, vs_label: str | None = None) -> dict[str, Any] | None:
        if not set(vectors) & set(against):
            self.problems.append(f"{group.label} vs {vs_label or reference.label}: no seed scored on test by both")
            return None
        try:
            comparison = paired_difference(vectors, against).to_dict()
        except ValueError as reason:
            self.problems.append(f"{group.label} vs {vs_label or reference.label}: {reason}")
            return None
        record = {"task": self.runs.setting.dataset, "part": group.part, "folder": group.folder, "label": group.label,
                  "method": group.method, "vs": reference.method if reference else "lora-front",
                  "vs_label": vs_label or reference.label, "vs_part": reference.part if reference else "front",
                  "kind": kind, **comparison}
        self.comparisons.append(record)
        return record

    # -- LoRA's front ----------------------------------------------------------------------
    def lora_points(self) -> list[Group]:
        """Every LoRA configuration of the setting (ranks, matched), by trainable parameters."""
        return sorted((g for g in self.groups if g.method == "lora" and g.vectors()), key=lambda g: g.params)

    def front(self) -> list[Group]:
        """LoRA's Pareto-optimal points: none with as few or fewer parameters has a higher mean."""
        front: list[Group] = []
        for g in self.lora_points():
            if front and g.params == front[-1].params:
                if g.mean > front[-1].mean:
                    front[-1] = g
                continue
            if not front or g.mean > front[-1].mean:
                front.append(g)
        return front

    def position(self, group: Group) -> dict[str, Any] | None:
        """Where ``group`` lies against LoRA's front (see the module docstring), or None without a front.

        Cached, like :meth:`compare`: several sections state the same position, and ``comparisons``
        records it once.
        """
        if group.key not in self._positions:
            self._positions[group.key] = self._position(group)
        return self._positions[group.key]

    def _position(self, group: Group) -> dict[str, Any] | None:
        front = self.front()
        if not front or not group.vectors():
            return None
        p = group.params
        if p <= front[0].params:
            against, between = front[0].vectors(), front[0].label
            where = "left" if p < front[0].params else "inside"
        elif p >= front[-1].params:
            against, between = front[-1].vectors(), front[-1].label
            where = "right" if p > front[-1].params else "inside"
        else:
            j = next(i for i, g in enumerate(front) if g.params >= p)
            low, high = front[j - 1], front[j]
            w = (math.log(p) - math.log(low.params)) / (math.log(high.params) - math.log(low.params))
            a, b = low.vectors(), high.vectors()
            against = {s: (1 - w) * a[s] + w * b[s] for s in set(a) & set(b)}
            between, where = f"{low.label} .. {high.label}", "inside"
        record = self._paired(group, group.vectors(), None, against, kind="front", vs_label=f"LoRA front at {p:,.0f}")
        if record is None:
            return None
        low_end, high_end = record["ci_low"], record["ci_high"]
        position = "above" if low_end > 0 else "below" if high_end < 0 else "on"
        record.update(position=position, range=where, front_between=between)
        return record


def position_text(record: dict[str, Any] | None) -> str:
    """``above`` / ``on`` / ``below``, qualified when the point lies outside the front's range."""
    if record is None:
        return "-"
    if record["range"] == "left":
        return f"{record['position']} (left of the range)"
    if record["range"] == "right":
        return f"{record['position']} (right of the range)"
    return record["position"]
