"""``partial-lora run`` and ``partial-lora compare``: methods, seeds, thresholds and ranks side by side.

``run`` is ``compare`` on its defaults (LoRA and Partial-LoRA) plus the verdict: Partial-LoRA
at most 50 % of LoRA's trainable parameters and within 1.0 point of its metric.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from ..methods import SIZED_BY_TICKET, TICKET_METHODS, MethodNotApplicable, method_learning_rate
from ..ticket import Ticket, plot_keep_ratios
from . import report
from .fingerprint import check_resumed, run_record, write_record
from .lr_search import best_rate, end_note, next_rate, open_end
from .output import Output
from .runs import check_input, derive_ticket, say, train_method
from .settings import Settings, resolve
from .task import Task, build_task


def run_command(settings: Settings, args: Any) -> int:
    """Ticket, then every method in ``settings.methods`` for every seed; results and report."""
    settings = resolve(settings)
    return _compare(settings, command="run", title="Partial-LoRA vs LoRA", verdict_for_run=True)


def compare_command(settings: Settings, args: Any) -> int:
    settings = resolve(settings)
    return _compare(settings, command="compare", title="Method comparison", verdict_for_run=False)


def _compare(settings: Settings, *, command: str, title: str, verdict_for_run: bool) -> int:
    with Output(settings) as output:  # holds --out's lock until the command ends
        output.check()
        started = time.perf_counter()
        task = build_task(settings)
        base = task.new_model()  # loads the tokenizer once, and fails early on a bad --model
        check_input(task, settings, base, methods=settings.methods)
        record = run_record(command, settings, task)
        out = output.open()
        if settings.resume:
            check_resumed(out, record)
        write_record(out, record)
        say(settings, f"{settings.dataset}: {len(task.train)} training / {len(task.validation)} validation / "
                      f"{len(task.test)} test examples, {len(task.label_names)} classes; model {settings.model}")
        thresholds = settings.thresholds or [settings.threshold]
        ranks = settings.ranks or [settings.rank]
        tickets = _Tickets(task, settings, out, thresholds)
        results: list[dict[str, Any]] = []
        searches: list[dict[str, Any]] = []
        notes: list[str] = []  # why a method was not trained
        warnings: list[str] = []  # searches that kept an end of the rates they tried
        for method in settings.methods:
            for rank in ranks:
                for threshold in (thresholds if method in TICKET_METHODS else [None]):
                    try:
                        rows, search = _train_setting(task, settings, out, tickets, method=method, rank=rank,
                                                      threshold=threshold, ranks=ranks, thresholds=thresholds)
                    except MethodNotApplicable as reason:
                        if str(reason) not in notes:
                            notes.append(str(reason))
                            say(settings, f"[{method}] skipped: {reason}")
                        continue
                    results += rows
                    if search is not None:
                        searches.append(search)
                        note = _search_end_note(search, settings)
                        if note:
                            warnings.append(note)
                            say(settings, note)
        if not results:
            raise ValueError("no method could be trained: " + "; ".join(notes))
        primary = task.primary_metric
        plots = [report.plot_metric_vs_parameters(results, primary, out / "metric_vs_params.png",
                                                  title=f"{settings.dataset}: {primary} vs trainable parameters").name]
        if tickets.derived:
            plots.append(plot_keep_ratios(tickets.first(), out / "keep_ratios.png").name)
        rows = report.summarize(results, task.metrics)
        comparisons = report.compare_with_reference(results, reference_method="lora", reference_rank=settings.rank)
        table = report.markdown_table(rows, task.metrics, reference=_reference_label(rows, settings.rank))
        verdict = _verdict(rows, comparisons, primary) if verdict_for_run else ""
        document = {
            "results": [{k: v for k, v in r.items() if k != "history"} for r in results],
            "summary": rows, "comparisons": comparisons, "lr_search": searches,
            "settings": settings.to_dict(), "verdict": verdict,
            "histories": {f"{r['method']}-r{r['rank']}-seed{r['seed']}": r.get("history") for r in results},
            "notes": notes, "warnings": warnings,
            "seconds": time.perf_counter() - started,
        }
        report.write_results(out, document)
        report.write_report(out, title=title, settings=_settings_summary(settings, task), table=table,
                            comparisons=report.comparison_table(comparisons), verdict=verdict, plots=plots,
                            notes=notes + warnings)
        out = output.commit()
        print("\n" + table + "\n")
        if comparisons:
            print(report.comparison_table(comparisons) + "\n")
        if verdict:
            print(verdict)
        print(f"\nwrote {out / 'results.json'}, {out / 'report.md'} ({time.perf_counter() - started:.0f} s)")
        return 0


class _Tickets:
    """Tickets by (seed, threshold), derived when first needed and saved under ``--out``."""

    def __init__(self, task: Task, settings: Settings, out: Path, thresholds: list[float]) -> None:
        self.task, self.settings, self.out, self.thresholds = task, settings, out, thresholds
        self.derived: dict[tuple[int, float], Ticket] = {}

    def get(self, seed: int, threshold: float | None) -> Ticket | None:
        if threshold is None:
            return None
        key = (seed, threshold)
        if key not in self.derived:
            # The first ticket is ticket.json, the others under tickets/; the order is the command's own,
            # so --resume finds each where the interrupted run saved it.
            path = self.out / ("ticket.json" if not self.derived else f"tickets/ticket-seed{seed}-tau{threshold:g}.json")
            ticket = derive_ticket(self.task, self.settings, seed=seed, threshold=threshold,
                                   saved=path if self.settings.resume else None)
            self.derived[key] = ticket
            ticket.save(path)
        return self.derived[key]

    def first(self) -> Ticket:
        return next(iter(self.derived.values()))


def _train_setting(task: Task, settings: Settings, out: Path, tickets: _Tickets, *, method: str, rank: int,
                   threshold: float | None, ranks: list[int], thresholds: list[float]
                   ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every seed of one (method, rank, threshold) at its learning rate; the grid search if asked.

    With ``--lr-grid`` the first ``--lr-grid-seeds`` seeds train at every rate of the grid and
    are scored on **validation** only; the rate with the best mean validation metric (ties:
    the lower rate) is kept. If it alone is best and is the highest (lowest) rate tried, and
    ``--lr-grid-extend`` allows, twice (half) that rate is tried too, and so on (:mod:`.lr_search`). The kept
    rate's runs are then scored on test, and the other seeds train at it.
    Returns the reported rows (one per seed, scored on test) and the search record (or None).
    """
    primary = task.primary_metric
    # Baselines sized by the ticket (random masking, EVA) get Partial-LoRA's count at the default threshold.
    ticket_threshold = settings.threshold if threshold is None and method in SIZED_BY_TICKET else threshold

    def run(seed: int, rate: float, *, score_test: bool, notes: dict[str, Any], finished=None) -> dict[str, Any]:
        label = _label(method, rank, threshold, seed, ranks, thresholds) + (_lr_tag(rate) if settings.lr_grid else "")
        return train_method(task, settings, method=method, seed=seed, rank=rank,
                            ticket=tickets.get(seed, ticket_threshold), out=out, label=label, learning_rate=rate,
                            score_test=score_test, finished=finished, notes=notes)

    if not settings.lr_grid:
        given = {"lr_grid": [method_learning_rate(method, settings.learning_rate)], "lr_selected_on": "given"}
        return [run(seed, settings.learning_rate, score_test=True, notes=given) for seed in settings.seeds], None

    grid_seeds = settings.seeds[:settings.lr_grid_seeds]
    trials: dict[float, dict[int, dict[str, Any]]] = {}
    means: dict[float, float] = {}

    def try_rate(rate: float) -> None:
        known = sorted({*settings.lr_grid, *means, rate})  # the grid and the rates added so far
        searching = {"lr_grid": [method_learning_rate(method, r) for r in known], "lr_selected_on": None}
        trials[rate] = {seed: run(seed, rate, score_test=False, notes=searching) for seed in grid_seeds}
        means[rate] = statistics.fmean(row[f"validation_{primary}"] for row in trials[rate].values())

    for rate in settings.lr_grid:
        try_rate(rate)
    added: list[float] = []
    chosen = best_rate(means)
    while (rate := next_rate(means, len(added), settings.lr_grid_extend)) is not None:
        added.append(rate)
        say(settings, f"[{method}] best validation {primary} at {chosen:g}, the {open_end(means)} of the rates "
                      f"tried; trying {rate:g}")
        try_rate(rate)
        chosen = best_rate(means)
    tried = sorted(means)
    kept = {"lr_grid": [method_learning_rate(method, rate) for rate in tried], "lr_selected_on": "validation"}
    rows = [run(seed, chosen, score_test=True, notes=kept, finished=trials[chosen][seed]) for seed in grid_seeds]
    rows += [run(seed, chosen, score_test=True, notes=kept) for seed in settings.seeds if seed not in grid_seeds]
    search = {
        "method": method, "rank": rank, "threshold": threshold, "lr_grid": kept["lr_grid"], "lr_grid_base": tried,
        "lr_grid_given": list(settings.lr_grid), "lr_grid_added": added, "lr_grid_extend": settings.lr_grid_extend,
        "seeds": list(grid_seeds), "selected_on": "validation", "metric": f"validation_{primary}",
        "selected": method_learning_rate(method, chosen), "selected_base": chosen,
        "at_grid_end": open_end(means),
        "trials": [{"learning_rate": method_learning_rate(method, rate), "lr_base": rate,
                    f"validation_{primary}": means[rate],
                    "by_seed": {str(seed): row[f"validation_{primary}"] for seed, row in trials[rate].items()}}
                   for rate in tried],
    }
    return rows, search


