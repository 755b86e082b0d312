"""Model surgery: find the target layers, swap in Partial-LoRA layers, freeze the rest.

``apply`` changes the model in place and returns it; ``merge`` folds every adapter into its
base weight and puts plain layers back; ``disable_adapters`` is a context manager that
runs the base model alone.

One mechanism serves every variant: ``apply`` and ``inject`` take the ``layer_class`` to swap
in (:class:`~partial_lora.layer.PartialLoraLayer` by default; Partial-AdaLoRA passes its
subclass), built as ``layer_class(base, rows, columns, r=..., alpha=..., dropout=..., generator=...)``.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Mapping

import torch
from torch import nn

from .config import PartialLoraConfig
from .layer import SUPPORTED, PartialLoraLayer, base_shape, is_supported, keep_multiplier
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
    every ``nn.Linear`` but the output head). Modules inside ``modules_to_save`` (trained in
    full) and those matching ``exclude_modules`` are left out.

    Raises ``ValueError`` if nothing matches (naming modules that exist) or if a matched
    leaf module has a type Partial-LoRA cannot adapt.
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
            if type(module) is nn.Linear and module is not output_head and name.split(".")[-1] not in HEAD_NAMES:
                targets[name] = module
            continue
        if not matches(name, target_modules):
            continue
        if is_supported(module):
            targets[name] = module
        elif not list(module.children()) and getattr(module, "weight", None) is not None:
            unsupported.append(f"{name} ({type(module).__name__})")
    if unsupported:
        raise ValueError(
            f"target_modules={target_modules!r} matched modules Partial-LoRA cannot adapt: "
            f"{', '.join(unsupported[:5])}. It adapts {SUPPORTED}; narrow the patterns or exclude_modules them."
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
        ``config.modules_to_save`` remain trainable.
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
    keep compensations (``multipliers``, by layer name; 1 where not given).
    """
    modules = dict(model.named_modules()) if targets is None else targets
    model.requires_grad_(False)
    layers = {}
    for name, (rows, columns) in indices.items():
        layer = layer_class(
            modules[name], rows, columns, r=config.rank_for(name), alpha=config.alpha,
            dropout=config.dropout, generator=layer_generator(config.seed, name, "init"),
            multiplier=(multipliers or {}).get(name, 1.0),
        )
        set_submodule(model, name, layer)
        layers[name] = layer
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
    attribute); its outputs equal the adapted model's up to float rounding.
    """
    for name, layer in adapter_layers(model).items():
        layer.merge()
        set_submodule(model, name, layer.to_base())
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

