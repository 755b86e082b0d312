"""apply / merge / disable_adapters at the level a user touches them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import partial_lora
from partial_lora import PartialLoraConfig

from conftest import randomize_adapters, tiny_bert, tiny_llama, token_batch


def test_apply_adapts_targets_freezes_the_rest_and_trains_saved_modules():
    model = partial_lora.apply(tiny_bert(), PartialLoraConfig(r=4, keep_ratio=0.5, modules_to_save=["classifier"]))
    layers = partial_lora.adapter_layers(model)
    assert sorted(n.rsplit(".", 1)[1] for n in layers) == ["key", "key", "query", "query", "value", "value"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    assert all(n.startswith("classifier") or ".lora_" in n for n in trainable)
    # The base weight keeps its state-dict key.
    assert "bert.encoder.layer.0.attention.self.query.weight" in model.state_dict()


def test_apply_reports_patterns_that_match_nothing_with_existing_names():
    with pytest.raises(ValueError) as info:
        partial_lora.apply(tiny_bert(), PartialLoraConfig(target_modules=["q_proj"]))
    message = str(info.value)
    assert "q_proj" in message and "attention.self.query" in message


def test_apply_refuses_unsupported_matches_and_double_application():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1))
    with pytest.raises(ValueError, match="cannot adapt"):
        partial_lora.apply(net, PartialLoraConfig(target_modules=["0", "1"]))
    model = partial_lora.apply(tiny_bert(), PartialLoraConfig())
    with pytest.raises(ValueError, match="already has Partial-LoRA adapters"):
        partial_lora.apply(model, PartialLoraConfig())


def test_all_linear_skips_the_output_head():
    model = partial_lora.apply(tiny_llama(), PartialLoraConfig(target_modules="all-linear", keep_ratio=0.5))
    names = partial_lora.adapter_layers(model)
    assert "lm_head" not in names
    assert {n.rsplit(".", 1)[1] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_regex_targets_and_exclusions():
    config = PartialLoraConfig(target_modules=r".*layer\.1\..*(query|value)", exclude_modules=["value"])
    model = partial_lora.apply(tiny_bert(), config)
    assert list(partial_lora.adapter_layers(model)) == ["bert.encoder.layer.1.attention.self.query"]


def test_merge_returns_plain_model_with_the_same_outputs():
    model = partial_lora.apply(tiny_bert(), PartialLoraConfig(keep_ratio=0.3))
    randomize_adapters(model)
    batch = token_batch()
    before = model(**batch).logits
    merged = partial_lora.merge(model)
    assert not partial_lora.adapter_layers(merged)
    assert type(merged.bert.encoder.layer[0].attention.self.query) is nn.Linear
    torch.testing.assert_close(merged(**batch).logits, before, rtol=0, atol=1e-5)


def test_disable_adapters_runs_the_base_model_and_restores():
    base = tiny_bert()
    batch = token_batch()
    reference = base(**batch).logits
    model = partial_lora.apply(tiny_bert(), PartialLoraConfig(keep_ratio=0.5))
    randomize_adapters(model)
    adapted = model(**batch).logits
    assert not torch.allclose(adapted, reference)
    with partial_lora.disable_adapters(model):
        torch.testing.assert_close(model(**batch).logits, reference, rtol=0, atol=0)
    torch.testing.assert_close(model(**batch).logits, adapted, rtol=0, atol=0)


def test_gradients_flow_only_into_adapters():
    model = partial_lora.apply(tiny_bert(), PartialLoraConfig(keep_ratio=0.5))
    randomize_adapters(model)
    model(**token_batch(), labels=torch.tensor([0, 2])).loss.backward()
    for name, parameter in model.named_parameters():
        if ".lora_" in name:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0
        else:
            assert parameter.grad is None
