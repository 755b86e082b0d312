"""Every method of the comparison tables, built by name on a fresh base model.

``build_method(name, model, ...)`` returns ``(model, hooks)``: the model ready to train (only
the method's parameters trainable) and :class:`MethodHooks`, the ``extra_loss`` and
``callbacks`` the training loop must call for that method (AdaLoRA's rank allocation and
orthogonal regulariser). ``method_learning_rate`` gives each method's default learning rate,
``save_method`` saves the trained adapter in its natural format and returns its size. The
methods in :data:`INIT_BATCHES` (lora-eva) initialise from data: pass them ``init_batches``.

=================  ===========================================================================
name               what it is (and where)
=================  ===========================================================================
full               full fine-tuning: every parameter trainable
lora, adalora,     PEFT's LoRA, AdaLoRA, VeRA, DoRA, SHiRA with random masks, and LoRA with
vera, dora,        EVA initialisation (the last two at the Partial-LoRA's parameter count)
random-masking,    (:mod:`~partial_lora.methods.peft_methods`; 1x1 convolutions through
lora-eva           :mod:`~partial_lora.methods.pointwise`)
partial-lora,      this package's adapters at a ticket's keep ratios: random, top-scored,
targeted,          score-sampled or one common ratio (:mod:`~partial_lora.methods.ticket_methods`),
stochastic,        and Partial-AdaLoRA (:mod:`~partial_lora.methods.partial_adalora`,
uniform,           :mod:`~partial_lora.methods.rank_allocation`)
partial-adalora
=================  ===========================================================================

The package, one job a module: :mod:`~partial_lora.methods.registry` (names, options, hooks),
the builders above, :mod:`~partial_lora.methods.learning_rates` (the learning-rate policy) and
:mod:`~partial_lora.methods.saving` (files).

Example::

    model, hooks = build_method("partial-lora", model, r=8, alpha=16, target_modules=["query", "value"],
                                modules_to_save=["classifier"], keep_ratios=ticket.keep_ratios())
    train(model, batches, TrainingConfig(learning_rate=method_learning_rate("partial-lora", 2e-3)),
          extra_loss=hooks.extra_loss, callbacks=hooks.callbacks)
    size = save_method(model, "partial-lora", "out/adapter")
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from .learning_rates import LEARNING_RATE_FACTORS, method_learning_rate
from .peft_methods import (
    build_adalora,
    build_lora,
    build_lora_eva,
    build_random_masking,
    build_vera,
    matched_lora_rank,
    random_masking_rank,
)
from .registry import (
    INIT_BATCHES,
    METHODS,
    OPTIONS,
    PEFT_METHODS,
    SIZED_BY_TICKET,
    TICKET_METHODS,
    MethodHooks,
    MethodNotApplicable,
    MethodRequest,
    make_request,
)
from .saving import FULL_WEIGHTS_NAME, METADATA_NAME, save_method
from .ticket_methods import build_ticket_method, uniform_keep_ratio


def build_method(
    name: str,
    model: nn.Module,
    *,
    r: int = 8,
    alpha: float = 16,
    target_modules: list[str] | str | None = None,
    modules_to_save: list[str] | None = None,
    keep_ratios: Mapping[str, float] | None = None,
    ticket_scores: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    seed: int = 0,
    total_steps: int | None = None,
    budget: int | None = None,
    init_batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
    **kw: Any,
) -> tuple[nn.Module, MethodHooks]:
    """Make ``model`` ready to train with method ``name``.

    Args:
        name: one of :data:`METHODS`.
        model: a fresh base model (changed; PEFT methods return a ``PeftModel`` wrapping it).
        r: LoRA rank (AdaLoRA's and Partial-AdaLoRA's final average rank ``target_r``).
        alpha: LoRA scaling numerator.
        target_modules: name suffixes, one regular expression, or ``"all-linear"`` (default: the
            layers ``keep_ratios`` names).
        modules_to_save: modules trained in full (e.g. ``["classifier"]``).
        keep_ratios: the ticket's per-layer keep ratios (ticket methods; random-masking uses
            them to match the Partial-LoRA parameter count). Layer shapes are read from the model.
        ticket_scores: ``{module name: (row_scores, column_scores)}`` (targeted, stochastic).
        seed: seed of every random choice (row/column selection, initialisation, masks).
        total_steps: optimizer steps of the run (needed by adalora and partial-adalora).
        budget: optional total adapter-parameter budget. The ticket methods rescale the ticket's
            ratios by one factor to meet it (uniform then matches that total; Partial-AdaLoRA
            counts its initial rank and not its ``r`` singular values per layer); random-masking
            trains about that many entries, lora-eva takes the rank with about that many. Ignored
            by the other methods.
        init_batches: a few training batches (dicts as the model takes them, with ``labels``),
            read by the methods in :data:`INIT_BATCHES` (lora-eva: PEFT's EVA) to initialise
            their adapters; required there, ignored by the others.
        kw: per-method options (:data:`OPTIONS`): ``dropout``; ``keep_ratio`` (one ratio for every
            layer when there is no ticket); ``init_r``, ``tinit``, ``tfinal``, ``delta_t``, ``beta1``,
            ``beta2``, ``orth_reg_weight`` (adalora, partial-adalora); ``vera_r``, ``d_initial``
            (vera); ``masking_r`` (random-masking: entries trained per layer = ``masking_r * (m + n)``;
            by default the count nearest the Partial-LoRA at ``keep_ratios``, or at keep ratio 0.25
            without a ticket); ``eva_r`` (lora-eva's average rank, by default the LoRA rank with the
            count nearest that Partial-LoRA's), ``rho``, ``tau``, ``whiten`` (PEFT's ``EvaConfig``).

    Returns:
        ``(model, hooks)``.
    """
    request = make_request(
        name, r=r, alpha=alpha, target_modules=target_modules, modules_to_save=modules_to_save,
        keep_ratios=keep_ratios, ticket_scores=ticket_scores, seed=seed, total_steps=total_steps,
        budget=budget, options=kw, init_batches=init_batches,
    )
    return BUILDERS[name](model, request)


def build_full(model: nn.Module, request: MethodRequest) -> tuple[nn.Module, MethodHooks]:
    """Full fine-tuning: every parameter trainable, no hooks."""
    model.requires_grad_(True)
    return model, MethodHooks()


# One builder per method name: builder(model, request) -> (model, hooks).
BUILDERS: dict[str, Callable[[nn.Module, MethodRequest], tuple[nn.Module, MethodHooks]]] = {
    "full": build_full,
    "lora": build_lora,
    "dora": build_lora,
    "adalora": build_adalora,
    "vera": build_vera,
    "random-masking": build_random_masking,
    "lora-eva": build_lora_eva,
    **{name: build_ticket_method for name in TICKET_METHODS},
}

__all__ = [
    "BUILDERS",
    "FULL_WEIGHTS_NAME",
    "INIT_BATCHES",
    "LEARNING_RATE_FACTORS",
    "METADATA_NAME",
    "METHODS",
    "OPTIONS",
    "PEFT_METHODS",
    "SIZED_BY_TICKET",
    "TICKET_METHODS",
    "MethodHooks",
    "MethodNotApplicable",
    "MethodRequest",
    "build_method",
    "matched_lora_rank",
    "method_learning_rate",
    "random_masking_rank",
    "save_method",
    "uniform_keep_ratio",
]
