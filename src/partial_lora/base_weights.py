"""What a saved adapter records of the base model it was trained on, and the check against it.

An adapter is a difference from one set of base weights; put onto other weights it gives
a wrong model without any error. A saved adapter therefore records:

* of each **adapted** weight, 32 entries at name-seeded positions (:func:`weight_samples`)
  and its mean absolute value (:func:`weight_checksum`): a negated, permuted, other or
  locally edited weight is refused;
* of every **other** tensor of the base (parameters and persistent buffers outside the
  adapted layers and outside ``modules_to_save``), 8 entries and its mean absolute value
  (:func:`other_tensor_fingerprints`): embeddings, unadapted layers, norms, and BatchNorm
  statistics that training in train mode moved, though the adapter does not hold them.

The same weights in bfloat16 or float16 pass every check (the tolerances below). The
check functions take the exception class to raise (``error``), as :mod:`partial_lora.files`
does, so the adapter folders and the PEFT export report mismatches alike.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from .checks import is_non_negative_int

# This many entries of each adapted weight, and how close a base's entries must be to them.
# 2^-7 relative is twice bf16's rounding error (fp16's is smaller); 2^-24 absolute covers
# fp16's subnormals. A negated, permuted or other weight misses by far more.
SAMPLES_PER_LAYER = 32
SAMPLE_RTOL = 2.0**-7
SAMPLE_ATOL = 2.0**-24
# Every other base tensor: this many entries, and its mean |x| up to this size (a larger
# tensor, an embedding or an unadapted projection of a large model, is sampled only, so that
# a save does not read the whole model); ~0.2 KB of JSON per tensor (SmolLM2-135M: 243).
SAMPLES_PER_OTHER_TENSOR = 8
MEAN_ABS_MAX_ENTRIES = 1 << 22
# Mean |w| agrees within this fraction for the same weights in bf16 or fp16.
CHECKSUM_RTOL = 1e-3
# Tensors are summed in float64 this many entries at a time (bounded extra memory).
CHECKSUM_CHUNK = 1 << 22
STATISTICS = ("running_mean", "running_var", "num_batches_tracked")
FIX = "load the right base model, or pass check_base_weights=False"


# -- adapted weights -------------------------------------------------------------------
def sample_indices(name: str, numel: int, count: int = SAMPLES_PER_LAYER) -> list[int]:
    """``count`` positions in a flattened weight of ``numel`` entries, fixed by the module's name
    (sha256 of ``"<name>/<i>"``, so two layers of one shape are sampled at other positions)."""
    return [int.from_bytes(hashlib.sha256(f"{name}/{i}".encode()).digest()[:8], "little") % numel
            for i in range(count)]


def weight_samples(name: str, weight: torch.Tensor, count: int = SAMPLES_PER_LAYER) -> dict[str, list]:
    """A fingerprint of a base weight: ``{"indices": [...], "values": [...]}``, the values of
    ``count`` :func:`sample_indices` positions of the flattened weight (``[out * in]``), as float64."""
    indices = sample_indices(name, weight.numel(), count)
    flat = weight.detach().reshape(-1)
    values = flat[torch.tensor(indices, device=flat.device)].to(torch.float64).cpu().tolist()
    return {"indices": indices, "values": values}


def weight_checksum(weight: torch.Tensor) -> float:
    """Mean absolute value of a tensor, summed in float64 (0.0 for an empty tensor).

    Checked next to :func:`weight_samples` for adapted weights (it sees every entry, so a
    large local edit the 32 samples miss changes it; alone, as in files written before the
    samples, it misses a negated or permuted weight), and alone for every other tensor.
    """
    flat = weight.detach().reshape(-1)
    if flat.numel() == 0:
        return 0.0
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    total = sum(float(chunk.abs().sum(dtype=torch.float64)) for chunk in flat.split(CHECKSUM_CHUNK))
    return total / flat.numel()


def _close(found: float, want: float, exact: bool = False) -> bool:
    """Entries (and means of other tensors) of the same tensor in another precision: within
    :data:`SAMPLE_RTOL` (``exact``, for integers and booleans: equal); NaN matches NaN, an
    infinity itself."""
    if found == want or (math.isnan(found) and math.isnan(want)):
        return True
    return not exact and abs(found - want) <= SAMPLE_RTOL * abs(want) + SAMPLE_ATOL


def _first_mismatch(weight: torch.Tensor, samples: Mapping[str, list],
                    exact: bool = False) -> tuple[int, float, float] | None:
    """``(position, found, recorded)`` of the first sampled entry that is not :func:`_close`, or None."""
    indices, values = samples["indices"], samples["values"]
    flat = weight.detach().reshape(-1)
    have = flat[torch.tensor(indices, device=flat.device, dtype=torch.int64)].to(torch.float64).cpu().tolist()
    for position, found, want in zip(indices, have, values):
        if not _close(found, want, exact):
            return position, found, want
    return None


def check_weight_samples(name: str, weight: torch.Tensor, samples: Mapping[str, list], source: Any, *,
                         error: type[Exception]) -> None:
    """Refuse a base weight whose entries differ from the recorded ``samples``.

    The same weights stored in bf16 or fp16 pass (see :data:`SAMPLE_RTOL`); negated, permuted
    or other weights do not. ``source`` names the file the samples come from.
    """
    if any(i >= weight.numel() for i in samples["indices"]):
        raise error(f"{source}: the base-weight samples of layer {name!r} point outside its weight; the file is damaged")
    mismatch = _first_mismatch(weight, samples)
    if mismatch is not None:
        position, found, want = mismatch
        raise error(
            f"layer {name!r}: the base weights differ from those the adapter was trained on (entry "
            f"{position} of the weight is {found:.6g}, it was {want:.6g} in training; another "
            f"checkpoint, or weights changed since); {FIX}"
        )


def _same_checksum(have: float, want: float) -> bool:
    if have == want:
        return True
    if math.isnan(have) or math.isnan(want):
        return math.isnan(have) and math.isnan(want)
    return abs(have - want) <= CHECKSUM_RTOL * max(abs(want), 1e-12)


def check_weight_checksum(name: str, weight: torch.Tensor, want: float, *, error: type[Exception]) -> None:
    """Refuse a base weight whose :func:`weight_checksum` is not the recorded ``want`` (within
    0.1 %, which the same weights in bf16 or fp16 stay inside)."""
    have = weight_checksum(weight)
    if not _same_checksum(have, float(want)):
        raise error(
            f"layer {name!r}: the base weights differ from those the adapter was trained on (mean |w| "
            f"{have:.6g} vs {float(want):.6g}); {FIX}"
        )


def _recorded_number(value: Any) -> bool:
    """An int or float as a record holds it (NaN and infinities included: a base may hold them)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def valid_weight_samples(samples: Any) -> bool:
    """``{layer: {"indices": [int >= 0, ...], "values": [number, ...]}}``, lists of one length."""
    def numbers(values):
        return isinstance(values, list) and all(_recorded_number(v) for v in values)

    return isinstance(samples, dict) and all(
        isinstance(entry, dict) and isinstance(entry.get("indices"), list) and numbers(entry.get("values"))
        and all(is_non_negative_int(i) for i in entry["indices"]) and len(entry["indices"]) == len(entry["values"])
        for entry in samples.values()
    )


