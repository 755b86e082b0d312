"""A picture of a ticket: keep ratio per layer, coloured by the layer's role (q/k/v/...)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from .ticket import Ticket

ROLES = {"query": "q", "q_proj": "q", "q": "q", "key": "k", "k_proj": "k", "k": "k",
         "value": "v", "v_proj": "v", "v": "v"}
COLOURS = {"q": "tab:blue", "k": "tab:orange", "v": "tab:green"}
MARKERS = "os^Dv<>p*h"


def layer_role(name: str) -> str:
    """``q``, ``k``, ``v`` for attention projections, else the module's last name part."""
    last = name.split(".")[-1]
    return ROLES.get(last, last)


def short_name(name: str) -> str:
    """``encoder.layer.3.attention.self.query`` -> ``3.q`` (block number and role)."""
    numbers = [part for part in name.split(".") if part.isdigit()]
    return ".".join(numbers + [layer_role(name)])


def plot_keep_ratios(tickets: Ticket | Sequence[Ticket] | Mapping[str, Ticket],
                     path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Write a PNG of the keep ratio of every layer (one ticket: bars; several: one line each).

    Args:
        tickets: a ticket, a list of tickets, or ``{label: ticket}``.
        path: the PNG to write (its folder is created).

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if isinstance(tickets, Ticket):
        labelled = {_label(tickets): tickets}
    elif isinstance(tickets, Mapping):
        labelled = dict(tickets)
    else:
        labelled = {f"{i}: {_label(t)}": t for i, t in enumerate(tickets)}
    if not labelled or not all(isinstance(t, Ticket) for t in labelled.values()):
        raise ValueError("plot_keep_ratios needs a Ticket, a list of tickets or {label: ticket}")
    names = list(dict.fromkeys(name for t in labelled.values() for name in t.layers))
    roles = [layer_role(n) for n in names]
    positions = range(len(names))
    figure, axes = plt.subplots(figsize=(max(6.0, 0.32 * len(names) + 2.0), 4.0))
    if len(labelled) == 1:
        ticket = next(iter(labelled.values()))
        colours = [COLOURS.get(r, "tab:gray") for r in roles]
        axes.bar(positions, [ticket.layers[n].keep_ratio for n in names], color=colours)
        present = list(dict.fromkeys(roles))
        axes.legend(handles=[Patch(color=COLOURS.get(r, "tab:gray"), label=r) for r in present], title="layer")
    else:
        for index, (label, ticket) in enumerate(labelled.items()):
            values = [ticket.layers[n].keep_ratio if n in ticket.layers else float("nan") for n in names]
            axes.plot(positions, values, marker=MARKERS[index % len(MARKERS)], label=label)
        axes.legend(fontsize="small")
    axes.set_xticks(list(positions))
    axes.set_xticklabels([short_name(n) for n in names], rotation=90, fontsize=7)
    for tick, role in zip(axes.get_xticklabels(), roles):
        tick.set_color(COLOURS.get(role, "black"))
    axes.set_ylabel("keep ratio")
    axes.set_ylim(0.0, 1.05)
    axes.set_title(title or "keep ratio per layer")
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _label(ticket: Ticket) -> str:
    p = ticket.provenance
    parts = [p.method]
    if p.threshold is not None:
        parts.append(f"tau={p.threshold:g}")
    if p.shots is not None:
        parts.append(f"{p.shots} shots")
    parts.append(f"seed {p.seed}")
    return ", ".join(parts)
