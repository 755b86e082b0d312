"""The PEFT baselines, built with Hugging Face PEFT on a fresh base model.

=================  ===========================================================================
name               what it is
=================  ===========================================================================
lora               LoRA, ``peft.LoraConfig``
dora               DoRA, ``peft.LoraConfig(use_dora=True)``
adalora            AdaLoRA, ``peft.AdaLoraConfig``; ``init_r = ceil(1.5 r)``, ``target_r = r``
vera               VeRA, ``peft.VeraConfig`` (its own rank ``vera_r``, default 256)
random-masking     Random Masking (Xu & Zhang 2024): a fixed random set of ``W``'s entries is
                   trained; ``peft.ShiraConfig`` with a random mask drawn per layer
=================  ===========================================================================

PEFT's VeRA and SHiRA adapt only ``nn.Linear``; 1x1 convolution targets (EfficientNet's
``_expand_conv`` / ``_project_conv``) are first wrapped as the linear maps they are
(:mod:`partial_lora.methods.pointwise`), and the model records their names for saving. Other
convolutions raise :class:`~partial_lora.methods.registry.MethodNotApplicable`.

Each builder takes ``(model, request)`` and returns ``(model, hooks)``; PEFT's own random
initialisation runs under the request's seed.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..budget import adapter_parameters
from ..layer import base_shape
from ..selection import layer_generator
from .pointwise import PointwiseConvAsLinear, is_pointwise_conv, record_wrapped_convs, wrap_pointwise_convs
from .registry import MethodHooks, MethodNotApplicable, MethodRequest

# Default AdaLoRA schedule, as fractions of the run (the AdaLoRA paper's GLUE runs warm up for
# roughly a tenth of the steps and train the final ranks for roughly the last half).
ADALORA_TINIT, ADALORA_TFINAL = 0.1, 0.5
RANDOM_MASKING_KEEP_RATIO = 0.25  # parameter count of a Partial-LoRA at keep ratio 0.25


def peft_model(model: nn.Module, peft_config: Any, seed: int) -> nn.Module:
    """``peft.get_peft_model(model, peft_config)`` with the global RNG seeded (and restored afterwards)."""
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, peft_config)


def _peft_common(request: MethodRequest) -> dict[str, Any]:
    return {"target_modules": request.target_modules, "modules_to_save": request.modules_to_save or None}


# -- LoRA, DoRA ----------------------------------------------------------------------------
def build_lora(model: nn.Module, request: MethodRequest) -> tuple[nn.Module, MethodHooks]:
    """LoRA, or DoRA when ``request.name == "dora"``."""
    from peft import LoraConfig

    config = LoraConfig(r=request.r, lora_alpha=request.alpha, lora_dropout=request.options["dropout"],
                        use_dora=request.name == "dora", **_peft_common(request))
    return peft_model(model, config, request.seed), MethodHooks()


# -- AdaLoRA -------------------------------------------------------------------------------
class PeftAdaLoraCallback:
    """Runs PEFT's ``update_and_allocate(step)`` after each optimizer step (before ``zero_grad``)."""

    def __init__(self, peft_model: nn.Module) -> None:
        self.peft_model = peft_model

    def on_step_end(self, model: nn.Module, step: int) -> None:
        self.peft_model.base_model.update_and_allocate(step)


def adalora_schedule(request: MethodRequest) -> dict[str, int]:
    """``{"init_r", "tinit", "tfinal"}`` of an AdaLoRA run (adalora and partial-adalora), in steps and ranks.

    Defaults: ``init_r = ceil(1.5 r)``, ``tinit`` a tenth and ``tfinal`` half of ``total_steps``.
    """
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


