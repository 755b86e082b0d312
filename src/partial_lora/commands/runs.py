"""What every training command shares: checking input, deriving a ticket, training one method.

:func:`train_method` trains one method with one seed on a :class:`~.task.Task`, saves its
adapter and returns its result row (also written to ``partial/<label>.json``, so an
interrupted comparison resumes without training it again).
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write_bytes
from ..methods import INIT_BATCHES, SIZED_BY_TICKET, TICKET_METHODS, build_method, method_learning_rate, save_method
from ..statistics import correctness_text
from ..layer import base_shape
from ..naming import matches
from ..surgery import find_target_modules, trainable_parameters
from ..ticket import Ticket, find_ticket
from ..ticket.metrics import get_metric
from ..ticket.ticket import recorded_targets
from ..training import TrainingConfig, train
from .lr_search import extension_range
from .settings import Settings
from .task import Task


def check_input(task: Task, settings: Settings, base: torch.nn.Module, *, methods: list[str],
                derives_ticket: bool = False) -> None:
    """Fail on bad input before anything in ``--out`` is written or replaced.

    Everything that can be checked before training is: a ``--ticket`` that does not load or was
    made for another model, target patterns or ``--modules-to-save`` that match no layer of
    ``base``, a ``--budget`` below the smallest possible adapter, schedule values the training
    loop refuses, an AdaLoRA schedule too short for its rank allocation, too few shots (per
    class, and at least 2 where a new head is scored by cross-fitted probes), a ``--max-length``
    beyond what the model or its tokenizer takes, a causal-LM task on a model that cannot
    generate. Cheap: one example of each split is batched.
    """
    ticket = derives_ticket or any(m in (*TICKET_METHODS, *SIZED_BY_TICKET) for m in methods)
    targets = find_target_modules(base, settings.target_modules, modules_to_save=settings.modules_to_save or [])
    _check_saved_modules(base, settings.modules_to_save or [])
    if settings.ticket:
        _check_ticket_fits(Ticket.load(settings.ticket), targets, settings.ticket)
    elif ticket:
        if settings.ticket_method != "uniform" and task.kind != "causal-lm" and settings.shots < 2:
            raise ValueError(f"--shots {settings.shots}: the ticket scores the new head with linear probes "
                             "cross-fitted on two halves of the shots; give --shots 2 or more")
        for seed in settings.seeds:
            task.shots(seed)
    if settings.budget is not None and any(m in TICKET_METHODS for m in methods):
        floor = 2 * settings.rank * len(targets)
        if settings.budget < floor:
            raise ValueError(f"--budget {settings.budget} is below the smallest possible adapter ({floor} parameters: "
                             f"one row and one column per layer at rank {settings.rank}); raise it or lower --rank")
    steps = math.ceil(len(task.train) / settings.batch_size) * settings.epochs
    if {"adalora", "partial-adalora"} & set(methods) and steps < 2:
        raise ValueError(f"AdaLoRA's rank allocation needs at least 2 optimizer steps; this run has {steps} "
                         f"({len(task.train)} training examples, batch {settings.batch_size}, {settings.epochs} "
                         "epoch(s)); raise --epochs or lower --batch-size")
    # A search extended past the grid's ends (--lr-grid-extend) may reach these rates too.
    reach = extension_range(settings.lr_grid, settings.lr_grid_extend) if settings.lr_grid_extend else ()
    for seed in settings.seeds:
        for rate in [*(settings.lr_grid or [settings.learning_rate]), *reach]:
            TrainingConfig(
                learning_rate=rate, epochs=settings.epochs, weight_decay=settings.weight_decay,
                warmup_ratio=settings.warmup_ratio, max_grad_norm=settings.max_grad_norm,
                checkpoint_every=settings.checkpoint_every, seed=seed, output_dir=settings.out,
            )
    limit = getattr(getattr(base, "config", None), "max_position_embeddings", None)
    if settings.max_length is not None and isinstance(limit, int) and settings.max_length > limit:
        raise ValueError(f"--max-length {settings.max_length} exceeds the model's maximum of {limit} tokens "
                         f"(its max_position_embeddings); use at most {limit}")
    if task.kind == "causal-lm" and not (callable(getattr(base, "can_generate", None)) and base.can_generate()):
        raise ValueError(f"--task causal-lm needs a model that generates text; {settings.model} "
                         f"({type(base).__name__}) does not. Use a causal language model, or --task classification")
    task.batches(task.test.subset([0]), shuffle=False, seed=0)
    task.batches(task.validation.subset([0]), shuffle=False, seed=0)


def _check_saved_modules(base: torch.nn.Module, names: list[str]) -> None:
    """Every ``--modules-to-save`` entry names a module of ``base``."""
    modules = [n for n, _ in base.named_modules() if n]
    for name in names:
        if not any(matches(module, [name]) for module in modules):
            heads = [n for n in modules if n.split(".")[-1] in ("classifier", "score", "lm_head", "fc", "_fc", "head")]
            raise ValueError(f"--modules-to-save {name}: the model has no module named so; give the name (or last "
                             f"part) of the module to train in full{f', e.g. {heads[0]}' if heads else ''}")


def _check_ticket_fits(ticket: Ticket, targets: dict[str, torch.nn.Module], path: str) -> None:
    """The ``--ticket``'s layers are target layers of this model with the shapes it recorded."""
    for name, layer in ticket.layers.items():
        module = targets.get(name)
        if module is None:
            raise ValueError(f"--ticket {path} has a keep ratio for {name!r}, which is not a target layer of this "
                             f"model (targets: {', '.join(list(targets)[:3])} ...); derive the ticket for this model "
                             "and --target-modules")
        if tuple(layer.shape) != base_shape(module):
            raise ValueError(f"--ticket {path}: layer {name!r} is {tuple(layer.shape)} in the ticket but "
                             f"{base_shape(module)} in this model; the ticket was made for another model")


