"""``partial-lora run`` and ``partial-lora compare``: methods, seeds, thresholds and ranks side by side.

``run`` is ``compare`` on its defaults (LoRA and Partial-LoRA) plus the verdict: Partial-LoRA
at most 50 % of LoRA's trainable parameters and within 1.0 point of its metric.
"""

from __future__ import annotations

import time
from typing import Any

from ..methods import TICKET_METHODS, MethodNotApplicable
from ..ticket import Ticket, plot_keep_ratios
from . import report
from .output import check_out, prepare_out
from .runs import check_input, derive_ticket, say, train_method
from .settings import Settings, resolve
from .task import Task, build_task


def run_command(settings: Settings, args: Any) -> int:
    """Ticket, then every method in ``settings.methods`` for every seed; results and report."""
    settings = resolve(settings)
    return _compare(settings, title="Partial-LoRA vs LoRA", verdict_for_run=True)


def compare_command(settings: Settings, args: Any) -> int:
    settings = resolve(settings)
    return _compare(settings, title="Method comparison", verdict_for_run=False)


def _compare(settings: Settings, *, title: str, verdict_for_run: bool) -> int:
    check_out(settings)
    started = time.perf_counter()
    task = build_task(settings)
    base = task.new_model()  # loads the tokenizer once, and fails early on a bad --model
    check_input(task, settings, base, ticket=any(m in TICKET_METHODS for m in settings.methods))
    out = prepare_out(settings)
    say(settings, f"{settings.dataset}: {len(task.train)} training / {len(task.test)} test examples, "
                  f"{len(task.label_names)} classes; model {settings.model}")
    thresholds = settings.thresholds or [settings.threshold]
    ranks = settings.ranks or [settings.rank]
    results: list[dict[str, Any]] = []
    notes: list[str] = []
    tickets: dict[tuple[int, float], Ticket] = {}
    for seed in settings.seeds:
        for threshold in thresholds:
            if any(m in TICKET_METHODS for m in settings.methods):
                ticket = derive_ticket(task, settings, seed=seed, threshold=threshold)
                tickets[(seed, threshold)] = ticket
                ticket.save(out / ("ticket.json" if len(tickets) == 1 else
                                   f"tickets/ticket-seed{seed}-tau{threshold:g}.json"))
        for method in settings.methods:
            for rank in ranks:
                method_thresholds = thresholds if method in TICKET_METHODS else [None]
                for threshold in method_thresholds:
                    ticket = tickets.get((seed, threshold)) if threshold is not None else None
                    label = _label(method, rank, threshold, seed, ranks, thresholds)
                    try:
                        results.append(train_method(task, settings, method=method, seed=seed, rank=rank,
                                                    ticket=ticket, out=out, label=label))
                    except MethodNotApplicable as reason:
                        if str(reason) not in notes:
                            notes.append(str(reason))
                            say(settings, f"[{label}] skipped: {reason}")
    if not results:
        raise ValueError("no method could be trained: " + "; ".join(notes))
    plots = []
    primary = task.primary_metric
    plots.append(report.plot_metric_vs_parameters(results, primary, out / "metric_vs_params.png",
                                                  title=f"{settings.dataset}: {primary} vs trainable parameters").name)
    if tickets:
        plots.append(plot_keep_ratios(list(tickets.values())[0], out / "keep_ratios.png").name)
    rows = report.summarize(results, task.metrics)
    reference = next((r["label"] for r in rows if r["label"].startswith("lora")), None)
    table = report.markdown_table(rows, task.metrics, reference=reference)
    verdict = _verdict(rows, primary) if verdict_for_run else ""
    document = {
        "results": [{k: v for k, v in r.items() if k != "history"} for r in results],
        "summary": rows, "settings": settings.to_dict(), "verdict": verdict,
        "histories": {f"{r['method']}-r{r['rank']}-seed{r['seed']}": r.get("history") for r in results},
        "notes": notes,
        "seconds": time.perf_counter() - started,
    }
    report.write_results(out, document)
    report.write_report(out, title=title, settings=_settings_summary(settings, task), table=table,
                        verdict=verdict, plots=plots, notes=notes)
    print("\n" + table + "\n")
    if verdict:
        print(verdict)
    print(f"\nwrote {out / 'results.json'}, {out / 'report.md'} ({time.perf_counter() - started:.0f} s)")
    return 0


def _label(method: str, rank: int, threshold: float | None, seed: int, ranks: list, thresholds: list) -> str:
    parts = [method]
    if len(ranks) > 1:
        parts.append(f"r{rank}")
    if threshold is not None and len(thresholds) > 1:
        parts.append(f"tau{threshold:g}")
    parts.append(f"seed{seed}")
    return "-".join(parts)


def _verdict(rows: list[dict[str, Any]], metric: str) -> str:
    lora = next((r for r in rows if r["label"].split()[0] == "lora"), None)
    partial = next((r for r in rows if r["label"].split()[0] == "partial-lora"), None)
    if not lora or not partial or metric not in lora or metric not in partial:
        return ""
    ratio = partial["trainable_params"] / lora["trainable_params"]
    gap = 100 * (lora[metric] - partial[metric])
    ok = ratio <= 0.5 and gap <= 1.0
    return (
        f"**{'PASS' if ok else 'NOT MET'}**: Partial-LoRA trains {ratio:.1%} of LoRA's parameters (target <= 50%) "
        f"and is {gap:+.2f} {metric} points {'below' if gap >= 0 else 'above'} LoRA "
        f"(target: within 1.0; mean over seeds {partial['seeds']})."
    )


def _settings_summary(settings: Settings, task: Task) -> dict[str, Any]:
    return {
        "dataset": f"{settings.dataset} ({len(task.train)} train / {len(task.test)} test, {len(task.label_names)} classes)",
        "model": settings.model, "methods": ", ".join(settings.methods), "seeds": settings.seeds,
        "rank / alpha": f"{settings.rank} / {settings.alpha:g}", "targets": settings.target_modules,
        "ticket": f"{settings.ticket_method}, {settings.shots} shots/class, threshold {settings.threshold} "
                  f"({settings.threshold_mode})",
        "schedule": f"{settings.epochs} epochs, lr {settings.learning_rate:g} "
                    f"(every method's own: full x0.05, VeRA and random masking x10), batch {settings.batch_size}, "
                    f"warm-up {settings.warmup_ratio:g}, clip {settings.max_grad_norm:g}",
    }
