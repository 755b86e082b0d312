"""Reading what the study's runs wrote: reported rows, learning-rate searches, tickets, updates.

Nothing here trains; everything is read from ``--runs/<setting>/<part>/`` (``results.json`` of
``partial-lora compare``, one per compare folder; ``ticket.json`` of ``partial-lora ticket``;
the saved adapters). A part of several compares keeps each in a subfolder
(``pareto/lora-ranks``, ``ranks/partial-lora-r16``, ...).

A **reported row** is one trained model scored on test: the selected learning rate of its
configuration (method, rank, threshold) and one seed. Each row read here is annotated with
``task``, ``part``, ``folder`` (the subfolder, ``""`` for a part of one compare),
``threshold_mode``, ``budget`` and ``label`` (the configuration's name in the document). The
grid runs that were not selected were scored on validation only; they appear in the
searches (``lr_search`` of results.json), never as rows.

A compare cut short has no results.json yet: its finished runs are read from
``partial/<run>.json`` (rows with a test score are reported rows; the others are grid trials),
its searches rebuilt from them, and the part is listed as incomplete.
"""

from __future__ import annotations

import json
import shlex
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from partial_lora.commands.lr_search import best_rate, next_rate
from partial_lora.methods import method_learning_rate
from partial_lora.ticket import Ticket

from . import plan

DEFAULT_RANK = 8
DEFAULT_THRESHOLD = 0.9


@dataclass
class SettingRuns:
    """Everything the runs folder holds for one setting.

    Attributes:
        setting: the plan's entry.
        metric: the primary test metric (``accuracy`` or ``exact_match``).
        rows: the reported rows of every compare part, annotated (see the module docstring).
        searches: one learning-rate search per configuration: ``{part, folder, label, method,
            rank, threshold, grid (actual rates), grid_base (LoRA's units), seeds, validation
            ({actual rate: mean validation metric over the search seeds}), selected (actual
            rate), selected_on, complete}``.
        commands: ``{part: the command line(s) that made it}``.
        tickets: ``{(method, shots, seed): Ticket}`` of the tickets part.
        main_tickets: the tickets the main part derived (one per seed, tau 0.9).
        updates: ``{method: {layer: [||scale B A||_F / ||W||_F per seed]}}`` of main's
            reported LoRA and Partial-LoRA adapters (the selected rate's).
        notes: ``{part: [notes of compare, e.g. a method it could not train]}``.
        incomplete: parts cut short, whose finished runs are in ``rows``.
    """

    setting: plan.Setting
    metric: str = "accuracy"
    rows: list[dict[str, Any]] = field(default_factory=list)
    searches: list[dict[str, Any]] = field(default_factory=list)
    commands: dict[str, str] = field(default_factory=dict)
    tickets: dict[tuple[str, int, int], Ticket] = field(default_factory=dict)
    main_tickets: list[Ticket] = field(default_factory=list)
    updates: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    incomplete: list[str] = field(default_factory=list)

    def select(self, part: str | None = None, method: str | None = None) -> list[dict[str, Any]]:
        """The reported rows of ``part`` (any part if None) and ``method`` (any if None)."""
        return [r for r in self.rows
                if (part is None or r["part"] == part) and (method is None or r["method"] == method)]

    def has(self, part: str) -> bool:
        """Whether ``part`` left anything to report."""
        return bool(self.tickets) if part == "tickets" else any(r["part"] == part for r in self.rows)


def configuration_label(row: dict[str, Any]) -> str:
    """The document's name of a row's configuration, unique within a setting.

    ``lora r=2``, ``partial-lora tau=0.7``, ``partial-lora tau=0.8 absolute``, ``lora r=3 (matched)``,
    ``random-masking (budget of lora r=4)``: the method plus what sets it apart from the main part's
    default (rank 8, tau 0.9 relative). LoRA always names its rank.
    """
    words = [row["method"]]
    if row["method"] == "lora" or (row.get("rank") not in (None, DEFAULT_RANK) and row["method"] != "random-masking"):
        words.append(f"r={row['rank']}")
    mode = row.get("threshold_mode") or "relative"
    if row.get("uses_ticket") and row.get("threshold") is not None and (row["threshold"] != DEFAULT_THRESHOLD
                                                                          or mode != "relative"):
        words.append(f"tau={row['threshold']:g}")
    if row.get("uses_ticket") and mode != "relative":
        words.append(mode)
    if row.get("part") == "matched":
        words.append("(matched)")
    folder = row.get("folder") or ""
    if folder.startswith("random-masking-r"):
        words.append(f"(budget of lora r={folder.removeprefix('random-masking-r')})")
    return " ".join(words)