def say(settings: Settings, text: str) -> None:
    if settings.progress:
        print(text, flush=True)


def ticket_metric(task: Task, settings: Settings) -> str:
    if settings.metric:
        return settings.metric
    return "neg_loss" if task.kind == "causal-lm" else "accuracy"


def derive_ticket(task: Task, settings: Settings, *, seed: int, threshold: float | None = None,
                  saved: Path | None = None) -> Ticket:
    """The ticket of ``settings.ticket_method`` on ``settings.shots`` per class (seeded).

    ``saved``: where an earlier, interrupted run of the same command saved this ticket
    (``--resume``). Deriving is deterministic, so a saved ticket that is intact and was made
    the same way (method, threshold and its mode, metric, seed, model, shots, targets, the
    few-shot examples' fingerprint) is the same ticket; it is read instead of derived again, which saves the ticket's cost
    (about 13 minutes a seed for SmolLM2 on 2 cores). Anything else there is derived again.
    """
    if settings.ticket:
        return Ticket.load(settings.ticket)
    threshold = threshold or settings.threshold
    shots = task.shots(seed)
    metric = ticket_metric(task, settings)
    made_as = {"method": settings.ticket_method, "threshold": threshold, "threshold_mode": settings.threshold_mode,
               "metric": get_metric(metric).name, "model_name": settings.model, "seed": seed, "shots": settings.shots,
               "data_fingerprint": shots.fingerprint(), "target_modules": recorded_targets(settings.target_modules)}
    if saved is not None and (ticket := _saved_ticket(saved, made_as, settings)) is not None:
        return ticket
    model = task.new_model()
    batches = task.batches(shots, shuffle=False, seed=seed)
    return find_ticket(
        model, batches, target_modules=settings.target_modules, method=settings.ticket_method,
        threshold=threshold, threshold_mode=settings.threshold_mode,
        ratio=threshold if settings.ticket_method == "uniform" else None,
        metric=metric, seed=seed, progress=settings.progress,
        model_name=settings.model, data_fingerprint=made_as["data_fingerprint"], shots=settings.shots,
    )


def _saved_ticket(path: Path, made_as: dict[str, Any], settings: Settings) -> Ticket | None:
    """The ticket at ``path`` if it is intact and its provenance has every value of ``made_as``.

    What the provenance does not record (``--max-length``, the head, the split counts) cannot
    differ: ``--resume`` has already refused other settings or data (``check_resumed``), as it
    does for the finished rows it reuses.
    """
    if not path.is_file():
        return None
    try:
        ticket = Ticket.load(path)
    except (OSError, ValueError) as err:  # TicketFileError is a ValueError; so are odd documents it misses
        say(settings, f"[ticket] {path.name} cannot be reused ({err}); deriving it again")
        return None
    differing = sorted(key for key, value in made_as.items() if getattr(ticket.provenance, key) != value)
    if differing:
        say(settings, f"[ticket] {path.name} was made otherwise ({', '.join(differing)}); deriving it again")
        return None
    say(settings, f"[ticket] reusing {path.name} (seed {made_as['seed']}, threshold {made_as['threshold']:g})")
    return ticket


