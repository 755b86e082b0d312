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
from partial_lora.base_weights import SAMPLES_PER_LAYER, sample_indices
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


# -- outside the adapted layers: every other base tensor's mean |x| ------------------------
def embeddings_negated(base):
    with torch.no_grad():
        base.bert.embeddings.word_embeddings.weight.neg_()
    return base


def unadapted_key_negated(base):
    with torch.no_grad():
        base.get_submodule(LAYER.replace("query", "key")).weight.neg_()
    return base


def layer_norm_scaled(base):
    with torch.no_grad():
        base.bert.encoder.layer[1].output.LayerNorm.weight.mul_(1.1)
    return base


LAYER_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"
OUTSIDE_BASES = {
    "word embeddings negated": lambda: embeddings_negated(tiny_bert()),
    "unadapted key layer negated": lambda: unadapted_key_negated(tiny_bert()),
    "a LayerNorm scaled by 1.1": lambda: layer_norm_scaled(tiny_bert()),
}


@pytest.mark.parametrize("base", list(OUTSIDE_BASES))
@pytest.mark.parametrize("loader", ["load", "import_peft"])
def test_bases_that_differ_only_outside_the_adapted_layers_are_refused(saved, exported, loader, base):
    folder = saved[1] if loader == "load" else exported[1]
    other = OUTSIDE_BASES[base]()
    before = snapshot(other)
    with pytest.raises(AdapterFileError, match="base weights differ .* outside the adapted layers: tensor 'bert"):
        getattr(partial_lora, loader)(other, folder)
    assert_untouched(other, before)
    assert partial_lora.adapter_layers(getattr(partial_lora, loader)(OUTSIDE_BASES[base](), folder,
                                                                     check_base_weights=False))


@pytest.mark.parametrize("loader", ["load", "import_peft"])
def test_a_head_in_modules_to_save_may_differ_in_the_base(saved, exported, loader):
    """The classifier is saved with the adapter and replaces the base's (another random head)."""
    model, folder = saved if loader == "load" else exported
    base = tiny_bert()
    with torch.no_grad():
        base.classifier.weight.normal_(generator=torch.Generator().manual_seed(5))
    loaded = getattr(partial_lora, loader)(base, folder).eval()
    batch = token_batch()
    torch.testing.assert_close(loaded(**batch).logits, model.eval()(**batch).logits, rtol=0, atol=1e-5)


def test_the_config_records_every_other_tensor_of_the_base(saved):
    model, folder = saved
    recorded = json.loads((folder / "adapter_config.json").read_text())["base_other_tensors"]
    assert "bert.embeddings.word_embeddings.weight" in recorded
    assert LAYER.replace("query", "key") + ".weight" in recorded
    assert LAYER + ".bias" in recorded  # the adapted layer's bias is base state the adapter lacks
    assert not any(name.startswith((LAYER + ".", "classifier.")) and name != LAYER + ".bias" for name in recorded)
    embeddings = model.bert.embeddings.word_embeddings.weight
    entry = recorded[LAYER_EMBEDDINGS]
    assert entry["mean_abs"] == pytest.approx(float(embeddings.double().abs().mean()), rel=1e-8)  # 9 digits kept
    assert entry["numel"] == embeddings.numel() and len(entry["values"]) == 8
    sampled = embeddings.flatten()[sample_indices(LAYER_EMBEDDINGS, embeddings.numel(), 8)].double().tolist()
    assert entry["values"] == pytest.approx(sampled, rel=1e-8)