def load_setting_runs(setting: plan.Setting, runs: Path) -> SettingRuns:
    """Read every part of ``setting`` under ``runs/<dataset>/`` that left something."""
    folder = runs / setting.dataset
    loaded = SettingRuns(setting=setting, metric="exact_match" if setting.dataset == "bbc-gen" else "accuracy")
    for part in setting.parts:
        command = folder / part / "command.txt"
        if command.is_file():
            loaded.commands[part] = command.read_text().strip()
        if part != "tickets":
            _read_compare_part(loaded, folder / part, part)
    for ticket_file in sorted((folder / "tickets").glob("*/ticket.json")):
        method, shots, seed = ticket_file.parent.name.rsplit("-", 2)
        loaded.tickets[(method, int(shots.removeprefix("shots")), int(seed.removeprefix("seed")))] = \
            Ticket.load(ticket_file)
    planned = loaded.commands.get("tickets", "").count("partial-lora ticket ")
    if loaded.tickets and len(loaded.tickets) < planned:
        loaded.incomplete.append("tickets")
    loaded.main_tickets = main_tickets(folder / "main")
    norms = base_norms(folder / "main")  # written when the main part finishes
    if (folder / "main" / "adapters").is_dir() and norms:  # no ||W||: no ratio to show
        reported = [r for r in loaded.select("main") if r["method"] in ("lora", "partial-lora")]
        loaded.updates = update_magnitudes(folder / "main" / "adapters", reported, norms)
    return loaded


def _compare_lines(part_folder: Path) -> dict[str, list[str]]:
    """``{subfolder ("" for the part itself): compare argv}`` from the part's command.txt."""
    command = part_folder / "command.txt"
    found: dict[str, list[str]] = {}
    if not command.is_file():
        return found
    for line in command.read_text().splitlines():
        argv = shlex.split(line)[1:]
        if argv[:1] == ["compare"] and "--out" in argv:
            out = Path(command_option(argv, "--out"))
            found["" if out.name == part_folder.name else out.name] = argv
    return found


def methods_added(argv: list[str], settings: dict[str, Any]) -> set[str]:
    """The methods a compare command line ``argv`` trains (``--methods``) that its finished
    results (their ``settings``) do not cover: the plan added them after that compare ended."""
    methods = {name for name in command_option(argv, "--methods", "").split(",") if name}
    return methods - set(settings.get("methods") or [])


def command_option(argv: list[str], name: str, default: str | None = None) -> str | None:
    """The value after ``name`` in a partial-lora command line ``argv``, or ``default``."""
    return argv[argv.index(name) + 1] if name in argv else default


def _read_compare_part(loaded: SettingRuns, part_folder: Path, part: str) -> None:
    lines = _compare_lines(part_folder)
    subfolders = set(lines) | ({""} if (part_folder / "results.json").is_file() else set())
    subfolders |= {p.name for p in part_folder.glob("*") if p.is_dir() and (p / "results.json").is_file()}
    cut_short = False
    for sub in sorted(subfolders):
        out = part_folder / sub if sub else part_folder
        if (out / "results.json").is_file():
            document = json.loads((out / "results.json").read_text())
            context = _context(loaded, part, sub, document["settings"])
            rows = [_annotate(row, context) for row in document["results"]]
            searches = [_search_record(search, context) for search in document.get("lr_search", [])]
            _mark_earlier_test_scores(searches, out, loaded.metric)
            if document.get("notes"):
                loaded.notes.setdefault(part, []).extend(document["notes"])
            argv = lines.get(sub, [])
            added = methods_added(argv, document["settings"])
            if added:  # the plan added methods; their runs so far are in partial/ until the compare ends
                cut_short = True
                if (out / "partial").is_dir():
                    more_rows, more_searches = _read_partial(loaded, part, sub, out, argv)
                    rows += [row for row in more_rows if row["method"] in added]
                    searches += [search for search in more_searches if search["method"] in added]
        elif (out / "partial").is_dir():
            cut_short = True
            rows, searches = _read_partial(loaded, part, sub, out, lines.get(sub, []))
        else:
            cut_short = cut_short or sub in lines  # planned, not started
            continue
        loaded.rows += rows
        loaded.searches += searches
    if cut_short and loaded.has(part):
        loaded.incomplete.append(part)


def _context(loaded: SettingRuns, part: str, sub: str, settings: dict[str, Any]) -> dict[str, Any]:
    return {"task": loaded.setting.dataset, "part": part, "folder": sub,
            "threshold_mode": settings.get("threshold_mode", "relative"), "budget": settings.get("budget")}


def _annotate(row: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in row.items() if k != "history"}
    row.update(context)
    row["label"] = configuration_label(row)
    return row


