"""Model surgery: find the target layers, swap in Partial-LoRA layers, freeze the rest.

``apply`` changes the model in place and returns it; ``merge`` folds every adapter into its
base weight and puts plain layers back; ``disable_adapters`` is a context manager that
runs the base model alone.

On a half-precision base, ``modules_to_save`` (trained in full) run in float32 unless
``config.autocast_adapter_dtype`` is False (:func:`keep_in_float32`): their parameters become
float32, forward hooks cast their floating inputs to float32 and their floating outputs back to
the input's dtype. State-dict keys do not change; ``merge`` puts the base dtype back. (The
adapter layers' own float32 tensors are the layer's business: :mod:`partial_lora.layer`.)

One mechanism serves every variant: ``apply`` and ``inject`` take the ``layer_class`` to swap
in (:class:`~partial_lora.layer.PartialLoraLayer` by default; Partial-AdaLoRA passes its
subclass), built as ``layer_class(base, rows, columns, r=..., alpha=..., dropout=..., generator=...,
multiplier=..., adapter_dtype=..., name=...)``.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import nn

from .config import PartialLoraConfig
from .layer import (
    LINEAR,
    SUPPORTED,
    TRANSPOSED_LINEAR,
    PartialLoraLayer,
    adapter_dtype_for,
    base_shape,
    is_supported,
    keep_multiplier,
    layer_kind,
    unsupported_reason,
)
from .naming import ALL_LINEAR, HEAD_NAMES, inside, matches, set_submodule
from .selection import layer_generator, select_rows_and_columns

CONFIG_ATTRIBUTE = "partial_lora_config"


def find_target_modules(
    model: nn.Module,
    target_modules: Iterable[str] | str,
    *,
    exclude_modules: Iterable[str] | str | None = None,
    modules_to_save: Iterable[str] = (),
) -> dict[str, nn.Module]:
    """The modules that ``target_modules`` names, by full name, in model order.

    Patterns follow :mod:`partial_lora.naming` (suffix list, one regex, or ``"all-linear"``:
    every supported linear layer, ``nn.Linear`` or transformers' ``Conv1D``, but the output
    head). Modules inside ``modules_to_save`` (trained in full) and those matching
    ``exclude_modules`` are left out.

    Raises ``ValueError`` if nothing matches (naming modules that exist) or if a matched
    layer is one Partial-LoRA cannot adapt (saying why).
    """
    saved = list(modules_to_save)
    output_head = _output_embeddings(model)
    targets: dict[str, nn.Module] = {}
    unsupported: list[str] = []
    for name, module in model.named_modules():
        if not name or isinstance(module, PartialLoraLayer) or _inside_adapter(name, model):
            continue
        if inside(name, saved):
            continue
        if exclude_modules is not None and matches(name, exclude_modules):
            continue
        if target_modules == ALL_LINEAR:
            if _is_linear_map(module) and module is not output_head and name.split(".")[-1] not in HEAD_NAMES:
                targets[name] = module
            continue
        if not matches(name, target_modules):
            continue
        reason = unsupported_reason(module)
        if reason is None:
            targets[name] = module
        elif isinstance(module, (nn.Linear, nn.Conv2d)) or (
                not list(module.children()) and getattr(module, "weight", None) is not None):
            unsupported.append(f"{name} ({type(module).__name__}: {reason})")
    if unsupported:
        raise ValueError(
            f"target_modules={target_modules!r} matched modules Partial-LoRA cannot adapt: "
            f"{'; '.join(unsupported[:5])}. It adapts {SUPPORTED}; narrow the patterns or exclude_modules them."
        )
    if not targets:
        linear = [n for n, m in model.named_modules() if is_supported(m)]
        examples = ", ".join(linear[:6]) + (" ..." if len(linear) > 6 else "")
        raise ValueError(
            f"target_modules={target_modules!r} matched no adaptable module of "
            f"{type(model).__name__}. Adaptable modules it has ({len(linear)}): {examples or 'none'}. "
            "Give name suffixes such as the last part of those names, a regular expression, or 'all-linear'."
        )
    return targets


def apply(
    model: nn.Module,
    config: PartialLoraConfig,
    *,
    scores: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    layer_class: type[PartialLoraLayer] = PartialLoraLayer,
) -> nn.Module:
    """Put a Partial-LoRA layer in place of every target layer; freeze everything else.

    Args:
        model: any ``nn.Module`` (a transformers model, a torchvision network, ...).
        config: which layers, rank, keep ratios, selection rule and seed.
        scores: optional ``{module name: (row_scores, column_scores)}`` used by the
            ``targeted`` and ``stochastic`` selection rules (a ticket's scores).
        layer_class: the adapter layer to build, :class:`PartialLoraLayer` or a subclass.

    Returns:
        the same model object, changed in place. Only adapter tensors and the parameters of
        ``config.modules_to_save`` remain trainable. On a half-precision base both are float32
        unless ``config.autocast_adapter_dtype`` is False.
    """
    if adapter_layers(model):
        raise ValueError("this model already has Partial-LoRA adapters; merge() them or start from a fresh base")
    targets = find_target_modules(model, config.target_modules, exclude_modules=config.exclude_modules,
                                  modules_to_save=config.modules_to_save)
    saved = _modules_to_save(model, config)
    if config.selection != "random":
        missing = [n for n in targets if _score_pair(scores, n) is None]
        if missing:
            raise ValueError(
                f"selection={config.selection!r} needs row/column scores for every target layer; none for "
                f"{missing[:3]}{' ...' if len(missing) > 3 else ''}. Pass scores=ticket.scores or use selection='random'."
            )
    indices = {}
    for name, module in targets.items():
        pair = _score_pair(scores, name)
        indices[name] = select_rows_and_columns(
            name, base_shape(module), config.keep_ratio_for(name), config.selection, config.seed,
            *(pair if pair is not None else (None, None)),
        )
    multipliers = None
    if config.keep_compensation and layer_class.keep_compensated:
        multipliers = {name: keep_multiplier(len(rows), len(columns), base_shape(targets[name]))
                       for name, (rows, columns) in indices.items()}
    inject(model, config, indices, targets=targets, layer_class=layer_class, multipliers=multipliers)
    for module in saved.values():
        module.requires_grad_(True)
    return model


def inject(
    model: nn.Module,
    config: PartialLoraConfig,
    indices: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    targets: Mapping[str, nn.Module] | None = None,
    layer_class: type[PartialLoraLayer] = PartialLoraLayer,
    multipliers: Mapping[str, float] | None = None,
) -> dict[str, PartialLoraLayer]:
    """Swap in ``layer_class`` layers with the given kept rows/columns (no selection); freeze the model.

    Used by :func:`apply` and by loading, which must rebuild exactly the saved indices and
    keep compensations (``multipliers``, by layer name; 1 where not given). The adapter dtype
    and the precision of ``config.modules_to_save`` follow ``config.autocast_adapter_dtype``.
    """
    modules = dict(model.named_modules()) if targets is None else targets
    model.requires_grad_(False)
    layers = {}
    for name, (rows, columns) in indices.items():
        module = modules[name]
        layer = layer_class(
            module, rows, columns, r=config.rank_for(name), alpha=config.alpha,
            dropout=config.dropout, generator=layer_generator(config.seed, name, "init"),
            multiplier=(multipliers or {}).get(name, 1.0),
            adapter_dtype=adapter_dtype_for(module.weight.dtype, config.autocast_adapter_dtype), name=name,
        )
        set_submodule(model, name, layer)
        layers[name] = layer
    if config.autocast_adapter_dtype:
        for name in _modules_to_save(model, config):
            keep_in_float32(model, name)
    setattr(model, CONFIG_ATTRIBUTE, config)
    return layers


def adapter_layers(model: nn.Module) -> dict[str, PartialLoraLayer]:
    """Every Partial-LoRA layer of ``model``, by full module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, PartialLoraLayer)}


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters that receive gradients (each shared tensor counted once)."""
    seen, total = set(), 0
    for parameter in model.parameters():
        if parameter.requires_grad and id(parameter) not in seen:
            seen.add(id(parameter))
            total += parameter.numel()
    return total


def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put plain layers back.

    Returns the same model object without any adapter module (and without the config
    attribute); its outputs equal the adapted model's up to float rounding. Modules kept in
    float32 (:func:`keep_in_float32`) go back to their former dtype, without hooks. If a
    layer cannot be merged (:meth:`~partial_lora.layer.PartialLoraLayer.check_mergeable`),
    ``ValueError`` says which, and the model is left unchanged.
    """
    layers = adapter_layers(model)
    for layer in layers.values():
        layer.check_mergeable()
    for name, layer in layers.items():
        layer.merge()
        set_submodule(model, name, layer.to_base())
    for module in model.modules():
        release_float32(module)
    if hasattr(model, CONFIG_ATTRIBUTE):
        delattr(model, CONFIG_ATTRIBUTE)
    return model


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Run the base model alone inside the ``with`` block (adapters restored afterwards)."""
    layers = list(adapter_layers(model).values())
    previous = [layer.adapter_enabled for layer in layers]
    try:
        for layer in layers:
            layer.adapter_enabled = False
        yield model
    finally:
        for layer, state in zip(layers, previous):
            layer.adapter_enabled = state


def modules_to_save(model: nn.Module) -> dict[str, nn.Module]:
    """The modules trained in full and saved with the adapter, by full name."""
    config = getattr(model, CONFIG_ATTRIBUTE, None)
    return {} if config is None else _modules_to_save(model, config)


def _modules_to_save(model: nn.Module, config: PartialLoraConfig) -> dict[str, nn.Module]:
    found: dict[str, nn.Module] = {}
    for pattern in config.modules_to_save:
        matched = {n: m for n, m in model.named_modules() if n and matches(n, [pattern])}
        if not matched:
            raise ValueError(
                f"modules_to_save entry {pattern!r} matches no module of {type(model).__name__}; "
                "give the name suffix of the module to train in full (for example 'classifier')"
            )
        found.update(matched)
    # Keep only the outermost of nested matches.
    return {n: m for n, m in found.items() if not any(n.startswith(o + ".") for o in found if o != n)}


# -- modules trained in full, in float32 on a half-precision base ----------------------------
FLOAT32_HOOKS = "_partial_lora_float32"  # attribute of a module kept in float32: its _Float32Hooks


def keep_in_float32(model: nn.Module, name: str) -> bool:
    """Run module ``name`` of ``model`` in float32 if it holds float16/bfloat16 tensors.

    Its half-precision parameters and buffers become float32 (the same ``Parameter`` objects,
    so optimizers and state-dict keys are unaffected); forward hooks cast its floating inputs
    to the module's dtype and its floating outputs back to the input's dtype (the former dtype
    when no input is floating, e.g. token ids into an embedding). A module that shares a
    parameter with the rest of the model (tied weights) stays as it is, with a warning: the
    other user of the parameter would then see float32. Returns whether the module was changed.
    """
    module = model.get_submodule(name)
    if FLOAT32_HOOKS in module.__dict__:
        return False
    former = {key: tensor.dtype for key, tensor in _floating_tensors(module)
              if torch.finfo(tensor.dtype).bits < 32}
    if not former:
        return False
    inside = {id(p) for p in module.parameters()}
    outside = {id(p) for n, p in model.named_parameters(remove_duplicate=False)
               if not (n.startswith(name + ".") or n == name)}
    if inside & outside:
        warnings.warn(f"modules_to_save {name!r} shares parameters with other modules (tied weights); it is trained "
                      f"in {next(iter(former.values()))}, not float32", stacklevel=4)
        return False
    _cast_tensors(module, dict.fromkeys(former, torch.float32))
    setattr(module, FLOAT32_HOOKS, _Float32Hooks(module, former))
    return True


def release_float32(module: nn.Module) -> None:
    """Undo :func:`keep_in_float32` on ``module``: former dtypes back, hooks removed (no-op otherwise)."""
    hooks = module.__dict__.pop(FLOAT32_HOOKS, None)
    if hooks is not None:
        for handle in hooks.handles:
            handle.remove()
        _cast_tensors(module, hooks.former)


class _Float32Hooks:
    """The forward hooks of a module kept in float32 (see :func:`keep_in_float32`)."""

    def __init__(self, module: nn.Module, former: Mapping[str, torch.dtype]) -> None:
        self.former = dict(former)  # {parameter or buffer name: dtype before}
        self.fallback = next(iter(self.former.values()))
        self.pending: list[torch.dtype] = []  # the dtype to give back, per call in progress
        self.handles = [module.register_forward_pre_hook(self.enter, with_kwargs=True),
                        module.register_forward_hook(self.leave, with_kwargs=True)]

    def enter(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        self.pending.append(_first_floating_dtype((args, kwargs)) or self.fallback)
        dtype = next((t.dtype for _, t in _floating_tensors(module)), torch.float32)
        return _cast_floating(args, dtype), _cast_floating(kwargs, dtype)

    def leave(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        return _cast_floating(output, self.pending.pop())


def _floating_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    for key, tensor in (*module.named_parameters(), *module.named_buffers()):
        if tensor.is_floating_point():
            yield key, tensor


@torch.no_grad()
def _cast_tensors(module: nn.Module, dtypes: Mapping[str, torch.dtype]) -> None:
    """Cast named parameters (in place: the same ``Parameter`` objects, gradients too) and buffers."""
    for key, dtype in dtypes.items():
        owner_name, _, leaf = key.rpartition(".")
        owner = module.get_submodule(owner_name)
        if leaf in owner._parameters:
            parameter = owner._parameters[leaf]
            parameter.data = parameter.data.to(dtype)
            if parameter.grad is not None:
                parameter.grad = parameter.grad.to(dtype)
        else:
            owner._buffers[leaf] = owner._buffers[leaf].to(dtype)


def _cast_floating(value: Any, dtype: torch.dtype) -> Any:
    """``value`` with every floating tensor in it (in tuples, lists, dicts) cast to ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if type(value) in (tuple, list):
        return type(value)(_cast_floating(v, dtype) for v in value)
    if type(value) is dict:
        return {k: _cast_floating(v, dtype) for k, v in value.items()}
    return value


def _first_floating_dtype(value: Any) -> torch.dtype | None:
    if isinstance(value, torch.Tensor):
        return value.dtype if value.is_floating_point() else None
    items = value.values() if type(value) is dict else value if type(value) in (tuple, list) else ()
    return next((d for d in map(_first_floating_dtype, items) if d is not None), None)


def _is_linear_map(module: nn.Module) -> bool:
    """A supported linear layer (``nn.Linear``, transformers' ``Conv1D``, a supported subclass)."""
    return is_supported(module) and layer_kind(module) in (LINEAR, TRANSPOSED_LINEAR)


def _score_pair(scores, name):
    if not scores:
        return None
    if name in scores:
        return scores[name]
    return None


def _output_embeddings(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_output_embeddings", None)
    try:
        return getter() if callable(getter) else None
    except (NotImplementedError, AttributeError):
        return None


def _inside_adapter(name: str, model: nn.Module) -> bool:
    parent = name.rsplit(".", 1)[0] if "." in name else ""
    return bool(parent) and isinstance(model.get_submodule(parent), PartialLoraLayer)