def valid_checksums(checksums: Any) -> bool:
    """``{name: number}``."""
    return isinstance(checksums, dict) and all(_recorded_number(v) for v in checksums.values())


# -- everything else -------------------------------------------------------------------
def _is_covered(name: str, covered: set[str]) -> bool:
    """Whether module ``name`` is one of ``covered`` or inside one (a set lookup per prefix)."""
    parts = name.split(".")
    return any(".".join(parts[:i]) in covered for i in range(1, len(parts) + 1))


def _persistent_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*module.named_parameters(recurse=False),
            *((n, b) for n, b in module.named_buffers(recurse=False)
              if b is not None and n not in module._non_persistent_buffers_set)]


def other_tensors(model: nn.Module, covered: Iterable[str], adapted: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer of ``model`` by full name, except those of the
    modules named in ``covered`` (the adapted layers and ``modules_to_save``) and their
    children, plus the ``bias`` of each ``adapted`` layer (base state the adapter does not
    hold). Left out besides: tensors sharing memory with a covered one (a head tied to the
    embeddings) and tensors without data here (``meta``: offloaded by ``accelerate``).
    Complex tensors are given as their real view ``[..., 2]``."""
    covered, adapted = set(covered), set(adapted)
    found: dict[str, torch.Tensor] = {}
    skipped_memory: set[int] = set()
    for module_name, module in model.named_modules():
        inside = bool(module_name) and _is_covered(module_name, covered)
        tensors = _persistent_tensors(module)
        if module_name in adapted and isinstance(getattr(module, "bias", None), torch.Tensor):
            found[f"{module_name}.bias"] = module.bias
        for tensor_name, tensor in tensors:
            if inside:
                skipped_memory.add(tensor.data_ptr())
            else:
                found[f"{module_name}.{tensor_name}" if module_name else tensor_name] = tensor
    kept = {n: t for n, t in found.items()
            if t.numel() == 0 or t.data_ptr() not in skipped_memory or n.rsplit(".", 1)[0] in adapted}
    return {n: torch.view_as_real(t.detach()) if t.is_complex() else t for n, t in kept.items() if not t.is_meta}


def other_tensor_fingerprints(model: nn.Module, covered: Iterable[str],
                              adapted: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Of each of :func:`other_tensors`: ``{full name: {"numel": entries, "values": [...],
    "mean_abs": mean |x|}}``, the values at :data:`SAMPLES_PER_OTHER_TENSOR` positions that
    :func:`sample_indices` derives from the name and ``numel`` (a negated or permuted tensor
    keeps its mean |x|, not its entries). ``mean_abs`` is left out for tensors over
    :data:`MEAN_ABS_MAX_ENTRIES` (a pass over a large model's every weight at each save)."""
    fingerprints = {}
    for name, tensor in other_tensors(model, covered, adapted).items():
        exact = not tensor.is_floating_point()
        keep = (lambda v: v) if exact else _short
        values = weight_samples(name, tensor, SAMPLES_PER_OTHER_TENSOR)["values"] if tensor.numel() else []
        entry: dict[str, Any] = {"numel": tensor.numel(), "values": [keep(v) for v in values]}
        if tensor.numel() <= MEAN_ABS_MAX_ENTRIES:
            entry["mean_abs"] = keep(weight_checksum(tensor))
        fingerprints[name] = entry
    return fingerprints


def _short(value: float) -> float:
    """``value`` to 9 significant digits: far inside every tolerance here, half the JSON."""
    return float(f"{value:.9g}")


def valid_other_fingerprints(fingerprints: Any) -> bool:
    """``{name: {"numel": int >= 0, "values": [number, ...], "mean_abs": number (optional)}}``,
    with as many values as :func:`other_tensor_fingerprints` samples of that many entries."""
    def valid(entry):
        return (isinstance(entry, dict) and is_non_negative_int(entry.get("numel"))
                and ("mean_abs" not in entry or _recorded_number(entry["mean_abs"]))
                and isinstance(entry.get("values"), list) and all(_recorded_number(v) for v in entry["values"])
                and len(entry["values"]) == (SAMPLES_PER_OTHER_TENSOR if entry["numel"] else 0))

    return isinstance(fingerprints, dict) and all(valid(entry) for entry in fingerprints.values())


def check_other_tensors(model: nn.Module, document: Mapping[str, Any], covered: Iterable[str],
                        adapted: Iterable[str] = (), *, error: type[Exception]) -> None:
    """Refuse a base whose tensors outside ``covered`` (and ``adapted`` layers' biases) differ
    from those ``document`` recorded (:func:`other_tensor_fingerprints`): a sampled entry, or
    the mean |x|. Files written before 2026-12-02 recorded none.

    A recorded name the model lacks (or one it has and the record lacks) is not compared:
    the layers the adapter needs are checked by name and shape elsewhere, and a model built
    with another version of its library may name a buffer differently. A tensor of another
    size is reported.
    """
    have = other_tensors(model, covered, adapted)
    for name, entry in document.get("base_other_tensors", {}).items():
        tensor = have.get(name)
        if tensor is None:
            continue
        exact = not tensor.is_floating_point()
        if tensor.numel() != entry["numel"]:
            problem = f"has {tensor.numel()} entries, {entry['numel']} in training"
        else:
            samples = {"indices": sample_indices(name, entry["numel"], len(entry["values"])), "values": entry["values"]}
            if (mismatch := _first_mismatch(tensor, samples, exact)) is not None:
                problem = f"has entry {mismatch[0]} = {mismatch[1]:.6g}, it was {mismatch[2]:.6g} in training"
            elif "mean_abs" in entry and not _close(mean := weight_checksum(tensor), float(entry["mean_abs"]), exact):
                problem = f"has mean |x| {mean:.6g}, it was {float(entry['mean_abs']):.6g} in training"
            else:
                continue
        if name.rsplit(".", 1)[-1] in STATISTICS:
            hint = ("batch-norm statistics move while a model trains in train mode, and the adapter does not hold "
                    "them: train with the norm layers in eval mode, or name them in modules_to_save")
        else:
            hint = ("another checkpoint, or a layer that building the model initialises at random (one the "
                    "checkpoint lacks, such as a new pooler: name it in modules_to_save so the adapter holds it)")
        raise error(
            f"the base weights differ from those the adapter was trained on outside the adapted layers: tensor "
            f"{name!r} {problem} ({hint}); the adapter would give another model than the trained one; {FIX}"
        )


# -- the record a file keeps, and its check ---------------------------------------------
FIELDS = {  # field of the record: what it must look like
    "base_weight_samples": "{layer: {indices, values}} lists of one length",
    "base_weight_checksums": "{layer: number}",
    "base_other_tensors": "{tensor: {numel, values, mean_abs}}",
}


def record(model: nn.Module, layers: Mapping[str, nn.Module], covered: Iterable[str]) -> dict[str, Any]:
    """What a file keeps of the base: the :data:`FIELDS`, of the adapted ``layers`` (by name;
    each has a ``weight``) and of every tensor outside ``covered`` (the adapted layers and the
    modules saved with the adapter)."""
    offloaded = [n for n, layer in layers.items() if layer.weight.is_meta]
    if offloaded:
        raise ValueError(f"the base weight of adapted layer {offloaded[0]!r} is offloaded (on the meta device); an "
                         "adapter saved from it could not be checked against its base: load the base onto a device")
    return {
        "base_weight_samples": {n: weight_samples(n, layer.weight) for n, layer in layers.items()},
        "base_weight_checksums": {n: weight_checksum(layer.weight) for n, layer in layers.items()},
        "base_other_tensors": other_tensor_fingerprints(model, covered, adapted=layers),
    }


def malformed_field(document: Mapping[str, Any], required: Iterable[str] = ()) -> str | None:
    """The first of :data:`FIELDS` that ``document`` holds (or must hold) in another shape, or None."""
    valid = {"base_weight_samples": valid_weight_samples, "base_weight_checksums": valid_checksums,
             "base_other_tensors": valid_other_fingerprints}
    required = set(required)
    for field, is_valid in valid.items():
        if (field in document or field in required) and not is_valid(document.get(field)):
            return field
    return None


def check_adapted_weight(name: str, weight: torch.Tensor, document: Mapping[str, Any], source: Any, *,
                         error: type[Exception]) -> None:
    """Check an adapted layer's base ``weight`` against what ``document`` recorded of it (its
    samples and mean |w|, where present: older files hold only the mean)."""
    samples, checksums = document.get("base_weight_samples", {}), document.get("base_weight_checksums", {})
    if weight.is_meta and (name in samples or name in checksums):
        raise error(f"layer {name!r}: its base weight is offloaded (on the meta device) and cannot be compared with "
                    f"the one the adapter was trained on; load the base onto a device, or pass check_base_weights=False")
    if name in samples:
        check_weight_samples(name, weight, samples[name], source, error=error)
    if name in checksums:  # with the samples: catches edits the samples miss
        check_weight_checksum(name, weight, checksums[name], error=error)
