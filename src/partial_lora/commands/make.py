"""``partial-lora ticket`` and ``partial-lora train``: one ticket, or one method's adapter."""

from __future__ import annotations

import json
from typing import Any

from ..methods import SIZED_BY_TICKET, TICKET_METHODS
from ..ticket import Ticket, plot_keep_ratios, ticket_overlap
from . import report
from .fingerprint import check_resumed, run_record, write_record
from .output import Output
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
    with Output(settings) as output:  # holds --out's lock until the command ends
        output.check()
        task = build_task(settings)
        check_input(task, settings, task.new_model(), methods=[], derives_ticket=True)
        out = output.open()
        ticket = derive_ticket(task, settings, seed=settings.seed)
        ticket.save(out / "ticket.json")
        plot_keep_ratios(ticket, out / "keep_ratios.png")
        out = output.commit()
        for name, ratio in ticket.keep_ratios().items():
            print(f"{name:60s} {ratio:.3f}")
        print(f"wrote {out / 'ticket.json'} and {out / 'keep_ratios.png'}")
        return 0


def train_command(settings: Settings, args: Any) -> int:
    settings = resolve(settings)
    with Output(settings) as output:  # holds --out's lock until the command ends
        output.check()
        task = build_task(settings)
        needs_ticket = settings.method in (*TICKET_METHODS, *SIZED_BY_TICKET)
        check_input(task, settings, task.new_model(), methods=[settings.method])
        record = run_record("train", settings, task)
        out = output.open()
        if settings.resume:
            check_resumed(out, record)
        write_record(out, record)
        ticket = derive_ticket(task, settings, seed=settings.seed,
                               saved=out / "ticket.json" if settings.resume else None) if needs_ticket else None
        if ticket is not None:
            ticket.save(out / "ticket.json")
        row = train_method(task, settings, method=settings.method, seed=settings.seed, rank=settings.rank,
                           ticket=ticket, out=out, label=settings.method, learning_rate=settings.learning_rate,
                           score_test=True)
        report.write_results(out, {"results": [{k: v for k, v in row.items() if k != "history"}],
                                   "histories": {settings.method: row.get("history")},
                                   "settings": settings.to_dict()})
        output.commit()
        print(json.dumps({k: v for k, v in row.items() if k not in ("history", "test_correct")}, indent=2, default=str))
        return 0
