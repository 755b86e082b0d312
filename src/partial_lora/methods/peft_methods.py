"""The PEFT baselines, built with Hugging Face PEFT on a fresh base model.

=================  ===========================================================================
name               what it is
=================  ===========================================================================
lora               LoRA, ``peft.LoraConfig``
dora               DoRA, ``peft.LoraConfig(use_dora=True)``
adalora            AdaLoRA, ``peft.AdaLoraConfig``; ``init_r = ceil(1.5 r)``, ``target_r = r``;
                   PEFT's orthogonal regulariser is in the training loss
                   (:func:`train_through_tuner`)
vera               VeRA, ``peft.VeraConfig`` (its own rank ``vera_r``, default 256)
random-masking     Random Masking (Xu & Zhang 2024): a fixed random set of ``W``'s entries is
                   trained; ``peft.ShiraConfig`` with a random mask drawn per layer
lora-eva           LoRA with PEFT's EVA initialisation (``init_lora_weights="eva"``): ``A``
                   from the top right-singular vectors of each layer's inputs on a few
                   training batches, ranks redistributed across layers by explained variance
                   (up to ``rho`` times the average); at the rank ``eva_r`` whose LoRA
                   matches the Partial-LoRA's parameter count
=================  ===========================================================================

random-masking and lora-eva match a Partial-LoRA's parameter count (:func:`matched_lora_rank`):
the one at the ticket's keep ratios, else at the ``keep_ratio`` option, else at
:data:`MATCHED_KEEP_RATIO`; with a ``budget``, that many parameters.

PEFT's VeRA, SHiRA and EVA adapt only ``nn.Linear``; 1x1 convolution targets (EfficientNet's
``_expand_conv`` / ``_project_conv``) are first wrapped as the linear maps they are
(:mod:`partial_lora.methods.pointwise`), and the model records their names for saving. Other
convolutions raise :class:`~partial_lora.methods.registry.MethodNotApplicable`.

Each builder takes ``(model, request)`` and returns ``(model, hooks)``; PEFT's own random
initialisation runs under the request's seed.
"""

from __future__ import annotations

