"""The base model check: an adapter loads onto the weights it was trained on, also in bf16 or
fp16, and is refused on negated, permuted or other weights; every loader refuses NaN and inf.

The fingerprint is a fixed, name-seeded sample of each adapted base weight's entries, kept in
``adapter_config.json`` (``base_weight_samples``) and, for a PEFT export, in
``partial_lora_base.json`` beside PEFT's files.
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

import partial_lora
from partial_lora import AdapterFileError, PartialLoraConfig
from partial_lora.adapter_files import SAMPLES_PER_LAYER, sample_indices
from partial_lora.files import document_digest
from partial_lora.peft_interop import BASE_NAME

from conftest import randomize_adapters, tiny_bert, token_batch
from test_io import resign

CONFIG = PartialLoraConfig(r=4, keep_ratio=0.5, target_modules=["query", "value"], modules_to_save=["classifier"])
LAYER = "bert.encoder.layer.0.attention.self.query"


def trained(base=None):
    model = partial_lora.apply(base if base is not None else tiny_bert(), CONFIG)
    randomize_adapters(model)
    return model


@pytest.fixture
def saved(tmp_path):
    model = trained()
    return model, partial_lora.save(model, tmp_path / "adapter")


@pytest.fixture
def exported(tmp_path):
    model = trained()
    return model, partial_lora.export_peft(model, tmp_path / "peft")


def negated(base):
    with torch.no_grad():
        base.get_submodule(LAYER).weight.neg_()
    return base


def rows_permuted(base):
    with torch.no_grad():
        weight = base.get_submodule(LAYER).weight
        weight.copy_(weight[torch.randperm(weight.shape[0], generator=torch.Generator().manual_seed(0))])
    return base


def round_trip(dtype):
    def change(base):
        with torch.no_grad():
            for parameter in base.parameters():
                parameter.copy_(parameter.to(dtype).float())
        return base
    return change


def one_unsampled_entry_changed(base):
    """One entry of LAYER that the fingerprint does not sample, set far outside the weights' range."""
    weight = base.get_submodule(LAYER).weight
    position = next(i for i in range(weight.numel()) if i not in sample_indices(LAYER, weight.numel()))
    with torch.no_grad():
        weight.view(-1)[position] = 5.0
    return base


