"""Sections 1-3 of docs/RESULTS.md: the main table, the learning-rate searches, the Pareto front.

Each section writes, per setting, its table(s), a plot and the commands behind them, or says
which parts are missing. Every difference is a paired interval (:mod:`studies.analysis`).
"""

from __future__ import annotations

from partial_lora.commands.lr_search import open_end
from partial_lora.statistics import MARGIN_POINTS

from . import plan, plots
from .analysis import Evidence, Group, position_text
from .tables import comparison_table, difference, interval, markdown, rate, rates, statement
from .writer import Writer

VERDICT_RULE = (f"*better*: the 95 % interval lies above 0; *parity*: its lower end is at least -{MARGIN_POINTS:g} "
                f"point; *worse*: its upper end is below -{MARGIN_POINTS:g}; *inconclusive*: it spans "
                f"-{MARGIN_POINTS:g}")


def _main_groups(evidence: Evidence) -> list[Group]:
    groups = evidence.in_parts("main")
    order = {m: i for i, m in enumerate(plan.MAIN_METHODS)}
    return sorted(groups, key=lambda g: order.get(g.method, len(order)))


def main_table(w: Writer) -> None:
    w.add("## 1. Main table", "",
          "Every method on the same targets, schedule and seeds, at rank 8 (alpha 16) where it has a rank; the "
          "Partial-LoRA family uses each seed's own svd ticket (tau 0.9, relative). Each configuration's learning "
          "rate is the one of the grid with the best **validation** score of seed 0 (section 2); then every seed "
          "is trained at it and scored once on test. *vs lora*: the paired difference on the same test examples "
          f"(seeds pooled, 95 % bootstrap interval over examples); {VERDICT_RULE}. Trainable parameters include "
          "the new head where the task has one; optimizer state and adapter file are bytes per model.", "")
    for name, evidence, runs in w.by_setting():
        if w.missing(runs, "main"):
            continue
        groups = _main_groups(evidence)
        w.add(*comparison_table(evidence, groups, evidence.lora, evidence.lora.label if evidence.lora
                                else "lora", extra=("grid", "memory")), "")
        trained = {g.method for g in groups}
        untrained = [m for m in runs.setting.methods if m not in trained]
        if untrained and runs.notes.get("main"):
            w.add(f"Not trained: {', '.join(untrained)} ({'; '.join(runs.notes['main'])}).", "")
        elif untrained:
            w.not_trained_yet(untrained)
        absent = [m for m in plan.MAIN_METHODS if m not in runs.setting.methods]
        if absent:
            w.add(f"*Left out of this setting's plan (cost; see `studies/plan.py`): {', '.join(absent)}.*", "")
        w.add(_partial_vs_lora(evidence), "")
        others = [g for g in groups if g is not evidence.lora]
        w.image(plots.differences([evidence.compare(g, evidence.lora) for g in others], [g.label for g in others],
                                  w.images / f"{name}-main.png", f"{name}: paired difference from LoRA",
                                  evidence.lora.label if evidence.lora else "lora"), f"{name} main table")
        w.commands(runs, "main")


def _partial_vs_lora(evidence: Evidence) -> str:
    """The project's promise on this setting: at most 50 % of LoRA's parameters, within 1 point of it."""
    partial = evidence.find("main", "partial-lora")
    lora = evidence.lora
    comparison = evidence.compare(partial, lora) if partial and lora else None
    if comparison is None:
        return ""
    ratio = partial.params / lora.params
    outcome = comparison["verdict"]
    word = "not met" if ratio > 0.5 or outcome == "worse" else "met" if outcome in ("parity", "better") else \
        "inconclusive"
    return (f"Partial-LoRA trains {ratio:.1%} of LoRA's trainable parameters; "
            + statement("its test " + evidence.metric, comparison, lora.label)
            + f" The target (at most 50 % of the parameters, interval's lower end >= -{MARGIN_POINTS:g} point) is "
            f"**{word}**.")


