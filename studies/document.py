"""docs/RESULTS.md and its PNGs, from what the study's runs wrote (see :mod:`studies.runs`).

Every table gives the mean ± sample standard deviation over the seeds that ran, and names
the command that produced it. Parts that did not run are listed as missing, not filled in.
The hand-written comparison with the paper (``studies/discussion.md``) is appended as is.
"""

from __future__ import annotations

import datetime
import itertools
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from partial_lora.ticket import Ticket, ticket_overlap  # noqa: E402

from .runs import SettingRuns, main_tickets  # noqa: E402

DISCUSSION = Path(__file__).with_name("discussion.md")
ITEM1_METHODS = ("full", "lora", "adalora", "vera", "dora", "random-masking", "partial-lora", "partial-adalora")


# -- numbers ---------------------------------------------------------------------------
def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _pm(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "-"
    mean, sd = _mean_sd(values)
    return f"{scale * mean:.{digits}f} ± {scale * sd:.{digits}f}"


def _bytes(value: float) -> str:
    return f"{value / 1024:,.0f} KB" if value < 1024 ** 2 else f"{value / 1024 ** 2:,.1f} MB"


def _ranked_correlation(xs: Sequence[float], ys: Sequence[float]) -> float:
    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        result = [0.0] * len(values)
        for position, index in enumerate(order):
            result[index] = float(position)
        return result

    if len(xs) < 3:
        return float("nan")
    try:
        return statistics.correlation(ranks(xs), ranks(ys))
    except statistics.StatisticsError:
        return float("nan")


class Group:
    """The rows of one method / rank / threshold over seeds."""

    def __init__(self, label: str, rows: list[dict[str, Any]], metric: str) -> None:
        self.label, self.rows, self.metric = label, rows, metric

    @property
    def scores(self) -> list[float]:
        return [r[self.metric] for r in self.rows if r.get(self.metric) is not None]

    @property
    def params(self) -> float:
        return statistics.fmean(r["trainable_params"] for r in self.rows)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)

    def cells(self, reference: "Group | None") -> list[str]:
        cells = [self.label, _pm(self.scores), f"{self.params:,.0f}"]
        cells.append(f"{self.params / reference.params:.3f}" if reference else "-")
        cells.append(_bytes(statistics.fmean(r["adapter_bytes"] for r in self.rows)))
        cells.append(f"{statistics.fmean(r['train_seconds'] for r in self.rows):.0f}")
        cells.append(",".join(str(r["seed"]) for r in self.rows))
        return cells


def group(rows: Iterable[dict[str, Any]], metric: str, label: Callable[[dict[str, Any]], str]) -> list[Group]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[label(row)].append(row)
    return [Group(name, members, metric) for name, members in grouped.items()]


def _table(groups: Sequence[Group], metric: str, reference: Group | None) -> list[str]:
    header = ["method", f"{metric} (%)", "trainable params", "params / LoRA r=8", "adapter file", "train s", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(g.cells(reference)) + " |" for g in groups]
    return lines


def _lora_reference(runs: SettingRuns) -> Group | None:
    rows = runs.rows("main", "lora")
    return Group("lora", rows, runs.metric) if rows else None


# -- plots -----------------------------------------------------------------------------
def _save(figure: Any, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path.name


def _scatter(groups: Sequence[Group], path: Path, title: str, metric: str) -> str:
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for g in groups:
        mean, sd = _mean_sd(g.scores)
        axis.errorbar(g.params, 100 * mean, yerr=100 * sd, fmt="o", capsize=3, label=g.label)
    axis.set_xscale("log")
    axis.set_xlabel("trainable parameters (log scale)")
    axis.set_ylabel(f"{metric} (%), mean ± sd over seeds")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="best")
    return _save(figure, path)


