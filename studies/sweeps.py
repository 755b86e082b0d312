"""Sections 4-7 of docs/RESULTS.md: selection, derived vs uniform ratios, thresholds, ranks.

Each table names its rows' learning rates and states every difference as a paired interval
against the section's reference (and against LoRA at the main rank).
"""

from __future__ import annotations

import math

from . import plots
from .analysis import Evidence, Group
from .runs import DEFAULT_THRESHOLD
from .tables import comparison_table, statement
from .writer import Writer


def _partial(evidence: Evidence) -> Group | None:
    return evidence.find("main", "partial-lora")


def selection_section(w: Writer) -> None:
    w.add("## 4. Random vs targeted vs stochastic selection", "",
          "The same per-layer ratios (each seed's ticket); rows and columns chosen at random (Partial-LoRA), the "
          "top-scored ones (targeted, the seed's Targeted-LoRA) or sampled in proportion to the score (stochastic). "
          "Differences are paired against Partial-LoRA.", "")
    for name, evidence, runs in w.by_setting():
        planned = [m for m in ("targeted", "stochastic") if m in runs.setting.methods]
        if w.missing(runs, "main") or not planned:
            if not planned:
                w.add("*Left out of this setting's plan (cost; see `studies/plan.py`): targeted, stochastic.*", "")
            continue
        partial = _partial(evidence)
        found = {m: evidence.find("main", m) for m in planned}
        groups = [g for g in [partial, *found.values()] if g is not None]
        untrained = [m for m, g in found.items() if g is None]
        if untrained:
            w.not_trained_yet(untrained)
        others = [g for g in groups if g is not partial]
        if not others:
            continue
        w.add(*comparison_table(evidence, groups, partial, "partial-lora", extra=("lora",)), "")
        w.image(plots.differences([evidence.compare(g, partial) for g in others], [g.label for g in others],
                                  w.images / f"{name}-selection.png", f"{name}: selection vs random",
                                  "partial-lora"), f"{name} selection")


def uniform_section(w: Writer) -> None:
    w.add("## 5. Derived vs uniform ratios", "",
          "Uniform uses one keep ratio for every layer, chosen so its adapters total (never more than) what the "
          "ticket's per-layer ratios total at the same tau; each uniform row is paired against Partial-LoRA at "
          "its tau (tau 0.9 in the main part, the others in the Pareto part).", "")
    for name, evidence, runs in w.by_setting():
        if "uniform" not in runs.setting.methods:
            w.add("*Left out of this setting's plan (cost; see `studies/plan.py`): uniform.*", "")
            continue
        if w.missing(runs, "main", "pareto") and not runs.has("main"):
            continue
        pairs = []
        for g in evidence.groups:
            if g.method == "uniform":
                partner = evidence.find(g.part, "partial-lora", threshold=g.threshold, mode=g.threshold_mode,
                                        folder=g.folder, rank=g.rank)
                pairs.append((partner, g))
        if not pairs:
            w.not_trained_yet(["uniform"])
            continue
        pairs.sort(key=lambda pair: -(pair[1].threshold or 0))
        groups = [g for pair in pairs for g in pair if g is not None]
        partner_of = {u.key: p for p, u in pairs if p is not None}
        w.add(*comparison_table(evidence, groups, None, "partial-lora at its tau", per_row=partner_of,
                                extra=("lora",)), "")
        uniform = [u for _, u in pairs]
        w.image(plots.differences([evidence.compare(u, partner_of.get(u.key)) for u in uniform],
                                  [u.label for u in uniform], w.images / f"{name}-uniform.png",
                                  f"{name}: uniform vs derived ratios", "partial-lora at the same tau"),
                f"{name} uniform ratios")


def threshold_section(w: Writer) -> None:
    w.add("## 6. Threshold sweep, relative vs absolute", "",
          "tau is the share of the unchanged model's few-shot score the pruned model must keep: above the "
          "majority-class floor (relative, our default) or of the raw score (absolute, the paper's wording). "
          "Relative tau 0.9 is the main table's Partial-LoRA (the reference here); the other relative taus come from "
          "the Pareto part, the absolute ones from the thresholds part.", "")
    for name, evidence, runs in w.by_setting():
        if w.missing(runs, "main", "pareto", "thresholds") and not runs.has("main"):
            continue
        partial = _partial(evidence)
        rank = evidence.lora_rank()
        series = {mode: sorted((g for g in evidence.groups if g.method == "partial-lora" and g.rank == rank
                                and g.threshold_mode == mode), key=lambda g: g.threshold)
                  for mode in ("relative", "absolute")}
        groups = series["relative"] + series["absolute"]
        w.add(*comparison_table(evidence, groups, partial, "partial-lora (tau 0.9, relative)",
                                extra=("lora",)), "")
        lines = []
        for g in series["absolute"]:
            twin = next((r for r in series["relative"] if r.threshold == g.threshold), None)
            if twin is not None:
                name_ = twin.label if "tau=" in twin.label else f"{twin.label} (tau={twin.threshold:g} relative)"
                lines.append("- " + statement(g.label, evidence.compare(g, twin), name_))
        if lines:
            w.add(*lines, "")
        w.image(plots.thresholds(evidence, {m: s for m, s in series.items() if s}, w.images / f"{name}-thresholds.png",
                                 name), f"{name} threshold sweep")
        w.commands(runs, "thresholds")


def rank_section(w: Writer) -> None:
    w.add("## 7. Rank sweep", "",
          "LoRA at every rank the study trained and Partial-LoRA at ranks 8 (main) and 16 (ranks part), alpha = 2 r, "
          "Partial-LoRA with each seed's ticket ratios. The seed's Fig. 6 claim: a higher rank with a sparser mask "
          "beats a lower dense rank at a similar count; here Partial-LoRA r=16 is paired against Partial-LoRA r=8 "
          "and against the LoRA rank nearest its parameter count.", "")
    for name, evidence, runs in w.by_setting():
        if w.missing(runs, "main", "pareto", "ranks") and not runs.has("main"):
            continue
        lora = evidence.lora_points()
        partial = sorted((g for g in evidence.groups if g.method == "partial-lora" and g.threshold_mode == "relative"
                          and g.threshold == DEFAULT_THRESHOLD), key=lambda g: g.rank)
        w.add(*comparison_table(evidence, lora + partial, evidence.lora,
                                evidence.lora.label if evidence.lora else "lora"), "")
        base = _partial(evidence)
        lines = []
        for g in partial:
            if g is base:
                continue
            lines.append("- " + statement(g.label, evidence.compare(g, base), base.label) if base else "")
            nearest = min(lora, key=lambda point, size=g.params: abs(math.log(point.params) - math.log(size)),
                          default=None)
            if nearest is not None:
                lines.append("- " + statement(f"{g.label} ({g.params:,.0f} parameters)", evidence.compare(g, nearest),
                                              f"{nearest.label} ({nearest.params:,.0f}, the nearest LoRA count)"))
        if lines:
            w.add(*[line for line in lines if line], "")
        w.image(plots.ranks(evidence, {"lora": lora, "partial-lora": partial}, w.images / f"{name}-ranks.png",
                            f"{name}: rank sweep"), f"{name} rank sweep")
        w.commands(runs, "ranks")