import math
import types
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
MATCHED_KEEP_RATIO = 0.25  # without a ticket, match the parameter count of a Partial-LoRA at keep ratio 0.25
EVA_MAX_PASSES = 50  # passes over the init batches PEFT's EVA may take to converge


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
    """Runs PEFT's ``update_and_allocate(step)`` after each optimizer step (before ``zero_grad``).

    Its state (PEFT's importance averages and the rank pattern fixed so far) goes into the
    training checkpoints (``state_dict``), so a resumed AdaLoRA run allocates as the
    uninterrupted one would.
    """

    STATE = ("ipt", "exp_avg_ipt", "exp_avg_unc")

    def __init__(self, peft_model: nn.Module) -> None:
        self.peft_model = peft_model

    def on_step_end(self, model: nn.Module, step: int) -> None:
        self.peft_model.base_model.update_and_allocate(step)

    def _allocator_and_config(self):
        tuner = self.peft_model.base_model
        return tuner.rankallocator, tuner.peft_config[tuner.trainable_adapter_name]

    def state_dict(self) -> dict:
        allocator, config = self._allocator_and_config()
        state = {key: {name: tensor.detach().clone() for name, tensor in getattr(allocator, key).items()}
                 for key in self.STATE}
        state["rank_pattern"] = {name: [bool(v) for v in mask] for name, mask in (config.rank_pattern or {}).items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        allocator, config = self._allocator_and_config()
        for key in self.STATE:
            setattr(allocator, key, {name: tensor.clone() for name, tensor in state[key].items()})
        config.rank_pattern = {name: list(mask) for name, mask in state["rank_pattern"].items()} or None


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
    # PEFT means each layer's rank count `ranknum` (its scaling's denominator) to be constant,
    # but casting the adapter to a base model's dtype other than float32 (float64, bf16, fp16)
    # re-wraps it as a trainable Parameter, and the optimizer would then move the scaling.
    for name, parameter in adapted.named_parameters():
        if ".ranknum." in name:
            parameter.requires_grad_(False)
    train_through_tuner(adapted)
    return adapted, MethodHooks(callbacks=[PeftAdaLoraCallback(adapted)])


def train_through_tuner(adapted: nn.Module) -> None:
    """In training mode, make ``adapted(...)`` go through PEFT's ``AdaLoraModel.forward``, which adds the regulariser.

    PEFT adds ``orth_reg_weight`` times its orthogonal regulariser to ``outputs.loss`` in
    ``AdaLoraModel.forward``, the tuner's forward. A ``PeftModel`` built without a ``task_type``
    (as every PEFT baseline here is) calls the wrapped model directly and skips it; the
    task-specific classes (``SEQ_CLS``, ``CAUSAL_LM``) call the tuner. They are not used here:
    image classifiers (ViT, the packaged EfficientNet) have no task type, and ``SEQ_CLS`` would
    silently add ``classifier``/``score`` to ``modules_to_save``, so AdaLoRA could train a head
    that LoRA, built without a task type, does not. Instead the model's ``forward`` calls the tuner
    itself, for any model whose output has a ``loss`` attribute (transformers' outputs and
    :class:`~partial_lora.models.efficientnet_lite.ImageClassifierOutput` do).

    Only in training mode: in evaluation the forward is ``PeftModel``'s own, so the loss a
    model reports there is the task's loss alone, as for every other method. The rank
    allocation is unchanged (:class:`PeftAdaLoraCallback`).
    """
    adapted.forward = types.MethodType(_forward_through_tuner, adapted)


def _forward_through_tuner(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    if self.training:
        return self.base_model(*args, **kwargs)  # AdaLoraModel: the model's outputs, + the regulariser in .loss
    return type(self).forward(self, *args, **kwargs)


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
    Partial-LoRA at the ticket's ratios (or at :data:`MATCHED_KEEP_RATIO`) trains."""
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
    if masking_r is None:
        masking_r = _matched_rank(request, original, shapes)
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


def matched_lora_rank(ratios: Mapping[str, float], shapes: Mapping[str, tuple[int, int]], r: int) -> int:
    """The LoRA rank whose parameter count (``rank * sum(m + n)``) is nearest a Partial-LoRA's.

    ``ratios`` are per-layer keep ratios, ``shapes`` the layers' ``(m, n)``, ``r`` the
    Partial-LoRA rank (whose count is ``sum adapter_parameters(ratio, shape, r)``); at least 1.
    SHiRA's ``r`` trains ``r * (m + n)`` entries per layer, so it is the same number.
    """
    partial = sum(adapter_parameters(ratios[name], shapes[name], r) for name in shapes)
    return max(1, round(partial / sum(m + n for m, n in shapes.values())))


random_masking_rank = matched_lora_rank  # SHiRA's r with the Partial-LoRA's count


def _matched_rank(
    request: MethodRequest, targets: Mapping[str, nn.Module], shapes: Mapping[str, tuple[int, int]],
) -> int:
    """The rank matching ``request.budget`` if given, else the Partial-LoRA at the request's ratios."""
    if request.budget is not None:
        return max(1, round(request.budget / sum(m + n for m, n in shapes.values())))
    ratios = request.keep_ratios_by_target(targets, default=MATCHED_KEEP_RATIO)
    return matched_lora_rank(ratios, shapes, request.r)


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


# -- LoRA with EVA initialisation --------------------------------------------------------------
def build_lora_eva(model: nn.Module, request: MethodRequest) -> tuple[nn.Module, MethodHooks]:
    """PEFT's LoRA initialised by EVA from ``request.init_batches``, at the matched rank.

    The rank ``eva_r`` (by default :func:`matched_lora_rank`) is the average: EVA gives each
    layer between 0 and ``round(rho * eva_r)`` (``rank_pattern`` in the saved config) and
    scales each layer's ``alpha`` with its rank. ``alpha`` itself is ``request.alpha * eva_r / r``,
    so the update is scaled by ``alpha / r``, as LoRA's and the Partial-LoRA's are.

    EVA reads each target layer's inputs on the init batches (the attended tokens of text
    batches, only the labelled ones when labels are per token, PEFT's default; every pixel of
    a 1x1 convolution) and runs PEFT's incremental SVD, cycling through the batches, until the
    components it keeps have converged.

    Raises:
        MethodNotApplicable: a target is neither ``nn.Linear`` nor a 1x1 convolution, has
            fewer input features than the ``round(rho * eva_r)`` directions EVA computes, or EVA
            did not converge within :data:`EVA_MAX_PASSES` passes over the batches (too few
            rows at some layer: fewer than ``round(rho * eva_r)`` per batch).
    """
    from peft import EvaConfig, LoraConfig, get_peft_model, initialize_lora_eva_weights

    original = request.targets(model)
    _check_linear_capable(original, request, "PEFT's EVA")
    shapes = {name: base_shape(module) for name, module in original.items()}
    options, batches = request.options, request.init_batches
    rank = options["eva_r"] if options["eva_r"] is not None else _matched_rank(request, original, shapes)
    components = round(options["rho"] * rank)  # what EVA computes per layer, before redistributing
    narrow = [name for name, (_, n) in shapes.items() if n < components]
    if narrow:
        raise MethodNotApplicable(
            f"{request.name}: PEFT's EVA computes round(rho * eva_r) = {components} input directions per layer, more "
            f"than the {shapes[narrow[0]][1]} input features of {narrow[0]}; lower rho or eva_r"
        )
    per_token_labels = all(_labels_per_token(batch) for batch in batches)
    targets = _as_linear(model, original)  # the model changes from here
    config = LoraConfig(
        r=rank, lora_alpha=request.alpha * rank / request.r, lora_dropout=options["dropout"],
        init_lora_weights="eva",
        eva_config=EvaConfig(rho=options["rho"], tau=options["tau"], whiten=options["whiten"],
                             use_label_mask=per_token_labels),
        **{**_peft_common(request), "target_modules": list(targets)},
    )
    forward = _BoundedForward(EVA_MAX_PASSES * len(batches) + 1, request.name)  # +1: PEFT's first probing pass
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(request.seed)
        adapted = get_peft_model(model, config, low_cpu_mem_usage=True)  # EVA makes the adapter tensors
        # Every process of a distributed run is given the same batches: nothing to gather.
        initialize_lora_eva_weights(
            adapted, batches, forward_fn=forward, prepare_model_inputs_fn=_eva_positions,
            prepare_layer_inputs_fn=_eva_layer_rows, gather_distributed_inputs=False, show_progress_bar=False,
        )
    return adapted, MethodHooks()


def _labels_per_token(batch: Mapping[str, Any]) -> bool:
    labels, ids = batch.get("labels"), batch.get("input_ids")
    return labels is not None and ids is not None and tuple(labels.shape) == tuple(ids.shape)


def _eva_positions(batch: Mapping[str, Any], config: Any) -> torch.Tensor | None:
    """EVA's ``prepare_model_inputs_fn``: ``[B, T]`` bool, the token positions whose layer inputs EVA reads.

    Attended tokens, and of those only the labelled ones when the labels are per token and
    ``use_label_mask`` is set; None for batches without ``input_ids`` (images).
    """
    ids = batch.get("input_ids")
    if ids is None:
        return None
    positions = batch.get("attention_mask", torch.ones_like(ids)).bool()
    if config.eva_config.use_label_mask and _labels_per_token(batch):
        positions = positions & (batch["labels"] != config.eva_config.label_mask_value)
    return positions


def _eva_layer_rows(layer_input: Any, positions: torch.Tensor | None, layer_name: str) -> torch.Tensor:
    """EVA's ``prepare_layer_inputs_fn``: a layer's input as ``[rows, features]`` for the SVD.

    The vectors at ``positions`` when the input has one per token (``[B, T, features]``);
    otherwise every vector (``[..., features]`` flattened: pixels of a 1x1 convolution, or
    one vector per example for a layer after pooling).
    """
    x = layer_input[0] if isinstance(layer_input, (tuple, list)) else layer_input
    if positions is not None and tuple(x.shape[:-1]) == tuple(positions.shape):
        return x[positions]
    return x.reshape(-1, x.shape[-1]).contiguous()


class _BoundedForward:
    """EVA's ``forward_fn`` (``model(**batch)``), refusing to run more than ``limit`` times.

    PEFT's EVA cycles through the batches until every layer's components converge; a layer
    that sees fewer rows per batch than components it computes never does.
    """

    def __init__(self, limit: int, method: str) -> None:
        self.limit, self.method, self.calls = limit, method, 0

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> Any:
        self.calls += 1
        if self.calls > self.limit:
            raise MethodNotApplicable(
                f"{self.method}: PEFT's EVA did not converge in {EVA_MAX_PASSES} passes over the init batches; a "
                "target layer may see fewer input rows per batch than the components it computes (round(rho * eva_r)): "
                "give larger batches, lower rho or eva_r, or lower tau"
            )
        return model(**batch)