class ConvNet(torch.nn.Module):
    """Conv, batch norm, a linear head: batch-norm statistics move in train mode."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 6)
        self.head = torch.nn.Linear(6, 2)

    def forward(self, x):
        return self.head(torch.relu(self.fc(torch.relu(self.norm(self.conv(x))).mean(dim=(2, 3)))))


def trained_in_train_mode(modules_to_save):
    model = partial_lora.apply(ConvNet(), PartialLoraConfig(r=2, keep_ratio=0.5, target_modules=["fc"],
                                                             modules_to_save=modules_to_save))
    randomize_adapters(model)
    model.train()
    with torch.no_grad():
        for step in range(3):
            model(torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(step)) * 3 + 1)
    return model.eval()


def test_batch_norm_statistics_moved_in_training_are_named_when_the_adapter_lacks_them(tmp_path):
    folder = partial_lora.save(trained_in_train_mode(["head"]), tmp_path / "adapter")
    base = ConvNet()
    before = snapshot(base)
    with pytest.raises(AdapterFileError, match=r"tensor 'norm\.(running_mean|running_var|num_batches_tracked)'.*batch-norm statistics.*modules_to_save"):
        partial_lora.load(base, folder)
    assert_untouched(base, before)


def test_batch_norm_layers_in_modules_to_save_bring_their_statistics(tmp_path):
    model = trained_in_train_mode(["head", "norm"])
    loaded = partial_lora.load(ConvNet(), partial_lora.save(model, tmp_path / "adapter")).eval()
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)


def test_a_tied_head_in_modules_to_save_loads_onto_a_fresh_base(tmp_path):
    """GPT-2 ties lm_head to the token embeddings: training the head moves them, and the
    embeddings are then covered by the saved head, not compared with the base."""
    from fixtures import tiny_gpt2

    model = partial_lora.apply(tiny_gpt2(), PartialLoraConfig(r=2, target_modules=["c_attn"], modules_to_save=["lm_head"]))
    randomize_adapters(model)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)
    loaded = partial_lora.load(tiny_gpt2(), partial_lora.save(model, tmp_path / "adapter")).eval()
    ids = torch.arange(6)[None]
    torch.testing.assert_close(loaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("entry", [
    [1.0],
    {"numel": 3200, "mean_abs": 0.1, "values": [0.5, 0.6]},
    {"numel": 3200, "mean_abs": "x", "values": [0.5] * 8},
    {"numel": -1, "mean_abs": 0.1, "values": [0.5] * 8},
    {"numel": 3200, "mean_abs": None, "values": [0.5] * 8},
    {"numel": 3200, "mean_abs": 0.1, "values": ["x"] * 8},
])
def test_a_malformed_record_of_the_other_tensors_is_refused_as_damage(saved, exported, entry):
    for folder, file in ((saved[1], "adapter_config.json"), (exported[1], BASE_NAME)):
        path = folder / file
        document = json.loads(path.read_text())
        document["base_other_tensors"]["bert.embeddings.word_embeddings.weight"] = entry
        document["document_sha256"] = document_digest(document)
        path.write_text(json.dumps(document))
        base = tiny_bert()
        before = snapshot(base)
        with pytest.raises(AdapterFileError, match="base_other_tensors"):
            (partial_lora.load if file == "adapter_config.json" else partial_lora.import_peft)(base, folder)
        assert_untouched(base, before)


def test_tensors_without_data_are_left_out_of_the_record_and_the_check():
    """Offloaded (``meta``) tensors cannot be read: neither recorded nor compared."""
    from partial_lora.base_weights import check_other_tensors, other_tensor_fingerprints, other_tensors

    model = ConvNet()
    record = {"base_other_tensors": other_tensor_fingerprints(model, ["fc"])}
    model.head.to("meta")
    assert "head.weight" not in other_tensors(model, ["fc"]) and "conv.weight" in other_tensors(model, ["fc"])
    check_other_tensors(model, record, ["fc"], error=AdapterFileError)  # head skipped, the rest the same


class Unusual(torch.nn.Module):
    """Tensors a whole-base check must read right: a scalar, tiny and huge constants, an
    infinity, integers, a complex buffer, beside one adapted layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(8, 8)
        self.logit_scale = torch.nn.Parameter(torch.tensor(4.6052))  # CLIP's
        self.layer_scale = torch.nn.Parameter(torch.full((8,), 1e-6))  # ConvNeXt's
        self.register_buffer("big", torch.tensor(1e4))
        self.register_buffer("clip_max", torch.tensor(float("inf")))
        self.register_buffer("order", torch.arange(1000))
        self.register_buffer("spectrum", torch.randn(4, dtype=torch.complex64))

    def forward(self, x):
        return self.fc(x).clamp(max=self.clip_max) * self.logit_scale + self.layer_scale * self.big


def unusual_adapter(tmp_path):
    model = partial_lora.apply(Unusual(), PartialLoraConfig(r=2, keep_ratio=0.5, target_modules=["fc"]))
    randomize_adapters(model)
    return model, partial_lora.save(model, tmp_path / "adapter")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_scalars_constants_infinities_integers_and_complex_tensors_pass_in_any_precision(tmp_path, dtype, recwarn):
    model, folder = unusual_adapter(tmp_path)
    base = Unusual()
    for tensor in [base.logit_scale, base.layer_scale, base.big]:  # the same weights, rounded to dtype
        tensor.data = tensor.data.to(dtype).float()
    loaded = partial_lora.load(base, folder).eval()
    if dtype == torch.float32:
        x = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=1e-6)
    assert not [w for w in recwarn if "complex" in str(w.message)]


@pytest.mark.parametrize("edit", ["integers shifted by one", "adapted layer's bias negated", "complex buffer conjugated"])
def test_small_exact_or_hidden_differences_are_refused(tmp_path, edit):
    _, folder = unusual_adapter(tmp_path)
    base = Unusual()
    with torch.no_grad():
        if edit == "integers shifted by one":
            base.order += 1  # 0.2 % of the mean: an integer tensor must match exactly
        elif edit == "adapted layer's bias negated":
            base.fc.bias.neg_()
        else:
            base.spectrum.copy_(base.spectrum.conj())
    before = snapshot(base)
    with pytest.raises(AdapterFileError, match="outside the adapted layers: tensor '(order|fc.bias|spectrum)'"):
        partial_lora.load(base, folder)
    assert_untouched(base, before)


def test_an_offloaded_adapted_weight_is_a_clear_error_at_save_and_at_load(tmp_path):
    model = partial_lora.apply(ConvNet(), PartialLoraConfig(r=2, keep_ratio=0.5, target_modules=["fc"]))
    folder = partial_lora.save(model, tmp_path / "adapter")
    model.fc.weight = torch.nn.Parameter(torch.empty(6, 8, device="meta"), requires_grad=False)
    with pytest.raises(ValueError, match="offloaded"):
        partial_lora.save(model, tmp_path / "again")
    assert not list((tmp_path / "again").iterdir())  # refused before anything was written
    base = ConvNet()
    base.fc.to("meta")
    with pytest.raises(AdapterFileError, match="offloaded"):
        partial_lora.load(base, folder)
