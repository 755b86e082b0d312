"""Saving and loading compact Partial-LoRA adapters.

A folder holds two files:

* ``adapter_model.safetensors``: per adapted layer ``adapters.<module>.lora_A`` ``[r, |C|]``,
  ``.lora_B`` ``[|R|, r]``, ``.lora_rows`` and ``.lora_columns`` (``int32``; left out when the
  layer keeps every row, or every column), and for every module trained in full
  ``modules_to_save.<module>.<tensor>``.
* ``adapter_config.json``: the config, every layer's kind (weight layout: ``linear``,
  ``conv1x1``, ``transposed_linear``), base class name, shape, rank, kept counts and adapter
  dtype, a fingerprint of the base layers' shapes, what it takes to recognise the base
  weights (samples of each adapted weight, the mean |x| of every other base tensor:
  :mod:`partial_lora.base_weights`), and the sha256 of the tensor file (so a half-written
  pair is detected). Files written before the class name was recorded hold only exact ``nn.Linear`` /
  ``nn.Conv2d`` layers.

:func:`load` puts an adapter into a fresh base model; :func:`load_weights` copies a saved
adapter's tensors into a model that already carries the same adapters (resuming training).

Each file is written atomically (:mod:`partial_lora.files`), and a save holds the folder's
exclusive lock while loading holds its shared lock (:func:`partial_lora.files.folder_lock`):
two saves into one folder take turns, and a load sees the adapter before or after a save,
whole. Loading checks everything
against the base model before changing it; a damaged or mismatched folder raises
:class:`AdapterFileError` and leaves the base untouched. Only safetensors is read; nothing
is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .base_weights import FIELDS, check_adapted_weight, check_other_tensors, malformed_field
from .base_weights import record as record_base
from .checks import is_non_negative_int, is_number, is_positive_int
from .config import PartialLoraConfig
from .files import (
    DamagedFileError,
    atomic_save_tensors,
    atomic_write_bytes,
    atomic_write_json,
    check_signed,
    folder_lock,
    fsync_directory,
    read_json_object,
    read_tensors,
    sign,
)
from .layer import (
    CONV1X1,
    KINDS,
    LINEAR,
    MAX_KEEP_MULTIPLIER,
    PartialLoraLayer,
    base_shape,
    layer_kind,
    unsupported_reason,
)
from .naming import model_name_or_path
from .surgery import CONFIG_ATTRIBUTE, adapter_layers, inject, modules_to_save

WEIGHTS_NAME = "adapter_model.safetensors"
# While a save replaces an adapter, the tensors the current config describes stay reachable
# under this name until the new config is in place (see save and read_committed_tensors).
PREVIOUS_WEIGHTS_NAME = ".adapter_model.previous.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT = "partial-lora"
FORMAT_VERSION = 2
# Version 1 (partial-lora 0.1) had no keep compensation: its layers load with multiplier 1.
READABLE_VERSIONS = (1, 2)
# The base class of a layer in a file that does not record one (what partial-lora adapted then).
CLASS_OF_OLD_KINDS = {LINEAR: "Linear", CONV1X1: "Conv2d"}
# A reader that cannot lock the folder retries this often when a save replaced a file under it.
UNLOCKED_READ_ATTEMPTS = 8


class AdapterFileError(DamagedFileError):
    """An adapter folder that is missing, damaged, or made for another base model."""


# -- writing ---------------------------------------------------------------------------
def save(model: nn.Module, directory: str | os.PathLike, *, metadata: Mapping[str, Any] | None = None) -> Path:
    """Save the adapters (and ``modules_to_save``) of ``model`` to ``directory``.

    Args:
        model: a model changed by :func:`partial_lora.apply` or :func:`partial_lora.load`.
        directory: created if needed; an existing adapter there is replaced.
        metadata: optional JSON-able facts recorded in the config (e.g. the training run).
    """
    layers = adapter_layers(model)
    config = getattr(model, CONFIG_ATTRIBUTE, None)
    if not layers or config is None:
        raise ValueError("the model has no Partial-LoRA adapters to save; call partial_lora.apply(model, config) first")
    if any(layer.merged for layer in layers.values()):
        raise ValueError("some adapters are merged into their base weights; unmerge() them before saving")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with folder_lock(directory):  # one save at a time; readers wait until it is whole
        return _save_locked(model, directory, layers, config, metadata)


def _save_locked(model, directory: Path, layers, config, metadata) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    layer_info = {}
    for name, layer in layers.items():
        tensors[f"adapters.{name}.lora_A"] = layer.lora_A
        tensors[f"adapters.{name}.lora_B"] = layer.lora_B
        # Indices go to disk as int32, and not at all when every row (column) is kept.
        if not layer.all_rows:
            tensors[f"adapters.{name}.lora_rows"] = layer.lora_rows.to(torch.int32)
        if not layer.all_columns:
            tensors[f"adapters.{name}.lora_columns"] = layer.lora_columns.to(torch.int32)
        layer_info[name] = {
            "kind": layer.kind,
            "base_class": layer.base_class,
            "shape": [layer.out_features, layer.in_features],
            "rank": layer.r,
            "alpha": layer.alpha,
            "rows": len(layer.lora_rows),
            "columns": len(layer.lora_columns),
            "dtype": str(layer.lora_A.dtype).removeprefix("torch."),
            "keep_multiplier": layer.multiplier,
        }
    saved_info = {}
    saved_modules = modules_to_save(model)
    for name, module in saved_modules.items():
        state = module.state_dict()
        saved_info[name] = {key: list(value.shape) for key, value in state.items()}
        for key, value in state.items():
            tensors[f"modules_to_save.{name}.{key}"] = value
    base = record_base(model, layers, covered=[*layers, *saved_modules])  # may refuse: before anything is written
    for stale in (*directory.glob(f".{WEIGHTS_NAME}.*.tmp"), *directory.glob(f".{CONFIG_NAME}.*.tmp")):
        stale.unlink(missing_ok=True)  # left by a save that was killed; never read
    previous = directory / PREVIOUS_WEIGHTS_NAME
    if (directory / WEIGHTS_NAME).is_file() and (directory / CONFIG_NAME).is_file():
        _keep_previous(directory / WEIGHTS_NAME, previous)
    digest = atomic_save_tensors(tensors, directory / WEIGHTS_NAME, metadata={"format": FORMAT})
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "layers": layer_info,
        "modules_to_save": saved_info,
        "base_fingerprint": shape_fingerprint({n: (i["kind"], *i["shape"]) for n, i in layer_info.items()}),
        **base,
        "base_model": model_name_or_path(model),
        "trainable_parameters": sum(l.lora_A.numel() + l.lora_B.numel() for l in layers.values()),
        "weights_sha256": digest,
        "metadata": dict(metadata or {}),
    }
    atomic_write_json(directory / CONFIG_NAME, sign(document), sort_keys=True)
    previous.unlink(missing_ok=True)  # the new adapter is whole: config and tensors agree
    return directory


def _keep_previous(weights: Path, previous: Path) -> None:
    """Keep the current tensor file reachable (a hard link, or a copy) until the save commits.

    A crash after the new tensors replace ``weights`` but before the new config is written
    then still loads the previous adapter, whole (see :func:`read_committed_tensors`).
    """
    previous.unlink(missing_ok=True)
    try:
        os.link(weights, previous)
    except OSError:
        atomic_write_bytes(previous, weights.read_bytes())
    fsync_directory(previous.parent)


def read_committed_tensors(directory: Path, expected_sha256: str) -> dict[str, torch.Tensor]:
    """The tensors the config describes: ``adapter_model.safetensors``, or the previous file
    kept by a save that was interrupted before its config was written."""
    weights, previous = directory / WEIGHTS_NAME, directory / PREVIOUS_WEIGHTS_NAME
    try:
        return read_tensors(weights, expected_sha256, error=AdapterFileError)
    except AdapterFileError:
        if weights.is_file() and previous.is_file():
            try:
                return read_tensors(previous, expected_sha256, error=AdapterFileError)
            except AdapterFileError:
                pass
        raise


def shape_fingerprint(shapes: Mapping[str, tuple]) -> str:
    """sha256 of the sorted ``(module name, kind, out, in)`` list of the adapted base layers."""
    rows = sorted([name, *map(str, shape)] for name, shape in shapes.items())
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


# -- reading ---------------------------------------------------------------------------
def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of a Partial-LoRA folder (checked for structure)."""
    directory = Path(directory)
    with folder_lock(directory, shared=True):  # the config is replaced whole; waits for a save to end
        return _read_config(directory)