def _search_end_note(search: dict[str, Any], settings: Settings) -> str | None:
    """The report's warning when a search kept the highest or lowest rate it tried."""
    name = " ".join([search["method"], f"r={search['rank']}"] +
                    ([f"tau={search['threshold']:g}"] if search["threshold"] is not None else []))
    scores = {trial["lr_base"]: trial[search["metric"]] for trial in search["trials"]}
    return end_note(name, scores, extend_given=settings.lr_grid_extend > 0)


def _lr_tag(rate: float) -> str:
    return f"-lr{rate:g}"


def _reference_label(rows: list[dict[str, Any]], rank: int) -> str | None:
    labels = [r["label"] for r in rows if r["label"].split()[0] == "lora"]
    return next((label for label in labels if f"r={rank}" in label.split()), labels[0] if labels else None)


def _label(method: str, rank: int, threshold: float | None, seed: int, ranks: list, thresholds: list) -> str:
    parts = [method]
    if len(ranks) > 1:
        parts.append(f"r{rank}")
    if threshold is not None and len(thresholds) > 1:
        parts.append(f"tau{threshold:g}")
    parts.append(f"seed{seed}")
    return "-".join(parts)


def _verdict(rows: list[dict[str, Any]], comparisons: list[dict[str, Any]], metric: str) -> str:
    """The main job's verdict: Partial-LoRA at most 50 % of LoRA's parameters and, by the paired
    95 % interval of its difference from LoRA, within 1.0 point of it (the rule of :mod:`partial_lora.statistics`)."""
    lora = next((r for r in rows if r["label"].split()[0] == "lora"), None)
    partial = next((r for r in rows if r["label"].split()[0] == "partial-lora"), None)
    comparison = next((c for c in comparisons if c["method"] == "partial-lora"), None)
    if not lora or not partial or comparison is None:
        return ""
    ratio = partial["trainable_params"] / lora["trainable_params"]
    small = ratio <= 0.5
    outcome = comparison["verdict"]
    if not small or outcome == "worse":
        word = "NOT MET"
    elif outcome in ("parity", "better"):
        word = "PASS"
    else:
        word = "INCONCLUSIVE"
    side = ""
    if comparison["ci_high"] < 0:
        side = " Partial-LoRA is behind LoRA on this test set: the whole interval lies below 0."
    elif comparison["ci_low"] > 0:
        side = " Partial-LoRA is ahead of LoRA on this test set: the whole interval lies above 0."
    return (
        f"**{word}**: Partial-LoRA trains {ratio:.1%} of LoRA's parameters (target <= 50%); its {metric} differs from "
        f"LoRA's by {comparison['diff_points']:+.2f} points, 95 % interval [{comparison['ci_low']:+.2f}, "
        f"{comparison['ci_high']:+.2f}] (paired bootstrap over {comparison['examples']} test examples, seeds "
        f"{comparison['seeds']} pooled): **{outcome}** (target: within 1.0 point, i.e. the interval's lower end "
        f">= -1.0; an interval across -1.0 is inconclusive).{side}"
    )


