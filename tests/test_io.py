"""save/load: exact round trips, atomic writes, and refusal of damaged or mismatched folders."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import partial_lora
from partial_lora import AdapterFileError, PartialLoraConfig

from conftest import randomize_adapters, tiny_bert, tiny_llama, token_batch


def trained_adapter(tmp_path, keep=0.4):
    model = partial_lora.apply(tiny_bert(), PartialLoraConfig(r=4, keep_ratio=keep, modules_to_save=["classifier"]))
    randomize_adapters(model)
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    folder = partial_lora.save(model, tmp_path / "adapter")
    return model, folder


def resign(folder):
    """Recompute both checksums, as a deliberate (hostile) edit would."""
    from partial_lora.files import document_digest, file_sha256

    document = json.loads((folder / "adapter_config.json").read_text())
    document["weights_sha256"] = file_sha256(folder / "adapter_model.safetensors")
    document["document_sha256"] = document_digest(document)
    (folder / "adapter_config.json").write_text(json.dumps(document))


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_untouched(model, before):
    assert not partial_lora.adapter_layers(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_save_load_round_trip_is_exact(tmp_path):
    model, folder = trained_adapter(tmp_path)
    loaded = partial_lora.load(tiny_bert(), folder)
    batch = token_batch()
    assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    for name, layer in partial_lora.adapter_layers(model).items():
        other = partial_lora.adapter_layers(loaded)[name]
        assert torch.equal(layer.lora_rows, other.lora_rows) and torch.equal(layer.lora_A, other.lora_A)
    assert partial_lora.trainable_parameters(loaded) == 0  # inference by default
    retrainable = partial_lora.load(tiny_bert(), folder, trainable=True)
    assert partial_lora.trainable_parameters(retrainable) == partial_lora.trainable_parameters(model)


def test_saved_file_is_compact_and_leaves_no_temporary_files(tmp_path):
    model, folder = trained_adapter(tmp_path, keep=0.25)
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    tensors = load_file(folder / "adapter_model.safetensors")
    adapter_values = sum(t.numel() for k, t in tensors.items() if k.endswith(("lora_A", "lora_B")))
    assert adapter_values == sum(l.lora_A.numel() + l.lora_B.numel() for l in partial_lora.adapter_layers(model).values())
    document = json.loads((folder / "adapter_config.json").read_text())
    assert document["format"] == "partial-lora" and len(document["layers"]) == 6


def test_truncated_safetensors_is_refused_and_base_untouched(tmp_path):
    _, folder = trained_adapter(tmp_path)
    path = folder / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    base = tiny_bert()
    before = snapshot(base)
    with pytest.raises(AdapterFileError, match="does not match|damaged"):
        partial_lora.load(base, folder)
    assert_untouched(base, before)


def test_garbage_json_is_refused(tmp_path):
    _, folder = trained_adapter(tmp_path)
    (folder / "adapter_config.json").write_text("{not json")
    base = tiny_bert()
    before = snapshot(base)
    with pytest.raises(AdapterFileError, match="not valid JSON"):
        partial_lora.load(base, folder)
    assert_untouched(base, before)


def test_adapter_for_another_model_is_refused_before_touching_the_base(tmp_path):
    _, folder = trained_adapter(tmp_path)
    other = tiny_llama()
    before = snapshot(other)
    with pytest.raises(AdapterFileError, match="does not have"):
        partial_lora.load(other, folder)
    assert_untouched(other, before)


def test_shapes_that_do_not_fit_the_base_are_refused(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    _, folder = trained_adapter(tmp_path)
    wider = BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3,
    ))
    before = snapshot(wider)
    with pytest.raises(AdapterFileError, match="shape"):
        partial_lora.load(wider, folder)
    assert_untouched(wider, before)


def test_a_head_for_another_number_of_labels_is_refused(tmp_path):
    _, folder = trained_adapter(tmp_path)
    base = tiny_bert(num_labels=5)
    before = snapshot(base)
    with pytest.raises(AdapterFileError, match="labels"):
        partial_lora.load(base, folder)
    assert_untouched(base, before)


def test_different_base_weights_are_detected(tmp_path):
    _, folder = trained_adapter(tmp_path)
    with pytest.raises(AdapterFileError, match="base weights differ"):
        partial_lora.load(tiny_bert(seed=123), folder)
    assert partial_lora.adapter_layers(partial_lora.load(tiny_bert(seed=123), folder, check_base_weights=False))


def test_edited_tensors_with_a_matching_checksum_are_still_validated(tmp_path):
    _, folder = trained_adapter(tmp_path)
    path = folder / "adapter_model.safetensors"
    tensors = load_file(path)
    key = next(k for k in tensors if k.endswith("lora_rows"))
    tensors[key] = tensors[key].flip(0)  # unsorted indices
    save_file(tensors, path)
    resign(folder)
    base = tiny_bert()
    before = snapshot(base)
    with pytest.raises(AdapterFileError, match="sorted"):
        partial_lora.load(base, folder)
    assert_untouched(base, before)


def test_pickle_files_are_never_read(tmp_path):
    folder = tmp_path / "adapter"
    _, folder = trained_adapter(tmp_path)
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    with pytest.raises(AdapterFileError, match="never read"):
        partial_lora.load(tiny_bert(), folder)


def test_missing_folder_and_peft_folder_get_clear_errors(tmp_path):
    with pytest.raises(AdapterFileError, match="does not exist"):
        partial_lora.load(tiny_bert(), tmp_path / "nope")
    model, _ = trained_adapter(tmp_path)
    partial_lora.export_peft(model, tmp_path / "peft")
    with pytest.raises(AdapterFileError, match="import_peft"):
        partial_lora.load(tiny_bert(), tmp_path / "peft")


def test_saving_a_model_without_adapters_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no Partial-LoRA adapters"):
        partial_lora.save(tiny_bert(), tmp_path / "x")


def test_file_size_is_keep_ratio_times_loras_plus_index_bytes(tmp_path):
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(tiny_bert(), LoraConfig(r=4, lora_alpha=8, target_modules=["query", "key", "value"]))
    lora.save_pretrained(tmp_path / "lora")
    lora_values = sum(t.numel() for t in load_file(tmp_path / "lora" / "adapter_model.safetensors").values())
    for keep in (1.0, 0.25):
        model = partial_lora.apply(tiny_bert(), PartialLoraConfig(r=4, keep_ratio=keep))
        folder = partial_lora.save(model, tmp_path / f"keep{keep}")
        tensors = load_file(folder / "adapter_model.safetensors")
        index_values = sum(t.numel() for k, t in tensors.items() if k.endswith(("rows", "columns")))
        assert all(t.dtype == torch.int32 for k, t in tensors.items() if k.endswith(("rows", "columns")))
        adapter_values = sum(t.numel() for k, t in tensors.items() if k.endswith(("lora_A", "lora_B")))
        assert adapter_values == partial_lora.trainable_parameters(model)
        if keep == 1.0:
            assert index_values == 0 and adapter_values == lora_values
        else:
            assert index_values == 6 * 2 * 8  # 8 of 32 rows and columns in each of 6 layers
            assert abs(adapter_values - keep * lora_values) <= 6 * 2 * 4
        reloaded = partial_lora.load(tiny_bert(), folder)
        assert partial_lora.trainable_parameters(partial_lora.load(tiny_bert(), folder, trainable=True)) == adapter_values
        assert len(partial_lora.adapter_layers(reloaded)) == 6


def test_a_flipped_value_in_the_config_is_detected(tmp_path):
    _, folder = trained_adapter(tmp_path)
    path = folder / "adapter_config.json"
    path.write_text(path.read_text().replace('"alpha": 16.0', '"alpha": 96.0'))
    with pytest.raises(AdapterFileError, match="changed or damaged"):
        partial_lora.load(tiny_bert(), folder)