def read_adapter(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config and tensors of a folder, both of one save (under the folder's shared lock).

    Where the folder cannot be locked, a save may replace the files between the two reads;
    the pair is then read again, a few times, before a mismatch is reported as damage.
    """
    with folder_lock(directory, shared=True) as locked:
        attempts = 1 if locked else UNLOCKED_READ_ATTEMPTS
        for attempt in range(1, attempts + 1):
            try:
                document = _read_config(directory)
                return document, read_committed_tensors(directory, document["weights_sha256"])
            except AdapterFileError:
                if attempt == attempts:
                    raise
                time.sleep(0.01 * attempt)


def _read_config(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise AdapterFileError(f"adapter folder {str(directory)!r} does not exist; check the path")
    config_path = directory / CONFIG_NAME
    if not config_path.is_file() and not config_path.exists():
        raise AdapterFileError(f"{config_path} is missing: not a Partial-LoRA adapter folder (save one with partial_lora.save)")
    fix = "restore it or save the adapter again"
    document = read_json_object(config_path, error=AdapterFileError, fix=fix)
    if document.get("peft_type") is not None and document.get("format") != FORMAT:
        raise AdapterFileError(f"{directory} is a PEFT adapter folder; read it with partial_lora.import_peft(model, folder)")
    check_signed(document, config_path, format=FORMAT, version=READABLE_VERSIONS, error=AdapterFileError,
                 what="a Partial-LoRA adapter config", fix=fix)
    for key, kind in (("config", dict), ("layers", dict), ("modules_to_save", dict), ("weights_sha256", str),
                      ("base_weight_checksums", dict)):
        if not isinstance(document.get(key), kind):
            raise AdapterFileError(f"{config_path}: field {key!r} is missing or not a {kind.__name__}; the file is damaged")
    malformed = malformed_field(document, required=["base_weight_checksums"])
    if malformed is not None:
        raise AdapterFileError(f"{config_path}: field {malformed!r} must be {FIELDS[malformed]}; the file is damaged")
    for name, entries in document["modules_to_save"].items():
        if not (isinstance(entries, dict) and all(isinstance(shape, list) and all(is_non_negative_int(v) for v in shape)
                                                  for shape in entries.values())):
            raise AdapterFileError(f"{config_path}: the entry for saved module {name!r} must map tensor names to shapes")
    if document["format_version"] == 1:  # written before keep compensation existed
        document["config"] = {**document["config"], "keep_compensation": False}
    try:
        document["config"] = PartialLoraConfig.from_dict(document["config"])
    except (TypeError, ValueError) as err:
        raise AdapterFileError(f"{config_path}: invalid config: {err}") from None
    for name, info in document["layers"].items():
        if document["format_version"] == 1 and isinstance(info, dict):
            info["keep_multiplier"] = 1.0
        _check_layer_info(config_path, name, info)
    return document


def _check_layer_info(config_path: Path, name: str, info: Any) -> None:
    ok = (
        isinstance(info, dict)
        and info.get("kind") in KINDS
        and isinstance(info.get("base_class", ""), str)
        and isinstance(info.get("shape"), list) and len(info["shape"]) == 2
        and all(is_positive_int(v) for v in info["shape"])
        and all(is_positive_int(info.get(k)) for k in ("rank", "rows", "columns"))
        and isinstance(info.get("alpha"), (int, float)) and info["alpha"] > 0
        and is_number(info.get("keep_multiplier")) and 1.0 <= info["keep_multiplier"] <= MAX_KEEP_MULTIPLIER
    )
    if not ok:
        raise AdapterFileError(f"{config_path}: the entry for layer {name!r} is malformed: {info!r}")
    if info["rows"] > info["shape"][0] or info["columns"] > info["shape"][1]:
        raise AdapterFileError(f"{config_path}: layer {name!r} keeps more rows/columns than it has")


def load(
    base_model: nn.Module,
    directory: str | os.PathLike,
    *,
    trainable: bool = False,
    check_base_weights: bool = True,
) -> nn.Module:
    """Load a saved adapter into ``base_model`` (changed in place and returned).

    Everything is verified first: every adapted layer exists in the base with the recorded
    type and shape, tensor shapes and dtypes fit, indices are sorted, unique and in range,
    and (unless ``check_base_weights=False``) the base weights are the ones the adapter was
    trained on. Only then is the model changed.

    Args:
        trainable: keep the adapter tensors (and saved modules) trainable, e.g. to resume training.
        check_base_weights: compare each adapted base weight with the samples saved of it,
            and every other base tensor with its saved mean absolute value
            (:mod:`partial_lora.base_weights`; older files hold less, and less is checked).
    """
    directory = Path(directory)
    document, tensors = read_adapter(directory)
    config: PartialLoraConfig = document["config"]
    if adapter_layers(base_model):
        raise ValueError("the base model already has Partial-LoRA adapters; load into a fresh base model")
    indices, values = _verify_layers(base_model, document, tensors, check_base_weights)
    saved = _verify_saved_modules(base_model, document, tensors)
    known = _known_tensors(values, indices, saved)
    _refuse_unknown_tensors(directory, tensors, known)
    if check_base_weights:
        check_other_tensors(base_model, document, [*document["layers"], *document["modules_to_save"]],
                            adapted=document["layers"], error=AdapterFileError)
    # Everything checked: now change the model.
    multipliers = {name: float(info["keep_multiplier"]) for name, info in document["layers"].items()}
    layers = inject(base_model, config, indices, multipliers=multipliers)
    with torch.no_grad():
        for name, layer in layers.items():
            layer.lora_A.copy_(values[f"adapters.{name}.lora_A"])
            layer.lora_B.copy_(values[f"adapters.{name}.lora_B"])
            layer.lora_A.requires_grad_(trainable)
            layer.lora_B.requires_grad_(trainable)
        for (module_name, tensor_name), value in saved.items():
            base_model.get_submodule(module_name).state_dict()[tensor_name].copy_(value)
        if trainable:
            for name in document["modules_to_save"]:
                base_model.get_submodule(name).requires_grad_(True)
    return base_model


def load_weights(model: nn.Module, directory: str | os.PathLike, *, check_base_weights: bool = True) -> nn.Module:
    """Copy a saved adapter's tensors into the adapters ``model`` already has (in place; returned).

    The counterpart of :func:`load` for a model that already carries its adapters, e.g. to
    resume training from a checkpoint or to go back to the best one: nothing is injected or
    selected, and ``requires_grad`` flags stay as they are. Everything is verified before a
    tensor is copied: the folder adapts exactly the model's adapted layers, each with the
    same kind, shape, rank, alpha and the same kept row and column indices, and saves the
    same modules with tensors of the same shapes; the adapted base weights are checked as by
    :func:`load` (the other base tensors are not: a model that trains in train mode may
    have moved its batch-norm statistics since). Otherwise :class:`AdapterFileError` says what differs and the model is
    left untouched.
    """
    directory = Path(directory)
    document, tensors = read_adapter(directory)
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("the model has no Partial-LoRA adapters to load into; load the folder into a fresh base "
                         "model with partial_lora.load(base_model, folder)")
    if any(layer.merged for layer in layers.values()):
        raise ValueError("some adapters are merged into their base weights; unmerge() them before loading weights")
    other = [n for n, layer in layers.items()
             if not (isinstance(layer.lora_A, nn.Parameter) and isinstance(layer.lora_B, nn.Parameter))]
    if other:
        raise ValueError(f"load_weights fills Partial-LoRA layers whose lora_A and lora_B are parameters; layer "
                         f"{other[0]!r} is a {type(layers[other[0]]).__name__}")
    _refuse_other_names("adapted layers", set(document["layers"]), set(layers), directory)
    _refuse_other_names("modules trained in full", set(document["modules_to_save"]), set(modules_to_save(model)),
                        directory)
    indices, values = _verify_layers(model, document, tensors, check_base_weights)
    for name, layer in layers.items():
        info, (rows, columns) = document["layers"][name], indices[name]
        if layer.r != info["rank"] or layer.alpha != float(info["alpha"]):
            raise AdapterFileError(f"layer {name!r}: the folder's adapter has rank {info['rank']} and alpha "
                                   f"{info['alpha']:g}, the model's has rank {layer.r} and alpha {layer.alpha:g}")
        if (len(rows), len(columns)) != (len(layer.lora_rows), len(layer.lora_columns)):
            raise AdapterFileError(
                f"layer {name!r}: the folder's adapter keeps {len(rows)} rows and {len(columns)} columns, the model's "
                f"{len(layer.lora_rows)} and {len(layer.lora_columns)} (another keep ratio); load it into a fresh "
                "base model with partial_lora.load instead"
            )
        if not (torch.equal(layer.lora_rows.cpu(), rows) and torch.equal(layer.lora_columns.cpu(), columns)):
            raise AdapterFileError(
                f"layer {name!r}: the folder keeps other rows or columns than the model's adapter (another seed, "
                "ticket or selection); load it into a fresh base model with partial_lora.load instead"
            )
        if layer.multiplier != float(info["keep_multiplier"]):
            raise AdapterFileError(f"layer {name!r}: the folder's adapter has keep compensation "
                                   f"{info['keep_multiplier']:g}, the model's has {layer.multiplier:g} (a model built with "
                                   "another keep_compensation setting); build it as the folder's config says")
    saved = _verify_saved_modules(model, document, tensors)
    _refuse_unknown_tensors(directory, tensors, _known_tensors(values, indices, saved))
    # Everything checked: now change the tensors.
    with torch.no_grad():
        for name, layer in layers.items():
            layer.lora_A.copy_(values[f"adapters.{name}.lora_A"])
            layer.lora_B.copy_(values[f"adapters.{name}.lora_B"])
        for (module_name, tensor_name), value in saved.items():
            model.get_submodule(module_name).state_dict()[tensor_name].copy_(value)
    return model


def _refuse_other_names(what: str, saved: set[str], have: set[str], directory: Path) -> None:
    if saved != have:
        only_saved, only_model = sorted(saved - have), sorted(have - saved)
        raise AdapterFileError(
            f"{directory} was saved with other {what} than the model has (only in the folder: "
            f"{only_saved[:3] or 'none'}; only in the model: {only_model[:3] or 'none'}); it is another "
            "adapter: load it into a fresh base model with partial_lora.load"
        )


def _known_tensors(values, indices, saved) -> set[str]:
    known = set(values) | {f"adapters.{n}.lora_{k}" for n in indices for k in ("rows", "columns")}
    return known | {f"modules_to_save.{m}.{t}" for m, t in saved}


def _refuse_unknown_tensors(directory: Path, tensors: Mapping[str, torch.Tensor], known: set[str]) -> None:
    unknown = sorted(set(tensors) - known)
    if unknown:
        raise AdapterFileError(f"{directory / WEIGHTS_NAME} holds unexpected tensors {unknown[:3]}; "
                               "the file is not this adapter's")


def _verify_layers(model, document, tensors, check_base_weights):
    modules = dict(model.named_modules())
    indices, values = {}, {}
    shapes = {}
    for name, info in document["layers"].items():
        module = modules.get(name)
        if module is None:
            raise AdapterFileError(
                f"the adapter adapts layer {name!r}, which this base model ({type(model).__name__}) does not have; "
                f"it was made for {document.get('base_model') or 'another model'}"
            )
        adapted = isinstance(module, PartialLoraLayer)  # load_weights: the model has its adapters already
        reason = None if adapted else unsupported_reason(module)
        if reason is not None:
            raise AdapterFileError(f"layer {name!r} of the base model is a {type(module).__name__}, not a layer "
                                   f"Partial-LoRA adapts: {reason}")
        kind = layer_kind(module)
        base_class = module.base_class if adapted else type(module).__name__
        shape = list(base_shape(module))
        if kind != info["kind"] or shape != info["shape"]:
            raise AdapterFileError(
                f"layer {name!r}: the adapter expects a {info['kind']} of shape {info['shape']} (out, in), the base has a "
                f"{kind} of shape {shape}; this adapter was made for another model"
            )
        expected_class = info.get("base_class") or CLASS_OF_OLD_KINDS.get(info["kind"])
        if base_class != expected_class:
            raise AdapterFileError(
                f"layer {name!r}: the adapter was made for a {expected_class}, the base model's layer is a {base_class} "
                "(its forward may differ); load it into the model it was made for"
            )
        shapes[name] = (kind, *shape)
        if check_base_weights:
            check_adapted_weight(name, module.weight, document, CONFIG_NAME, error=AdapterFileError)
        rank, rows, columns = info["rank"], info["rows"], info["columns"]
        expected = {"lora_A": (rank, columns), "lora_B": (rows, rank), "lora_rows": (rows,), "lora_columns": (columns,)}
        full = {"lora_rows": rows == shape[0], "lora_columns": columns == shape[1]}
        for part, want_shape in expected.items():
            key = f"adapters.{name}.{part}"
            tensor = tensors.get(key)
            if tensor is None and full.get(part):
                continue  # every row (column) kept: no index tensor is stored
            if tensor is None:
                raise AdapterFileError(f"tensor {key!r} is missing from {WEIGHTS_NAME}; the file is damaged or incomplete")
            if tuple(tensor.shape) != want_shape:
                raise AdapterFileError(f"tensor {key!r} has shape {tuple(tensor.shape)}, expected {want_shape}")
            integer = part in ("lora_rows", "lora_columns")
            if integer and tensor.dtype not in (torch.int32, torch.int64):
                raise AdapterFileError(f"tensor {key!r} must be int32 or int64 indices, got {tensor.dtype}")
            if not integer and not tensor.dtype.is_floating_point:
                raise AdapterFileError(f"tensor {key!r} must be floating point, got {tensor.dtype}")
            if not integer and not bool(torch.isfinite(tensor).all()):
                raise AdapterFileError(f"tensor {key!r} contains NaN or infinite values")
        row_index = tensors.get(f"adapters.{name}.lora_rows", torch.arange(shape[0])).to(torch.int64)
        column_index = tensors.get(f"adapters.{name}.lora_columns", torch.arange(shape[1])).to(torch.int64)
        for what, index, size in (("rows", row_index, shape[0]), ("columns", column_index, shape[1])):
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= size):
                raise AdapterFileError(f"layer {name!r}: {what} indices fall outside [0, {size - 1}]; the file is damaged")
            if index.numel() > 1 and not bool((index[1:] > index[:-1]).all()):
                raise AdapterFileError(f"layer {name!r}: {what} indices are not sorted and unique; the file is damaged")
        expected_rank = document["config"].rank_for(name)
        if expected_rank != rank:
            raise AdapterFileError(f"layer {name!r}: rank {rank} disagrees with the config's rank {expected_rank}")
        indices[name] = (row_index, column_index)
        values[f"adapters.{name}.lora_A"] = tensors[f"adapters.{name}.lora_A"]
        values[f"adapters.{name}.lora_B"] = tensors[f"adapters.{name}.lora_B"]
    fingerprint = document.get("base_fingerprint")
    if fingerprint is not None and fingerprint != shape_fingerprint(shapes):
        raise AdapterFileError("the base model's layer fingerprint differs from the one recorded; the config is damaged")
    return indices, values


def _verify_saved_modules(model, document, tensors):
    modules = dict(model.named_modules())
    saved = {}
    for name, entries in document["modules_to_save"].items():
        module = modules.get(name)
        if module is None or not isinstance(entries, dict):
            raise AdapterFileError(f"the adapter saves module {name!r}, which the base model does not have")
        state = module.state_dict()
        for tensor_name, shape in entries.items():
            key = f"modules_to_save.{name}.{tensor_name}"
            if tensor_name not in state:
                raise AdapterFileError(f"module {name!r} of the base has no tensor {tensor_name!r}")
            tensor = tensors.get(key)
            if tensor is None:
                raise AdapterFileError(f"tensor {key!r} is missing from {WEIGHTS_NAME}")
            if list(tensor.shape) != list(state[tensor_name].shape) or list(tensor.shape) != list(shape):
                raise AdapterFileError(
                    f"tensor {key!r} has shape {list(tensor.shape)}, the base model's {name}.{tensor_name} is "
                    f"{list(state[tensor_name].shape)}; e.g. a head for another number of labels"
                )
            if tensor.dtype.is_floating_point != state[tensor_name].dtype.is_floating_point:
                raise AdapterFileError(f"tensor {key!r} has dtype {tensor.dtype}, the base has {state[tensor_name].dtype}")
            if tensor.dtype.is_floating_point and not bool(torch.isfinite(tensor).all()):
                raise AdapterFileError(f"tensor {key!r} contains NaN or infinite values")
            saved[(name, tensor_name)] = tensor
    return saved
