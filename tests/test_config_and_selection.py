"""Config validation and the row/column selection rules."""

from __future__ import annotations

import math

import pytest
import torch

import partial_lora
from partial_lora import PartialLoraConfig
from partial_lora.selection import select_rows_and_columns

from conftest import tiny_bert


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("r", 0, "positive integer"),
        ("r", 2.5, "positive integer"),
        ("alpha", -1, "positive"),
        ("dropout", 1.0, "[0, 1)"),
        ("keep_ratio", 0.0, "(0, 1]"),
        ("keep_ratio", 1.5, "(0, 1]"),
        ("keep_ratio", float("nan"), "(0, 1]"),
        ("keep_ratios", {"query": 2.0}, "(0, 1]"),
        ("selection", "best", "random, targeted, stochastic"),
        ("seed", -3, "non-negative"),
        ("target_modules", [], "at least one"),
        ("target_modules", "([", "regular expression"),
        ("target_modules", 5, "list of module name suffixes"),
        ("ranks", {"query": 0}, "positive integer"),
    ],
)
def test_bad_config_values_raise_value_error_naming_field_and_allowed(field, value, words):
    with pytest.raises(ValueError) as info:
        PartialLoraConfig(**{field: value})
    message = str(info.value)
    assert field.split("[")[0] in message and words in message


def test_config_round_trips_through_dict_and_rejects_unknown_fields():
    config = PartialLoraConfig(r=4, keep_ratios={"query": 0.2}, modules_to_save=["classifier"])
    assert PartialLoraConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown PartialLoraConfig fields"):
        PartialLoraConfig.from_dict({**config.to_dict(), "lora_magic": 1})


def test_keep_ratios_resolve_by_full_name_then_suffix_then_regex():
    config = PartialLoraConfig(keep_ratio=0.9, keep_ratios={
        "layer.0.attention.self.query": 0.1, "value": 0.2, r".*\.key": 0.3,
    })
    assert config.keep_ratio_for("bert.encoder.layer.0.attention.self.query") == 0.1
    assert config.keep_ratio_for("bert.encoder.layer.1.attention.self.value") == 0.2
    assert config.keep_ratio_for("bert.encoder.layer.1.attention.self.key") == 0.3
    assert config.keep_ratio_for("bert.encoder.layer.1.attention.self.query") == 0.9


def test_same_seed_same_indices_and_layers_of_the_same_shape_differ():
    a = select_rows_and_columns("encoder.layer.0.query", (64, 64), 0.25, "random", seed=7)
    b = select_rows_and_columns("encoder.layer.0.query", (64, 64), 0.25, "random", seed=7)
    c = select_rows_and_columns("encoder.layer.1.query", (64, 64), 0.25, "random", seed=7)
    d = select_rows_and_columns("encoder.layer.0.query", (64, 64), 0.25, "random", seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], d[0])
    assert len(a[0]) == 16 and len(a[1]) == 16
    assert torch.equal(a[0], torch.sort(a[0]).values) and len(set(a[0].tolist())) == 16


def test_targeted_keeps_top_scores_and_stochastic_is_seeded():
    scores = torch.arange(20, dtype=torch.float64)
    rows, columns = select_rows_and_columns("x", (20, 20), 0.2, "targeted", 0, scores, scores.flip(0))
    assert rows.tolist() == [16, 17, 18, 19]
    assert columns.tolist() == [0, 1, 2, 3]
    s1 = select_rows_and_columns("x", (20, 20), 0.2, "stochastic", 3, scores, scores)
    s2 = select_rows_and_columns("x", (20, 20), 0.2, "stochastic", 3, scores, scores)
    assert torch.equal(s1[0], s2[0])
    with pytest.raises(ValueError, match="needs row/column scores"):
        select_rows_and_columns("x", (20, 20), 0.2, "targeted", 0)


@pytest.mark.parametrize("keep", [1.0, 0.5, 0.25, 0.13])
def test_trainable_parameters_are_keep_ratio_times_loras_up_to_rounding(keep):
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(tiny_bert(), LoraConfig(r=4, lora_alpha=8, target_modules=["query", "key", "value"]))
    lora_count = partial_lora.trainable_parameters(lora)
    model = partial_lora.apply(tiny_bert(), PartialLoraConfig(r=4, keep_ratio=keep))
    count = partial_lora.trainable_parameters(model)
    layers = partial_lora.adapter_layers(model)
    assert count == sum(4 * (math.ceil(keep * 32) + math.ceil(keep * 32)) for _ in layers)
    assert abs(count - keep * lora_count) <= len(layers) * 2 * 4  # at most one row and column per layer
    # Truthful: every trainable tensor is a compact adapter tensor.
    assert all(("lora_A" in n or "lora_B" in n) for n, p in model.named_parameters() if p.requires_grad)
