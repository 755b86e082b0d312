"""What every training command shares: checking input, deriving a ticket, training one method.

:func:`train_method` trains one method with one seed on a :class:`~.task.Task`, saves its
adapter and returns its result row (also written to ``partial/<label>.json``, so an
interrupted comparison resumes without training it again).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write_bytes
from ..methods import INIT_BATCHES, TICKET_METHODS, build_method, method_learning_rate, save_method, sparse_learning_rate_scale
from ..surgery import find_target_modules, trainable_parameters
from ..ticket import Ticket, find_ticket
from ..training import TrainingConfig, train
from .settings import Settings
from .task import Task


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
    # Data-initialised methods (lora-eva) read the first few training batches (iterating does not reshuffle).
    init_batches = list(itertools.islice(train_batches, INIT_BATCHES[method])) if method in INIT_BATCHES else None
    model, hooks = build_method(
        method, model, r=rank, alpha=alpha, target_modules=settings.target_modules,
        modules_to_save=settings.modules_to_save, keep_ratios=ticket.keep_ratios() if ticket else None,
        ticket_scores=ticket.scores if ticket else None, seed=seed, total_steps=total_steps,
        budget=settings.budget, init_batches=init_batches,
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
