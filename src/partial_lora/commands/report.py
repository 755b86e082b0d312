"""Results of a run or comparison: ``results.json``, a markdown table and plots.

Each result is one trained model: ``{method, seed, accuracy, macro_f1 (or exact_match),
trainable_params, optimizer_state_bytes, adapter_bytes, train_seconds, peak_rss_bytes, ...}``
with metrics as fractions. Tables report the mean and standard deviation over seeds.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..files import atomic_write_bytes  # noqa: E402

GROUP_KEYS = ("method", "rank", "threshold")


def group_label(result: dict[str, Any]) -> str:
    """``method`` plus the settings that distinguish it (rank, threshold) when present."""
    parts = [str(result["method"])]
    if result.get("rank") is not None:
        parts.append(f"r={result['rank']}")
    if result.get("threshold") is not None and result.get("uses_ticket"):
        parts.append(f"tau={result['threshold']:g}")
    return " ".join(parts)


def summarize(results: Iterable[dict[str, Any]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds, per method/setting, in first-seen order."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        groups[group_label(result)].append(result)
    rows = []
    for label, members in groups.items():
        row: dict[str, Any] = {"label": label, "seeds": [m["seed"] for m in members]}
        for key in (*metrics, "trainable_params", "optimizer_state_bytes", "adapter_bytes", "train_seconds"):
            values = [float(m[key]) for m in members if m.get(key) is not None]
            if values:
                row[key] = statistics.fmean(values)
                row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]], metrics: Sequence[str], reference: str | None = None) -> str:
    """A markdown table: metric mean +- std (in percent), parameters, bytes, seconds."""
    reference_row = next((r for r in rows if r["label"] == reference), None)
    header = ["method", *[f"{m} (%)" for m in metrics], "trainable params"]
    if reference_row:
        header.append(f"params vs {reference}")
    header += ["optimizer state", "adapter file", "train s", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["label"]]
        for metric in metrics:
            if metric in row:
                cells.append(f"{100 * row[metric]:.2f} ± {100 * row[metric + '_std']:.2f}")
            else:
                cells.append("-")
        cells.append(f"{row.get('trainable_params', 0):,.0f}")
        if reference_row:
            cells.append(f"{row.get('trainable_params', 0) / max(reference_row.get('trainable_params', 1), 1):.3f}")
        cells += [
            _bytes(row.get("optimizer_state_bytes")), _bytes(row.get("adapter_bytes")),
            f"{row.get('train_seconds', 0):.0f}", ",".join(map(str, row["seeds"])),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def plot_metric_vs_parameters(results: list[dict[str, Any]], metric: str, path: Path, title: str = "") -> Path:
    """Scatter of the metric against trainable parameters (log x), one colour per method."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        groups[group_label(result)].append(result)
    for label, members in groups.items():
        xs = [m["trainable_params"] for m in members]
        ys = [100 * m[metric] for m in members]
        axis.scatter(xs, ys, label=label, alpha=0.8)
        axis.errorbar(statistics.fmean(xs), statistics.fmean(ys), fmt="none", ecolor="grey", alpha=0.5,
                      yerr=statistics.stdev(ys) if len(ys) > 1 else 0)
    axis.set_xscale("log")
    axis.set_xlabel("trainable parameters (log scale)")
    axis.set_ylabel(f"{metric} (%)")
    axis.set_title(title or f"{metric} vs trainable parameters")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_results(out: Path, document: dict[str, Any]) -> Path:
    """``results.json``, written atomically."""
    path = Path(out) / "results.json"
    atomic_write_bytes(path, (json.dumps(document, indent=2, sort_keys=False, default=str) + "\n").encode())
    return path


def write_report(out: Path, *, title: str, settings: dict[str, Any], table: str, verdict: str,
                 plots: Sequence[str], notes: Sequence[str] = ()) -> Path:
    """``report.md``: what was run, the table, the verdict and the plots."""
    lines = [f"# {title}", "", "## Settings", ""]
    lines += [f"- **{key}**: {value}" for key, value in settings.items()]
    lines += ["", "## Results", "", table, "", verdict, ""]
    for note in notes:
        lines.append(f"- {note}")
    if notes:
        lines.append("")
    for plot in plots:
        lines += [f"![{plot}]({plot})", ""]
    path = Path(out) / "report.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path
