"""The document's PNGs: Pareto fronts, difference intervals, learning-rate searches, sweeps, tickets.

Every metric shown is a percentage of the test split with its 95 % bootstrap interval (the
mean of the seeds' per-example scores, examples resampled), except the learning-rate plot,
which shows the **validation** metric the rate was chosen on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .analysis import Evidence, Group  # noqa: E402


def save(figure: Any, path: Path) -> str:
    """Write ``figure`` to ``path`` (PNG) and return its file name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path.name


def _errorbar(axis: Any, evidence: Evidence, groups: Sequence[Group], x: Sequence[float], **style: Any) -> None:
    points = [(xi, evidence.interval(g)) for xi, g in zip(x, groups) if evidence.interval(g)]
    if not points:
        return
    xs = [p for p, _ in points]
    ys = [i[0] for _, i in points]
    errors = [[i[0] - i[1] for _, i in points], [i[2] - i[0] for _, i in points]]
    axis.errorbar(xs, ys, yerr=errors, capsize=3, **style)


def pareto(evidence: Evidence, path: Path, title: str) -> str:
    """Test metric against trainable parameters (log x): LoRA's front and the other families."""
    figure, axis = plt.subplots(figsize=(8, 5))
    lora = evidence.lora_points()
    front = evidence.front()
    _errorbar(axis, evidence, lora, [g.params for g in lora], fmt="o", color="tab:blue", label="LoRA ranks")
    axis.plot([g.params for g in front], [evidence.interval(g)[0] for g in front], color="tab:blue", linewidth=1.5,
              label="LoRA front (interpolated in log params)")
    for g in lora:
        axis.annotate(g.label.removeprefix("lora "), (g.params, evidence.interval(g)[0]), fontsize=7,
                      textcoords="offset points", xytext=(4, -10))
    families = [
        ("Partial-LoRA, tau (relative)", lambda g: g.method == "partial-lora" and g.rank == evidence.lora_rank()
         and g.threshold_mode == "relative", "tab:red", "s-"),
        ("Partial-LoRA, other ranks", lambda g: g.method == "partial-lora" and g.rank != evidence.lora_rank(),
         "darkred", "D"),
        ("uniform ratios, tau", lambda g: g.method == "uniform", "tab:orange", "^-"),
        ("random masking", lambda g: g.method == "random-masking", "tab:green", "v"),
        ("LoRA + EVA", lambda g: g.method == "lora-eva", "tab:purple", "P"),
    ]
    for name, belongs, colour, marker in families:
        members = sorted((g for g in evidence.groups if belongs(g) and g.part != "thresholds"), key=lambda g: g.params)
        _errorbar(axis, evidence, members, [g.params for g in members], fmt=marker, color=colour, label=name)
        for g in members:
            if g.threshold is not None and g.rank == evidence.lora_rank() and evidence.interval(g):
                axis.annotate(f"{g.threshold:g}", (g.params, evidence.interval(g)[0]), fontsize=7, color=colour,
                              textcoords="offset points", xytext=(4, 4))
    matched = [g for g in lora if g.part == "matched"]
    _errorbar(axis, evidence, matched, [g.params for g in matched], fmt="*", markersize=12, color="black",
              label="LoRA at the matched rank")
    axis.set_xscale("log")
    left, right = axis.get_xlim()
    for end, x in ((front[0], left), (front[-1], right)):  # the front is flat beyond its end points
        axis.plot([end.params, x], [evidence.interval(end)[0]] * 2, color="tab:blue", linewidth=1, linestyle=":")
    axis.set_xlim(left, right)
    axis.set(xlabel="trainable parameters (log scale)", ylabel=f"test {evidence.metric} (%), 95 % interval",
             title=title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="best")
    return save(figure, path)


def differences(comparisons: Sequence[dict[str, Any] | None], labels: Sequence[str], path: Path, title: str,
                reference: str) -> str:
    """Each configuration's paired difference from ``reference`` with its 95 % interval (points)."""
    kept = [(label, c) for label, c in zip(labels, comparisons) if c is not None]
    figure, axis = plt.subplots(figsize=(7, 1.8 + 0.35 * max(len(kept), 1)))
    for y, (label, c) in enumerate(kept):
        axis.errorbar(c["diff_points"], y, xerr=[[c["diff_points"] - c["ci_low"]], [c["ci_high"] - c["diff_points"]]],
                      fmt="o", capsize=3, color="tab:red" if c["verdict"] == "worse" else "tab:blue")
    axis.axvline(0, color="grey", linewidth=1)
    axis.axvline(-1, color="grey", linewidth=1, linestyle=":")
    axis.set_yticks(range(len(kept)), [label for label, _ in kept], fontsize=7)
    axis.set(xlabel=f"difference vs {reference} (points; dotted: the -1 point parity margin)", title=title)
    axis.grid(alpha=0.3, axis="x")
    return save(figure, path)