# -- sections --------------------------------------------------------------------------
class Writer:
    def __init__(self, doc: Path, runs: dict[str, SettingRuns], runs_folder: Path) -> None:
        self.doc, self.runs, self.runs_folder = doc, runs, runs_folder
        self.images = doc.parent / "results"
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def image(self, name: str, alt: str) -> None:
        self.add(f"![{alt}](results/{name})", "")

    def commands(self, runs: SettingRuns, *parts: str) -> None:
        made = [runs.commands[p] for p in parts if p in runs.commands]
        if made:
            self.add("<details><summary>commands</summary>", "", "```", *made, "```", "", "</details>", "")

    def missing(self, runs: SettingRuns, *parts: str) -> bool:
        absent = [p for p in parts if p in runs.setting.parts and
                  not (runs.tickets if p == "tickets" else p in runs.results)]
        skipped = [p for p in parts if p not in runs.setting.parts]
        if skipped:
            self.add(f"*Not run for this setting: {', '.join(skipped)} (see the plan in `studies/plan.py`).*", "")
        if absent:
            self.add(f"*Missing: part(s) {', '.join(absent)} have no results yet.*", "")
        cut = [p for p in parts if p in runs.incomplete]
        if cut:
            self.add(f"*Incomplete: part(s) {', '.join(cut)} were cut short; the rows below are the runs that finished "
                     "(see the seeds column).*", "")
        return bool(absent) or bool(skipped)


def _method_label(row: dict[str, Any]) -> str:
    return row["method"]


def _ranked_label(row: dict[str, Any]) -> str:
    return f"{row['method']} r={row['rank']}"


def main_table(w: Writer) -> None:
    w.add("## 1. Main table", "",
          "Every method with the same targets, rank 8 (alpha 16), schedule and seeds; Partial-LoRA methods use "
          "each seed's own svd ticket (tau 0.9, relative). Trainable parameters include the new head where the task "
          "has one.", "")
    for name, runs in w.runs.items():
        w.add(f"### {runs.setting.title}", "")
        if w.missing(runs, "main"):
            continue
        rows = [r for r in runs.rows("main") if r["method"] in ITEM1_METHODS]
        groups = group(sorted(rows, key=lambda r: ITEM1_METHODS.index(r["method"])), runs.metric, _method_label)
        w.add(*_table(groups, runs.metric, _lora_reference(runs)), "")
        trained = {g.rows[0]["method"] for g in groups}
        skipped = [m for m in ITEM1_METHODS if m in runs.setting.methods and m not in trained]
        if skipped:
            w.add(f"Not trained (see the notes in `runs/study/{name}/main/results.json`): {', '.join(skipped)}.", "")
        _not_planned(w, runs, ITEM1_METHODS)
        w.add(_partial_vs_lora(runs), "")
        w.image(_scatter(groups, w.images / f"{name}-main.png", f"{name}: {runs.metric} vs trainable parameters",
                         runs.metric), f"{name} main table")
        w.commands(runs, "main")


def _partial_vs_lora(runs: SettingRuns) -> str:
    lora, partial = runs.rows("main", "lora"), runs.rows("main", "partial-lora")
    if not lora or not partial:
        return ""
    ratio = statistics.fmean(r["trainable_params"] for r in partial) / statistics.fmean(r["trainable_params"] for r in lora)
    gap = 100 * (statistics.fmean(r[runs.metric] for r in lora) - statistics.fmean(r[runs.metric] for r in partial))
    met = ratio <= 0.5 and gap <= 1.0
    return (f"Partial-LoRA trains {ratio:.1%} of LoRA's parameters and is {abs(gap):.2f} points "
            f"{'below' if gap >= 0 else 'above'} LoRA (mean of {len(partial)} seeds): the main job's target "
            f"(at most 50 %, within 1.0 point) is **{'met' if met else 'not met'}**.")


