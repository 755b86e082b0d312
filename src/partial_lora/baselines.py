"""Every method of the comparison tables, built by name on a fresh base model.

``build_method(name, model, ...)`` returns ``(model, hooks)``: the model ready to train (only
the method's parameters trainable) and :class:`MethodHooks`, the ``extra_loss`` and
``callbacks`` the training loop must call for that method (AdaLoRA's rank allocation and
orthogonal regulariser). ``method_learning_rate`` gives each method's default learning rate,
``save_method`` saves the trained adapter in its natural format and returns its size.

=================  ===========================================================================
name               what it is (and whose code)
=================  ===========================================================================
full               full fine-tuning: every parameter trainable
lora               LoRA, ``peft.LoraConfig``
dora               DoRA, ``peft.LoraConfig(use_dora=True)``
adalora            AdaLoRA, ``peft.AdaLoraConfig``; ``init_r = ceil(1.5 r)``, ``target_r = r``
vera               VeRA, ``peft.VeraConfig`` (its own rank ``vera_r``, default 256)
random-masking     Random Masking (Xu & Zhang 2024): a fixed random set of ``W``'s entries is
                   trained; ``peft.ShiraConfig`` with a random mask drawn per layer
=================  ===========================================================================

PEFT's VeRA and SHiRA adapt only ``nn.Linear``; 1x1 convolution targets (EfficientNet's
``_expand_conv`` / ``_project_conv``) are first wrapped as the linear maps they are
(:mod:`partial_lora.pointwise`), and the saved ``training_metadata.json`` lists them under
``pointwise_convs_as_linear`` for reloading. Other convolutions raise :class:`MethodNotApplicable`.

=================  ===========================================================================
name               what it is (and whose code)
=================  ===========================================================================
partial-lora       Partial-LoRA, random rows/columns at the ticket's ratios (this package)
targeted           top-scored rows/columns at the ticket's ratios (needs ``ticket_scores``)
stochastic         rows/columns sampled by score at the ticket's ratios (needs ``ticket_scores``)
uniform            random rows/columns, one ratio for every layer with the ticket's total
partial-adalora    Partial-AdaLoRA (:mod:`partial_lora.adalora`) at the ticket's ratios
=================  ===========================================================================

Example::

    model, hooks = build_method("partial-lora", model, r=8, alpha=16, target_modules=["query", "value"],
                                modules_to_save=["classifier"], keep_ratios=ticket.keep_ratios())
    train(model, batches, TrainingConfig(learning_rate=method_learning_rate("partial-lora", 2e-3)),
          extra_loss=hooks.extra_loss, callbacks=hooks.callbacks)
    size = save_method(model, "partial-lora", "out/adapter")
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from . import adalora
from .budget import adapter_parameters, ratios_for_budget
from .config import PartialLoraConfig
from .naming import pattern_key
from .adapter_files import WEIGHTS_NAME
from .adapter_files import save as save_partial_lora
from .files import atomic_write_bytes
from .layer import base_shape
from .pointwise import PointwiseConvAsLinear, is_pointwise_conv, wrap_pointwise_convs
from .selection import layer_generator
from .surgery import adapter_layers, apply, find_target_modules

PEFT_METHODS = ("lora", "dora", "adalora", "vera", "random-masking")
TICKET_METHODS = ("partial-lora", "targeted", "stochastic", "uniform", "partial-adalora")
METHODS = ("full", *PEFT_METHODS, *TICKET_METHODS)

# Learning-rate multipliers relative to the LoRA learning rate (see method_learning_rate).
LEARNING_RATE_FACTORS = {
    "full": 0.05,
    "lora": 1.0, "dora": 1.0, "adalora": 1.0,
    "vera": 10.0,
    "random-masking": 10.0,
    "partial-lora": 1.0, "targeted": 1.0, "stochastic": 1.0, "uniform": 1.0, "partial-adalora": 1.0,
}

# Default AdaLoRA schedule, as fractions of the run (the AdaLoRA paper's GLUE runs warm up for
# roughly a tenth of the steps and train the final ranks for roughly the last half).
ADALORA_TINIT, ADALORA_TFINAL, ADALORA_ORTH_WEIGHT = 0.1, 0.5, 0.1
VERA_RANK = 256
RANDOM_MASKING_KEEP_RATIO = 0.25  # parameter count of a Partial-LoRA at keep ratio 0.25

METADATA_NAME = "training_metadata.json"
FULL_WEIGHTS_NAME = "model.safetensors"


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


# Options each method accepts through **kw, with their defaults (None: derived, see below).
_OPTIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "lora": {"dropout": 0.0},
    "dora": {"dropout": 0.0},
    "adalora": {"dropout": 0.0, "init_r": None, "tinit": None, "tfinal": None, "delta_t": 1,
                "beta1": 0.85, "beta2": 0.85, "orth_reg_weight": ADALORA_ORTH_WEIGHT},
    "vera": {"dropout": 0.0, "vera_r": VERA_RANK, "d_initial": 0.1},
    "random-masking": {"masking_r": None, "keep_ratio": None},
    "partial-lora": {"dropout": 0.0, "keep_ratio": None},
    "targeted": {"dropout": 0.0, "keep_ratio": None},
    "stochastic": {"dropout": 0.0, "keep_ratio": None},
    "uniform": {"dropout": 0.0},
    "partial-adalora": {"dropout": 0.0, "keep_ratio": None, "init_r": None, "tinit": None, "tfinal": None,
                        "delta_t": 1, "beta1": 0.85, "beta2": 0.85, "orth_reg_weight": ADALORA_ORTH_WEIGHT},
}


@dataclass
class _Request:
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
    layer_shapes: Mapping[str, tuple[int, int]] | None = None,
    **kw: Any,
) -> tuple[nn.Module, MethodHooks]:
    """Make ``model`` ready to train with method ``name``.

    Args:
        name: one of :data:`METHODS`.
        model: a fresh base model (changed; PEFT methods return a ``PeftModel`` wrapping it).
        r: LoRA rank (AdaLoRA's and Partial-AdaLoRA's final average rank ``target_r``).
        alpha: LoRA scaling numerator.
        target_modules: name suffixes, one regular expression, or ``"all-linear"``.
        modules_to_save: modules trained in full (e.g. ``["classifier"]``).
        keep_ratios: the ticket's per-layer keep ratios (ticket methods; random-masking uses
            them to match the Partial-LoRA parameter count).
        ticket_scores: ``{module name: (row_scores, column_scores)}`` (targeted, stochastic).
        seed: seed of every random choice (row/column selection, initialisation, masks).
        total_steps: optimizer steps of the run (needed by adalora and partial-adalora).
        budget: optional total adapter-parameter budget. The ticket methods rescale the ticket's
            ratios by one factor to meet it (uniform then matches that total; Partial-AdaLoRA
            counts its initial rank and not its ``r`` singular values per layer); random-masking
            trains about that many entries. Ignored by the other methods.
        layer_shapes: accepted for callers that hold a ticket; shapes are read from the model.
        kw: per-method options: ``dropout``; ``keep_ratio`` (one ratio for every layer when there
            is no ticket); ``init_r``, ``tinit``, ``tfinal``, ``delta_t``, ``beta1``, ``beta2``,
            ``orth_reg_weight`` (adalora, partial-adalora); ``vera_r``, ``d_initial`` (vera);
            ``masking_r`` (random-masking: entries trained per layer = ``masking_r * (m + n)``; by
            default the count nearest the Partial-LoRA at ``keep_ratios``, or at keep ratio 0.25
            without a ticket).

    Returns:
        ``(model, hooks)``.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    allowed = _OPTIONS[name]
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise TypeError(
            f"method {name!r} does not take option(s) {unknown}; it takes {sorted(allowed) or 'none'}"
        )
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r={r!r} is invalid: the rank must be a positive integer")
    if name in ("adalora", "partial-adalora") and (not isinstance(total_steps, int) or total_steps < 1):
        raise ValueError(f"{name} needs total_steps (the optimizer steps of the run) for its rank schedule")
    request = _Request(
        name=name, r=r, alpha=float(alpha), target_modules=target_modules,
        modules_to_save=list(modules_to_save or []), keep_ratios=keep_ratios, ticket_scores=ticket_scores,
        seed=seed, total_steps=total_steps, budget=budget, options={**allowed, **kw},
    )
    return _BUILDERS[name](model, request)


