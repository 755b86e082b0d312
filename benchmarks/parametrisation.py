"""Which Partial-LoRA parametrisation learns at LoRA's learning rate? (validation data only)

Partial-LoRA reached LoRA's accuracy only because the CLI's loop trained its adapter tensors
at ``K`` times LoRA's rate (``K`` = LoRA's parameters over the adapters', at most 10). A user's
own loop or the Hugging Face Trainer does not know ``K``. This script trains, with one plain
AdamW loop at LoRA's rate for every variant, Partial-LoRA under several parametrisations of
the same function ``dW = s * B_R @ A_C`` and scores each on a **validation** split carved from
the training pool (never the test split):

* ``plain``: ``s = alpha / r``, ``A ~ U(+-1/sqrt(|C|))`` (the layer as it was);
* ``loop-K``: ``plain`` with the adapter tensors at ``K x`` the rate (the CLI's old recipe);
* ``reparam-global``: ``s * K^2`` and ``A / K`` with the global ``K``; under Adam (no weight
  decay) this is the same trajectory as ``loop-K`` up to epsilon and clipping;
* ``reparam-layer``: the same with each layer's own ``K_l = min(10, 1 / keep_l)`` (what the
  library now does by default: ``PartialLoraConfig(keep_compensation=True)``);
* ``reparam-sqrt``: ``K_l = min(10, 1 / sqrt(keep_l))`` (a milder rule);
* ``scale-layer``: ``s * K_l`` only (initialisation unchanged);
* ``lora``: PEFT LoRA at the same rate (reference).

Data: BBC News, the CLI's seeded 80/20 split; from its training part, 80 articles per class
train and another 40 per class validate (disjoint, seeded). Ticket: svd, 16 shots per class
from the 80. Every run: r=8, alpha=16, q/k/v, new head in full, 3 epochs, batch 16, AdamW at
2e-3, 6 % warm-up, linear decay, clipping at 1.0, seeds 0, 1, 2.

    OMP_NUM_THREADS=1 python benchmarks/parametrisation.py --out runs/parametrisation
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

VARIANTS = ("lora", "plain", "loop-K", "reparam-global", "reparam-layer", "reparam-sqrt", "scale-layer")


def splits(seed: int = 0):
    from partial_lora import data as data_lib

    train, _ = data_lib.stratified_split(data_lib.load_dataset("bbc"), test_fraction=0.2, seed=0)
    rng = random.Random(seed)
    chosen_train, chosen_val = [], []
    for label in range(len(train.label_names)):
        members = [i for i, value in enumerate(train.labels) if value == label]
        picked = rng.sample(members, 120)
        chosen_train += picked[:80]
        chosen_val += picked[80:]
    return train.subset(sorted(chosen_train)), train.subset(sorted(chosen_val))


def load():
    from partial_lora.models import load_model

    return load_model("minilm", task="classification", num_labels=5)


def global_multiplier(model) -> float:
    """LoRA's parameter count at the same ranks over the Partial-LoRA adapters' (at most 10)."""
    from partial_lora.surgery import adapter_layers

    layers = adapter_layers(model).values()
    kept = sum(layer.r * (len(layer.lora_rows) + len(layer.lora_columns)) for layer in layers)
    full = sum(layer.r * (layer.out_features + layer.in_features) for layer in layers)
    return min(10.0, full / kept)


def reparametrise(model, rule: str, global_k: float) -> None:
    """Rescale a plain (uncompensated) Partial-LoRA model's layers by ``rule``."""
    from partial_lora.surgery import adapter_layers

    with torch.no_grad():
        for layer in adapter_layers(model).values():
            keep = layer.keep_ratio
            if rule == "reparam-global":
                k, square = global_k, True
            elif rule == "reparam-sqrt":
                k, square = min(10.0, 1.0 / math.sqrt(keep)), True
            elif rule == "scale-layer":
                k, square = min(10.0, 1.0 / keep), False
            else:
                raise ValueError(rule)
            if square:
                layer.scaling *= k * k
                layer.lora_A.div_(k)
            else:
                layer.scaling *= k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/parametrisation"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    args = parser.parse_args()
    from partial_lora import apply, PartialLoraConfig
    from partial_lora.methods import build_method
    from partial_lora import data as data_lib
    from partial_lora.ticket import find_ticket
    from partial_lora.training import TrainingConfig, train

    args.out.mkdir(parents=True, exist_ok=True)
    train_data, val_data = splits()
    _, tokenizer = load()
    results_file = args.out / "results.jsonl"
    done = set()
    if results_file.exists():
        for line in results_file.read_text().splitlines():
            row = json.loads(line)
            done.add((row["variant"], row["seed"]))
    for seed in [int(s) for s in args.seeds.split(",")]:
        shots = data_lib.few_shot(train_data, 16, seed=seed)
        model, _ = load()
        ticket = find_ticket(model, data_lib.text_batches(shots, tokenizer, 16, max_length=128, shuffle=False, seed=seed),
                             target_modules=["query", "key", "value"], seed=seed, progress=False)
        for variant in args.variants.split(","):
            if (variant, seed) in done:
                continue
            torch.manual_seed(seed)
            model, _ = load()
            if variant == "lora":
                model, _ = build_method("lora", model, r=8, alpha=16, target_modules=["query", "key", "value"],
                                        modules_to_save=["classifier"], seed=seed)
                scale = 1.0
            else:
                config = PartialLoraConfig.from_ticket(ticket, r=8, alpha=16, modules_to_save=["classifier"], seed=seed,
                                                       keep_compensation=variant == "reparam-layer")
                model = apply(model, config)
                global_k = global_multiplier(model)
                scale = global_k if variant == "loop-K" else 1.0
                if variant not in ("plain", "loop-K", "reparam-layer"):
                    reparametrise(model, variant, global_k)
            batches = data_lib.text_batches(train_data, tokenizer, 16, max_length=128, shuffle=True, seed=seed)
            validation = data_lib.text_batches(val_data, tokenizer, 32, max_length=128, shuffle=False, seed=0)
            config = TrainingConfig(learning_rate=args.learning_rate, epochs=3, warmup_ratio=0.06,
                                    max_grad_norm=1.0, adapter_lr_scale=scale, seed=seed, progress=False)
            started = time.perf_counter()
            outcome = train(model, batches, config, eval_batches=validation)
            row = {"variant": variant, "seed": seed, "learning_rate": args.learning_rate, "adapter_lr_scale": scale,
                   "validation_accuracy": outcome.metrics["eval_accuracy"],
                   "validation_history": [h.get("eval_accuracy") for h in outcome.history],
                   "train_loss": [h.get("train_loss") for h in outcome.history],
                   "seconds": time.perf_counter() - started}
            print(json.dumps(row), flush=True)
            with results_file.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in results_file.read_text().splitlines()]
    print("\n| variant | validation accuracy (mean over seeds) | seeds |")
    print("|---|---|---|")
    for variant in VARIANTS:
        values = [r["validation_accuracy"] for r in rows if r["variant"] == variant]
        if values:
            print(f"| {variant} | {100 * statistics.fmean(values):.2f} | {len(values)} |")


if __name__ == "__main__":
    main()
