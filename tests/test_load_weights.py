"""load_weights: a saved adapter's tensors into a model that already has the same adapters."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import partial_lora
from partial_lora import AdapterFileError, PartialLoraConfig

from conftest import randomize_adapters, tiny_bert, token_batch

CONFIG = PartialLoraConfig(r=4, keep_ratio=0.5, target_modules=["query", "value"], modules_to_save=["classifier"])


def adapted(**changes):
    return partial_lora.apply(tiny_bert(), replace(CONFIG, **changes))


@pytest.fixture
def saved(tmp_path):
    model = adapted()
    randomize_adapters(model)
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    return model, partial_lora.save(model, tmp_path / "adapter")


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_loaded_weights_give_the_saved_models_outputs_and_keep_training_flags(saved):
    trained, folder = saved
    model = adapted()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert partial_lora.load_weights(model, folder) is model
    batch = token_batch()
    assert torch.equal(model(**batch).logits, trained(**batch).logits)
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("changes, match", [
    ({"seed": 1}, "other rows or columns"),
    ({"keep_ratio": 0.25}, "keeps 16 rows and 16 columns, the model's 8 and 8"),
    ({"target_modules": ["query"]}, "other adapted layers"),
    ({"modules_to_save": []}, "other modules trained in full"),
    ({"alpha": 4.0}, "alpha"),
    ({"r": 8}, "rank 4 and alpha 16, the model.s has rank 8"),
])
def test_another_adapter_is_refused_and_the_model_left_untouched(saved, changes, match):
    _, folder = saved
    model = adapted(**changes)
    before = state(model)
    with pytest.raises(AdapterFileError, match=match):
        partial_lora.load_weights(model, folder)
    assert_unchanged(model, before)


def test_a_model_without_adapters_or_with_merged_ones_is_refused(saved):
    _, folder = saved
    with pytest.raises(ValueError, match=r"partial_lora\.load\(base_model, folder\)"):
        partial_lora.load_weights(tiny_bert(), folder)
    model = adapted()
    for layer in partial_lora.adapter_layers(model).values():
        layer.merge()
    with pytest.raises(ValueError, match="unmerge"):
        partial_lora.load_weights(model, folder)


def test_a_damaged_tensor_file_is_refused_before_anything_is_copied(saved):
    _, folder = saved
    path = folder / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    model = adapted()
    before = state(model)
    with pytest.raises(AdapterFileError, match="checksum"):
        partial_lora.load_weights(model, folder)
    assert_unchanged(model, before)