# -- full fine-tuning ----------------------------------------------------------------------
def _build_full(model: nn.Module, request: _Request) -> tuple[nn.Module, MethodHooks]:
    model.requires_grad_(True)
    return model, MethodHooks()


# -- PEFT methods --------------------------------------------------------------------------
def _peft_model(model: nn.Module, peft_config: Any, seed: int) -> nn.Module:
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, peft_config)


def _peft_common(request: _Request) -> dict[str, Any]:
    return {"target_modules": request.target_modules, "modules_to_save": request.modules_to_save or None}


def _build_lora(model: nn.Module, request: _Request) -> tuple[nn.Module, MethodHooks]:
    from peft import LoraConfig

    config = LoraConfig(r=request.r, lora_alpha=request.alpha, lora_dropout=request.options["dropout"],
                        use_dora=request.name == "dora", **_peft_common(request))
    return _peft_model(model, config, request.seed), MethodHooks()


class PeftAdaLoraCallback:
    """Runs PEFT's ``update_and_allocate(step)`` after each optimizer step (before ``zero_grad``)."""

    def __init__(self, peft_model: nn.Module) -> None:
        self.peft_model = peft_model

    def on_step_end(self, model: nn.Module, step: int) -> None:
        self.peft_model.base_model.update_and_allocate(step)