def train_method(task: Task, settings: Settings, *, method: str, seed: int, rank: int, ticket: Ticket | None,
                 out: Path, label: str, learning_rate: float, score_test: bool,
                 finished: dict[str, Any] | None = None, notes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one method with one seed at one learning rate; save its adapter; return its result row.

    Training scores the **validation** split after the last epoch (``validation_<metric>`` in
    the row), and after every epoch too with ``settings.validate_every_epoch`` (in ``history``).
    With ``score_test`` the trained model is then scored once on the test split (``<metric>``,
    ``test_examples`` and ``test_correct``: one 0/1 character per test example, for paired
    comparisons); without it the test split is not touched, as for the learning rates a grid
    search does not keep.

    Args:
        learning_rate: the rate in LoRA's units; the method trains at
            :func:`~partial_lora.methods.method_learning_rate` of it.
        finished: the row of this very run trained earlier by the same command (a grid run
            whose rate was kept): its model is restored from its final checkpoint and only
            scored on test.
        notes: fields added to the row as they are (how its learning rate was chosen).

    The row is also written to ``partial/<label>.json``; ``--resume`` reuses it (and scores it
    on test from its final checkpoint if it still needs that).
    """
    partial_file = out / "partial" / f"{label}.json"
    if finished is None and settings.resume and partial_file.is_file():
        finished = json.loads(partial_file.read_text())
    primary = task.primary_metric
    if finished is not None and (not score_test or finished.get(primary) is not None):
        say(settings, f"[{label}] already finished; reusing its result")
        return {**finished, **(notes or {})}
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
    checkpoints = out / "checkpoints" / label
    config = TrainingConfig(
        learning_rate=method_learning_rate(method, learning_rate), epochs=settings.epochs,
        weight_decay=settings.weight_decay, warmup_ratio=settings.warmup_ratio,
        max_grad_norm=settings.max_grad_norm, checkpoint_every=settings.checkpoint_every, seed=seed,
        output_dir=str(checkpoints), progress=settings.progress, eval_every_epoch=settings.validate_every_epoch,
    )
    if finished is None:
        say(settings, f"[{label}] training at lr {config.learning_rate:g}: {trainable_parameters(model):,} "
                      f"trainable parameters, {total_steps} steps")
    outcome = train(
        model, train_batches, config, eval_batches=(), evaluate=task.evaluator("validation"),
        # A run continued (or re-opened to be scored) goes on from its last whole checkpoint, or
        # starts over if it has none (a kill during its first checkpoint leaves none).
        resume="auto" if finished is not None or settings.resume else False,
        extra_loss=hooks.extra_loss, callbacks=hooks.callbacks,
    )
    adapter = out / "adapters" / label
    adapter_bytes = finished.get("adapter_bytes") if finished is not None and adapter.is_dir() else \
        save_method(model, method, adapter, metadata=_metadata(task, settings, method))
    row = {
        "method": method, "seed": seed, "rank": rank, "threshold": ticket.threshold if ticket else None,
        "uses_ticket": method in TICKET_METHODS,
        "learning_rate": config.learning_rate, "lr_base": learning_rate,
        **{f"validation_{metric}": outcome.metrics.get(f"eval_{metric}") for metric in task.metrics},
        "validation_examples": len(task.validation),
        "trainable_params": trainable_parameters(model),
        "optimizer_state_bytes": outcome.optimizer_state_bytes,
        "adapter_bytes": adapter_bytes,
        "train_seconds": outcome.train_seconds if finished is None else finished["train_seconds"],
        "peak_rss_bytes": outcome.peak_rss_bytes,
        "history": outcome.history,
        **(notes or {}),
    }
    if score_test:
        scores = task.score(model, "test")
        row.update(scores.metrics)
        row.update(test_examples=len(scores.correct), test_correct=correctness_text(scores.correct))
        say(settings, f"[{label}] test {primary} {100 * scores.metrics[primary]:.2f} %")
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
        "validation_per_class": settings.validation_per_class, "validation_fraction": settings.validation_fraction,
        "test_fraction": settings.test_fraction,
    }
