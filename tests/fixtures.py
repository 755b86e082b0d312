"""Tiny randomly initialised models of real architectures, and data for them.

Plain functions (no pytest), shared by the tests (through ``conftest``) and by
``benchmarks/reliability.py``, so neither keeps a copy.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch


def tiny_bert(num_labels: int = 3, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
    )
    return BertForSequenceClassification(config).eval()


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=120, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def tiny_vit(num_labels: int = 4, seed: int = 0):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, num_labels=num_labels,
    )
    return ViTForImageClassification(config).eval()


def tiny_deberta(num_labels: int = 3, seed: int = 0):
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    torch.manual_seed(seed)
    config = DebertaV2Config(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
        relative_attention=True, position_buckets=16, pos_att_type=["p2c", "c2p"],
    )
    return DebertaV2ForSequenceClassification(config).eval()


def tiny_gpt2(seed: int = 0):
    """A GPT-2 LM: its attention and MLP layers are transformers' ``Conv1D`` (weight ``[in, out]``)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=2, n_inner=64,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def token_batch(batch: int = 2, length: int = 7, vocab: int = 100, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, vocab, (batch, length), generator=generator)}


def randomize_adapters(model, seed: int = 1) -> None:
    """Give every adapter a nonzero B, so the update is visible in outputs."""
    import partial_lora

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in partial_lora.adapter_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator, dtype=torch.float64) * 0.1)


class PlainSGD:
    """``p -= lr * grad``: torch.optim's first step imports torch._dynamo (seconds), not needed here."""

    def __init__(self, parameters, lr: float) -> None:
        self.parameters, self.lr = list(parameters), lr

    @torch.no_grad()
    def step(self) -> None:
        for parameter in self.parameters:
            if parameter.grad is not None:
                parameter.sub_(parameter.grad, alpha=self.lr)

    def zero_grad(self) -> None:
        for parameter in self.parameters:
            parameter.grad = None


def classification_data(examples: int, seed: int) -> dict[str, torch.Tensor]:
    """Random tokens whose class is written, among distractors, in the first position."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (examples,), generator=generator)
    ids = torch.randint(3, 100, (examples, 10), generator=generator)
    ids[:, 0] = 1 + labels
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def small_mlp(seed: int = 0) -> torch.nn.Module:
    """``Linear(64, 64) - ReLU - Linear(64, 64) - ReLU - Linear(64, 8)``: a base for save/kill tests."""
    torch.manual_seed(seed)
    nn = torch.nn
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))


SAVE_LOOP_CONFIG = dict(r=4, alpha=8, target_modules=["0", "2"], keep_ratio=0.5)


def save_versions_until_killed(folder: str) -> None:
    """Save version 1, 2, 3, ... of a :func:`small_mlp` adapter into ``folder`` (the B matrices
    of version ``v`` filled with ``v``), printing each version once saved, until killed."""
    import partial_lora

    model = partial_lora.apply(small_mlp(), partial_lora.PartialLoraConfig(**SAVE_LOOP_CONFIG))
    version = 0
    while True:
        version += 1
        with torch.no_grad():
            for layer in partial_lora.adapter_layers(model).values():
                layer.lora_B.fill_(float(version))
        partial_lora.save(model, folder)
        print(version, flush=True)


def write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> Path:
    """Rows as a CSV file with a header (``fields``, default the first row's keys)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def news_rows(counts: dict[str, int]) -> list[dict]:
    """``counts[label]`` made-up articles per label, as ``{"text", "label"}`` rows."""
    return [{"text": f"an article about {label}, number {i}", "label": label}
            for label, count in counts.items() for i in range(count)]


def masked_layer(base: torch.nn.Module, keep: float, r: int = 4, alpha: float = 8.0, seed: int = 0,
                 multiplier: float = 1.0):
    """A :class:`PartialLoraLayer` on ``base`` at ``keep`` (random rows/columns) with a random ``B``."""
    from partial_lora import PartialLoraLayer
    from partial_lora.layer import base_shape
    from partial_lora.selection import layer_generator, select_rows_and_columns

    rows, columns = select_rows_and_columns("layer", base_shape(base), keep, "random", seed)
    layer = PartialLoraLayer(base, rows, columns, r=r, alpha=alpha, generator=layer_generator(seed, "layer", "init"),
                             multiplier=multiplier)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape))
    return layer


def dense_reference(layer):
    """Leaf tensors ``A_full [r, n]``, ``B_full [m, r]`` holding the layer's compact factors, and
    the 0/1 masks ``u_row [m]``, ``u_col [n]``: ``dW = diag(u_row) B_full A_full diag(u_col) * scaling``."""
    A_full = torch.zeros(layer.r, layer.in_features)
    B_full = torch.zeros(layer.out_features, layer.r)
    A_full[:, layer.lora_columns] = layer.lora_A.detach()
    B_full[layer.lora_rows] = layer.lora_B.detach()
    u_row = torch.zeros(layer.out_features)
    u_col = torch.zeros(layer.in_features)
    u_row[layer.lora_rows] = 1
    u_col[layer.lora_columns] = 1
    return A_full.requires_grad_(), B_full.requires_grad_(), u_row, u_col


def numbered(counts: dict[str, int]):
    """Texts ``"<class> <i>"`` (all distinct), so subsets can be compared by their texts."""
    from partial_lora.data import LabelledData

    names = sorted(counts)
    texts, labels = [], []
    for label, name in enumerate(names):
        for i in range(counts[name]):
            texts.append(f"{name} {i}")
            labels.append(label)
    return LabelledData(texts, labels, names, "text", "numbered")


class CrashAfter:
    """A training callback that simulates a crash right after optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, model, step: int) -> None:
        if step == self.step:
            raise KeyboardInterrupt(f"simulated crash after step {step}")
