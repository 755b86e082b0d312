"""Results of a run or comparison: ``results.json``, a markdown table and plots.

Each result is one trained model: ``{method, seed, accuracy, macro_f1 (or exact_match) on the
test split, validation_<metric>, learning_rate, trainable_params, optimizer_state_bytes,
adapter_bytes, train_seconds, peak_rss_bytes, test_correct, ...}`` with metrics as fractions.
Tables report the mean and standard deviation over seeds and the learning rate each row was
trained at; comparisons with LoRA give the paired difference and its 95 % bootstrap interval
(:mod:`partial_lora.statistics`).
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
from ..statistics import correctness_vector, paired_difference  # noqa: E402

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
        row: dict[str, Any] = {"label": label, "seeds": [m["seed"] for m in members],
                               "learning_rates": sorted({m["learning_rate"] for m in members if m.get("learning_rate")})}
        validation = [f"validation_{m}" for m in metrics]
        for key in (*metrics, *validation, "trainable_params", "optimizer_state_bytes", "adapter_bytes",
                    "train_seconds"):
            values = [float(m[key]) for m in members if m.get(key) is not None]
            if values:
                row[key] = statistics.fmean(values)
                row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]], metrics: Sequence[str], reference: str | None = None) -> str:
    """A markdown table: metric mean +- std (in percent), parameters, bytes, seconds."""
    reference_row = next((r for r in rows if r["label"] == reference), None)
    header = ["method", "learning rate", *[f"{m} (%)" for m in metrics], f"validation {metrics[0]} (%)",
              "trainable params"]
    if reference_row:
        header.append(f"params vs {reference}")
    header += ["optimizer state", "adapter file", "train s", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["label"], ", ".join(f"{rate:.3g}" for rate in row.get("learning_rates", [])) or "-"]
        for metric in (*metrics, f"validation_{metrics[0]}"):
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


def compare_with_reference(results: list[dict[str, Any]], *, reference_method: str = "lora",
                           reference_rank: int | None = None) -> list[dict[str, Any]]:
    """Every group against the reference (LoRA at ``reference_rank``): the paired difference of the
    primary test metric, seeds pooled, with its 95 % bootstrap interval and verdict.

    Groups without per-example test records (``test_correct``) are left out. Returns
    ``[{method, label, vs, diff_points, ci_low, ci_high, verdict, seeds, examples}]``.
    """
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        if result.get("test_correct"):
            groups[group_label(result)].append(result)
    references = [label for label, members in groups.items() if members[0]["method"] == reference_method
                  and (reference_rank is None or members[0].get("rank") == reference_rank)]
    if not references:
        return []  # no reference at that rank: no comparison rather than one against another rank
    reference = references[0]
    against = {m["seed"]: correctness_vector(m["test_correct"]) for m in groups[reference]}
    comparisons = []
    for label, members in groups.items():
        if label == reference:
            continue
        scores = {m["seed"]: correctness_vector(m["test_correct"]) for m in members}
        if not set(scores) & set(against):
            continue
        comparison = paired_difference(scores, against)
        comparisons.append({"method": members[0]["method"], "label": label, "vs": reference_method,
                            "vs_label": reference, **comparison.to_dict()})
    return comparisons


def comparison_table(comparisons: list[dict[str, Any]]) -> str:
    """Markdown: each method's paired difference from the reference, its interval and verdict."""
    if not comparisons:
        return ""
    reference = comparisons[0]["vs_label"]
    lines = [f"| method | difference vs {reference} (points) | 95 % interval | verdict | seeds | test examples |",
             "|---|---|---|---|---|---|"]
    for c in comparisons:
        lines.append(f"| {c['label']} | {c['diff_points']:+.2f} | [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}] | "
                     f"{c['verdict']} | {','.join(map(str, c['seeds']))} | {c['examples']} |")
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
                 plots: Sequence[str], notes: Sequence[str] = (), comparisons: str = "") -> Path:
    """``report.md``: what was run, the table, the comparisons with LoRA, the verdict and the plots."""
    lines = [f"# {title}", "", "## Settings", ""]
    lines += [f"- **{key}**: {value}" for key, value in settings.items()]
    lines += ["", "## Results", "", "Test metrics: mean ± standard deviation over seeds; validation is what the "
              "learning rate was chosen on.", "", table, ""]
    if comparisons:
        lines += ["Paired differences on the same test examples (seeds pooled; 95 % bootstrap interval over "
                  "examples). *parity*: the interval's lower end is >= -1.0 point; *worse*: its upper end is "
                  "below -1.0; *inconclusive*: it spans -1.0.", "", comparisons, ""]
    lines += [verdict, ""]
    for note in notes:
        lines.append(f"- {note}")
    if notes:
        lines.append("")
    for plot in plots:
        lines += [f"![{plot}]({plot})", ""]
    path = Path(out) / "report.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path