def learning_rate_section(w: Writer) -> None:
    w.add("## 2. Learning rates: chosen on validation, never on test", "",
          "Every configuration (method, rank, threshold) trains seed 0 at every rate of its setting's grid (in "
          "LoRA's units, times the method's factor) and is scored on the "
          "**validation** split only; the rate with the best validation score is kept (ties: the lower rate). Where "
          "that is the grid's highest (lowest) rate, twice (half) that rate is tried too, up to "
          f"{plan.LR_GRID_EXTEND} more rates, until the best lies inside the rates tried: the same rule for every "
          "method (`--lr-grid-extend`). The grid runs that were not kept were never scored on test (except where "
          "noted below the table: a search extended after it had finished). Cells: "
          "validation metric (%) at each rate tried; **bold**: the selected rate.", "")
    for name, evidence, runs in w.by_setting():
        if w.missing(runs, "main"):
            continue
        searches = runs.searches
        grid = sorted({b for s in searches for b in s["grid_base"]})
        header = ["configuration", "part", *[f"at {rate(b)}" for b in grid], "factor", "selected rate", "seeds", "note"]
        rows = []
        for s in searches:
            base = dict(zip(s["grid_base"], s["grid"]))
            cells = [s["label"], s["part"] + (f"/{s['folder']}" if s["folder"] else "")]
            for b in grid:
                value = s["validation"].get(base.get(b))
                text = "-" if value is None else f"{100 * value:.1f}"
                cells.append(f"**{text}**" if base.get(b) == s["selected"] and value is not None else text)
            cells += [f"{s['grid'][0] / s['grid_base'][0]:g}" if s["grid"] else "-",
                      rate(s["selected"]) if s["selected"] is not None else "-", ",".join(map(str, s["seeds"])),
                      _search_note(s)]
            rows.append(cells)
        w.add(f"Columns *at r*: the grid's rates in LoRA's units ({rates(grid)}); a method trains at *factor* "
              "times them (its selected rate is in that unit).", "", *markdown(header, rows), "")
        w.add(*_selection_checks(evidence), "")
        edges = [s["label"] for s in searches if _grid_end(s) is not None]
        if edges:
            w.add(f"**{len(edges)} of {len(searches)} searches kept an end of the rates they tried** "
                  f"({', '.join(edges)}): a rate beyond it might score better, so those rows may understate their "
                  "method.", "")
        extended = [s["label"] for s in searches if s.get("added")]
        if extended:
            w.add(f"{len(extended)} of {len(searches)} searches went past the grid ({', '.join(extended)}).", "")
        moved = [s for s in searches if s.get("earlier_test_rates")]
        if moved:
            which = ", ".join(f"{s['label']}, from {rates(s['earlier_test_rates'])}" for s in moved)
            w.add(f"In {len(moved)} of them the kept rate moved when the search, finished before the rule was "
                  f"adopted, was followed past the grid ({which}): "
                  "the runs at the earlier kept rate had already been scored on test. Those scores chose nothing (the "
                  "move was made on validation scores) and are not reported.", "")
        main = [s for s in searches if s["part"] == "main"]
        if main:
            w.image(plots.learning_rates(main, w.images / f"{name}-lr.png", f"{name}: validation score per rate "
                                         "(main part; stars: selected)", evidence.metric), f"{name} learning rates")


def _grid_end(search: dict) -> str | None:
    """``"top"`` or ``"bottom"`` where a finished search's one best rate is an end of the rates it
    tried (a better rate may lie beyond it), else None."""
    if not search["complete"] or search["selected"] is None:
        return None
    return open_end(search["validation"])


def _search_note(search: dict) -> str:
    """What a reader must know of one search: cut short, extended past the grid, or kept an end of its rates."""
    if not search["complete"]:
        return "search incomplete"
    added = search.get("added") or []
    extended = f"grid extended to {rates(added)}" if added else ""
    end = _grid_end(search)
    if end is None:
        return extended
    beyond = "higher" if end == "top" else "lower"
    limit = f" (the {search['extend']} added rates allowed were used)" if search.get("extend") else ""
    return "; ".join(filter(None, [extended, f"{end} of the rates tried{limit}: {beyond} rates not tried"]))


def _selection_checks(evidence: Evidence) -> list[str]:
    """Evidence that no rate was picked on test: every row's ``lr_selected_on`` and each search's arg-max."""
    rows = evidence.runs.rows
    on_validation = [r for r in rows if r.get("lr_selected_on") == "validation"]
    others = sorted({f"{r['label']} ({r.get('lr_selected_on')})" for r in rows
                     if r.get("lr_selected_on") != "validation"})
    best = 0
    wrong = []
    searched = [s for s in evidence.runs.searches if s["selected"] is not None and s["complete"]]
    for s in searched:
        scored = {rate_: v for rate_, v in s["validation"].items() if v is not None}
        if not scored:
            wrong.append(s["label"])
            continue
        top = max(scored.values())
        if scored.get(s["selected"]) == top and s["selected"] == min(r for r, v in scored.items() if v == top):
            best += 1
        else:
            wrong.append(s["label"])
    unfinished = len(evidence.runs.searches) - len(searched)
    lines = [f"- {len(on_validation)} of {len(rows)} reported models trained at a rate selected on validation"
             + (f"; not: {', '.join(others)}" if others else "") + ".",
             f"- {best} of {len(searched)} searches kept the rate with the best validation score (lowest of ties)"
             + (f"; not: {', '.join(wrong)}" if wrong else "")
             + (f" ({unfinished} search(es) not finished, left out)" if unfinished else "") + "."]
    validation = sorted({r["validation_examples"] for r in rows if r.get("validation_examples")})
    test = sorted({r["test_examples"] for r in rows if r.get("test_examples")})
    if validation:
        lines.append(f"- Validation split: {', '.join(map(str, validation))} examples; test split: "
                     f"{', '.join(map(str, test))}.")
    return lines