def build_adalora(model: nn.Module, request: MethodRequest) -> tuple[nn.Module, MethodHooks]:
    from peft import AdaLoraConfig

    schedule, options = adalora_schedule(request), request.options
    config = AdaLoraConfig(
        init_r=schedule["init_r"], target_r=request.r, lora_alpha=request.alpha, lora_dropout=options["dropout"],
        total_step=request.total_steps, tinit=schedule["tinit"], tfinal=schedule["tfinal"],
        deltaT=options["delta_t"], beta1=options["beta1"], beta2=options["beta2"],
        orth_reg_weight=options["orth_reg_weight"], **_peft_common(request),
    )
    adapted = peft_model(model, config, request.seed)
    # PEFT adds the orthogonal regulariser to outputs.loss itself (when labels are passed).
    return adapted, MethodHooks(callbacks=[PeftAdaLoraCallback(adapted)])


# -- linear-only methods on 1x1 convolutions -----------------------------------------------
def _check_linear_capable(targets: Mapping[str, nn.Module], request: MethodRequest, implementation: str) -> None:
    others = [name for name, module in targets.items()
              if not isinstance(module, (nn.Linear, PointwiseConvAsLinear)) and not is_pointwise_conv(module)]
    if others:
        raise MethodNotApplicable(
            f"{request.name}: {implementation} adapts only nn.Linear layers (and, here, 1x1 convolutions), and "
            f"{len(others)} of the {len(targets)} targets are neither ({', '.join(others[:2])}"
            f"{' ...' if len(others) > 2 else ''}); give nn.Linear or 1x1-convolution targets"
        )


def _as_linear(model: nn.Module, targets: Mapping[str, nn.Module]) -> dict[str, nn.Linear]:
    """``targets`` (checked by :func:`_check_linear_capable`) as ``nn.Linear`` modules, by the name to give PEFT.

    1x1 convolutions are wrapped (:func:`~partial_lora.methods.pointwise.wrap_pointwise_convs`)
    and the model records their names (:func:`~partial_lora.methods.pointwise.record_wrapped_convs`).
    """
    convs = [name for name, module in targets.items() if not isinstance(module, nn.Linear)]
    names = wrap_pointwise_convs(model, targets)
    if convs:
        record_wrapped_convs(model, convs)
    modules = dict(model.named_modules())
    return {name: modules[name] for name in names}


# -- VeRA ----------------------------------------------------------------------------------
def build_vera(model: nn.Module, request: MethodRequest) -> tuple[nn.Module, MethodHooks]:
    from peft import VeraConfig

    targets = request.targets(model)
    _check_linear_capable(targets, request, "PEFT's VeRA")
    targets = _as_linear(model, targets)
    options = request.options
    config = VeraConfig(r=options["vera_r"], projection_prng_key=request.seed, vera_dropout=options["dropout"],
                        d_initial=options["d_initial"], save_projection=True,
                        **{**_peft_common(request), "target_modules": list(targets)})
    return peft_model(model, config, request.seed), MethodHooks()


# -- random masking (SHiRA with random masks) ----------------------------------------------
def build_random_masking(model: nn.Module, request: MethodRequest) -> tuple[nn.Module, MethodHooks]:
    """SHiRA with ``masking_r * (m + n)`` random entries per layer; by default as many as the
    Partial-LoRA at the ticket's ratios (or at :data:`RANDOM_MASKING_KEEP_RATIO`) trains."""
    try:
        from peft import ShiraConfig
    except ImportError:  # pragma: no cover - depends on the installed PEFT
        raise ImportError(
            "random-masking uses PEFT's SHiRA with a random mask; install a PEFT that has ShiraConfig"
        ) from None
    original = request.targets(model)  # the ticket names these (a wrapped conv gains ".linear")
    _check_linear_capable(original, request, "PEFT's SHiRA (random masks)")
    shapes = {name: base_shape(module) for name, module in original.items()}
    masking_r = request.options["masking_r"]
    if masking_r is None and request.budget is not None:
        masking_r = max(1, round(request.budget / sum(m + n for m, n in shapes.values())))
    elif masking_r is None:
        ratios = request.keep_ratios_by_target(original, default=RANDOM_MASKING_KEEP_RATIO)
        masking_r = random_masking_rank(ratios, shapes, request.r)
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
    return peft_model(model, config, request.seed), MethodHooks()


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