def _search_record(search: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    from partial_lora.methods import TICKET_METHODS

    probe = {"method": search["method"], "rank": search["rank"], "threshold": search["threshold"],
             "uses_ticket": search["method"] in TICKET_METHODS, **context}
    metric = search["metric"]
    return {"part": context["part"], "folder": context["folder"], "label": configuration_label(probe),
            "method": search["method"], "rank": search["rank"], "threshold": search["threshold"],
            "grid": list(search["lr_grid"]), "grid_base": list(search["lr_grid_base"]), "seeds": list(search["seeds"]),
            "validation": {t["learning_rate"]: t[metric] for t in search["trials"]},
            "selected": search["selected"], "selected_on": search["selected_on"], "complete": True,
            "added": list(search.get("lr_grid_added", [])), "extend": search.get("lr_grid_extend", 0)}


def _configuration(row: dict[str, Any]) -> tuple:
    """``(method, rank, threshold)`` of a run, as its search names it (a threshold only for ticket methods;
    baselines sized by the ticket record the ticket's threshold too)."""
    return row["method"], row["rank"], row["threshold"] if row.get("uses_ticket") else None


def _mark_earlier_test_scores(searches: list[dict[str, Any]], out: Path, metric: str) -> None:
    """Note, per search, the rates other than the kept one whose runs were scored on test.

    Only a compare resumed with a larger ``--lr-grid-extend`` whose kept rate then moved has
    such runs (the earlier choice was scored before the search went on); they chose nothing
    and are not reported.
    """
    scored: dict[tuple, set[float]] = {}
    for file in (out / "partial").glob("*.json"):
        row = json.loads(file.read_text())
        if row.get(metric) is not None:
            scored.setdefault(_configuration(row), set()).add(row["learning_rate"])
    for search in searches:
        rates = scored.get((search["method"], search["rank"], search["threshold"]), set())
        search["earlier_test_rates"] = sorted(rate for rate in rates if rate != search["selected"])


def _read_partial(loaded: SettingRuns, part: str, sub: str, out: Path, argv: list[str]
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Reported rows and searches of a compare cut short, from its ``partial/*.json``.

    Per configuration the kept rate is worked out again from the search seeds' validation
    scores (as ``compare`` chooses it); only rows scored on test at that rate are reported. A
    folder resumed with a larger ``--lr-grid-extend`` may also hold test scores at a rate the
    longer search no longer keeps: they are left out.
    """
    context = {"task": loaded.setting.dataset, "part": part, "folder": sub,
               "threshold_mode": command_option(argv, "--threshold-mode", "relative"),
               "budget": int(command_option(argv, "--budget")) if command_option(argv, "--budget") else None}
    grid_base = [float(r) for r in command_option(argv, "--lr-grid", "").split(",") if r]
    extend = int(command_option(argv, "--lr-grid-extend", "0"))
    seeds = [int(s) for s in command_option(argv, "--seeds", "0").split(",")]
    search_seeds = seeds[:int(command_option(argv, "--lr-grid-seeds", "1"))]
    validation_key = f"validation_{loaded.metric}"
    scored, trials = {}, {}
    for file in sorted((out / "partial").glob("*.json")):
        row = _annotate(json.loads(file.read_text()), context)
        key = _configuration(row)
        if row["seed"] in search_seeds:
            trials.setdefault(key, {}).setdefault(row["lr_base"], []).append(row[validation_key])
        if row.get(loaded.metric) is not None:
            scored.setdefault(key, []).append(row)
    if not grid_base:  # one given rate: every row scored on test is reported
        rows = [r for by_key in scored.values() for r in by_key]
        for row in rows:
            row.update(lr_grid=[row["learning_rate"]], lr_selected_on="given")
        return rows, []
    rows, searches = [], []
    for key, by_rate in trials.items():
        method, rank, threshold = key
        means = {rate: statistics.fmean(values) for rate, values in sorted(by_rate.items())}
        tried = sorted({*grid_base, *means})  # the grid and the rates an extension added
        kept = best_rate(means) if set(grid_base) <= set(means) else None
        ended = kept is not None and next_rate(means, len(tried) - len(grid_base), extend) is None
        grid = [method_learning_rate(method, rate) for rate in tried]
        reported = [r for r in scored.get(key, []) if r["lr_base"] == kept] if ended else []
        for row in reported:
            row.update(lr_grid=grid, lr_selected_on="validation")
        rows += reported
        probe = {"method": method, "rank": rank, "threshold": threshold,
                 "uses_ticket": threshold is not None, **context}
        searches.append({"part": part, "folder": sub, "label": configuration_label(probe), "method": method,
                         "rank": rank, "threshold": threshold, "grid": grid, "grid_base": tried, "seeds": search_seeds,
                         "validation": {method_learning_rate(method, rate): value for rate, value in means.items()},
                         "selected": method_learning_rate(method, kept) if reported else None,
                         "selected_on": "validation", "complete": bool(reported),
                         "added": sorted(set(means) - set(grid_base)), "extend": extend})
    return rows, searches


def main_tickets(runs_main: Path) -> list[Ticket]:
    """The tickets ``compare`` derived in the main part (one per seed)."""
    files = [runs_main / "ticket.json", *sorted((runs_main / "tickets").glob("ticket-seed*.json"))]
    return [Ticket.load(f) for f in files if f.is_file()]


def matched_rank(runs_main: Path) -> int:
    """The LoRA rank whose adapters count about what main's Partial-LoRA adapters count.

    From main's results: LoRA's trainable parameters minus ``r * sum(m + n)`` over the target
    layers (the ticket's shapes) is what both train besides the adapters (a new head).
    """
    results = runs_main / "results.json"
    tickets = main_tickets(runs_main)
    if not results.is_file() or not tickets:
        raise FileNotFoundError(f"the matched part needs the main part's results and ticket in {runs_main}: "
                                "run the main part first (--parts main)")
    rows = json.loads(results.read_text())["results"]
    lora = [r for r in rows if r["method"] == "lora"]
    partial = [r for r in rows if r["method"] == "partial-lora"]
    if not lora or not partial:
        raise ValueError(f"{results} has no lora and partial-lora rows to match")
    rank = lora[0]["rank"]
    lora_adapters = rank * sum(m + n for m, n in tickets[0].layer_shapes().values())
    shared = statistics.fmean(r["trainable_params"] for r in lora) - lora_adapters
    partial_adapters = statistics.fmean(r["trainable_params"] for r in partial) - shared
    return max(1, round(rank * partial_adapters / lora_adapters))


def adapter_budget(runs_main: Path, rank: int) -> int:
    """The adapter parameters of LoRA at ``rank`` on main's target layers: ``rank * sum(m + n)``."""
    tickets = main_tickets(runs_main)
    if not tickets:
        raise FileNotFoundError(f"the pareto part needs the main part's ticket in {runs_main}: run the main part first")
    return rank * sum(m + n for m, n in tickets[0].layer_shapes().values())


def base_norms(runs_main: Path) -> dict[str, float]:
    """``{layer: ||W||_F}`` of the pretrained target layers, as recorded for main's tickets."""
    norms_file = runs_main / "base_norms.json"
    if norms_file.is_file():
        return json.loads(norms_file.read_text())
    return {}


def adapter_folder(adapters: Path, row: dict[str, Any]) -> Path:
    """Where main's compare saved the adapter of a reported row (``<method>-seed<s>-lr<base rate>``)."""
    return adapters / f"{row['method']}-seed{row['seed']}-lr{row['lr_base']:g}"


def _delta_norm(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
    a = a.double().reshape(a.shape[0], -1)
    b = b.double().reshape(b.shape[0], -1)
    return float(scale * torch.linalg.matrix_norm(b @ a))


def update_magnitudes(adapters: Path, rows: list[dict[str, Any]], norms: dict[str, float]
                      ) -> dict[str, dict[str, list[float]]]:
    """Per method and layer, ``||Delta W||_F`` of the reported rows' adapters (over ``||W||_F`` when known).

    Reads LoRA's PEFT folders (``lora_A``/``lora_B``, scaling ``lora_alpha / r``) and the
    Partial-LoRA-format folders (compact ``lora_A``/``lora_B``, scaling ``K^2 alpha / rank`` with
    the layer's keep compensation ``K``; the norm of the scattered update equals the compact
    product's). Grid runs of rates that were not selected are not read.
    """
    found: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        folder = adapter_folder(adapters, row)
        config_file, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
        if not config_file.is_file() or not weights.is_file():
            continue
        config = json.loads(config_file.read_text())
        with safe_open(str(weights), framework="pt") as handle:
            keys = list(handle.keys())
            if config.get("format") == "partial-lora":
                layers = {n: (handle.get_tensor(f"adapters.{n}.lora_A"), handle.get_tensor(f"adapters.{n}.lora_B"),
                              info["alpha"] / info["rank"] * info.get("keep_multiplier", 1.0) ** 2)
                          for n, info in config["layers"].items()}
            elif config.get("peft_type") == "LORA" and not config.get("use_dora"):
                scale = config["lora_alpha"] / config["r"]
                names = [k.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                         for k in keys if k.endswith(".lora_A.weight")]
                layers = {n: (handle.get_tensor(f"base_model.model.{n}.lora_A.weight"),
                              handle.get_tensor(f"base_model.model.{n}.lora_B.weight"), scale) for n in names}
            else:
                continue
        per_layer = found.setdefault(row["method"], {})
        for name, (a, b, scale) in layers.items():
            value = _delta_norm(a, b, scale)
            per_layer.setdefault(name, []).append(value / norms[name] if name in norms else value)
    return found
