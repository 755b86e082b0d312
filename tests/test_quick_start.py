"""The Python quick start: ticket -> config -> apply -> summary, from the top-level package."""

from __future__ import annotations

import subprocess
import sys

import torch

import partial_lora
from partial_lora import PartialLoraConfig, find_ticket
from partial_lora.budget import kept_count

from conftest import classification_data, tiny_bert

TARGETS = ["query", "key", "value"]


def few_shot_batches():
    data = classification_data(32, 0)
    return [{k: v[i:i + 16] for k, v in data.items()} for i in (0, 16)]


def test_a_ticket_from_a_few_batches_configures_the_adapters_it_names():
    model = tiny_bert(num_labels=2)
    ticket = find_ticket(model, few_shot_batches(), target_modules=TARGETS, head_is_new=True, progress=False)
    config = PartialLoraConfig.from_ticket(ticket, r=4, alpha=8, modules_to_save=["classifier"])
    partial_lora.apply(model, config)
    summary = partial_lora.adapter_summary(model)
    assert [layer.name for layer in summary.layers] == list(ticket.keep_ratios())
    for layer in summary.layers:
        ratio = ticket.keep_ratios()[layer.name]
        assert (layer.rows, layer.columns) == (kept_count(ratio, layer.shape[0]), kept_count(ratio, layer.shape[1]))
        assert layer.parameters == layer.rank * (layer.rows + layer.columns)


def test_summary_counts_every_layer_against_a_dense_lora_of_the_same_rank(capsys):
    config = PartialLoraConfig(r=4, keep_ratio=0.5, target_modules=["query", "value"], modules_to_save=["classifier"])
    model = partial_lora.apply(tiny_bert(num_labels=2), config)
    summary = partial_lora.adapter_summary(model)
    assert len(summary.layers) == 4  # two encoder layers, query and value
    for layer in summary.layers:
        assert (layer.shape, layer.rank, layer.rows, layer.columns) == ((32, 32), 4, 16, 16)
        assert (layer.parameters, layer.lora_parameters) == (4 * 32, 4 * 64)
    assert (summary.adapter_parameters, summary.lora_parameters) == (512, 1024)
    assert summary.adapter_share_of_lora == 0.5
    assert summary.saved_modules == ["classifier"] and summary.saved_parameters == 32 * 2 + 2
    assert summary.trainable_parameters == partial_lora.trainable_parameters(model) == 512 + 66
    assert summary.total_parameters == sum(p.numel() for p in model.parameters())
    assert summary.with_saved_share_of_lora == (512 + 66) / (1024 + 66)

    partial_lora.print_trainable_parameters(model)
    printed = capsys.readouterr().out
    assert "bert.encoder.layer.1.attention.self.value" in printed and "16/32" in printed
    assert "50.0% of a LoRA of the same ranks (1,024)" in printed
    assert "trained in full: 66 parameters (classifier)" in printed


def test_summary_of_a_model_without_adapters_is_empty():
    summary = partial_lora.adapter_summary(torch.nn.Linear(4, 4))
    assert summary.layers == [] and summary.adapter_share_of_lora == 0.0 and summary.trainable_parameters == 20


def test_importing_the_package_does_not_import_transformers():
    code = "import sys, partial_lora; print('transformers' in sys.modules, 'accelerate' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
