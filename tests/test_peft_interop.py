"""Export to PEFT LoRA folders that PEFT loads with the same outputs, and import back."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

import partial_lora
from partial_lora import AdapterFileError, PartialLoraConfig

from conftest import randomize_adapters, tiny_bert, tiny_deberta, tiny_llama, tiny_vit, token_batch

CASES = {
    "bert": (tiny_bert, lambda: token_batch(vocab=100), ["query", "key", "value"], ["classifier"]),
    "llama": (tiny_llama, lambda: token_batch(vocab=120), "all-linear", []),
    "vit": (tiny_vit, lambda: {"pixel_values": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))},
            ["q_proj", "v_proj", "fc1"], ["classifier"]),
    "deberta": (tiny_deberta, lambda: token_batch(vocab=100), ["query_proj", "value_proj"], ["classifier"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_exported_folder_loads_in_peft_with_the_same_outputs(case, tmp_path):
    factory, make_batch, targets, saved = CASES[case]
    config = PartialLoraConfig(r=4, alpha=8, target_modules=targets, modules_to_save=saved, keep_ratio=0.4,
                               ranks={r".*\.1\..*": 2} if case == "bert" else {})
    model = partial_lora.apply(factory(), config)
    randomize_adapters(model)
    batch = make_batch()
    expected = model(**batch).logits
    partial_lora.export_peft(model, tmp_path / "peft")
    peft_model = PeftModel.from_pretrained(factory(), tmp_path / "peft").eval()
    difference = (peft_model(**batch).logits - expected).abs().max().item()
    assert difference < 1e-5
    exported = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert exported["peft_type"] == "LORA"
    if case == "bert":
        assert set(exported["rank_pattern"].values()) == {2}
    # keep 0.4: every layer is keep-compensated, so PEFT gets each one's alpha (K^2 * alpha)
    assert exported["alpha_pattern"] and all(value > 8 for value in exported["alpha_pattern"].values())


def test_import_peft_recovers_the_compact_indices_exactly(tmp_path):
    model = partial_lora.apply(tiny_bert(), PartialLoraConfig(r=4, keep_ratio=0.3, modules_to_save=["classifier"]))
    randomize_adapters(model)
    partial_lora.export_peft(model, tmp_path / "peft")
    imported = partial_lora.import_peft(tiny_bert(), tmp_path / "peft")
    for name, layer in partial_lora.adapter_layers(model).items():
        other = partial_lora.adapter_layers(imported)[name]
        assert torch.equal(layer.lora_rows, other.lora_rows)
        assert torch.equal(layer.lora_columns, other.lora_columns)
    batch = token_batch()
    torch.testing.assert_close(imported(**batch).logits, model(**batch).logits, rtol=0, atol=1e-6)
    assert partial_lora.trainable_parameters(imported) == 0


def test_import_of_a_dense_peft_lora_with_rslora_keeps_outputs(tmp_path):
    torch.manual_seed(0)
    peft_model = get_peft_model(tiny_bert(), LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=["value"]))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    batch = token_batch()
    expected = peft_model(**batch).logits
    peft_model.save_pretrained(tmp_path / "dense")
    imported = partial_lora.import_peft(tiny_bert(), tmp_path / "dense", trainable=True)
    torch.testing.assert_close(imported(**batch).logits, expected, rtol=0, atol=1e-5)
    assert all(l.keep_ratio == 1.0 for l in partial_lora.adapter_layers(imported).values())
    assert partial_lora.trainable_parameters(imported) == partial_lora.trainable_parameters(peft_model)


def test_import_refuses_dora_and_mismatched_bases(tmp_path):
    peft_model = get_peft_model(tiny_bert(), LoraConfig(r=4, use_dora=True, target_modules=["value"]))
    peft_model.save_pretrained(tmp_path / "dora")
    with pytest.raises(AdapterFileError, match="DoRA"):
        partial_lora.import_peft(tiny_bert(), tmp_path / "dora")
    plain = get_peft_model(tiny_bert(), LoraConfig(r=4, target_modules=["value"]))
    plain.save_pretrained(tmp_path / "plain")
    llama = tiny_llama()
    with pytest.raises(AdapterFileError, match="does not exist"):
        partial_lora.import_peft(llama, tmp_path / "plain")
    assert not partial_lora.adapter_layers(llama)
