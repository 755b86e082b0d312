"""``partial-lora ticket`` and ``partial-lora train``: one ticket, or one method's adapter."""

from __future__ import annotations

import json
from typing import Any

from ..methods import SIZED_BY_TICKET, TICKET_METHODS
from ..ticket import Ticket, plot_keep_ratios, ticket_overlap
from . import report
from .output import check_out, prepare_out
from .runs import check_input, derive_ticket, train_method
from .settings import Settings, resolve
from .task import build_task


def ticket_command(settings: Settings, args: Any) -> int:
    if getattr(args, "compare", None):
        a, b = (Ticket.load(path) for path in args.compare)
        overlap = ticket_overlap(a, b)
        print(json.dumps(overlap, indent=2, default=float))
        return 0
    settings = resolve(settings)
    check_out(settings)
    task = build_task(settings)
    check_input(task, settings, task.new_model(), ticket=True)
    out = prepare_out(settings)
    ticket = derive_ticket(task, settings, seed=settings.seed)
    ticket.save(out / "ticket.json")
    plot_keep_ratios(ticket, out / "keep_ratios.png")
    for name, ratio in ticket.keep_ratios().items():
        print(f"{name:60s} {ratio:.3f}")
    print(f"wrote {out / 'ticket.json'} and {out / 'keep_ratios.png'}")
    return 0


def train_command(settings: Settings, args: Any) -> int:
    settings = resolve(settings)
    check_out(settings)
    task = build_task(settings)
    check_input(task, settings, task.new_model(), ticket=settings.method in (*TICKET_METHODS, *SIZED_BY_TICKET))
    out = prepare_out(settings)
    ticket = derive_ticket(task, settings, seed=settings.seed) if settings.method in (*TICKET_METHODS, *SIZED_BY_TICKET) else None
    if ticket is not None:
        ticket.save(out / "ticket.json")
    row = train_method(task, settings, method=settings.method, seed=settings.seed, rank=settings.rank,
                       ticket=ticket, out=out, label=settings.method, learning_rate=settings.learning_rate,
                       score_test=True)
    report.write_results(out, {"results": [{k: v for k, v in row.items() if k != "history"}],
                               "settings": settings.to_dict()})
    print(json.dumps({k: v for k, v in row.items() if k != "history"}, indent=2, default=str))
    return 0