def matched_table(w: Writer) -> None:
    w.add("## 2. Matched parameters", "",
          "LoRA at the rank whose adapters count what Partial-LoRA's count (the reviewers' \"other way around\"): "
          "does a sparse rank-8 adapter beat a dense low-rank one of the same size?", "")
    for name, runs in w.runs.items():
        w.add(f"### {runs.setting.title}", "")
        if w.missing(runs, "main", "matched"):
            continue
        rows = runs.rows("main", "lora") + runs.rows("main", "partial-lora") + runs.rows("matched", "lora")
        groups = group(rows, runs.metric, _ranked_label)
        w.add(*_table(groups, runs.metric, _lora_reference(runs)), "")
        w.commands(runs, "matched")


def _main_subset_section(w: Writer, heading: str, intro: str, methods: Sequence[str]) -> None:
    """A table of Partial-LoRA against ``methods``, all trained in the main part at the ticket's ratios."""
    w.add(heading, "", intro, "")
    for name, runs in w.runs.items():
        w.add(f"### {runs.setting.title}", "")
        if w.missing(runs, "main") or _not_planned(w, runs, methods):
            continue
        rows = [r for r in runs.rows("main") if r["method"] in ("partial-lora", *methods)]
        w.add(*_table(group(rows, runs.metric, _method_label), runs.metric, _lora_reference(runs)), "")


def selection_table(w: Writer) -> None:
    _main_subset_section(
        w, "## 3. Random vs targeted vs stochastic selection",
        "The same per-layer ratios (each seed's ticket); rows and columns chosen at random (Partial-LoRA), "
        "the top-scored ones (targeted, the seed's Targeted-LoRA) or sampled in proportion to the score "
        "(stochastic).", ("targeted", "stochastic"))


def _not_planned(w: Writer, runs: SettingRuns, methods: Sequence[str]) -> bool:
    absent = [m for m in methods if m not in runs.setting.methods]
    if absent:
        w.add(f"*Not run for this setting (cost; see `studies/plan.py`): {', '.join(absent)}.*", "")
    return bool(absent)


def uniform_table(w: Writer) -> None:
    _main_subset_section(
        w, "## 4. Derived vs uniform ratios",
        "Uniform uses one keep ratio for every layer, chosen so its adapters total (never more than) what the "
        "ticket's per-layer ratios total.", ("uniform",))


def threshold_section(w: Writer) -> None:
    w.add("## 5. Threshold sweep, relative vs absolute", "",
          "tau is the share of the unchanged model's few-shot score the pruned model must keep: above the "
          "majority-class floor (relative, our default) or of the raw score (absolute, the paper's wording). "
          "tau 0.9 relative is the main table's Partial-LoRA.", "")
    for name, runs in w.runs.items():
        w.add(f"### {runs.setting.title}", "")
        if w.missing(runs, "main", "thresholds", "absolute"):
            continue
        relative = runs.rows("main", "partial-lora") + runs.rows("thresholds", "partial-lora")
        absolute = runs.rows("absolute", "partial-lora")
        groups = (group(relative, runs.metric, lambda r: f"relative tau={r['threshold']:g}")
                  + group(absolute, runs.metric, lambda r: f"absolute tau={r['threshold']:g}"))
        groups.sort(key=lambda g: g.label)
        w.add(*_table(groups, runs.metric, _lora_reference(runs)), "")
        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        for mode in ("relative", "absolute"):
            members = sorted((g for g in groups if g.label.startswith(mode)), key=lambda g: g.rows[0]["threshold"])
            taus = [g.rows[0]["threshold"] for g in members]
            left.errorbar(taus, [100 * _mean_sd(g.scores)[0] for g in members],
                          yerr=[100 * _mean_sd(g.scores)[1] for g in members], marker="o", capsize=3, label=mode)
            right.plot(taus, [g.params for g in members], marker="o", label=mode)
        reference = _lora_reference(runs)
        if reference:
            left.axhline(100 * reference.mean, color="grey", linestyle="--", label="LoRA r=8")
            right.axhline(reference.params, color="grey", linestyle="--", label="LoRA r=8")
        left.set(xlabel="tau", ylabel=f"{runs.metric} (%)", title=f"{name}: {runs.metric}")
        right.set(xlabel="tau", ylabel="trainable parameters", title=f"{name}: parameters", yscale="log")
        for axis in (left, right):
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
        w.image(_save(figure, w.images / f"{name}-thresholds.png"), f"{name} threshold sweep")
        w.commands(runs, "thresholds", "absolute")


