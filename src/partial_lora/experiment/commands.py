"""What each CLI command does. Each ``<name>_command(settings, args)`` returns an exit status."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .. import adapter_files
from ..files import atomic_write_bytes
from ..methods import (
    TICKET_METHODS,
    MethodNotApplicable,
    build_method,
    method_learning_rate,
    save_method,
    sparse_learning_rate_scale,
)
from ..peft_interop import export_peft
from ..surgery import find_target_modules, merge, trainable_parameters
from ..ticket import Ticket, find_ticket, plot_keep_ratios, ticket_overlap
from ..training import TrainingConfig, train
from . import report
from .settings import Settings, resolve
from .task import Task, build_task

PLOT_FILES = ("metric_vs_params.png", "keep_ratios.png")
RESULT_FILES = ("results.json", "report.md", "ticket.json", "adapters",
                "adapter_config.json", "adapter_model.safetensors", "config.json", "model.safetensors")


# -- output folder ---------------------------------------------------------------------
def check_out(settings: Settings, *, keep: bool = False) -> list[str]:
    """Refuse an ``--out`` that is a file, or holds results (unless --overwrite or --resume).

    Touches nothing: commands call it first, check their input, and only then
    :func:`prepare_out`, so bad input never costs the results already in ``--out``.
    """
    out = Path(settings.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give a folder")
    existing = [name for name in RESULT_FILES if (out / name).exists()] if out.is_dir() else []
    if existing and not (settings.overwrite or settings.resume or keep):
        raise FileExistsError(
            f"--out {out} already holds results ({', '.join(existing)}); pass --overwrite to replace them, "
            "--resume to continue that run, or choose another folder"
        )
    return existing


def prepare_out(settings: Settings, *, keep: bool = False) -> Path:
    """Create ``--out``; refuse one that already holds results unless --overwrite or --resume."""
    out = Path(settings.out)
    existing = check_out(settings, keep=keep)
    if existing and settings.overwrite and not settings.resume:
        for name in (*RESULT_FILES, *PLOT_FILES, "checkpoints", "partial", "tickets"):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def check_input(task: Task, settings: Settings, base: torch.nn.Module, *, ticket: bool) -> None:
    """Fail on bad input before anything in ``--out`` is written or replaced.

    Checks what would otherwise fail only after earlier results were replaced or part of the
    work was written: a ``--ticket`` file that does not load, target patterns that match no
    layer of ``base``, schedule values the training loop refuses, a class with fewer training
    examples than ``--shots`` (when a ticket is derived), a ``--max-length`` the model cannot
    take. Cheap: one example is batched.
    """
    if settings.ticket:
        Ticket.load(settings.ticket)
    elif ticket:
        for seed in settings.seeds:
            task.shots(seed)
    find_target_modules(base, settings.target_modules, modules_to_save=settings.modules_to_save or [])
    for seed in settings.seeds:
        TrainingConfig(
            learning_rate=settings.learning_rate, epochs=settings.epochs, weight_decay=settings.weight_decay,
            warmup_ratio=settings.warmup_ratio, max_grad_norm=settings.max_grad_norm,
            checkpoint_every=settings.checkpoint_every, seed=seed, output_dir=settings.out,
        )
    task.batches(task.test.subset([0]), shuffle=False, seed=0)


def say(settings: Settings, text: str) -> None:
    if settings.progress:
        print(text, flush=True)


# -- tickets ---------------------------------------------------------------------------
def ticket_metric(task: Task, settings: Settings) -> str:
    if settings.metric:
        return settings.metric
    return "neg_loss" if task.kind == "causal-lm" else "accuracy"


def derive_ticket(task: Task, settings: Settings, *, seed: int, threshold: float | None = None) -> Ticket:
    """The ticket of ``settings.ticket_method`` on ``settings.shots`` per class (seeded)."""
    if settings.ticket:
        return Ticket.load(settings.ticket)
    model = task.new_model()
    shots = task.shots(seed)
    batches = task.batches(shots, shuffle=False, seed=seed)
    return find_ticket(
        model, batches, target_modules=settings.target_modules, method=settings.ticket_method,
        threshold=threshold or settings.threshold, threshold_mode=settings.threshold_mode,
        metric=ticket_metric(task, settings), seed=seed, progress=settings.progress,
        model_name=settings.model, data_fingerprint=shots.fingerprint(), shots=settings.shots,
    )


# -- training one method ---------------------------------------------------------------
def train_method(task: Task, settings: Settings, *, method: str, seed: int, rank: int,
                 ticket: Ticket | None, out: Path, label: str) -> dict[str, Any]:
    """Train one method with one seed; save its adapter; return its result row."""
    partial_file = out / "partial" / f"{label}.json"
    if settings.resume and partial_file.is_file():
        say(settings, f"[{label}] already finished; reusing its result")
        return json.loads(partial_file.read_text())
    torch.manual_seed(seed)
    model = task.new_model()
    alpha = settings.alpha * rank / settings.rank
    train_batches = task.batches(task.train, shuffle=True, seed=seed)
    total_steps = len(train_batches) * settings.epochs
    model, hooks = build_method(
        method, model, r=rank, alpha=alpha, target_modules=settings.target_modules,
        modules_to_save=settings.modules_to_save, keep_ratios=ticket.keep_ratios() if ticket else None,
        ticket_scores=ticket.scores if ticket else None, seed=seed, total_steps=total_steps,
        budget=settings.budget,
    )
    config = TrainingConfig(
        learning_rate=method_learning_rate(method, settings.learning_rate), epochs=settings.epochs,
        adapter_lr_scale=(settings.sparse_lr_scale or sparse_learning_rate_scale(model)) if method in TICKET_METHODS
        else 1.0,
        weight_decay=settings.weight_decay, warmup_ratio=settings.warmup_ratio,
        max_grad_norm=settings.max_grad_norm, checkpoint_every=settings.checkpoint_every, seed=seed,
        output_dir=str(out / "checkpoints" / label), progress=settings.progress,
    )
    say(settings, f"[{label}] training: {trainable_parameters(model):,} trainable parameters, {total_steps} steps")
    eval_batches = task.batches(task.test, shuffle=False, seed=0)
    outcome = train(
        model, train_batches, config, eval_batches=eval_batches, evaluate=task.evaluator(),
        resume=settings.resume and (out / "checkpoints" / label).exists(),
        extra_loss=hooks.extra_loss, callbacks=hooks.callbacks,
    )
    adapter_bytes = save_method(model, method, out / "adapters" / label, metadata=_metadata(task, settings, method))
    row = {
        "method": method, "seed": seed, "rank": rank, "threshold": ticket.threshold if ticket else None,
        "uses_ticket": method in TICKET_METHODS,
        **{metric: outcome.metrics.get(f"eval_{metric}") for metric in task.metrics},
        "learning_rate": config.learning_rate,
        "adapter_learning_rate": config.learning_rate * config.adapter_lr_scale,
        "trainable_params": trainable_parameters(model),
        "optimizer_state_bytes": outcome.optimizer_state_bytes,
        "adapter_bytes": adapter_bytes,
        "train_seconds": outcome.train_seconds,
        "peak_rss_bytes": outcome.peak_rss_bytes,
        "history": outcome.history,
    }
    atomic_write_bytes(_ensure_parent(partial_file), json.dumps(row, default=str).encode())
    return row


def _ensure_parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _metadata(task: Task, settings: Settings, method: str) -> dict[str, Any]:
    return {
        "model": settings.model, "dataset": settings.dataset, "task": task.kind, "method": method,
        "label_names": task.label_names, "max_length": settings.max_length,
        "train_per_class": settings.train_per_class, "test_per_class": settings.test_per_class,
    }


# -- commands --------------------------------------------------------------------------
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
                ticket.save(out / ("ticket.json" if not tickets or len(tickets) == 1 else
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
                    f"(Partial-LoRA methods: x {_sparse_scale_text(settings)}), batch {settings.batch_size}, "
                    f"warm-up {settings.warmup_ratio:g}, clip {settings.max_grad_norm:g}",
    }


def _sparse_scale_text(settings: Settings) -> str:
    if settings.sparse_lr_scale is not None:
        return f"{settings.sparse_lr_scale:g}"
    return "LoRA's parameters / theirs, at most 10; heads at lr"


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
    check_input(task, settings, task.new_model(), ticket=settings.method in TICKET_METHODS)
    out = prepare_out(settings)
    ticket = derive_ticket(task, settings, seed=settings.seed) if settings.method in TICKET_METHODS else None
    if ticket is not None:
        ticket.save(out / "ticket.json")
    row = train_method(task, settings, method=settings.method, seed=settings.seed, rank=settings.rank,
                       ticket=ticket, out=out, label=settings.method)
    report.write_results(out, {"results": [{k: v for k, v in row.items() if k != "history"}],
                               "settings": settings.to_dict()})
    print(json.dumps({k: v for k, v in row.items() if k != "history"}, indent=2, default=str))
    return 0


def _base_for_adapter(settings: Settings, adapter: Path) -> tuple[Task, torch.nn.Module, dict[str, Any]]:
    document = adapter_files.read_config(adapter)
    metadata = document.get("metadata") or {}
    updates = {k: metadata[k] for k in ("model", "dataset", "max_length", "train_per_class", "test_per_class")
               if metadata.get(k) and
               getattr(settings, k) in (None, Settings().__getattribute__(k))}
    settings = resolve(replace(settings, **updates))
    task = build_task(settings)
    return task, task.new_model(), document


def eval_command(settings: Settings, args: Any) -> int:
    task, base, _ = _base_for_adapter(settings, Path(args.adapter))
    model = adapter_files.load(base, args.adapter)
    metrics = task.evaluator()(model, task.batches(task.test, shuffle=False, seed=0))
    print(json.dumps(metrics, indent=2))
    return 0


def export_command(settings: Settings, args: Any) -> int:
    check_out(settings)
    _, base, _ = _base_for_adapter(settings, Path(args.adapter))
    model = adapter_files.load(base, args.adapter)
    out = prepare_out(settings)
    export_peft(model, out)
    print(f"wrote a PEFT LoRA folder to {out}")
    return 0


def merge_command(settings: Settings, args: Any) -> int:
    check_out(settings)
    task, base, _ = _base_for_adapter(settings, Path(args.adapter))
    model = merge(adapter_files.load(base, args.adapter))
    out = prepare_out(settings)
    model.save_pretrained(out, safe_serialization=True)
    if task.tokenizer is not None:
        task.tokenizer.save_pretrained(out)
    print(f"wrote the merged model to {out}")
    return 0
