"""Markdown cells and tables of the document: metrics, rates, differences, sizes.

Metric values are percentages of the test split: mean ± sample standard deviation over seeds.
Differences are points (percentage points), with their 95 % paired bootstrap interval and the
verdict of :func:`partial_lora.statistics.verdict`.
"""

from __future__ import annotations

import statistics
from typing import Any, Sequence

from .analysis import Evidence, Group


def pm(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± sd`` of ``values`` times ``scale`` (``-`` when empty)."""
    values = [float(v) for v in values]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.fmean(values):.{digits}f} ± {scale * sd:.{digits}f}"


def size(value: float | None) -> str:
    """Bytes as KB / MB."""
    if value is None:
        return "-"
    return f"{value / 1024:,.0f} KB" if value < 1024 ** 2 else f"{value / 1024 ** 2:,.1f} MB"


def rate(value: float) -> str:
    return f"{value:g}"


def rates(values: Sequence[float]) -> str:
    return ", ".join(rate(v) for v in values) or "-"


def difference(comparison: dict[str, Any] | None) -> str:
    """``+0.40 [-1.20, +2.00]``: the paired difference in points and its 95 % interval."""
    if comparison is None:
        return "-"
    return f"{comparison['diff_points']:+.2f} [{comparison['ci_low']:+.2f}, {comparison['ci_high']:+.2f}]"


def verdict(comparison: dict[str, Any] | None) -> str:
    return comparison["verdict"] if comparison else "-"


def interval(value: tuple[float, float, float] | None) -> str:
    """``92.4 [90.8, 94.0]``: a mean in points and its 95 % interval."""
    return "-" if value is None else f"{value[0]:.1f} [{value[1]:.1f}, {value[2]:.1f}]"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def comparison_table(evidence: Evidence, groups: Sequence[Group], reference: Group | None, reference_name: str, *,
                     per_row: dict[tuple[str, str, str], Group] | None = None, extra: Sequence[str] = ()) -> list[str]:
    """A table of configurations with their rate, test metric and paired difference from their reference.

    ``per_row`` gives some rows (by :attr:`Group.key`) their own reference instead of ``reference``;
    a row that is some row's reference says so. ``extra`` adds columns: ``lora`` (difference vs
    LoRA at the main rank when the reference is another), ``grid``, ``memory`` (optimizer state,
    adapter file, seconds).
    """
    metric, lora = evidence.metric, evidence.lora
    lora_name = lora.label if lora else "lora"
    header = ["configuration", "learning rate"]
    header += ["grid (chosen on validation)"] if "grid" in extra else []
    header += [f"test {metric} (%)", f"vs {reference_name} (points, 95 % CI)", "verdict"]
    header += [f"vs {lora_name} (points, 95 % CI)"] if "lora" in extra else []
    header += ["trainable params", f"× {lora_name}"]
    header += ["optimizer state", "adapter file", "train s"] if "memory" in extra else []
    header += ["seeds"]
    rows = []
    per_row = per_row or {}
    references = {reference.key} if reference else set()
    references |= {r.key for r in per_row.values()}
    for g in groups:
        against = evidence.compare(g, per_row.get(g.key, reference))
        cells = [g.label, rates(g.rates)]
        if "grid" in extra:
            cells.append(rates(g.grid) + ("" if g.selected_on == ["validation"] else f" ({', '.join(g.selected_on)})"))
        cells += [pm(g.scores), "reference" if g.key in references else difference(against), verdict(against)]
        if "lora" in extra:
            cells.append(difference(evidence.compare(g, lora)) if g is not lora else "reference")
        cells += [f"{g.params:,.0f}", f"{g.params / lora.params:.3f}" if lora and lora.params else "-"]
        if "memory" in extra:
            cells += [size(g.mean_of("optimizer_state_bytes")), size(g.mean_of("adapter_bytes")),
                      f"{g.mean_of('train_seconds') or 0:.0f}"]
        cells.append(",".join(map(str, g.seeds)))
        rows.append(cells)
    return markdown(header, rows)


def statement(label: str, comparison: dict[str, Any] | None, reference: str) -> str:
    """One sentence: ``label`` minus ``reference`` with its interval and verdict."""
    if comparison is None:
        return f"{label} vs {reference}: not comparable (no common seed scored on test)."
    return (f"{label} vs {reference}: {comparison['diff_points']:+.2f} points, 95 % interval "
            f"[{comparison['ci_low']:+.2f}, {comparison['ci_high']:+.2f}] (seeds "
            f"{','.join(map(str, comparison['seeds']))}, {comparison['examples']} test examples): "
            f"**{comparison['verdict']}**.")