def rank_section(w: Writer) -> None:
    w.add("## 6. Rank sweep", "",
          "LoRA at rank 4 and Partial-LoRA at rank 16, next to both at rank 8 (main); alpha = 2 r, Partial-LoRA "
          "with each seed's ticket ratios. The seed's Fig. 6 claim: a higher rank with a sparser mask beats a "
          "lower dense rank at a similar count.", "")
    for name, runs in w.runs.items():
        w.add(f"### {runs.setting.title}", "")
        if w.missing(runs, "main", "ranks"):
            continue
        rows = [r for r in runs.rows("main") + runs.rows("ranks") if r["method"] in ("lora", "partial-lora")]
        groups = sorted(group(rows, runs.metric, _ranked_label), key=lambda g: (g.rows[0]["method"], g.rows[0]["rank"]))
        w.add(*_table(groups, runs.metric, _lora_reference(runs)), "")
        figure, axis = plt.subplots(figsize=(7, 4.5))
        for method in ("lora", "partial-lora"):
            members = [g for g in groups if g.rows[0]["method"] == method]
            axis.errorbar([g.params for g in members], [100 * _mean_sd(g.scores)[0] for g in members],
                          yerr=[100 * _mean_sd(g.scores)[1] for g in members], marker="o", capsize=3, label=method)
            for g in members:
                axis.annotate(f"r={g.rows[0]['rank']}", (g.params, 100 * g.mean), fontsize=7,
                              textcoords="offset points", xytext=(4, 4))
        axis.set(xscale="log", xlabel="trainable parameters (log)", ylabel=f"{runs.metric} (%)",
                 title=f"{name}: rank sweep")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        w.image(_save(figure, w.images / f"{name}-ranks.png"), f"{name} rank sweep")
        w.commands(runs, "ranks")


def _weighted_ratio(ticket: Ticket) -> float:
    """The share of LoRA's adapter parameters the ticket keeps (rows and columns, same rank)."""
    kept = sum(layer.keep_ratio * (m + n) for layer in ticket.layers.values() for m, n in [layer.shape])
    return kept / sum(m + n for m, n in ticket.layer_shapes().values())


def _pairwise_overlap(tickets: Sequence[Ticket]) -> tuple[list[float], list[float]]:
    rows, columns = [], []
    for a, b in itertools.combinations(tickets, 2):
        overlap = ticket_overlap(a, b)["mean"]
        rows.append(overlap["rows"])
        columns.append(overlap["columns"])
    return rows, columns


def _ratio_spread(tickets: Sequence[Ticket]) -> float:
    """Mean over layers of the standard deviation of a layer's keep ratio across tickets."""
    if len(tickets) < 2:
        return 0.0
    return statistics.fmean(statistics.stdev(t.layers[name].keep_ratio for t in tickets) for name in tickets[0].layers)