def _adalora_schedule(request: _Request) -> dict[str, int]:
    total, options = request.total_steps, request.options
    tinit = options["tinit"] if options["tinit"] is not None else int(ADALORA_TINIT * total)
    tfinal = options["tfinal"] if options["tfinal"] is not None else int(ADALORA_TFINAL * total)
    if total < 2:
        raise ValueError(f"{request.name} needs at least 2 optimizer steps (one to score the ranks before it "
                         f"fixes them), got total_steps={total}; train longer or use more examples")
    # Very short runs: no warm-up, no final phase. PEFT fixes the ranks at step total - tfinal
    # from importance scores gathered on the steps before it, so at least one must come first.
    if tinit >= total - tfinal or total - tfinal < 2:
        tinit, tfinal = 0, 0
    init_r = options["init_r"] if options["init_r"] is not None else math.ceil(1.5 * request.r)
    if init_r < request.r:
        raise ValueError(f"init_r={init_r} is below the final rank r={request.r}; AdaLoRA only removes rank")
    return {"init_r": init_r, "tinit": tinit, "tfinal": tfinal}


def _build_adalora(model: nn.Module, request: _Request) -> tuple[nn.Module, MethodHooks]:
    from peft import AdaLoraConfig

    schedule, options = _adalora_schedule(request), request.options
    config = AdaLoraConfig(
        init_r=schedule["init_r"], target_r=request.r, lora_alpha=request.alpha, lora_dropout=options["dropout"],
        total_step=request.total_steps, tinit=schedule["tinit"], tfinal=schedule["tfinal"],
        deltaT=options["delta_t"], beta1=options["beta1"], beta2=options["beta2"],
        orth_reg_weight=options["orth_reg_weight"], **_peft_common(request),
    )
    peft_model = _peft_model(model, config, request.seed)
    # PEFT adds the orthogonal regulariser to outputs.loss itself (when labels are passed).
    return peft_model, MethodHooks(callbacks=[PeftAdaLoraCallback(peft_model)])


WRAPPED_CONVS_ATTRIBUTE = "partial_lora_pointwise_convs"


def _as_linear(model: nn.Module, targets: Mapping[str, nn.Module]) -> dict[str, nn.Linear]:
    """``targets`` (checked by :func:`_check_linear_capable`) as ``nn.Linear`` modules, by the name to give PEFT.

    1x1 convolutions are wrapped (:func:`partial_lora.pointwise.wrap_pointwise_convs`; the
    model records their names under ``partial_lora_pointwise_convs``).
    """
    convs = [name for name, module in targets.items() if not isinstance(module, nn.Linear)]
    names = wrap_pointwise_convs(model, targets)
    if convs:
        setattr(model, WRAPPED_CONVS_ATTRIBUTE, convs)
    modules = dict(model.named_modules())
    return {name: modules[name] for name in names}


def _check_linear_capable(targets: Mapping[str, nn.Module], request: _Request, implementation: str) -> None:
    others = [name for name, module in targets.items()
              if not isinstance(module, (nn.Linear, PointwiseConvAsLinear)) and not is_pointwise_conv(module)]
    if others:
        raise MethodNotApplicable(
            f"{request.name}: {implementation} adapts only nn.Linear layers (and, here, 1x1 convolutions), and "
            f"{len(others)} of the {len(targets)} targets are neither ({', '.join(others[:2])}"
            f"{' ...' if len(others) > 2 else ''}); give nn.Linear or 1x1-convolution targets"
        )


