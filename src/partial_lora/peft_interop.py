"""Export to, and import from, standard PEFT LoRA folders.

A Partial-LoRA update is a LoRA update whose ``B`` has zero rows outside ``R`` and whose
``A`` has zero columns outside ``C``. Exporting writes exactly that (dense, zero-filled)
``lora_A``/``lora_B`` pair per layer in PEFT's layout, so anything that serves LoRA can
serve it; importing reads a PEFT LoRA folder and keeps only the nonzero rows and columns.

PEFT stores ``lora_A`` ``[r, in]`` and ``lora_B`` ``[out, r]`` whatever the base layer's layout;
its ``fan_in_fan_out`` flag (true for transformers' ``Conv1D``) only says how the base weight is
laid out, and PEFT corrects it per layer (with a warning) from the layer's type. Export sets it
for the first adapted layer, so a model whose adapted layers are all ``Conv1D`` (GPT-2) or all
``nn.Linear`` loads without warnings; import reads both layouts the same way.

An exported folder also holds ``partial_lora_base.json``, the fingerprint of the base weights
(:mod:`partial_lora.base_weights`), which PEFT ignores and :func:`import_peft` checks, as
:func:`partial_lora.load` does with its own folders.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import PartialLoraConfig
from .adapter_files import CONFIG_NAME, WEIGHTS_NAME, AdapterFileError
from .base_weights import FIELDS, check_adapted_weight, check_other_tensors, malformed_field
from .base_weights import record as record_base
from .files import (
    atomic_save_tensors,
    atomic_write_json,
    check_signed,
    folder_lock,
    read_json_object,
    read_tensors,
    sign,
)
from .layer import TRANSPOSED_LINEAR, base_shape, unsupported_reason
from .naming import model_name_or_path, pattern_value
from .surgery import CONFIG_ATTRIBUTE, adapter_layers, inject, modules_to_save

PREFIX = "base_model.model."
BASE_NAME = "partial_lora_base.json"  # beside PEFT's files; PEFT reads only its own two
BASE_FORMAT = "partial-lora-base-weights"
BASE_FORMAT_VERSION = 1


def export_peft(model: nn.Module, directory: str | os.PathLike, *, task_type: str | None = None) -> Path:
    """Write the adapters of ``model`` as a PEFT LoRA folder.

    ``peft.PeftModel.from_pretrained(base, directory)`` then gives the same outputs. Layers
    whose rank differs from the config's ``r`` are listed in ``rank_pattern``; layers whose
    scaling is not ``alpha / r`` (a keep compensation ``K > 1`` scales by ``K^2 alpha / r``) are
    listed in ``alpha_pattern`` with the alpha PEFT needs for the same scaling.

    Args:
        task_type: PEFT's task type to record (e.g. ``"SEQ_CLS"``, ``"CAUSAL_LM"``), or None.
    """
    layers = adapter_layers(model)
    config: PartialLoraConfig | None = getattr(model, CONFIG_ATTRIBUTE, None)
    if not layers or config is None:
        raise ValueError("the model has no Partial-LoRA adapters to export; call partial_lora.apply first")
    if any(layer.merged for layer in layers.values()):
        raise ValueError("some adapters are merged into their base weights; unmerge() them before exporting")
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        A = torch.zeros(layer.r, layer.in_features, dtype=layer.lora_A.dtype)
        B = torch.zeros(layer.out_features, layer.r, dtype=layer.lora_B.dtype)
        A[:, layer.lora_columns.cpu()] = layer.lora_A.detach().cpu()
        B[layer.lora_rows.cpu()] = layer.lora_B.detach().cpu()
        if layer.is_conv:
            A, B = A[:, :, None, None], B[:, :, None, None]
        tensors[f"{PREFIX}{name}.lora_A.weight"] = A
        tensors[f"{PREFIX}{name}.lora_B.weight"] = B
    saved = modules_to_save(model)
    for name, module in saved.items():
        for key, value in module.state_dict().items():
            tensors[f"{PREFIX}{name}.{key}"] = value
    peft_config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": model_name_or_path(model),
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": sorted(layers),
        "rank_pattern": {n: l.r for n, l in layers.items() if l.r != config.r},
        "alpha_pattern": {n: l.scaling * l.r for n, l in layers.items() if l.scaling * l.r != config.alpha},
        "modules_to_save": sorted(saved) or None,
        "bias": "none",
        # PEFT sets the flag per layer from its type, warning at each change, in model order.
        "fan_in_fan_out": next(iter(layers.values())).kind == TRANSPOSED_LINEAR,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
    }
    base = sign({
        "format": BASE_FORMAT,
        "format_version": BASE_FORMAT_VERSION,
        "base_model": model_name_or_path(model),
        **record_base(model, layers, covered=[*layers, *saved]),
    })
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with folder_lock(directory):
        atomic_save_tensors(tensors, directory / WEIGHTS_NAME, metadata={"format": "pt"})
        atomic_write_json(directory / CONFIG_NAME, peft_config, sort_keys=True)
        atomic_write_json(directory / BASE_NAME, base, sort_keys=True)
    return directory


def import_peft(base_model: nn.Module, directory: str | os.PathLike, *, trainable: bool = False,
                check_base_weights: bool = True) -> nn.Module:
    """Load a PEFT LoRA folder into ``base_model`` as compact Partial-LoRA layers.

    Rows of ``B`` and columns of ``A`` that are entirely zero are dropped, so an exported
    Partial-LoRA comes back with its original indices, and a dense LoRA comes back dense.
    (An untrained LoRA, whose ``B`` is all zero, keeps all rows.) Scaling from
    ``alpha_pattern`` or ``use_rslora`` is folded into ``B``. Everything is verified before
    the model is changed: shapes, finite values, and (unless ``check_base_weights=False``)
    the base weights, where the folder was written by :func:`export_peft` (a folder PEFT
    wrote has no fingerprint of its base).
    """
    directory = Path(directory)
    with folder_lock(directory, shared=True):
        peft_config = _read_peft_config(directory)
        tensors = read_tensors(directory / WEIGHTS_NAME, expected_sha256=None, error=AdapterFileError)
        base = _read_base_fingerprint(directory)
    if adapter_layers(base_model):
        raise ValueError("the base model already has Partial-LoRA adapters; import into a fresh base model")
    modules = dict(base_model.named_modules())
    grouped: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    saved: dict[tuple[str, str], torch.Tensor] = {}
    for key, tensor in tensors.items():
        body = key.removeprefix(PREFIX)
        for part in ("lora_A", "lora_B"):
            if body.endswith(f".{part}.weight"):
                grouped[body[: -len(f".{part}.weight")]][part] = tensor
                break
        else:
            if "lora_" in body:
                raise AdapterFileError(
                    f"tensor {key!r} belongs to a LoRA variant Partial-LoRA cannot import (embedding LoRA, DoRA, ...)"
                )
            saved[_split_module_key(modules, body, key)] = tensor
    if not grouped:
        raise AdapterFileError(f"{directory / WEIGHTS_NAME} holds no lora_A/lora_B tensors")

    default_rank = int(peft_config["r"])
    default_alpha = float(peft_config["lora_alpha"])
    rank_pattern = peft_config.get("rank_pattern") or {}
    alpha_pattern = peft_config.get("alpha_pattern") or {}
    use_rslora = bool(peft_config.get("use_rslora"))
    indices, values, ranks, ratios = {}, {}, {}, {}
    for name, pair in grouped.items():
        module = modules.get(name)
        reason = None if module is None else unsupported_reason(module)
        if module is None or reason is not None:
            what = "does not exist" if module is None else f"is a {type(module).__name__} ({reason})"
            raise AdapterFileError(f"the PEFT adapter adapts {name!r}, which in this base model {what}")
        if set(pair) != {"lora_A", "lora_B"}:
            raise AdapterFileError(f"layer {name!r} lacks its {({'lora_A', 'lora_B'} - set(pair)).pop()} tensor")
        out_features, in_features = base_shape(module)
        A, B = pair["lora_A"], pair["lora_B"]
        if A.dim() == 4:
            A, B = A.flatten(1), B.flatten(1)
        rank = A.shape[0]
        if tuple(A.shape) != (rank, in_features) or tuple(B.shape) != (out_features, rank):
            raise AdapterFileError(
                f"layer {name!r}: lora_A {tuple(pair['lora_A'].shape)} / lora_B {tuple(pair['lora_B'].shape)} do not fit "
                f"a base layer of shape ({out_features}, {in_features}); this adapter was made for another model"
            )
        if not (A.dtype.is_floating_point and B.dtype.is_floating_point):
            raise AdapterFileError(f"layer {name!r}: lora_A/lora_B must be floating point")
        for part, tensor in (("lora_A", A), ("lora_B", B)):
            if not bool(torch.isfinite(tensor).all()):
                raise AdapterFileError(f"layer {name!r}: {part} in {directory / WEIGHTS_NAME} contains NaN or "
                                       "infinite values (a diverged training run?); export it again from a good one")
        expected_rank = pattern_value(rank_pattern, name, default_rank)
        if rank != expected_rank:
            raise AdapterFileError(f"layer {name!r} has rank {rank}, but its adapter_config.json says {expected_rank}")
        alpha = float(pattern_value(alpha_pattern, name, default_alpha))
        peft_scaling = alpha / (rank**0.5) if use_rslora else alpha / rank
        rows = torch.nonzero(B.abs().sum(dim=1)).flatten()
        columns = torch.nonzero(A.abs().sum(dim=0)).flatten()
        if len(rows) == 0:
            rows = torch.arange(out_features)
        if len(columns) == 0:
            columns = torch.arange(in_features)
        indices[name] = (rows.to(torch.int64), columns.to(torch.int64))
        # Our scaling is default_alpha / rank; fold PEFT's own scaling into B.
        values[name] = (A[:, columns], B[rows] * (peft_scaling / (default_alpha / rank)))
        ranks[name] = rank
        ratios[name] = min(1.0, (len(rows) + len(columns)) / (out_features + in_features))
    for (module_name, tensor_name), tensor in saved.items():
        current = modules[module_name].state_dict().get(tensor_name)
        if current is None or tuple(current.shape) != tuple(tensor.shape):
            raise AdapterFileError(
                f"saved tensor {module_name}.{tensor_name} {tuple(tensor.shape)} does not fit the base model"
                f" ({'missing' if current is None else tuple(current.shape)})"
            )
        if tensor.dtype.is_floating_point != current.dtype.is_floating_point:
            raise AdapterFileError(f"saved tensor {module_name}.{tensor_name} has dtype {tensor.dtype}, the base "
                                   f"model's has {current.dtype}")
        if tensor.dtype.is_floating_point and not bool(torch.isfinite(tensor).all()):
            raise AdapterFileError(f"saved tensor {module_name}.{tensor_name} in {directory / WEIGHTS_NAME} contains "
                                   "NaN or infinite values (a diverged training run?); export it again from a good one")
    if check_base_weights and base is not None:
        for name in base["base_weight_samples"]:
            module = modules.get(name)
            if not isinstance(getattr(module, "weight", None), torch.Tensor):
                raise AdapterFileError(
                    f"{directory / BASE_NAME}: the adapter was exported from a base with a layer {name!r}, which this "
                    f"base model ({type(base_model).__name__}) does not have; load the right base model, or pass "
                    "check_base_weights=False"
                )
            check_adapted_weight(name, module.weight, base, directory / BASE_NAME, error=AdapterFileError)
        check_other_tensors(base_model, base, [*grouped, *{m for m, _ in saved}], adapted=grouped,
                            error=AdapterFileError)

    config = PartialLoraConfig(
        r=default_rank,
        alpha=default_alpha,
        dropout=float(peft_config.get("lora_dropout") or 0.0),
        target_modules=sorted(grouped),
        modules_to_save=sorted({m for m, _ in saved}),
        keep_ratios=ratios,
        ranks={n: r for n, r in ranks.items() if r != default_rank},
        keep_compensation=False,  # PEFT's scaling is folded into B above
    )
    layers = inject(base_model, config, indices)
    with torch.no_grad():
        for name, layer in layers.items():
            A, B = values[name]
            layer.lora_A.copy_(A)
            layer.lora_B.copy_(B)
            layer.lora_A.requires_grad_(trainable)
            layer.lora_B.requires_grad_(trainable)
        for (module_name, tensor_name), tensor in saved.items():
            modules[module_name].state_dict()[tensor_name].copy_(tensor)
            if trainable:
                modules[module_name].requires_grad_(True)
    return base_model


def _read_peft_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise AdapterFileError(f"{path} is missing: not a PEFT adapter folder")
    config = read_json_object(path, error=AdapterFileError, fix="write the PEFT folder again (save_pretrained)")
    if config.get("peft_type") != "LORA":
        found = config.get("peft_type")
        raise AdapterFileError(f"{path}: peft_type is {found!r}; only PEFT LoRA folders can be imported")
    if config.get("use_dora"):
        raise AdapterFileError(f"{path}: DoRA adapters have a magnitude vector Partial-LoRA cannot represent")
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise AdapterFileError(f"{path}: {key}={value!r} must be a positive number")
    return config


def _read_base_fingerprint(directory: Path) -> dict[str, Any] | None:
    """The checked ``partial_lora_base.json`` of a folder :func:`export_peft` wrote; None if absent."""
    path = directory / BASE_NAME
    if not path.exists():
        return None
    fix = f"export the adapter again, or delete {BASE_NAME} to import without checking the base weights"
    document = read_json_object(path, error=AdapterFileError, fix=fix)
    check_signed(document, path, format=BASE_FORMAT, version=BASE_FORMAT_VERSION, error=AdapterFileError,
                 what="a Partial-LoRA base-weight fingerprint", fix=fix)
    malformed = malformed_field(document, required=["base_weight_samples"])
    if malformed is not None:
        raise AdapterFileError(f"{path}: field {malformed!r} is malformed (expected {FIELDS[malformed]}); {fix}")
    return document


def _split_module_key(modules: dict[str, nn.Module], body: str, key: str) -> tuple[str, str]:
    parts = body.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        if module_name in modules:
            return module_name, ".".join(parts[cut:])
    raise AdapterFileError(f"tensor {key!r} names no module of the base model")