OTHER_BASES = {
    "negated": lambda: negated(tiny_bert()),
    "one unsampled entry changed": lambda: one_unsampled_entry_changed(tiny_bert()),
    "rows permuted": lambda: rows_permuted(tiny_bert()),
    "another seed": lambda: tiny_bert(seed=123),
}
SAME_BASES = {
    "fp32": tiny_bert,
    "bf16 model": lambda: tiny_bert().to(torch.bfloat16),
    "fp16 model": lambda: tiny_bert().to(torch.float16),
    "bf16-rounded fp32": lambda: round_trip(torch.bfloat16)(tiny_bert()),
}


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_untouched(model, before):
    assert not partial_lora.adapter_layers(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_config_holds_a_name_seeded_sample_of_each_adapted_weight(saved):
    model, folder = saved
    samples = json.loads((folder / "adapter_config.json").read_text())["base_weight_samples"]
    assert samples.keys() == partial_lora.adapter_layers(model).keys()
    for name, layer in partial_lora.adapter_layers(model).items():
        assert samples[name]["indices"] == sample_indices(name, layer.weight.numel())
        assert len(samples[name]["values"]) == SAMPLES_PER_LAYER
        assert samples[name]["values"] == layer.weight.flatten()[samples[name]["indices"]].double().tolist()
    # two layers of one shape are sampled at other positions
    assert samples[LAYER]["indices"] != samples[LAYER.replace("query", "value")]["indices"]


@pytest.mark.parametrize("base", list(OTHER_BASES))
def test_load_refuses_other_base_weights(saved, base):
    _, folder = saved
    other = OTHER_BASES[base]()
    before = snapshot(other)
    with pytest.raises(AdapterFileError, match="base weights differ"):
        partial_lora.load(other, folder)
    assert_untouched(other, before)
    assert partial_lora.adapter_layers(partial_lora.load(OTHER_BASES[base](), folder, check_base_weights=False))


@pytest.mark.parametrize("base", list(SAME_BASES))
def test_load_accepts_the_same_weights_in_another_precision(saved, base):
    model, folder = saved
    loaded = partial_lora.load(SAME_BASES[base](), folder)
    assert loaded.dtype == SAME_BASES[base]().dtype
    if base == "fp32":
        batch = token_batch()
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


def test_an_adapter_trained_on_a_bf16_base_loads_onto_the_fp32_weights(tmp_path):
    folder = partial_lora.save(trained(tiny_bert().to(torch.bfloat16)), tmp_path / "bf16")
    assert partial_lora.adapter_layers(partial_lora.load(tiny_bert(), folder))
    with pytest.raises(AdapterFileError, match="base weights differ"):
        partial_lora.load(negated(tiny_bert()), folder)


def test_load_weights_checks_the_base_too(saved):
    _, folder = saved
    model = partial_lora.apply(negated(tiny_bert()), CONFIG)
    before = snapshot(model)
    with pytest.raises(AdapterFileError, match="base weights differ"):
        partial_lora.load_weights(model, folder)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    partial_lora.load_weights(model, folder, check_base_weights=False)


def test_files_without_samples_are_still_checked_by_their_checksums(saved):
    _, folder = saved
    path = folder / "adapter_config.json"
    document = json.loads(path.read_text())
    del document["base_weight_samples"]  # as written before the samples existed
    document["document_sha256"] = document_digest(document)
    path.write_text(json.dumps(document))
    assert partial_lora.adapter_layers(partial_lora.load(tiny_bert(), folder))
    with pytest.raises(AdapterFileError, match=r"base weights differ .*mean \|w\|"):
        partial_lora.load(tiny_bert(seed=123), folder)


@pytest.mark.parametrize("samples", [
    [1, 2],
    {LAYER: {"indices": [0, 1], "values": [0.5]}},
    {LAYER: {"indices": [-1], "values": [0.5]}},
    {LAYER: {"indices": [0], "values": ["x"]}},
    {LAYER: {"indices": [10**9], "values": [0.5]}},
])
def test_malformed_samples_are_refused_as_damage(saved, samples):
    _, folder = saved
    path = folder / "adapter_config.json"
    document = json.loads(path.read_text())
    document["base_weight_samples"] = samples
    document["document_sha256"] = document_digest(document)
    path.write_text(json.dumps(document))
    base = tiny_bert()
    before = snapshot(base)
    with pytest.raises(AdapterFileError, match="base_weight_samples|damaged"):
        partial_lora.load(base, folder)
    assert_untouched(base, before)


# -- PEFT folders ------------------------------------------------------------------------
def test_export_writes_the_fingerprint_beside_peft_files_and_peft_still_loads_them(exported):
    model, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", BASE_NAME]
    peft_config = json.loads((folder / "adapter_config.json").read_text())
    assert not any("sample" in key or "partial" in key for key in peft_config)  # PEFT's config is PEFT's alone
    fingerprint = json.loads((folder / BASE_NAME).read_text())
    assert fingerprint["base_weight_samples"].keys() == partial_lora.adapter_layers(model).keys()
    batch = token_batch()
    peft_model = PeftModel.from_pretrained(tiny_bert(), folder).eval()
    torch.testing.assert_close(peft_model(**batch).logits, model(**batch).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("base", list(OTHER_BASES))
def test_import_peft_refuses_other_base_weights(exported, base):
    _, folder = exported
    other = OTHER_BASES[base]()
    before = snapshot(other)
    with pytest.raises(AdapterFileError, match="base weights differ"):
        partial_lora.import_peft(other, folder)
    assert_untouched(other, before)
    assert partial_lora.adapter_layers(partial_lora.import_peft(OTHER_BASES[base](), folder, check_base_weights=False))


def test_import_peft_accepts_the_same_weights_in_bf16(exported):
    _, folder = exported
    assert partial_lora.adapter_layers(partial_lora.import_peft(tiny_bert().to(torch.bfloat16), folder))


def test_a_peft_folder_without_the_fingerprint_still_imports(exported):
    _, folder = exported
    (folder / BASE_NAME).unlink()
    assert partial_lora.adapter_layers(partial_lora.import_peft(tiny_bert(), folder))


def test_a_damaged_fingerprint_is_refused(exported):
    _, folder = exported
    path = folder / BASE_NAME
    path.write_text(path.read_text().replace('"values": [', '"values": [1.5, ', 1))
    with pytest.raises(AdapterFileError, match="checksum"):
        partial_lora.import_peft(tiny_bert(), folder)
    path.write_text("{not json")
    with pytest.raises(AdapterFileError, match="not valid JSON"):
        partial_lora.import_peft(tiny_bert(), folder)


def first(tensors, part):
    return next(k for k in sorted(tensors) if k.endswith(part))


PEFT_EDITS = {
    "NaN in lora_B": lambda t: {**t, first(t, "lora_B.weight"): torch.full_like(t[first(t, "lora_B.weight")], float("nan"))},
    "inf in lora_A": lambda t: {**t, first(t, "lora_A.weight"): torch.full_like(t[first(t, "lora_A.weight")], float("inf"))},
    "inf-filled head": lambda t: {**t, first(t, "classifier.weight"): torch.full_like(t[first(t, "classifier.weight")], float("inf"))},
    "integer head": lambda t: {**t, first(t, "classifier.bias"): torch.zeros(3, dtype=torch.int64)},
}


@pytest.mark.parametrize("edit", list(PEFT_EDITS))
def test_import_peft_refuses_non_finite_or_mistyped_tensors(exported, edit):
    _, folder = exported
    path = folder / "adapter_model.safetensors"
    save_file(PEFT_EDITS[edit](load_file(path)), path)
    base = tiny_bert()
    before = snapshot(base)
    with pytest.raises(AdapterFileError, match="NaN or infinite|dtype"):
        partial_lora.import_peft(base, folder)
    assert_untouched(base, before)


def test_a_dense_peft_lora_with_nan_is_refused(tmp_path):
    peft_model = get_peft_model(tiny_bert(), LoraConfig(r=4, target_modules=["value"]))
    with torch.no_grad():
        next(p for n, p in peft_model.named_parameters() if "lora_B" in n).fill_(float("nan"))
    peft_model.save_pretrained(tmp_path / "dense")
    with pytest.raises(AdapterFileError, match="NaN or infinite"):
        partial_lora.import_peft(tiny_bert(), tmp_path / "dense")


# -- load_weights: the same finite-value checks as load ------------------------------------
@pytest.mark.parametrize("edit", ["adapters", "modules_to_save"])
def test_load_weights_refuses_non_finite_tensors(saved, edit):
    _, folder = saved
    path = folder / "adapter_model.safetensors"
    tensors = load_file(path)
    key = first(tensors, "lora_A") if edit == "adapters" else "modules_to_save.classifier.weight"
    tensors[key] = torch.full_like(tensors[key], float("nan") if edit == "adapters" else float("inf"))
    save_file(tensors, path)
    resign(folder)
    model = partial_lora.apply(tiny_bert(), CONFIG)
    before = snapshot(model)
    with pytest.raises(AdapterFileError, match="NaN or infinite"):
        partial_lora.load_weights(model, folder)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