def ticket_section(w: Writer) -> None:
    w.add("## 7. Shots and ticket methods", "",
          "Tickets only (no training). For each shot count, one svd ticket per seed (each seed draws its own "
          "few-shot sample). *share kept*: the ticket's adapter parameters over LoRA's. *ratio spread*: per-layer "
          "standard deviation of the keep ratio across seeds, averaged over layers. *overlap*: Jaccard overlap of "
          "the top 10 % rows / columns by score, averaged over layers, between seeds (same shots) or against the "
          "largest shot count (same seed).", "")
    for name, runs in w.runs.items():
        w.add(f"### {runs.setting.title}", "")
        if w.missing(runs, "tickets") or not runs.tickets:
            continue
        svd = defaultdict(dict)
        for (method, shots, seed), ticket in runs.tickets.items():
            if method == "svd":
                svd[shots][seed] = ticket
        top_shots = max(svd)
        header = ["shots/class", "share kept (%)", "ratio spread", "overlap across seeds rows / cols",
                  f"overlap with {top_shots} shots rows / cols", "seconds"]
        w.add("| " + " | ".join(header) + " |", "|" + "---|" * len(header))
        for shots in sorted(svd):
            tickets = [svd[shots][s] for s in sorted(svd[shots])]
            rows, columns = _pairwise_overlap(tickets)
            against = [ticket_overlap(svd[shots][s], svd[top_shots][s])["mean"] for s in svd[shots] if s in svd[top_shots]]
            versus = "-" if shots == top_shots else \
                f"{_pm([a['rows'] for a in against], 1, 2)} / {_pm([a['columns'] for a in against], 1, 2)}"
            w.add("| " + " | ".join([
                str(shots), _pm([_weighted_ratio(t) for t in tickets]), f"{_ratio_spread(tickets):.3f}",
                f"{_pm(rows, 1, 2)} / {_pm(columns, 1, 2)}" if rows else "-", versus,
                _pm([t.provenance.seconds for t in tickets], 1, 1),
            ]) + " |")
        w.add("")
        default_shots = 2 if 2 in svd and 16 not in svd else 16
        methods = {m: {seed: t for (mm, shots, seed), t in runs.tickets.items() if mm == m and shots == default_shots}
                   for m in runs.setting.ticket_methods}
        header = ["method", "share kept (%)", "forward-equivalents", "seconds", "overlap with svd rows / cols",
                  "ratio rank-correlation with svd"]
        w.add(f"Ticket methods at {default_shots} shots per class:", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header))
        for method, by_seed in methods.items():
            if not by_seed:
                continue
            tickets = list(by_seed.values())
            overlaps = [ticket_overlap(t, methods["svd"][s])["mean"] for s, t in by_seed.items() if s in methods["svd"]]
            correlations = [_ranked_correlation(list(t.keep_ratios().values()),
                                                [methods["svd"][s].layers[n].keep_ratio for n in t.layers])
                            for s, t in by_seed.items() if s in methods["svd"]]
            w.add("| " + " | ".join([
                method, _pm([_weighted_ratio(t) for t in tickets]),
                _pm([t.provenance.forward_equivalents for t in tickets], 1, 1),
                _pm([t.provenance.seconds for t in tickets], 1, 1),
                "-" if method == "svd" else f"{_pm([o['rows'] for o in overlaps], 1, 2)} / "
                                           f"{_pm([o['columns'] for o in overlaps], 1, 2)}",
                "-" if method == "svd" else _pm(correlations, 1, 2),
            ]) + " |")
        w.add("")
        figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
        first_seed = min(svd[top_shots])
        for shots in sorted(svd):
            if first_seed in svd[shots]:
                left.plot(list(svd[shots][first_seed].keep_ratios().values()), marker=".", label=f"svd, {shots} shots")
        for method, by_seed in methods.items():
            if first_seed in by_seed:
                right.plot(list(by_seed[first_seed].keep_ratios().values()), marker=".", label=method)
        left.set(xlabel="target layer (model order)", ylabel="keep ratio", title=f"{name}: shots (seed {first_seed})")
        right.set(xlabel="target layer (model order)", ylabel="keep ratio",
                  title=f"{name}: ticket methods, {default_shots} shots (seed {first_seed})")
        for axis in (left, right):
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
        w.image(_save(figure, w.images / f"{name}-tickets.png"), f"{name} ticket stability")
        w.commands(runs, "tickets")