def _settings_summary(settings: Settings, task: Task) -> dict[str, Any]:
    return {
        "dataset": f"{settings.dataset} ({len(task.train)} train / {len(task.validation)} validation / "
                   f"{len(task.test)} test, {len(task.label_names)} classes)",
        "model": settings.model, "methods": ", ".join(settings.methods), "seeds": settings.seeds,
        "rank / alpha": f"{settings.rank} / {settings.alpha:g}", "targets": settings.target_modules,
        "ticket": f"{settings.ticket_method}, {settings.shots} shots/class, threshold {settings.threshold} "
                  f"({settings.threshold_mode})",
        "schedule": f"{settings.epochs} epochs, batch {settings.batch_size}, warm-up {settings.warmup_ratio:g}, "
                    f"clip {settings.max_grad_norm:g}",
        "learning rate": _rate_text(settings),
    }


def _rate_text(settings: Settings) -> str:
    """How the learning rates were set (rates in LoRA's units; methods scale them, see the table)."""
    scale = "each method at its own multiple (full x0.05, VeRA and random masking x10, others x1)"
    if settings.lr_grid:
        extended = (f", extended past an end where the best rate lay (doubling or halving, up to "
                    f"{settings.lr_grid_extend} more rates)" if settings.lr_grid_extend else "")
        return (f"chosen per method on validation from the grid {', '.join(f'{r:g}' for r in settings.lr_grid)}"
                f"{extended} (seeds {settings.seeds[:settings.lr_grid_seeds]}; {scale}); every row shows its rate")
    return f"{settings.learning_rate:g}, not searched ({scale})"