def _build_vera(model: nn.Module, request: _Request) -> tuple[nn.Module, MethodHooks]:
    from peft import VeraConfig

    targets = _targets(model, request)
    _check_linear_capable(targets, request, "PEFT's VeRA")
    targets = _as_linear(model, targets)
    options = request.options
    config = VeraConfig(r=options["vera_r"], projection_prng_key=request.seed, vera_dropout=options["dropout"],
                        d_initial=options["d_initial"], save_projection=True,
                        **{**_peft_common(request), "target_modules": list(targets)})
    return _peft_model(model, config, request.seed), MethodHooks()


def _build_random_masking(model: nn.Module, request: _Request) -> tuple[nn.Module, MethodHooks]:
    try:
        from peft import ShiraConfig
    except ImportError:  # pragma: no cover - depends on the installed PEFT
        raise ImportError(
            "random-masking uses PEFT's SHiRA with a random mask; install a PEFT that has ShiraConfig"
        ) from None
    original = _targets(model, request)  # the ticket names these (a wrapped conv gains ".linear")
    _check_linear_capable(original, request, "PEFT's SHiRA (random masks)")
    shapes = {name: base_shape(module) for name, module in original.items()}
    masking_r = request.options["masking_r"]
    if masking_r is None and request.budget is not None:
        masking_r = max(1, round(request.budget / sum(m + n for m, n in shapes.values())))
    elif masking_r is None:
        masking_r = random_masking_rank(_resolved_ratios(request, original), shapes, request.r)
    for name, (m, n) in shapes.items():
        if masking_r * (m + n) > m * n:
            raise ValueError(
                f"masking_r={masking_r} would train {masking_r * (m + n)} entries of {name} ({m} x {n}), more than it "
                "has; lower masking_r"
            )
    targets = _as_linear(model, original)  # the model changes from here
    config = ShiraConfig(r=masking_r, mask_type="random", random_seed=request.seed,
                         **{**_peft_common(request), "target_modules": list(targets)})
    config.mask_fn = _per_layer_random_mask(
        {id(module): name for name, module in zip(original, targets.values())}, request.seed)
    return _peft_model(model, config, request.seed), MethodHooks()


def random_masking_rank(ratios: Mapping[str, float], shapes: Mapping[str, tuple[int, int]], r: int) -> int:
    """SHiRA's ``r`` (entries per layer ``= r * (m + n)``) closest to a Partial-LoRA's parameter count.

    ``ratios`` are per-layer keep ratios, ``r`` the Partial-LoRA rank; at least 1.
    """
    partial = sum(adapter_parameters(ratios[name], shapes[name], r) for name in shapes)
    return max(1, round(partial / sum(m + n for m, n in shapes.values())))


def _per_layer_random_mask(names: Mapping[int, str], seed: int) -> Callable[..., torch.Tensor]:
    """A SHiRA mask function drawing each layer's ``r * (m + n)`` entries from its own seeded stream.

    (PEFT's ``random_mask`` reseeds for every layer, so same-shaped layers would share one
    pattern.) SHiRA saves the indices with the weights, so reloading needs no mask function.
    """

    def mask_fn(base_layer: nn.Module, r: int, **kwargs: Any) -> torch.Tensor:
        out_features, in_features = base_layer.weight.shape
        count = r * (out_features + in_features)
        generator = layer_generator(seed, names[id(base_layer)], "random-masking")
        chosen = torch.randperm(out_features * in_features, generator=generator)[:count]
        mask = torch.zeros(out_features * in_features, dtype=base_layer.weight.dtype)
        mask[chosen] = 1
        return mask.view(out_features, in_features).to(base_layer.weight.device)

    return mask_fn


# -- this package's methods ----------------------------------------------------------------
def _targets(model: nn.Module, request: _Request) -> dict[str, nn.Module]:
    if request.target_modules is None:
        if not request.keep_ratios:
            raise ValueError(f"method {request.name!r} needs target_modules (name suffixes, a regex or 'all-linear')")
        patterns: list[str] | str = list(request.keep_ratios)
    else:
        patterns = request.target_modules
    return find_target_modules(model, patterns, modules_to_save=request.modules_to_save)


