"""Training-step cost of Partial-LoRA vs PEFT LoRA, measured side by side in one process.

For a MiniLM-sized and a BERT-base-sized randomly initialised BERT (batch 16 x 128 tokens),
each variant runs forward + backward + AdamW step; variants are alternated step by step (the
order rotates every step, so no variant always follows the same one) so machine noise hits
all of them alike, and the median over the timed steps (after a warm-up) is reported, with
the inter-quartile range as a noise gauge. Threads are fixed (default 2). The overhead of a
variant over the floor is the median over rounds of the paired difference (variant minus
floor in the same round), which cancels slow drifts in machine load. Each step's process CPU
time is reported too: on a shared machine it is far steadier than wall time.

Variants: the frozen floor (forward + backward through the frozen network, no parameter
gradients, backward reaching exactly as far as an adapter's does: the cost every q/k/v
adapter method pays), PEFT LoRA r=8 on query/key/value, and
Partial-LoRA r=8 on the same layers at keep ratios 1.0 / 0.5 / 0.25 / 0.13.

    python benchmarks/adapter_step.py            # both sizes, 20 timed steps each, 2 threads
    python benchmarks/adapter_step.py --sizes minilm --steps 30
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning (must be set before torch loads OpenMP): on a
# shared machine a spinning thread burns the CPU its partner is waiting for, and the process
# CPU time of a step then measures the work done, not the time spent waiting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification  # noqa: E402

import partial_lora  # noqa: E402
from partial_lora import PartialLoraConfig  # noqa: E402

SIZES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
TARGETS = ["query", "key", "value"]
KEEPS = (1.0, 0.5, 0.25, 0.13)
KEEP_OF = {f"Partial-LoRA keep {keep:g}": keep for keep in KEEPS}


def base_model(size: str) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, num_labels=5, **SIZES[size])
    return BertForSequenceClassification(config).train()


def _require_grad(module, args, output):
    return output if output.requires_grad else output.requires_grad_(True)


def build_variants(size: str, rank: int) -> dict[str, torch.nn.Module]:
    variants = {}
    floor = base_model(size)
    floor.requires_grad_(False)
    # Make the target layers' outputs require grad, so backward runs exactly as far as it does
    # for an adapter on those layers: down to the first layer's q/k/v outputs, no further.
    for name, module in floor.named_modules():
        if name.rsplit(".", 1)[-1] in TARGETS:
            module.register_forward_hook(_require_grad)
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


def adapter_file_bytes(name: str, model) -> tuple[int, int]:
    """``(file bytes, tensor-data bytes)`` of the adapter's safetensors file(s); the difference is
    the safetensors header (8-byte length + JSON with each tensor's name, dtype, shape, offsets)."""
    if name == "frozen floor":
        return 0, 0
    with tempfile.TemporaryDirectory() as folder:
        if name == "PEFT LoRA":
            model.save_pretrained(folder)
        else:
            partial_lora.save(model, folder)
        total = data = 0
        for path in Path(folder).glob("*.safetensors"):
            size = path.stat().st_size
            with path.open("rb") as handle:
                header = int.from_bytes(handle.read(8), "little")
            total += size
            data += size - 8 - header
        return total, data


def index_bytes(model) -> int:
    """Bytes of the int32 row/column index tensors an adapter file holds (none for kept-all)."""
    total = 0
    for layer in partial_lora.adapter_layers(model).values():
        total += 0 if layer.all_rows else 4 * len(layer.lora_rows)
        total += 0 if layer.all_columns else 4 * len(layer.lora_columns)
    return total


def measure(size: str, steps: int, warmup: int, rank: int, batch_size: int, length: int) -> list[dict]:
    variants = build_variants(size, rank)
    optimizers = {name: optimizer_for(model) for name, model in variants.items()}
    generator = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, 30000, (batch_size, length), generator=generator),
        "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
        "labels": torch.randint(0, 5, (batch_size,), generator=generator),
    }
    # One round = one step of every variant; the order rotates from round to round.
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for index in range(warmup + steps):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            model = variants[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            step(model, optimizers[name], batch)
            elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            if index >= warmup:
                wall[name].append(elapsed * 1000)
                cpu[name].append(elapsed_cpu * 1000)
        print(f"  [{size}] round {index + 1}/{warmup + steps}", flush=True, end="\r")
    print()
    rows = []
    for name, model in variants.items():
        file_bytes, data_bytes = adapter_file_bytes(name, model)
        rows.append({
            "variant": name,
            "ms": statistics.median(wall[name]),
            "iqr": _iqr(wall[name]),
            "overhead": _paired_median(wall[name], wall["frozen floor"]),
            "cpu_ms": statistics.median(cpu[name]),
            "cpu_iqr": _iqr(cpu[name]),
            "cpu_overhead": _paired_median(cpu[name], cpu["frozen floor"]),
            "keep": KEEP_OF.get(name),
            "index_bytes": index_bytes(model),
            "trainable": partial_lora.trainable_parameters(model),
            "optimizer_bytes": optimizer_state_bytes(optimizers[name]),
            "file_bytes": file_bytes,
            "data_bytes": data_bytes,
        })
    return rows


def _iqr(values: list[float]) -> float:
    quartiles = statistics.quantiles(values, n=4)
    return quartiles[2] - quartiles[0]


def _paired_median(values: list[float], floor: list[float]) -> float:
    """Median over rounds of (this variant's step - the floor's step in the same round)."""
    return statistics.median(v - f for v, f in zip(values, floor))


def report(size: str, rows: list[dict]) -> dict[str, bool]:
    by_name = {row["variant"]: row for row in rows}
    floor, lora = by_name["frozen floor"], by_name["PEFT LoRA"]
    print(f"\n### {size} (batch {ARGS.batch} x {ARGS.length} tokens, r={ARGS.rank} on query/key/value; "
          f"median of {ARGS.steps} steps after {ARGS.warmup} warm-up rounds, {torch.get_num_threads()} threads)\n")
    print("Step time (forward + backward + AdamW). Overhead = median over rounds of (variant - floor in the same "
          "round); CPU = process CPU time of the step.\n")
    print("| variant | ms/step | IQR | vs PEFT LoRA | overhead over floor (ms) | overhead vs LoRA's "
          "| CPU ms/step | CPU IQR | CPU overhead (ms) | CPU overhead vs LoRA's |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        relative = "" if row is floor else f"{row['overhead'] / lora['overhead']:.2f}"
        cpu_relative = "" if row is floor else f"{row['cpu_overhead'] / lora['cpu_overhead']:.2f}"
        print(
            f"| {row['variant']} | {row['ms']:.1f} | {row['iqr']:.1f} | {row['ms'] / lora['ms']:.3f} | "
            f"{row['overhead']:.1f} | {relative} | {row['cpu_ms']:.1f} | {row['cpu_iqr']:.1f} | "
            f"{row['cpu_overhead']:.1f} | {cpu_relative} |"
        )
    print("\nSizes (optimizer state: AdamW's tensors after the timed steps; file: the saved adapter's "
          "safetensors file).\n")
    print("| variant | trainable params | optimizer state (bytes) | vs LoRA's | adapter file (bytes) "
          "| of which tensor data | of which index tensors | file vs LoRA's |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        if row is floor:
            continue
        print(
            f"| {row['variant']} | {row['trainable']:,} | {row['optimizer_bytes']:,} | "
            f"{row['optimizer_bytes'] / lora['optimizer_bytes']:.3f} | {row['file_bytes']:,} | {row['data_bytes']:,} | "
            f"{row['index_bytes']:,} | {row['file_bytes'] / lora['file_bytes']:.3f} |"
        )

    verdicts = {}
    verdict = lambda ok: "met" if ok else "MISSED"
    keep_one, quarter = by_name["Partial-LoRA keep 1"], by_name["Partial-LoRA keep 0.25"]
    print("\nTargets:")
    for label, key in (("wall", "ms"), ("CPU", "cpu_ms")):
        ok = keep_one[key] <= lora[key]
        verdicts[f"keep 1.0 <= PEFT LoRA ({label})"] = ok
        print(f"- keep 1.0 no slower than PEFT LoRA ({label}): {keep_one[key]:.1f} vs {lora[key]:.1f} ms -> {verdict(ok)}")
    for label, key in (("wall", "overhead"), ("CPU", "cpu_overhead")):
        ok = lora[key] > 0 and quarter[key] <= 0.5 * lora[key]
        verdicts[f"keep 0.25 overhead <= LoRA's / 2 ({label})"] = ok
        outcome = verdict(ok) if lora[key] > 0 else "undetermined (PEFT LoRA's overhead is not above noise)"
        print(f"- keep 0.25 overhead <= half of PEFT LoRA's ({label}): {quarter[key]:.1f} vs {lora[key]:.1f} ms "
              f"(ratio {quarter[key] / lora[key]:.2f}) -> {outcome}")
    for row in rows:
        if row["keep"] is None:
            continue
        keep = row["keep"]
        optimizer = row["optimizer_bytes"] / (keep * lora["optimizer_bytes"])
        data = row["data_bytes"] / (keep * lora["data_bytes"] + row["index_bytes"])
        whole = row["file_bytes"] / (keep * lora["file_bytes"] + row["index_bytes"])
        print(f"- keep {keep:g}: optimizer state = {optimizer:.3f} x (keep x LoRA's); file tensor data = {data:.3f} x "
              f"(keep x LoRA's + index bytes); whole file incl. header = {whole:.3f} x (keep x LoRA's + index bytes)")
    return verdicts


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    ARGS = parser.parse_args()
    if ARGS.steps < 20:
        print(f"note: {ARGS.steps} timed steps; the reported numbers use at least 20")
    torch.set_num_threads(ARGS.threads)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; "
          f"{torch.get_num_threads()} threads on {os.cpu_count()} x {cpu_name()}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    began = time.perf_counter()
    for size in ARGS.sizes:
        report(size, measure(size, ARGS.steps, ARGS.warmup, ARGS.rank, ARGS.batch, ARGS.length))
    print(f"\n(total {time.perf_counter() - began:.0f} s)")
