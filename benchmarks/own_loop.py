"""Partial-LoRA in the user's own training code, at LoRA's learning rate: a plain loop, the Trainer, the CLI.

The keep compensation makes the learning-rate correction a property of the layer, so any
training loop at the rate one would use for LoRA should train Partial-LoRA at LoRA's pace.
This script measures it on BBC News with MiniLM (the CLI's splits: 80 training, 40
validation and 200 test articles per class; the ticket from 16 training shots per class), for
PEFT LoRA and Partial-LoRA (r=8, alpha=16, q/k/v, the new head trained in full), at 2e-3
(the project's default rate until the study chose 5e-3 on validation), three ways:

* ``loop``: the README's quick-start loop: ``torch.optim.AdamW(trainable, lr)``, 3 epochs of
  batches of 16, nothing else (no warm-up, decay or clipping);
* ``trainer``: ``transformers.Trainer`` (LoRA) and ``partial_lora.integrations.PartialLoraTrainer``
  (Partial-LoRA) with ``TrainingArguments(learning_rate=2e-3, 3 epochs, batch 16)`` and its
  defaults (linear decay, clipping at 1.0);
* ``cli``: the package's own loop as ``partial-lora train`` runs it (6 % warm-up, linear decay,
  clipping at 1.0).

Every run is scored once on the 1,000 test articles; per way, the paired difference
Partial-LoRA - LoRA (seeds pooled) with its 95 % bootstrap interval.

    OMP_NUM_THREADS=1 python benchmarks/own_loop.py --out runs/own-loop [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

WAYS = ("loop", "trainer", "cli")
METHODS = ("lora", "partial-lora")
LEARNING_RATE = 2e-3
EPOCHS, BATCH = 3, 16


def task_and_settings():
    from partial_lora.commands.settings import Settings, resolve
    from partial_lora.commands.task import build_task

    settings = resolve(Settings(dataset="bbc", progress=False))
    return build_task(settings), settings


def model_for(method: str, task, ticket, seed: int):
    from partial_lora.methods import build_method

    torch.manual_seed(seed)
    model, _ = build_method(method, task.new_model(), r=8, alpha=16, target_modules=["query", "key", "value"],
                            modules_to_save=["classifier"], keep_ratios=ticket.keep_ratios() if ticket else None,
                            seed=seed)
    return model


def train_loop(model, task, seed: int) -> None:
    """The README's quick-start loop."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LEARNING_RATE)
    batches = task.batches(task.train, shuffle=True, seed=seed)
    model.train()
    for epoch in range(EPOCHS):
        batches.set_epoch(epoch)
        for batch in batches:
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()


class _Rows(torch.utils.data.Dataset):
    def __init__(self, tensors: dict) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["labels"])

    def __getitem__(self, index: int) -> dict:
        return {k: v[index] for k, v in self.tensors.items()}


def train_trainer(model, method: str, task, seed: int, folder: Path) -> None:
    from transformers import Trainer, TrainingArguments

    from partial_lora.integrations import PartialLoraTrainer

    tensors = task.batches(task.train, shuffle=False, seed=seed).tensors
    args = TrainingArguments(output_dir=str(folder), learning_rate=LEARNING_RATE, num_train_epochs=EPOCHS,
                             per_device_train_batch_size=BATCH, seed=seed, report_to="none", use_cpu=True,
                             save_strategy="no", logging_strategy="no", dataloader_num_workers=0,
                             disable_tqdm=True)
    trainer_class = PartialLoraTrainer if method == "partial-lora" else Trainer
    trainer_class(model=model, args=args, train_dataset=_Rows(tensors)).train()
    model.eval()


def train_cli(model, task, seed: int, folder: Path) -> None:
    from partial_lora.training import TrainingConfig, train

    config = TrainingConfig(learning_rate=LEARNING_RATE, epochs=EPOCHS, warmup_ratio=0.06, max_grad_norm=1.0,
                            seed=seed, progress=False)
    train(model, task.batches(task.train, shuffle=True, seed=seed), config)
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/own-loop"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ways", default=",".join(WAYS))
    args = parser.parse_args()
    from partial_lora.commands.runs import derive_ticket
    from partial_lora.statistics import correctness_text, correctness_vector, paired_difference

    args.out.mkdir(parents=True, exist_ok=True)
    rows_file = args.out / "results.jsonl"
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
    done = {(r["way"], r["method"], r["seed"]) for r in rows}
    task, settings = task_and_settings()
    for seed in [int(s) for s in args.seeds.split(",")]:
        ticket = derive_ticket(task, settings, seed=seed)
        for way in args.ways.split(","):
            for method in METHODS:
                if (way, method, seed) in done:
                    continue
                model = model_for(method, task, ticket if method == "partial-lora" else None, seed)
                started = time.perf_counter()
                if way == "loop":
                    train_loop(model, task, seed)
                elif way == "trainer":
                    train_trainer(model, method, task, seed, args.out / f"trainer-{method}-{seed}")
                else:
                    train_cli(model, task, seed, args.out / f"cli-{method}-{seed}")
                scores = task.score(model, "test")
                row = {"way": way, "method": method, "seed": seed, "learning_rate": LEARNING_RATE,
                       "accuracy": scores.metrics["accuracy"], "test_examples": len(scores.correct),
                       "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                       "seconds": time.perf_counter() - started, "test_correct": correctness_text(scores.correct)}
                print(json.dumps({k: v for k, v in row.items() if k != "test_correct"}), flush=True)
                with rows_file.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                rows.append(row)
    print("\n| way | LoRA accuracy (%) | Partial-LoRA accuracy (%) | Partial-LoRA - LoRA (points) | 95 % interval "
          "| verdict | seeds |")
    print("|---|---|---|---|---|---|---|")
    for way in WAYS:
        by_method = {m: {r["seed"]: r for r in rows if r["way"] == way and r["method"] == m} for m in METHODS}
        if not by_method["lora"] or not by_method["partial-lora"]:
            continue
        means = {m: 100 * statistics.fmean(r["accuracy"] for r in by_method[m].values()) for m in METHODS}
        comparison = paired_difference(
            {s: correctness_vector(r["test_correct"]) for s, r in by_method["partial-lora"].items()},
            {s: correctness_vector(r["test_correct"]) for s, r in by_method["lora"].items()})
        print(f"| {way} | {means['lora']:.2f} | {means['partial-lora']:.2f} | {comparison.diff_points:+.2f} | "
              f"[{comparison.ci_low:+.2f}, {comparison.ci_high:+.2f}] | {comparison.verdict} | "
              f"{','.join(map(str, comparison.seeds))} |")


if __name__ == "__main__":
    main()
