"""Training-step cost of Partial-LoRA vs PEFT LoRA, measured side by side in one process.

For a MiniLM-sized and a BERT-base-sized randomly initialised BERT (batch 16 x 128 tokens),
each variant runs forward + backward + AdamW step; variants are alternated step by step so
machine noise hits all of them alike, and the median over the timed steps is reported.

Variants: the frozen floor (forward + backward through the frozen network, no parameter
gradients: the cost every adapter method pays), PEFT LoRA r=8 on query/key/value, and
Partial-LoRA r=8 on the same layers at keep ratios 1.0 / 0.5 / 0.25 / 0.13.

    python benchmarks/adapter_step.py            # both sizes, 20 timed steps each
    python benchmarks/adapter_step.py --sizes minilm --steps 30
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification

import partial_lora
from partial_lora import PartialLoraConfig

SIZES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
TARGETS = ["query", "key", "value"]
KEEPS = (1.0, 0.5, 0.25, 0.13)


def base_model(size: str) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, num_labels=5, **SIZES[size])
    return BertForSequenceClassification(config).train()


def build_variants(size: str, rank: int) -> dict[str, torch.nn.Module]:
    variants = {}
    floor = base_model(size)
    floor.requires_grad_(False)
    # Make the embeddings' output require grad so backward runs through every layer.
    floor.bert.embeddings.register_forward_hook(lambda module, args, output: output.requires_grad_(True))
    variants["frozen floor"] = floor
    lora = get_peft_model(base_model(size), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS))
    variants["PEFT LoRA"] = lora
    for keep in KEEPS:
        config = PartialLoraConfig(r=rank, alpha=2 * rank, target_modules=TARGETS, keep_ratio=keep)
        variants[f"Partial-LoRA keep {keep:g}"] = partial_lora.apply(base_model(size), config)
    return variants


def optimizer_for(model: torch.nn.Module) -> torch.optim.Optimizer | None:
    parameters = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(parameters, lr=1e-4) if parameters else None


def step(model, optimizer, batch) -> None:
    loss = model(**batch).loss
    loss.backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def optimizer_state_bytes(optimizer) -> int:
    if optimizer is None:
        return 0
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values() for value in state.values() if torch.is_tensor(value)
    )


def adapter_file_bytes(name: str, model) -> int:
    with tempfile.TemporaryDirectory() as folder:
        if name == "frozen floor":
            return 0
        if name == "PEFT LoRA":
            model.save_pretrained(folder)
        else:
            partial_lora.save(model, folder)
        return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def measure(size: str, steps: int, warmup: int, rank: int, batch_size: int, length: int) -> list[dict]:
    variants = build_variants(size, rank)
    optimizers = {name: optimizer_for(model) for name, model in variants.items()}
    generator = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, 30000, (batch_size, length), generator=generator),
        "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
        "labels": torch.randint(0, 5, (batch_size,), generator=generator),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for index in range(warmup + steps):
        for name, model in variants.items():
            start = time.perf_counter()
            step(model, optimizers[name], batch)
            elapsed = time.perf_counter() - start
            if index >= warmup:
                times[name].append(elapsed * 1000)
        print(f"  [{size}] step {index + 1}/{warmup + steps}", flush=True, end="\r")
    print()
    rows = []
    for name, model in variants.items():
        rows.append({
            "variant": name,
            "ms": statistics.median(times[name]),
            "trainable": partial_lora.trainable_parameters(model),
            "optimizer_bytes": optimizer_state_bytes(optimizers[name]),
            "file_bytes": adapter_file_bytes(name, model),
        })
    return rows


def report(size: str, rows: list[dict]) -> None:
    by_name = {row["variant"]: row for row in rows}
    floor, lora = by_name["frozen floor"], by_name["PEFT LoRA"]
    lora_overhead = lora["ms"] - floor["ms"]
    print(f"\n### {size} (batch {ARGS.batch} x {ARGS.length} tokens, r={ARGS.rank}, q/k/v; median of {ARGS.steps} steps)\n")
    print("| variant | ms/step | vs PEFT LoRA | overhead over floor (ms) | overhead vs LoRA's | trainable params | optimizer state (bytes) | adapter file (bytes) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        overhead = row["ms"] - floor["ms"]
        relative = "" if row is floor else f"{overhead / lora_overhead:.2f}"
        print(
            f"| {row['variant']} | {row['ms']:.1f} | {row['ms'] / lora['ms']:.3f} | {overhead:.1f} | {relative} | "
            f"{row['trainable']:,} | {row['optimizer_bytes']:,} | {row['file_bytes']:,} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    ARGS = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for size in ARGS.sizes:
        report(size, measure(size, ARGS.steps, ARGS.warmup, ARGS.rank, ARGS.batch, ARGS.length))