def _resolved_ratios(request: _Request, targets: Mapping[str, nn.Module]) -> dict[str, float]:
    """Per-target keep ratios by full name: the ticket's (by name, suffix or regex) or one ratio."""
    keep_ratio = request.options.get("keep_ratio")
    if request.keep_ratios:
        missing = [n for n in targets if pattern_key(request.keep_ratios, n) is None]
        if missing and keep_ratio is None:
            raise ValueError(
                f"the ticket has no keep ratio for {missing[:3]}{' ...' if len(missing) > 3 else ''}; derive the "
                "ticket with the same target_modules, or pass keep_ratio= for the layers it lacks"
            )
        lookup = PartialLoraConfig(keep_ratios=dict(request.keep_ratios), keep_ratio=keep_ratio or 1.0)
        return {name: lookup.keep_ratio_for(name) for name in targets}
    if keep_ratio is None:
        if request.name == "random-masking":
            keep_ratio = RANDOM_MASKING_KEEP_RATIO
        else:
            raise ValueError(
                f"method {request.name!r} needs keep_ratios (a ticket's: ticket.keep_ratios()) or one keep_ratio="
            )
    return {name: float(keep_ratio) for name in targets}


def uniform_keep_ratio(ratios: Mapping[str, float], shapes: Mapping[str, tuple[int, int]], r: int) -> float:
    """The one keep ratio whose adapters total (within rounding, never above) what ``ratios`` total.

    The total of per-layer ratios ``rho_l`` is ``sum_l r * (ceil(rho_l m_l) + ceil(rho_l n_l))``;
    the uniform ratio is close to the parameter-weighted mean ``sum rho_l (m_l + n_l) / sum (m_l + n_l)``.
    """
    ranks = {name: r for name in ratios}
    total = sum(adapter_parameters(ratios[name], shapes[name], r) for name in ratios)
    common = ratios_for_budget({name: 1.0 for name in ratios}, shapes, ranks, total)
    return next(iter(common.values()))


def _build_partial(model: nn.Module, request: _Request) -> tuple[nn.Module, MethodHooks]:
    name, options = request.name, request.options
    targets = _targets(model, request)
    shapes = {n: base_shape(m) for n, m in targets.items()}
    ratios = _resolved_ratios(request, targets) if name != "uniform" else _uniform_source(request, targets)
    rank = request.r
    if name == "partial-adalora":
        schedule = _adalora_schedule(request)
        rank = schedule["init_r"]
    if request.budget is not None:
        ratios = ratios_for_budget(ratios, shapes, {n: rank for n in ratios}, request.budget)
    if name == "uniform":
        common = uniform_keep_ratio(ratios, shapes, rank)
        ratios = {n: common for n in ratios}
    selection = {"targeted": "targeted", "stochastic": "stochastic"}.get(name, "random")
    scores = None
    if selection != "random":
        if not request.ticket_scores:
            raise ValueError(f"method {name!r} needs ticket_scores ({{module name: (row_scores, column_scores)}}, "
                             "a ticket's .scores); the ticket has none")
        scores = request.ticket_scores
    config = PartialLoraConfig(
        r=rank, alpha=request.alpha, dropout=options["dropout"], target_modules=list(targets),
        modules_to_save=request.modules_to_save, keep_ratios=ratios, selection=selection, seed=request.seed,
    )
    if name != "partial-adalora":
        return apply(model, config, scores=scores), MethodHooks()
    adalora.apply_partial_adalora(model, config, scores=scores)
    extra_loss, callbacks = adalora.training_hooks(
        model, target_r=request.r, total_steps=request.total_steps, orth_reg_weight=options["orth_reg_weight"],
        tinit=schedule["tinit"], tfinal=schedule["tfinal"], delta_t=options["delta_t"],
        beta1=options["beta1"], beta2=options["beta2"],
    )
    return model, MethodHooks(extra_loss=extra_loss, callbacks=callbacks)


def _uniform_source(request: _Request, targets: Mapping[str, nn.Module]) -> dict[str, float]:
    if not request.keep_ratios:
        raise ValueError("method 'uniform' needs the ticket's keep_ratios, whose total parameter count it matches")
    return _resolved_ratios(request, targets)


_BUILDERS: dict[str, Callable[[nn.Module, _Request], tuple[nn.Module, MethodHooks]]] = {
    "full": _build_full,
    "lora": _build_lora,
    "dora": _build_lora,
    "adalora": _build_adalora,
    "vera": _build_vera,
    "random-masking": _build_random_masking,
    **{name: _build_partial for name in TICKET_METHODS},
}


