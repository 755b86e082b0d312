"""What a method is: its name, the options it takes, the request its builder gets, the hooks it returns.

:data:`METHODS` is the one list of method names (the command line shows and checks these, in
this order). Each method takes the options in :data:`OPTIONS` (with their defaults;
``None`` means derived by the builder). A method in :data:`INIT_BATCHES` initialises itself
from a few training batches, which the caller passes to ``build_method`` as ``init_batches``.
:func:`make_request` checks a call of ``build_method`` and returns the :class:`MethodRequest`
a builder reads; a builder returns the model and its :class:`MethodHooks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from ..checks import is_positive_int
from ..config import check_keep_ratio
from ..naming import pattern_key, pattern_value
from ..surgery import find_target_modules

PEFT_METHODS = ("lora", "adalora", "vera", "dora", "random-masking", "lora-eva")
TICKET_METHODS = ("partial-lora", "partial-adalora", "targeted", "stochastic", "uniform")
METHODS = ("full", *PEFT_METHODS, *TICKET_METHODS)

ADALORA_ORTH_WEIGHT = 0.1  # AdaLoRA's orthogonal-regulariser weight (its paper uses 0.1-0.5)
VERA_RANK = 256  # VeRA's shared random projections are much wider than a LoRA rank
EVA_RHO = 2.0  # PEFT's EVA default: a layer may get up to rho times the average rank

# Baselines sized to the Partial-LoRA of the ticket (its parameter count), when given one.
SIZED_BY_TICKET = ("random-masking", "lora-eva")
# Methods initialised from data: how many training batches the caller passes as init_batches.
INIT_BATCHES = {"lora-eva": 8}

_ADALORA_OPTIONS = {"init_r": None, "tinit": None, "tfinal": None, "delta_t": 1, "beta1": 0.85, "beta2": 0.85,
                    "orth_reg_weight": ADALORA_ORTH_WEIGHT}

# Options each method accepts through build_method's **kw, with their defaults (None: derived).
OPTIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "lora": {"dropout": 0.0},
    "dora": {"dropout": 0.0},
    "adalora": {"dropout": 0.0, **_ADALORA_OPTIONS},
    "vera": {"dropout": 0.0, "vera_r": VERA_RANK, "d_initial": 0.1},
    "random-masking": {"masking_r": None, "keep_ratio": None},
    "lora-eva": {"dropout": 0.0, "eva_r": None, "keep_ratio": None, "rho": EVA_RHO, "tau": 0.99, "whiten": False},
    "partial-lora": {"dropout": 0.0, "keep_ratio": None},
    "targeted": {"dropout": 0.0, "keep_ratio": None},
    "stochastic": {"dropout": 0.0, "keep_ratio": None},
    "uniform": {"dropout": 0.0},
    "partial-adalora": {"dropout": 0.0, "keep_ratio": None, **_ADALORA_OPTIONS},
}


class MethodNotApplicable(ValueError):
    """The method cannot adapt this model's target layers (e.g. PEFT's VeRA and convolutions).

    ``compare`` records the reason and goes on with the other methods.
    """


@dataclass
class MethodHooks:
    """What the training loop must call for a method.

    Attributes:
        extra_loss: ``extra_loss(model, step) -> scalar tensor`` added to the loss, or None.
        callbacks: objects with ``on_step_end(model, step)``, called after ``optimizer.step()``
            and before ``optimizer.zero_grad()``.
    """

    extra_loss: Callable[[nn.Module, int], torch.Tensor] | None = None
    callbacks: list[Any] = field(default_factory=list)


@dataclass
class MethodRequest:
    """One checked call of ``build_method``: what a builder reads (see its arguments there).

    ``options`` holds every option of the method, the caller's values over the defaults.
    """

    name: str
    r: int
    alpha: float
    target_modules: list[str] | str | None
    modules_to_save: list[str]
    keep_ratios: Mapping[str, float] | None
    ticket_scores: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None
    seed: int
    total_steps: int | None
    budget: int | None
    options: dict[str, Any]
    init_batches: list[Mapping[str, torch.Tensor]] | None = None

    def targets(self, model: nn.Module) -> dict[str, nn.Module]:
        """The modules to adapt, by full name: ``target_modules``, else the layers the ticket names."""
        if self.target_modules is None:
            if not self.keep_ratios:
                raise ValueError(f"method {self.name!r} needs target_modules (name suffixes, a regex or 'all-linear')")
            patterns: list[str] | str = list(self.keep_ratios)
        else:
            patterns = self.target_modules
        return find_target_modules(model, patterns, modules_to_save=self.modules_to_save)

    def keep_ratios_by_target(
        self, targets: Mapping[str, nn.Module], *, default: float | None = None,
    ) -> dict[str, float]:
        """Per-target keep ratios by full name: the ticket's (by name, suffix or regex) or one ratio.

        The ``keep_ratio`` option fills layers the ticket lacks, or every layer without a ticket;
        without either, ``default`` does (None: an error saying what to pass).
        """
        keep_ratio = self.options.get("keep_ratio")
        if self.keep_ratios:
            missing = [name for name in targets if pattern_key(self.keep_ratios, name) is None]
            if missing and keep_ratio is None:
                raise ValueError(
                    f"the ticket has no keep ratio for {missing[:3]}{' ...' if len(missing) > 3 else ''}; derive the "
                    "ticket with the same target_modules, or pass keep_ratio= for the layers it lacks"
                )
            fallback = keep_ratio or 1.0
            return {name: check_keep_ratio(f"keep_ratios[{name!r}]", pattern_value(self.keep_ratios, name, fallback))
                    for name in targets}
        if keep_ratio is None:
            keep_ratio = default
        if keep_ratio is None:
            raise ValueError(
                f"method {self.name!r} needs keep_ratios (a ticket's: ticket.keep_ratios()) or one keep_ratio="
            )
        return {name: check_keep_ratio("keep_ratio", keep_ratio) for name in targets}


def check_method(name: str) -> None:
    """Raise ``ValueError`` naming the known methods unless ``name`` is one of :data:`METHODS`."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")