def pareto_section(w: Writer) -> None:
    w.add("## 3. The Pareto front: test metric against trainable parameters", "",
          "Each point is one configuration at its own validation-selected rate, its test metric the mean over seeds "
          "with the 95 % bootstrap interval (examples resampled, seeds pooled). **LoRA's front** is every LoRA the "
          "setting trained (the Pareto part's ranks, the main table's rank 8 and the matched rank), each at its own "
          "selected rate, reduced to its Pareto-optimal points (no LoRA with as few or fewer parameters scores "
          "higher) and interpolated linearly in log-parameters; it is flat beyond its end points. **Position** of a "
          "point with p trainable parameters: the paired difference, example by "
          "example, between the point and the front at p (the two bracketing LoRA ranks' per-example scores mixed "
          "with the interpolation weight), seeds pooled, 95 % bootstrap interval: *above* if the interval lies above "
          "0, *below* if it lies below 0, *on* if it contains 0 (the two cannot be told apart at this test size: read "
          "the interval's width). *left of the range*: fewer parameters than any LoRA "
          "run, compared with the smallest one (a point below it there is not beaten by a measured LoRA of its "
          "size).", "")
    for name, evidence, runs in w.by_setting():
        if w.missing(runs, "main", "pareto", "matched") and not evidence.front():
            continue
        front = evidence.front()
        if not front:
            w.add("*No LoRA point scored on test: no front.*", "")
            continue
        on_front = {g.key for g in front}
        header = ["configuration", "part", "learning rate", "trainable params", f"test {evidence.metric} (%, 95 % CI)",
                  "vs LoRA front (points, 95 % CI)", "position"]
        rows = []
        for g in sorted(evidence.groups, key=lambda g: g.params):
            record = None if g.key in on_front else evidence.position(g)
            rows.append([g.label, g.part + (f"/{g.folder}" if g.folder else ""), rates(g.rates), f"{g.params:,.0f}",
                         interval(evidence.interval(g)), "front point" if g.key in on_front else difference(record),
                         "front" if g.key in on_front else position_text(record)])
        w.add(*markdown(header, rows), "")
        w.add(f"- LoRA points: {', '.join(g.label for g in evidence.lora_points())}; on the front: "
              f"{', '.join(g.label for g in front)}.", *_pareto_statements(evidence), "")
        w.image(plots.pareto(evidence, w.images / f"{name}-pareto.png", f"{name}: test {evidence.metric} vs trainable "
                             "parameters"), f"{name} Pareto front")
        w.commands(runs, "pareto", "matched")


def _pareto_statements(evidence: Evidence) -> list[str]:
    lines = []
    partial = evidence.find("main", "partial-lora")
    record = evidence.position(partial) if partial else None
    if record is not None:
        where = {"above": "lies **above** LoRA's front", "below": "lies **below** LoRA's front",
                 "on": "lies **on** LoRA's front (not distinguishable from it)"}[record["position"]]
        lines.append(f"- Partial-LoRA (tau 0.9, rank {partial.rank}, {partial.params:,.0f} parameters) {where}: "
                     f"{difference(record)} points against the front at its size ({record['front_between']}"
                     + (", outside the front's range" if record["range"] != "inside" else "") + ").")
        if record["position"] == "below":
            lines.append("- On this task a LoRA rank with as many trainable parameters does better than Partial-LoRA.")
    sweep = [g for g in evidence.groups if g.method == "partial-lora" and g is not partial]
    counted = {}
    for g in sweep:
        position = evidence.position(g)
        if position is not None:
            counted.setdefault(position["position"], []).append(g.label)
    if counted:
        lines.append("- The other Partial-LoRA points: " + "; ".join(f"{where} ({', '.join(labels)})"
                                                                    for where, labels in sorted(counted.items())) + ".")
    matched = evidence.find("matched", "lora")
    if partial and matched:
        lines.append(f"- At matched parameters: LoRA r={matched.rank} trains {matched.params:,.0f} parameters, "
                     f"Partial-LoRA {partial.params:,.0f} ({partial.params / matched.params:.2f}x). "
                     + statement("Partial-LoRA", evidence.compare(partial, matched), matched.label))
    return lines
