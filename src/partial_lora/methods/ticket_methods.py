"""The methods that read a ticket: this package's adapters at the ticket's keep ratios.

=================  ===========================================================================
name               what it is
=================  ===========================================================================
partial-lora       Partial-LoRA, random rows/columns at the ticket's ratios
targeted           top-scored rows/columns at the ticket's ratios (needs ``ticket_scores``)
stochastic         rows/columns sampled by score at the ticket's ratios (needs ``ticket_scores``)
uniform            random rows/columns, one ratio for every layer with the ticket's total
partial-adalora    Partial-AdaLoRA (:mod:`partial_lora.methods.partial_adalora`) at the ticket's ratios
=================  ===========================================================================

All five are put into the model by :func:`partial_lora.surgery.apply` (Partial-AdaLoRA with its
own layer class); Partial-AdaLoRA adds its rank allocator and orthogonal regulariser as hooks.
"""

from __future__ import annotations

from typing import Mapping

from torch import nn

from ..budget import adapter_parameters, ratios_for_budget
from ..config import PartialLoraConfig
from ..layer import base_shape
from ..surgery import apply
from .partial_adalora import apply_partial_adalora
from .peft_methods import adalora_schedule
from .rank_allocation import training_hooks
from .registry import MethodHooks, MethodRequest

SELECTION_OF_METHOD = {"targeted": "targeted", "stochastic": "stochastic"}  # the others choose at random


def uniform_keep_ratio(ratios: Mapping[str, float], shapes: Mapping[str, tuple[int, int]], r: int) -> float:
    """The one keep ratio whose adapters total (within rounding, never above) what ``ratios`` total.

    The total of per-layer ratios ``rho_l`` is ``sum_l r * (ceil(rho_l m_l) + ceil(rho_l n_l))``;
    the uniform ratio is close to the parameter-weighted mean ``sum rho_l (m_l + n_l) / sum (m_l + n_l)``.
    """
    ranks = {name: r for name in ratios}
    total = sum(adapter_parameters(ratios[name], shapes[name], r) for name in ratios)
    common = ratios_for_budget({name: 1.0 for name in ratios}, shapes, ranks, total)
    return next(iter(common.values()))


def build_ticket_method(model: nn.Module, request: MethodRequest) -> tuple[nn.Module, MethodHooks]:
    """Partial-LoRA, targeted, stochastic, uniform or Partial-AdaLoRA, by ``request.name``.

    Per-layer keep ratios: the ticket's, rescaled to ``request.budget`` if given (counting
    Partial-AdaLoRA's initial rank), then made one common ratio for ``uniform``.
    """
    name, options = request.name, request.options
    targets = request.targets(model)
    shapes = {n: base_shape(m) for n, m in targets.items()}
    if name == "uniform" and not request.keep_ratios:
        raise ValueError("method 'uniform' needs the ticket's keep_ratios, whose total parameter count it matches")
    ratios = request.keep_ratios_by_target(targets)
    schedule = adalora_schedule(request) if name == "partial-adalora" else None
    rank = schedule["init_r"] if schedule else request.r
    if request.budget is not None:
        ratios = ratios_for_budget(ratios, shapes, {n: rank for n in ratios}, request.budget)
    if name == "uniform":
        common = uniform_keep_ratio(ratios, shapes, rank)
        ratios = {n: common for n in ratios}
    selection = SELECTION_OF_METHOD.get(name, "random")
    if selection != "random" and not request.ticket_scores:
        raise ValueError(f"method {name!r} needs ticket_scores ({{module name: (row_scores, column_scores)}}, "
                         "a ticket's .scores); the ticket has none")
    scores = request.ticket_scores if selection != "random" else None
    config = PartialLoraConfig(
        r=rank, alpha=request.alpha, dropout=options["dropout"], target_modules=list(targets),
        modules_to_save=request.modules_to_save, keep_ratios=ratios, selection=selection, seed=request.seed,
    )
    if schedule is None:
        return apply(model, config, scores=scores), MethodHooks()
    apply_partial_adalora(model, config, scores=scores)
    extra_loss, callbacks = training_hooks(
        model, target_r=request.r, total_steps=request.total_steps, orth_reg_weight=options["orth_reg_weight"],
        tinit=schedule["tinit"], tfinal=schedule["tfinal"], delta_t=options["delta_t"],
        beta1=options["beta1"], beta2=options["beta2"],
    )
    return model, MethodHooks(extra_loss=extra_loss, callbacks=callbacks)
