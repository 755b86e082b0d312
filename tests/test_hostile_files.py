"""Damaged and hostile adapter folders are refused cleanly; the base model is never touched.

Two families of mutation:
* byte-level damage (truncation, flipped bits, appended or replaced bytes, a deleted file):
  caught by the checksums;
* crafted files whose checksums were recomputed (a deliberate edit): wrong dtypes, indices
  out of range, duplicated or unsorted indices, shapes for another model, huge declared
  sizes, unknown keys, a pickle file offered instead of safetensors: caught by validation.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import partial_lora
from partial_lora import AdapterFileError, PartialLoraConfig

from conftest import randomize_adapters, tiny_bert
from test_io import resign

@pytest.fixture(scope="module")
def adapter_bytes(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("adapter")
    model = partial_lora.apply(tiny_bert(), PartialLoraConfig(r=4, keep_ratio=0.4, modules_to_save=["classifier"]))
    randomize_adapters(model)
    partial_lora.save(model, folder)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture(scope="module")
def base() -> torch.nn.Module:
    return tiny_bert()


def write(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for name, content in files.items():
        (folder / name).write_bytes(content)


def assert_refused_and_untouched(base, folder) -> None:
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(AdapterFileError) as info:
        partial_lora.load(base, folder)
    assert len(str(info.value)) > 20
    assert not partial_lora.adapter_layers(base)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())


def _same_json(a: bytes, b: bytes) -> bool:
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return False


MUTATIONS = st.sampled_from(["truncate", "flip", "append", "replace", "delete"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    target=st.sampled_from(["adapter_model.safetensors", "adapter_config.json"]),
    mutation=MUTATIONS,
    position=st.floats(min_value=0.0, max_value=0.999),
    bit=st.integers(min_value=0, max_value=7),
    junk=st.binary(min_size=1, max_size=64),
)
def test_byte_level_damage_is_refused(adapter_bytes, base, tmp_path_factory, target, mutation, position, bit, junk):
    files = dict(adapter_bytes)
    content = bytearray(files[target])
    index = int(position * len(content))
    if mutation == "truncate":
        content = content[:index]
    elif mutation == "flip":
        content[index] ^= 1 << bit
    elif mutation == "append":
        content += junk
    elif mutation == "replace":
        content[index : index + len(junk)] = junk
        if bytes(content) == files[target]:
            return
    if mutation == "delete":
        del files[target]
    else:
        files[target] = bytes(content)
        if target.endswith(".json") and _same_json(files[target], adapter_bytes[target]):
            return  # e.g. the 17th digit of a float that parses to the same number: nothing was damaged
    folder = tmp_path_factory.mktemp("damaged")
    write(folder, files)
    assert_refused_and_untouched(base, folder)


def crafted(adapter_bytes, tmp_path, edit) -> Path:
    """Apply ``edit(tensors) -> tensors`` to the tensor file and re-sign the folder."""
    folder = tmp_path / "crafted"
    write(folder, adapter_bytes)
    tensors = load_file(folder / "adapter_model.safetensors")
    save_file(edit(dict(tensors)), folder / "adapter_model.safetensors")
    resign(folder)
    return folder


def first(tensors, suffix):
    return next(k for k in sorted(tensors) if k.endswith(suffix))


CRAFTED_EDITS = {
    "float indices": lambda t: {**t, first(t, "lora_rows"): t[first(t, "lora_rows")].float()},
    "integer weights": lambda t: {**t, first(t, "lora_A"): t[first(t, "lora_A")].to(torch.int32)},
    "index out of range": lambda t: {**t, first(t, "lora_rows"): torch.cat([t[first(t, "lora_rows")][:-1], torch.tensor([10_000], dtype=torch.int32)])},
    "negative index": lambda t: {**t, first(t, "lora_columns"): torch.cat([torch.tensor([-1], dtype=torch.int32), t[first(t, "lora_columns")][1:]])},
    "duplicated indices": lambda t: {**t, first(t, "lora_rows"): torch.cat([t[first(t, "lora_rows")][:1], t[first(t, "lora_rows")][:-1]])},
    "unsorted indices": lambda t: {**t, first(t, "lora_columns"): t[first(t, "lora_columns")].flip(0)},
    "shape for another model": lambda t: {**t, first(t, "lora_A"): torch.zeros(4, 99)},
    "wrong rank": lambda t: {**t, first(t, "lora_B"): torch.zeros(t[first(t, "lora_B")].shape[0], 7)},
    "unknown key": lambda t: {**t, "adapters.bert.pooler.dense.lora_A": torch.zeros(4, 4)},
    "missing tensor": lambda t: {k: v for k, v in t.items() if k != first(t, "lora_B")},
    "NaN weights": lambda t: {**t, first(t, "lora_A"): torch.full_like(t[first(t, "lora_A")], float("nan"))},
    "head for another label count": lambda t: {**t, "modules_to_save.classifier.weight": torch.zeros(7, 32)},
}


@pytest.mark.parametrize("edit", list(CRAFTED_EDITS))
def test_crafted_tensor_files_are_refused(adapter_bytes, base, tmp_path, edit):
    folder = crafted(adapter_bytes, tmp_path, CRAFTED_EDITS[edit])
    assert_refused_and_untouched(base, folder)


def test_huge_declared_sizes_are_refused_without_allocating(adapter_bytes, base, tmp_path):
    folder = tmp_path / "huge"
    write(folder, adapter_bytes)
    path = folder / "adapter_model.safetensors"
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    key = next(k for k in header if k.endswith("lora_A"))
    header[key]["shape"] = [1 << 30, 1 << 30]
    header[key]["data_offsets"] = [header[key]["data_offsets"][0], header[key]["data_offsets"][0] + (1 << 62)]
    new_header = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new_header)) + new_header + raw[8 + length :])
    resign(folder)
    assert_refused_and_untouched(base, folder)


def test_config_edits_that_change_meaning_are_refused_after_resigning(adapter_bytes, base, tmp_path):
    from partial_lora.files import document_digest

    for edit in ("rank", "shape", "kind", "format_version"):
        folder = tmp_path / edit
        write(folder, adapter_bytes)
        document = json.loads((folder / "adapter_config.json").read_text())
        layer = next(iter(document["layers"].values()))
        if edit == "rank":
            layer["rank"] = 9
        elif edit == "shape":
            layer["shape"] = [32, 31]
        elif edit == "kind":
            layer["kind"] = "conv1x1"
        else:
            document["format_version"] = 99
        document["document_sha256"] = document_digest(document)
        (folder / "adapter_config.json").write_text(json.dumps(document))
        assert_refused_and_untouched(base, folder)


def test_a_pickle_offered_instead_of_safetensors_is_not_read(adapter_bytes, base, tmp_path):
    folder = tmp_path / "pickle"
    files = dict(adapter_bytes)
    del files["adapter_model.safetensors"]
    # Not a real pickle: reading it would be the bug, whatever it holds.
    files["adapter_model.bin"] = b"\x80\x04\x95 not a pickle to be loaded"
    write(folder, files)
    assert_refused_and_untouched(base, folder)


def test_nothing_in_the_project_unpickles():
    """Every torch.load passes weights_only=True; no pickle/joblib/dill/numpy allow_pickle loads."""
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in [*root.glob("src/**/*.py"), *root.glob("benchmarks/**/*.py"), *root.glob("studies/**/*.py")]:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in match.group(1):
                offenders.append(f"{path.name}: torch.load without weights_only=True")
        for pattern in (r"\bpickle\.loads?\(", r"\bjoblib\.load\(", r"\bdill\.loads?\(", r"allow_pickle\s*=\s*True",
                        r"\.load_state\(", r"\bcloudpickle\."):
            if re.search(pattern, text):
                offenders.append(f"{path.name}: {pattern}")
    assert not offenders, offenders


def test_deeply_nested_or_mistyped_config_fields_are_refused(adapter_bytes, base, tmp_path):
    """Found by benchmarks/reliability.py: JSON nested too deep, and re-signed configs whose
    checksum or saved-module fields have the wrong types, are refused like any damage."""
    from partial_lora.adapter_files import CONFIG_NAME
    from partial_lora.files import document_digest

    write(tmp_path / "deep", {**adapter_bytes, CONFIG_NAME: b"[" * 100_000 + b"]" * 100_000})
    assert_refused_and_untouched(base, tmp_path / "deep")
    edits = {"checksums": ("base_weight_checksums", [[]]), "checksums-null": ("base_weight_checksums", None),
             "saved": ("modules_to_save", {"classifier": 0})}
    for label, (field, value) in edits.items():
        document = json.loads(adapter_bytes[CONFIG_NAME])
        document[field] = value
        document["document_sha256"] = document_digest(document)
        write(tmp_path / label, {**adapter_bytes, CONFIG_NAME: json.dumps(document).encode()})
        assert_refused_and_untouched(base, tmp_path / label)
