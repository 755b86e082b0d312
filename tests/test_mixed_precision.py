"""A half-precision base trains float32 adapters and saved modules; outputs keep the base's dtype."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

import partial_lora
from partial_lora import PartialLoraConfig
from partial_lora.surgery import FLOAT32_HOOKS

from conftest import randomize_adapters, tiny_bert, tiny_gpt2, tiny_llama, token_batch
from test_io import resign

BF16 = torch.bfloat16
CONFIG = PartialLoraConfig(r=4, keep_ratio=0.5, modules_to_save=["classifier"])
LABELS = torch.tensor([0, 2])


def bf16_bert(**config):
    return partial_lora.apply(tiny_bert().to(BF16), PartialLoraConfig(**{**CONFIG.to_dict(), **config}))


def adapter_tensors(model):
    return {n: p for n, p in model.named_parameters() if ".lora_" in n}


def assert_close_in_bf16(actual, expected):
    """Within what bfloat16 arithmetic through a two-layer BERT gives (8-bit mantissa)."""
    torch.testing.assert_close(actual.float(), expected.float(), rtol=0, atol=0.01)


def trained_pair():
    """A float32 model with trained adapters and head, and the same adapters on a bfloat16 base."""
    reference = partial_lora.apply(tiny_bert(), CONFIG)
    randomize_adapters(reference)
    with torch.no_grad():
        reference.classifier.weight.add_(0.5)
    model = partial_lora.apply(tiny_bert().to(BF16), CONFIG)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                parameter.copy_(reference.get_parameter(name))
    return reference, model


def test_adapters_and_saved_modules_are_float32_on_a_bfloat16_base_and_outputs_stay_bfloat16():
    base_keys = set(tiny_bert().state_dict())
    model = bf16_bert()
    assert adapter_tensors(model) and all(p.dtype == torch.float32 for p in adapter_tensors(model).values())
    assert model.classifier.weight.dtype == model.classifier.bias.dtype == torch.float32
    assert model.bert.encoder.layer[0].attention.self.query.weight.dtype == BF16
    assert {k for k in model.state_dict() if ".lora_" not in k} == base_keys
    assert model(**token_batch()).logits.dtype == BF16

    plain = bf16_bert(autocast_adapter_dtype=False)
    assert all(p.dtype == BF16 for p in plain.parameters())
    assert not hasattr(plain.classifier, FLOAT32_HOOKS)


def test_nothing_changes_on_a_float32_base():
    model = partial_lora.apply(tiny_bert(), CONFIG)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not hasattr(model.classifier, FLOAT32_HOOKS) and not model.classifier._forward_hooks


def fraction_moved(autocast: bool, steps: int = 3) -> dict[str, float]:
    model = bf16_bert(autocast_adapter_dtype=autocast)
    randomize_adapters(model)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trained.items()}
    optimizer = torch.optim.AdamW(trained.values(), lr=1e-4)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**token_batch(), labels=LABELS).loss.backward()
        optimizer.step()
    moved = {"lora_A": [], "classifier": []}
    for name, parameter in trained.items():
        part = "lora_A" if name.endswith("lora_A") else "classifier" if name.startswith("classifier") else None
        if part:
            moved[part].append((parameter.detach() != before[name]).flatten())
    return {part: float(torch.cat(flags).double().mean()) for part, flags in moved.items()}


def test_small_adamw_steps_move_every_float32_entry_and_round_away_in_bfloat16():
    float32 = fraction_moved(autocast=True)
    bfloat16 = fraction_moved(autocast=False)
    assert float32["lora_A"] > 0.99 and float32["classifier"] > 0.99
    assert bfloat16["lora_A"] < 0.5


def test_bfloat16_outputs_match_the_float32_model_within_bfloat16_rounding():
    reference, model = trained_pair()
    batch = token_batch()
    assert_close_in_bf16(model(**batch).logits, reference(**batch).logits)
    layer = partial_lora.adapter_layers(model)["bert.encoder.layer.0.attention.self.value"]
    x = torch.randn(3, 32).to(BF16)
    update = (x.float().index_select(-1, layer.lora_columns) @ layer.lora_A.T @ layer.lora_B.T) * layer.scaling
    expected = torch.nn.functional.linear(x, layer.weight, layer.bias).index_add(-1, layer.lora_rows, update.to(BF16))
    assert torch.equal(layer(x), expected)  # the update in float32, added in the base's dtype


def test_save_load_and_load_weights_round_trip_on_a_bfloat16_base(tmp_path):
    _, model = trained_pair()
    folder = partial_lora.save(model, tmp_path / "adapter")
    tensors = load_file(folder / "adapter_model.safetensors")
    assert all(t.dtype == torch.float32 for k, t in tensors.items() if k.endswith(("lora_A", "lora_B", "weight", "bias")))
    document = json.loads((folder / "adapter_config.json").read_text())
    assert {info["dtype"] for info in document["layers"].values()} == {"float32"}
    batch = token_batch()
    loaded = partial_lora.load(tiny_bert().to(BF16), folder, trainable=True)
    assert all(p.dtype == torch.float32 for p in loaded.parameters() if p.requires_grad)
    assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    partial_lora.load_weights(loaded, folder)
    assert torch.equal(loaded(**batch).logits, model(**batch).logits)


def test_an_older_file_with_bfloat16_adapters_loads_with_float32_adapters(tmp_path):
    model = bf16_bert(autocast_adapter_dtype=False)
    randomize_adapters(model)
    folder = partial_lora.save(model, tmp_path / "adapter")
    document = json.loads((folder / "adapter_config.json").read_text())
    del document["config"]["autocast_adapter_dtype"]  # as written before the field existed
    (folder / "adapter_config.json").write_text(json.dumps(document))
    resign(folder)
    loaded = partial_lora.load(tiny_bert().to(BF16), folder)
    for name, parameter in adapter_tensors(loaded).items():
        assert parameter.dtype == torch.float32 and torch.equal(parameter, model.get_parameter(name).float())
    batch = token_batch()
    assert_close_in_bf16(loaded(**batch).logits, model(**batch).logits)


def test_peft_export_and_import_on_a_bfloat16_base(tmp_path):
    reference, model = trained_pair()
    partial_lora.export_peft(model, tmp_path / "peft")
    batch = token_batch()
    peft_model = PeftModel.from_pretrained(tiny_bert().to(BF16), tmp_path / "peft").eval()
    assert_close_in_bf16(peft_model(**batch).logits, reference(**batch).logits)
    imported = partial_lora.import_peft(tiny_bert().to(BF16), tmp_path / "peft")
    assert all(p.dtype == torch.float32 for p in adapter_tensors(imported).values())
    assert imported.classifier.weight.dtype == torch.float32
    torch.testing.assert_close(imported(**batch).logits, model(**batch).logits, rtol=0, atol=1e-2)


def test_merge_gives_back_a_plain_bfloat16_model_without_hooks():
    reference, model = trained_pair()
    batch = token_batch()
    expected = reference(**batch).logits
    merged = partial_lora.merge(model)
    assert all(p.dtype == BF16 for p in merged.parameters())
    assert not merged.classifier._forward_hooks and not merged.classifier._forward_pre_hooks
    assert not hasattr(merged.classifier, FLOAT32_HOOKS)
    assert set(merged.state_dict()) == set(tiny_bert().state_dict())
    assert_close_in_bf16(merged(**batch).logits, expected)


@pytest.mark.parametrize("base_dtype", [torch.float32, BF16])
def test_autocast_forward_and_backward(base_dtype):
    model = partial_lora.apply(tiny_bert().to(base_dtype), CONFIG)
    randomize_adapters(model)
    with torch.autocast("cpu", dtype=BF16):
        output = model(**token_batch(), labels=LABELS)
    assert output.logits.dtype == BF16
    output.loss.backward()
    for parameter in adapter_tensors(model).values():
        assert parameter.dtype == torch.float32 and parameter.grad.dtype == torch.float32
        assert parameter.grad.abs().sum() > 0
    assert model.classifier.weight.grad.abs().sum() > 0


def test_autocast_through_conv1d_layers():
    model = partial_lora.apply(tiny_gpt2(), PartialLoraConfig(target_modules=["c_attn", "c_fc"], keep_ratio=0.5))
    randomize_adapters(model)
    batch = token_batch()
    with torch.autocast("cpu", dtype=BF16):
        logits = model(**batch).logits
    logits.float().pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter_tensors(model).values())


def test_a_saved_embedding_runs_in_float32_and_hands_the_base_dtype_on():
    model = partial_lora.apply(tiny_llama().to(BF16), PartialLoraConfig(target_modules=["q_proj"],
                                                                         modules_to_save=["embed_tokens"]))
    assert model.model.embed_tokens.weight.dtype == torch.float32
    assert model.model.embed_tokens(torch.tensor([[1, 2]])).dtype == BF16
    assert model(**token_batch(vocab=120)).logits.dtype == BF16


def test_a_saved_module_with_tied_weights_stays_in_the_base_dtype_with_a_warning():
    with pytest.warns(UserWarning, match="tied weights"):
        model = partial_lora.apply(tiny_gpt2().to(BF16), PartialLoraConfig(target_modules=["c_attn"],
                                                                            modules_to_save=["lm_head"]))
    assert model.lm_head.weight.dtype == BF16 and model.lm_head.weight is model.transformer.wte.weight
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model(**token_batch()).logits.dtype == BF16
