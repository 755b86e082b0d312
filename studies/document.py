"""docs/RESULTS.md, its PNGs and results/study.json, from what the study's runs wrote.

The sections (:mod:`studies.sections`, :mod:`studies.sweeps`, :mod:`studies.ticket_sections`)
read the runs (:mod:`studies.runs`) through :class:`studies.analysis.Evidence`; parts that
did not run are listed as missing, not filled in. The hand-written comparison with the paper
(``studies/discussion.md``) is appended as is. ``results/study.json`` holds every reported
row, every comparison the document states, and the raw data behind each section.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from partial_lora.statistics import MARGIN_POINTS

from . import plan
from .analysis import Evidence
from .runs import SettingRuns
from .sections import learning_rate_section, main_table, pareto_section
from .sweeps import rank_section, selection_section, threshold_section, uniform_section
from .ticket_sections import layer_section, ticket_section
from .writer import Writer

DISCUSSION = Path(__file__).with_name("discussion.md")


def write_document(runs: dict[str, SettingRuns], doc: Path, *, smoke: bool, invocation: str,
                   runs_folder: Path | None = None, ticket_shots: int = 16) -> Path:
    """Write ``doc`` (markdown), its PNGs and ``study.json`` under ``doc.parent / 'results'``; return ``doc``.

    Args:
        runs: ``{setting name: what its runs folder holds}``.
        smoke: the tiny CI version (the title says so; the discussion is left out).
        invocation: the command that wrote it (named in the document).
        runs_folder: where the runs were read from.
        ticket_shots: the shot count the ticket methods were compared at.
    """
    doc = Path(doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    evidence = {name: Evidence(r) for name, r in runs.items()}
    w = Writer(doc, evidence, runs_folder or Path("runs/study"))
    today = datetime.date.today().isoformat()
    extend = max((r.setting.lr_grid_extend for r in runs.values()), default=0)
    extension = (f"; a best rate at an end of the grid is followed past it, up to {extend} more rates, for every "
                 "method alike" if extend else "")
    w.add("# Results: Partial-LoRA at small scale, on real models" + (" (SMOKE RUN: tiny slices, not results)" if smoke
                                                                      else ""), "",
          f"Written {today} by `{invocation}` from the runs `python -m studies.study` made in `{w.runs_folder}`; each "
          "section names the `partial-lora` commands behind its numbers. CPU only (2 cores). The raw rows, every "
          "comparison and the data behind each section are in `results/study.json`. Code: "
          f"{plan.STUDY_CODE}.", "",
          "**Protocol** (the same for every table): three disjoint, seeded, stratified splits per task: train (the "
          "ticket's few shots come from it), validation (carved from the training pool) and test (scored once, at "
          "the end). Every configuration picks its learning rate from one grid per task, on validation, with seed 0 "
          f"(section 2{extension}); then seeds 0, 1, 2 train at that rate and are scored on test. Metric values are percentages "
          "of the test split, mean ± sample standard deviation over seeds. Every difference is paired: the same "
          "test examples, seeds pooled, with a 95 % bootstrap interval over the examples; a difference whose "
          f"interval spans -{MARGIN_POINTS:g} point is *inconclusive*, not a finding.", "")
    for section in (main_table, learning_rate_section, pareto_section, selection_section, uniform_section,
                    threshold_section, rank_section):
        section(w)
    ticket_section(w, default_shots=ticket_shots)
    layer_section(w)
    data = study_data(evidence)
    problems = [f"{name}: {p}" for name, e in evidence.items() for p in e.problems]
    if problems:
        w.add("## Comparisons that could not be made", "", *[f"- {p}" for p in sorted(set(problems))], "")
    if DISCUSSION.is_file() and not smoke:
        w.add(DISCUSSION.read_text().strip(), "")
    w.images.mkdir(parents=True, exist_ok=True)
    (w.images / "study.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    doc.write_text("\n".join(w.lines).rstrip() + "\n")
    return doc


def study_data(evidence: dict[str, Evidence]) -> dict[str, Any]:
    """What ``results/study.json`` holds: ``rows``, ``comparisons`` and, per setting, the raw part data.

    ``rows``: one per reported model, with the study's field names (``task``, ``method``, ``seed``,
    ``rank``, ``threshold``, ``learning_rate``, ``lr_grid``, ``lr_selected_on``, ``metric``,
    ``validation_metric``, ``test_metric``, ``test_examples``, ``trainable_params``, ``part``,
    ``label``, ...) next to the fields of results.json (``test_correct`` included, so every
    interval can be recomputed). ``comparisons``: every paired difference the document states
    (``vs`` the reference's method, ``kind`` "paired" or "front" for a position against LoRA's front).
    """
    rows, comparisons, settings = [], [], {}
    for name, e in evidence.items():
        metric = e.metric
        for row in e.runs.rows:
            rows.append({"task": row["task"], "part": row["part"], "folder": row["folder"], "label": row["label"],
                         "method": row["method"], "seed": row["seed"], "rank": row.get("rank"),
                         "threshold": row.get("threshold"), "threshold_mode": row.get("threshold_mode"),
                         "learning_rate": row["learning_rate"], "lr_grid": row.get("lr_grid"),
                         "lr_selected_on": row.get("lr_selected_on"), "metric": metric,
                         "validation_metric": row.get(f"validation_{metric}"), "test_metric": row.get(metric),
                         **{k: v for k, v in row.items() if k not in ("task", "part", "folder", "label")}})
        for group in e.groups:  # every configuration against LoRA, and against the front
            e.compare(group, e.lora)
            e.position(group)
        comparisons += e.comparisons
        settings[name] = {
            "title": e.runs.setting.title, "metric": metric, "parts": list(e.runs.setting.parts),
            "missing": [p for p in e.runs.setting.parts if not e.runs.has(p)], "incomplete": e.runs.incomplete,
            "commands": e.runs.commands, "notes": e.runs.notes,
            "lr_searches": [{**s, "validation": [{"learning_rate": r, "validation_metric": v}
                                                 for r, v in s["validation"].items()]} for s in e.runs.searches],
            "points": [{"label": g.label, "part": g.part, "folder": g.folder, "method": g.method,
                        "trainable_params": g.params, "learning_rates": g.rates, "seeds": g.seeds,
                        "test_interval": e.interval(g)} for g in e.groups],
            "lora_front": [g.label for g in e.front()],
            "main_tickets": [{"seed": t.provenance.seed, "threshold": t.threshold, "keep_ratios": t.keep_ratios()}
                             for t in e.runs.main_tickets],
            "tickets": [{"method": m, "shots": shots, "seed": seed, "keep_ratios": t.keep_ratios(),
                         "final_f": t.provenance.final_f,
                         "seconds": t.provenance.seconds, "forward_equivalents": t.provenance.forward_equivalents}
                        for (m, shots, seed), t in sorted(e.runs.tickets.items())],
            "update_magnitudes": e.runs.updates,
        }
    return {"rows": rows, "comparisons": comparisons, "settings": settings}