def make_request(
    name: str,
    *,
    r: int,
    alpha: float,
    target_modules: list[str] | str | None,
    modules_to_save: list[str] | None,
    keep_ratios: Mapping[str, float] | None,
    ticket_scores: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None,
    seed: int,
    total_steps: int | None,
    budget: int | None,
    options: Mapping[str, Any],
    init_batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
) -> MethodRequest:
    """Check the method name, its options, the rank, (for the AdaLoRA methods) ``total_steps`` and
    (for the methods in :data:`INIT_BATCHES`) ``init_batches``, which become a list."""
    check_method(name)
    allowed = OPTIONS[name]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"method {name!r} does not take option(s) {unknown}; it takes {sorted(allowed) or 'none'}"
        )
    if not is_positive_int(r):
        raise ValueError(f"r={r!r} is invalid: the rank must be a positive integer")
    if name in ("adalora", "partial-adalora") and (not isinstance(total_steps, int) or total_steps < 1):
        raise ValueError(f"{name} needs total_steps (the optimizer steps of the run) for its rank schedule")
    batches = None
    if name in INIT_BATCHES:
        batches = list(init_batches) if init_batches is not None else []
        if not batches:
            raise ValueError(f"{name} initialises its adapters from data: pass init_batches (a few training batches, "
                             f"e.g. the first {INIT_BATCHES[name]} of the training split)")
    return MethodRequest(
        name=name, r=r, alpha=float(alpha), target_modules=target_modules,
        modules_to_save=list(modules_to_save or []), keep_ratios=keep_ratios, ticket_scores=ticket_scores,
        seed=seed, total_steps=total_steps, budget=budget, options={**allowed, **options}, init_batches=batches,
    )