# -- learning rates ------------------------------------------------------------------------
def method_learning_rate(name: str, base_lr: float) -> float:
    """A sensible default learning rate for ``name``, given the one used for LoRA.

    * LoRA, DoRA, AdaLoRA and every Partial-LoRA variant: ``base_lr`` (the Partial-LoRA
      adapter tensors then train at ``base_lr`` times :func:`sparse_learning_rate_scale`,
      through ``TrainingConfig.adapter_lr_scale``; a new head stays at ``base_lr``).
    * VeRA: ``10 x`` (it trains only scaling vectors; its paper uses rates about ten times LoRA's).
    * random-masking: ``10 x`` (Xu & Zhang: the sparser the trained set, the larger the
      learning rate it needs; at our densities, near a Partial-LoRA's count, ten times LoRA's).
    * full: ``0.05 x`` (e.g. 1e-4 against LoRA's 2e-3; full fine-tuning diverges at LoRA's rates).
    """
    if name not in LEARNING_RATE_FACTORS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    if not base_lr > 0:
        raise ValueError(f"base_lr={base_lr!r} is invalid: a learning rate must be positive")
    return base_lr * LEARNING_RATE_FACTORS[name]


MAX_SPARSE_LR_SCALE = 10.0


def sparse_learning_rate_scale(model: nn.Module) -> float:
    """Learning-rate multiplier for Partial-LoRA adapter tensors: LoRA's parameter count at
    the same ranks over the adapters' own, capped at 10 (1.0 without Partial-LoRA layers).

    AdamW moves every trained entry by about the learning rate per step, whatever the size
    of its gradient. A kept row of a Partial-LoRA reads only ``|C|`` of the ``n`` inputs, so
    at LoRA's rate its output moves more slowly (measured on MiniLM / BBC News at keep
    ~0.2: 85.5 % after 3 epochs at LoRA's rate against 94.5 % for LoRA). Dividing the rate
    by the kept fraction restores the pace. Pass the result as ``TrainingConfig.adapter_lr_scale``.
    """
    kept = full = 0
    for layer in adapter_layers(model).values():
        kept += layer.r * (len(layer.lora_rows) + len(layer.lora_columns))
        full += layer.r * (layer.out_features + layer.in_features)
    if not kept:
        return 1.0
    return min(MAX_SPARSE_LR_SCALE, full / kept)


# -- saving --------------------------------------------------------------------------------
def save_method(
    model: nn.Module,
    method: str,
    directory: str | os.PathLike,
    *,
    metadata: Mapping[str, Any] | None = None,
) -> int:
    """Save what ``method`` trained in its natural format; return the tensor file's size in bytes.

    * PEFT methods: ``model.save_pretrained(directory)`` (``adapter_model.safetensors``);
    * this package's methods: :func:`partial_lora.save` (Partial-AdaLoRA is saved as the
      rank-pruned Partial-LoRA :func:`~partial_lora.adalora.finalize` gives; the model is
      left unchanged);
    * full: ``model.safetensors`` with the whole state (shared tensors stored once).

    ``metadata`` goes into the Partial-LoRA config, or ``training_metadata.json`` for the others.
    The size counts the tensor file only: configs and model cards are a few KB whatever the model.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(METHODS)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if method in TICKET_METHODS:
        if method == "partial-adalora":
            with adalora.finalized(model):
                save_partial_lora(model, directory, metadata=metadata)
        else:
            save_partial_lora(model, directory, metadata=metadata)
        return (directory / WEIGHTS_NAME).stat().st_size
    if method == "full":
        from safetensors.torch import save_model

        path = directory / FULL_WEIGHTS_NAME
        save_model(model, str(path), metadata={"format": "pt"})
    else:
        if not hasattr(model, "save_pretrained") or not hasattr(model, "peft_config"):
            raise ValueError(
                f"method {method!r} expects the PeftModel build_method returned, got {type(model).__name__}"
            )
        model.save_pretrained(str(directory))
        path = directory / WEIGHTS_NAME
    wrapped = getattr(model, WRAPPED_CONVS_ATTRIBUTE, None) or getattr(
        getattr(getattr(model, "base_model", None), "model", None), WRAPPED_CONVS_ATTRIBUTE, None)
    if wrapped:
        # Reloading needs the same modules: wrap_pointwise_convs(base, these names) first.
        metadata = {**dict(metadata or {}), "pointwise_convs_as_linear": list(wrapped)}
    if metadata:
        text = json.dumps(dict(metadata), indent=2, default=str) + "\n"
        atomic_write_bytes(directory / METADATA_NAME, text.encode())
    return path.stat().st_size