def learning_rates(searches: Sequence[dict[str, Any]], path: Path, title: str, metric: str) -> str:
    """Validation metric against the grid's rate (LoRA's units) per configuration; stars: the selected rate."""
    figure, axis = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("tab20")
    for index, search in enumerate(searches):
        base = dict(zip(search["grid"], search["grid_base"]))
        points = sorted((base[rate], 100 * value) for rate, value in search["validation"].items() if value is not None)
        if not points:
            continue
        line, = axis.plot([p for p, _ in points], [v for _, v in points], marker=".", label=search["label"],
                          color=colours(index % 20), linestyle=("-", "--", ":")[index // 20 % 3])
        if search["selected"] in search["validation"]:
            axis.plot(base[search["selected"]], 100 * search["validation"][search["selected"]], marker="*",
                      markersize=11, color=line.get_color())
    axis.set(xscale="log", xlabel="learning rate of the grid (LoRA's units; methods scale it)",
             ylabel=f"validation {metric} (%)", title=title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=6, loc="best", ncol=2)
    return save(figure, path)


def thresholds(evidence: Evidence, series: dict[str, list[Group]], path: Path, title: str) -> str:
    """Test metric (with intervals) and trainable parameters against tau, one line per mode."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, members in series.items():
        taus = [g.threshold for g in members]
        _errorbar(left, evidence, members, taus, marker="o", label=mode)
        right.plot(taus, [g.params for g in members], marker="o", label=mode)
    if evidence.lora:
        left.axhline(evidence.interval(evidence.lora)[0], color="grey", linestyle="--", label=evidence.lora.label)
        right.axhline(evidence.lora.params, color="grey", linestyle="--", label=evidence.lora.label)
    left.set(xlabel="tau", ylabel=f"test {evidence.metric} (%), 95 % interval", title=f"{title}: {evidence.metric}")
    right.set(xlabel="tau", ylabel="trainable parameters", title=f"{title}: parameters", yscale="log")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return save(figure, path)


def ranks(evidence: Evidence, series: dict[str, list[Group]], path: Path, title: str) -> str:
    """Test metric (with intervals) against trainable parameters, one line per method, ranks annotated."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for method, members in series.items():
        _errorbar(axis, evidence, members, [g.params for g in members], marker="o", label=method)
        for g in members:
            if evidence.interval(g):
                axis.annotate(f"r={g.rank}", (g.params, evidence.interval(g)[0]), fontsize=7,
                              textcoords="offset points", xytext=(4, 4))
    axis.set(xscale="log", xlabel="trainable parameters (log)", ylabel=f"test {evidence.metric} (%), 95 % interval",
             title=title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save(figure, path)


def keep_ratio_lines(left_series: dict[str, list[float]], right_series: dict[str, list[float]], path: Path,
                     titles: tuple[str, str]) -> str:
    """Two panels of per-layer keep ratios (model order): by shot count, and by ticket method."""
    figure, axes = plt.subplots(1, 2, figsize=(12, 4))
    for axis, series, panel in zip(axes, (left_series, right_series), titles):
        for name, values in series.items():
            axis.plot(values, marker=".", label=name)
        axis.set(xlabel="target layer (model order)", ylabel="keep ratio", title=panel)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return save(figure, path)


def layers(layer_names: Sequence[str], ratios: Sequence[float], updates: dict[str, list[float]], path: Path,
           title: str) -> str:
    """Per-layer keep ratio (bars) above the learned update size per method (lines)."""
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    top.bar(range(len(layer_names)), ratios, color="tab:green")
    top.set(ylabel="keep ratio", title=title)
    for method, values in updates.items():
        bottom.plot(range(len(layer_names)), values, marker=".", label=method)
    bottom.set(ylabel="||ΔW|| / ||W||", xlabel="target layer (model order)", title="learned update per layer")
    short = [n.split(".")[-1] if len(layer_names) > 40 else ".".join(n.split(".")[-3:]) for n in layer_names]
    bottom.set_xticks(range(len(layer_names)), short, rotation=90, fontsize=5)
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
    bottom.legend(fontsize=8)
    return save(figure, path)