def layer_section(w: Writer) -> None:
    w.add("## 8. Per-layer keep ratios and learned update magnitudes", "",
          "Keep ratios of the main part's svd tickets (mean over seeds) and, per target layer, the size of the "
          "learned update ||scale · B A||_F / ||W||_F of LoRA and Partial-LoRA after training (mean over seeds).", "")
    for name, runs in w.runs.items():
        w.add(f"### {runs.setting.title}", "")
        if w.missing(runs, "main") or not runs.updates:
            continue
        tickets = main_tickets(w.runs_folder / runs.setting.dataset / "main")
        if not tickets:
            continue
        layers = list(tickets[0].layers)
        ratios = [statistics.fmean(t.layers[n].keep_ratio for t in tickets) for n in layers]
        updates = {m: [statistics.fmean(runs.updates[m].get(n, [float("nan")])) for n in layers]
                   for m in ("lora", "partial-lora") if m in runs.updates}
        lines = []
        for method, values in updates.items():
            correlation = _ranked_correlation(ratios, values)
            lines.append(f"- {method}: update size {min(values):.4f} to {max(values):.4f} of ||W|| "
                         f"(median {statistics.median(values):.4f}); rank correlation with the keep ratio {correlation:+.2f}")
        if len(updates) == 2:
            share = [p / l for p, l in zip(updates["partial-lora"], updates["lora"]) if l > 0]
            lines.append(f"- Partial-LoRA's update is {statistics.median(share):.2f}x LoRA's (median over layers, "
                         f"range {min(share):.2f}-{max(share):.2f}).")
        lines.append(f"- Keep ratios: {min(ratios):.3f} to {max(ratios):.3f} (median {statistics.median(ratios):.3f}).")
        w.add(*lines, "")
        figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
        top.bar(range(len(layers)), ratios, color="tab:green")
        top.set(ylabel="keep ratio", title=f"{name}: per-layer keep ratio (svd ticket, mean over seeds)")
        for method, values in updates.items():
            bottom.plot(range(len(layers)), values, marker=".", label=method)
        bottom.set(ylabel="||ΔW|| / ||W||", xlabel="target layer (model order)", title="learned update per layer")
        short = [n.split(".")[-1] if len(layers) > 40 else ".".join(n.split(".")[-3:]) for n in layers]
        bottom.set_xticks(range(len(layers)), short, rotation=90, fontsize=5)
        for axis in (top, bottom):
            axis.grid(alpha=0.3)
        bottom.legend(fontsize=8)
        w.image(_save(figure, w.images / f"{name}-layers.png"), f"{name} per-layer ratios and updates")


# -- the document ----------------------------------------------------------------------
def write_document(runs: dict[str, SettingRuns], doc: Path, *, smoke: bool, invocation: str,
                   runs_folder: Path | None = None) -> Path:
    """Write ``doc`` (markdown) and its PNGs under ``doc.parent / 'results'``; return ``doc``."""
    doc = Path(doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    w = Writer(doc, runs, runs_folder or Path("runs/study"))
    today = datetime.date.today().isoformat()
    w.add("# Results: Partial-LoRA at small scale, on real models" + (" (SMOKE RUN: tiny slices, not results)" if smoke else ""),
          "", f"Written {today} by `{invocation}` from the runs `python -m studies.study` made in `{w.runs_folder}`; "
          "each section names the `partial-lora` commands behind its numbers. CPU only (2 cores). Metric values are percentages, mean ± sample "
          "standard deviation over seeds; the raw rows are in `results/study.json`.", "")
    for section in (main_table, matched_table, selection_table, uniform_table, threshold_section, rank_section,
                    ticket_section, layer_section):
        section(w)
    if DISCUSSION.is_file() and not smoke:
        w.add(DISCUSSION.read_text().strip(), "")
    raw = {name: {"commands": r.commands, "results": r.results} for name, r in runs.items()}
    w.images.mkdir(parents=True, exist_ok=True)
    (w.images / "study.json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    doc.write_text("\n".join(w.lines).rstrip() + "\n")
    return doc
