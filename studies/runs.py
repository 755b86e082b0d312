"""Reading what the study's runs wrote: results, tickets, commands, and learned updates.

Nothing here trains; everything is read from ``--runs/<setting>/<part>/`` (results.json of
``partial-lora compare``, ticket.json of ``partial-lora ticket``, the saved adapters).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from partial_lora.ticket import Ticket

from . import plan


@dataclass
class SettingRuns:
    """Everything the runs folder holds for one setting.

    Attributes:
        setting: the plan's entry.
        results: ``{part: [result rows]}`` of the compare parts that finished.
        commands: ``{part: the command(s) that made it}``.
        tickets: ``{(method, shots, seed): Ticket}`` of the tickets part.
        updates: ``{method: {layer: [||scale B A||_F / ||W||_F per seed]}}`` from main's adapters.
        metric: the primary metric (``accuracy`` or ``exact_match``).
        incomplete: parts cut short, whose finished runs are in ``results``.
    """

    setting: plan.Setting
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)
    tickets: dict[tuple[str, int, int], Ticket] = field(default_factory=dict)
    updates: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    metric: str = "accuracy"
    incomplete: list[str] = field(default_factory=list)

    def rows(self, part: str, method: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.results.get(part, []) if method is None or r["method"] == method]


def load_setting_runs(setting: plan.Setting, runs: Path) -> SettingRuns:
    folder = runs / setting.dataset
    loaded = SettingRuns(setting=setting, metric="exact_match" if setting.dataset == "bbc-gen" else "accuracy")
    for part in setting.parts:
        command = folder / part / "command.txt"
        if command.is_file():
            loaded.commands[part] = command.read_text().strip()
        if part == "tickets":
            continue
        # One compare writes <part>/results.json; a part of several compares, <part>/<name>/results.json.
        outs = [folder / part] if (folder / part / "results.json").is_file() else \
            sorted(p for p in (folder / part).glob("*") if p.is_dir() and (p / "results.json").is_file())
        expected = len(command.read_text().strip().splitlines()) if command.is_file() else 1
        rows = [row for out in outs for row in json.loads((out / "results.json").read_text())["results"]]
        if len(outs) < expected:
            # A part cut short: the runs it finished (compare --resume writes one file per run).
            finished = sorted((folder / part).glob("**/partial/*.json"))
            done = {(r["method"], r["seed"], r["rank"], r["threshold"]) for r in rows}
            for file in finished:
                row = {k: v for k, v in json.loads(file.read_text()).items() if k != "history"}
                if (row["method"], row["seed"], row["rank"], row["threshold"]) not in done:
                    rows.append(row)
            if rows:
                loaded.incomplete.append(part)
        if rows:
            loaded.results[part] = rows
    tickets = folder / "tickets"
    if tickets.is_dir():
        for ticket_file in sorted(tickets.glob("*/ticket.json")):
            method, shots, seed = ticket_file.parent.name.split("-")
            loaded.tickets[(method, int(shots.removeprefix("shots")), int(seed.removeprefix("seed")))] = \
                Ticket.load(ticket_file)
    main_adapters = folder / "main" / "adapters"
    if main_adapters.is_dir():
        loaded.updates = update_magnitudes(main_adapters, base_norms(folder / "main"))
    return loaded


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


def _delta_norm(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
    a = a.double().reshape(a.shape[0], -1)
    b = b.double().reshape(b.shape[0], -1)
    return float(scale * torch.linalg.matrix_norm(b @ a))


def update_magnitudes(adapters: Path, norms: dict[str, float]) -> dict[str, dict[str, list[float]]]:
    """Per method and layer, ``||Delta W||_F`` (relative to ``||W||_F`` when ``norms`` has it).

    Reads LoRA's PEFT folders (``lora_A``/``lora_B``, scaling ``lora_alpha / r``) and the
    Partial-LoRA-format folders (compact ``lora_A``/``lora_B``, scaling ``K^2 alpha / rank`` with
    the layer's keep compensation ``K``; the norm of the scattered update equals the compact
    product's).
    """
    found: dict[str, dict[str, list[float]]] = {}
    for folder in sorted(p for p in adapters.iterdir() if p.is_dir()):
        method = folder.name.rsplit("-seed", 1)[0]
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
            elif config.get("peft_type") in ("LORA",) and not config.get("use_dora"):
                scale = config["lora_alpha"] / config["r"]
                names = [k.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                         for k in keys if k.endswith(".lora_A.weight")]
                layers = {n: (handle.get_tensor(f"base_model.model.{n}.lora_A.weight"),
                              handle.get_tensor(f"base_model.model.{n}.lora_B.weight"), scale) for n in names}
            else:
                continue
        per_layer = found.setdefault(method, {})
        for name, (a, b, scale) in layers.items():
            value = _delta_norm(a, b, scale)
            per_layer.setdefault(name, []).append(value / norms[name] if name in norms else value)
    return found
