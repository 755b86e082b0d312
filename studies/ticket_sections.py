"""Sections 8-9 of docs/RESULTS.md: ticket stability across shots and methods; per-layer ratios and updates.

The tickets part trains nothing (so its tables have no learning rate); section 9 reads the
adapters of the main part's reported LoRA and Partial-LoRA models, at their selected rates.
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from typing import Sequence

from partial_lora.ticket import Ticket, ticket_overlap

from . import plots
from .tables import markdown, pm, rates
from .writer import Writer


def ranked_correlation(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's correlation (ranks by sorting; ties broken by order), NaN under 3 points."""
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


def weighted_ratio(ticket: Ticket) -> float:
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


def ticket_section(w: Writer, *, default_shots: int) -> None:
    w.add("## 8. Shots and ticket methods", "",
          "Tickets only (no training, so no learning rate). For each shot count, one svd ticket per seed (each seed "
          "draws its own few-shot sample from the training split). *share kept*: the ticket's adapter parameters "
          "over LoRA's. *ratio spread*: per-layer standard deviation of the keep ratio across seeds, averaged over "
          "layers. *overlap*: Jaccard overlap of the top 10 % rows / columns by score, averaged over layers, between "
          "seeds (same shots) or against the largest shot count (same seed).", "")
    for name, evidence, runs in w.by_setting():
        if w.missing(runs, "tickets"):
            continue
        svd: dict[int, dict[int, Ticket]] = defaultdict(dict)
        for (method, shots, seed), ticket in runs.tickets.items():
            if method == "svd":
                svd[shots][seed] = ticket
        if not svd:
            w.add("*Missing: no svd ticket.*", "")
            continue
        top = max(svd)
        rows = []
        for shots in sorted(svd):
            tickets = [svd[shots][s] for s in sorted(svd[shots])]
            across_rows, across_columns = _pairwise_overlap(tickets)
            against = [ticket_overlap(svd[shots][s], svd[top][s])["mean"] for s in svd[shots] if s in svd[top]]
            versus = "-" if shots == top else \
                f"{pm([a['rows'] for a in against], 1, 2)} / {pm([a['columns'] for a in against], 1, 2)}"
            rows.append([str(shots), pm([weighted_ratio(t) for t in tickets]), f"{_ratio_spread(tickets):.3f}",
                         f"{pm(across_rows, 1, 2)} / {pm(across_columns, 1, 2)}" if across_rows else "-", versus,
                         pm([t.provenance.seconds for t in tickets], 1, 1)])
        w.add(*markdown(["shots/class", "share kept (%)", "ratio spread", "overlap across seeds rows / cols",
                         f"overlap with {top} shots rows / cols", "seconds"], rows), "")
        shots = default_shots if default_shots in svd else top
        methods = {m: {seed: t for (mm, s, seed), t in runs.tickets.items() if mm == m and s == shots}
                   for m in runs.setting.ticket_methods}
        reference = methods.get("svd", {})
        rows = []
        for method, by_seed in methods.items():
            if not by_seed:
                continue
            overlaps = [ticket_overlap(t, reference[s])["mean"] for s, t in by_seed.items() if s in reference]
            correlations = [ranked_correlation(list(t.keep_ratios().values()),
                                               [reference[s].layers[n].keep_ratio for n in t.layers])
                            for s, t in by_seed.items() if s in reference]
            rows.append([method, pm([weighted_ratio(t) for t in by_seed.values()]),
                         pm([t.provenance.forward_equivalents for t in by_seed.values()], 1, 1),
                         pm([t.provenance.seconds for t in by_seed.values()], 1, 1),
                         "-" if method == "svd" else f"{pm([o['rows'] for o in overlaps], 1, 2)} / "
                                                     f"{pm([o['columns'] for o in overlaps], 1, 2)}",
                         "-" if method == "svd" else pm(correlations, 1, 2)])
        w.add(f"Ticket methods at {shots} shots per class:", "",
              *markdown(["method", "share kept (%)", "forward-equivalents", "seconds", "overlap with svd rows / cols",
                         "ratio rank-correlation with svd"], rows), "")
        first = min(svd[top])
        by_shots = {f"svd, {s} shots": list(svd[s][first].keep_ratios().values())
                    for s in sorted(svd) if first in svd[s]}
        by_method = {m: list(by_seed[first].keep_ratios().values())
                     for m, by_seed in methods.items() if first in by_seed}
        w.image(plots.keep_ratio_lines(by_shots, by_method, w.images / f"{name}-tickets.png",
                                       (f"{name}: shots (seed {first})",
                                        f"{name}: ticket methods, {shots} shots (seed {first})")),
                f"{name} ticket stability")
        w.commands(runs, "tickets")


def layer_section(w: Writer) -> None:
    w.add("## 9. Per-layer keep ratios and learned update magnitudes", "",
          "Keep ratios of the main part's svd tickets (mean over seeds) and, per target layer, the size of the "
          "learned update ‖scale · B A‖_F / ‖W‖_F of LoRA and Partial-LoRA after training at their selected "
          "rates (mean over seeds).", "")
    for name, evidence, runs in w.by_setting():
        if w.missing(runs, "main"):
            continue
        tickets = runs.main_tickets
        if not tickets or not runs.updates:
            w.add("*Missing: the main part's tickets, adapters or base-weight norms (`base_norms.json`, written "
                  "when the part finishes).*", "")
            continue
        layers = list(tickets[0].layers)
        ratios = [statistics.fmean(t.layers[n].keep_ratio for t in tickets) for n in layers]
        updates = {m: [statistics.fmean(runs.updates[m].get(n, [float("nan")])) for n in layers]
                   for m in ("lora", "partial-lora") if m in runs.updates}
        rows = []
        for method, values in updates.items():
            group = evidence.find("main", method)
            share = [p / q for p, q in zip(values, updates.get("lora", [])) if q > 0] if method != "lora" else []
            rows.append([method, rates(group.rates) if group else "-", f"{min(values):.4f}",
                         f"{statistics.median(values):.4f}", f"{max(values):.4f}",
                         f"{ranked_correlation(ratios, values):+.2f}",
                         f"{statistics.median(share):.2f} ({min(share):.2f}-{max(share):.2f})" if share else "-"])
        w.add(*markdown(["method", "learning rate", "min ‖ΔW‖/‖W‖", "median", "max",
                         "rank correlation with the keep ratio", "× LoRA's update (median over layers, range)"],
                        rows), "",
              f"Keep ratios: {min(ratios):.3f} to {max(ratios):.3f} (median {statistics.median(ratios):.3f}).", "")
        w.image(plots.layers(layers, ratios, updates, w.images / f"{name}-layers.png",
                             f"{name}: per-layer keep ratio (svd ticket, mean over seeds)"),
                f"{name} per-layer ratios and updates")
