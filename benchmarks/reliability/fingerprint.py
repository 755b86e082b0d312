"""``fingerprint``: an adapter loaded onto other base weights.

An adapter trained on a tiny BERT (Partial-LoRA r=4, keep ratio 0.5 on query/value, the
classifier saved, random ``lora_B``) is saved (``partial_lora.save``) and exported
(``partial_lora.export_peft``). Each base below is loaded from both folders
(``partial_lora.load`` and ``partial_lora.import_peft``):

* the same weights: fp32, a bf16 or fp16 model, fp32 rounded through bf16 or fp16, a changed
  classifier (the adapter replaces it with its own);
* other adapted weights: one layer negated, its rows or columns permuted, another seed's
  model, the whole model or one layer scaled by 1.01, the two encoder layers swapped, query
  and value swapped, a negated layer in bf16, a sampled entry changed; and, seeded
  (``--fingerprint-edits``), one random entry changed by a lot or one random row zeroed;
* (``fingerprint-outside``) weights changed only outside the adapted layers: the embeddings
  or an unadapted ``key`` layer negated.

Clean: accepted exactly when the adapted weights are the same (up to half precision), and
otherwise refused with ``AdapterFileError`` and a message, the base left unchanged.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

import torch

import partial_lora
from partial_lora import AdapterFileError, PartialLoraConfig

from .common import Section, Timer, say

from fixtures import randomize_adapters, tiny_bert  # noqa: E402  (the tests' builders)

CONFIG = PartialLoraConfig(r=4, keep_ratio=0.5, target_modules=["query", "value"], modules_to_save=["classifier"])
LAYER = "bert.encoder.layer.0.attention.self.query"
ADAPTED = [f"bert.encoder.layer.{i}.attention.self.{p}" for i in (0, 1) for p in ("query", "value")]


def changed(edit: Callable[[torch.nn.Module], None], dtype: torch.dtype | None = None) -> Callable[[], torch.nn.Module]:
    """A builder of the fp32 tiny BERT (or one in ``dtype``) changed in place by ``edit``."""
    def build() -> torch.nn.Module:
        base = tiny_bert()
        with torch.no_grad():
            edit(base)
        return base.to(dtype) if dtype is not None else base
    return build


def weight(base, name: str = LAYER) -> torch.Tensor:
    return base.get_submodule(name).weight


def permute(dim: int) -> Callable[[torch.nn.Module], None]:
    def edit(base) -> None:
        w = weight(base)
        order = torch.randperm(w.shape[dim], generator=torch.Generator().manual_seed(0))
        w.copy_(w[order] if dim == 0 else w[:, order])
    return edit


def rounded(dtype: torch.dtype) -> Callable[[torch.nn.Module], None]:
    def edit(base) -> None:
        for parameter in base.parameters():
            parameter.copy_(parameter.to(dtype).float())
    return edit


def scaled(factor: float, name: str | None = None) -> Callable[[torch.nn.Module], None]:
    def edit(base) -> None:
        for parameter in ([weight(base, name)] if name else base.parameters()):
            parameter.mul_(factor)
    return edit


def layers_swapped(base) -> None:
    first, second = base.bert.encoder.layer
    for a, b in zip(first.parameters(), second.parameters()):
        held = a.clone()
        a.copy_(b)
        b.copy_(held)


def query_value_swapped(base) -> None:
    attention = base.bert.encoder.layer[0].attention.self
    held = attention.query.weight.clone()
    attention.query.weight.copy_(attention.value.weight)
    attention.value.weight.copy_(held)


def sampled_entry(base) -> None:
    from partial_lora.base_weights import sample_indices

    w = weight(base)
    w.view(-1)[sample_indices(LAYER, w.numel())[0]] += 10.0


def negate(name: str) -> Callable[[torch.nn.Module], None]:
    def edit(base) -> None:
        base.get_submodule(name).weight.neg_()
    return edit


# name -> (builder, the adapted weights are the same)
BASES: dict[str, tuple[Callable[[], torch.nn.Module], bool]] = {
    "fp32, the same weights": (tiny_bert, True),
    "a bf16 model": (lambda: tiny_bert().to(torch.bfloat16), True),
    "an fp16 model": (lambda: tiny_bert().to(torch.float16), True),
    "fp32 rounded through bf16": (changed(rounded(torch.bfloat16)), True),
    "fp32 rounded through fp16": (changed(rounded(torch.float16)), True),
    "another classifier (replaced by the saved one)": (changed(negate("classifier")), True),
    "one adapted layer negated": (changed(negate(LAYER)), False),
    "rows permuted": (changed(permute(0)), False),
    "columns permuted": (changed(permute(1)), False),
    "another seed's model": (lambda: tiny_bert(seed=123), False),
    "every weight scaled by 1.01": (changed(scaled(1.01)), False),
    "one layer scaled by 1.01": (changed(scaled(1.01, LAYER)), False),
    "the two encoder layers swapped": (changed(layers_swapped), False),
    "query and value swapped": (changed(query_value_swapped), False),
    "a negated layer, in bf16": (changed(negate(LAYER), torch.bfloat16), False),
    "a sampled entry changed by 10": (changed(sampled_entry), False),
}
OUTSIDE: dict[str, tuple[Callable[[], torch.nn.Module], bool]] = {
    "the word embeddings negated": (changed(negate("bert.embeddings.word_embeddings")), False),
    "an unadapted key layer negated": (changed(negate("bert.encoder.layer.0.attention.self.key")), False),
}


def random_edit(seed: int, index: int) -> tuple[str, Callable[[], torch.nn.Module]]:
    """One random entry changed by a lot (even ``index``) or one random row zeroed (odd)."""
    rng = random.Random(f"{seed}-fingerprint-{index}")
    name = rng.choice(ADAPTED)
    if index % 2 == 0:
        position = rng.randrange(32 * 32)
        value = rng.choice([-1.0, 1.0]) * rng.uniform(1.0, 10.0)

        def edit(base) -> None:
            weight(base, name).view(-1)[position] = value
        return f"entry {position} of {name.split('encoder.')[1]} set to {value:.2f}", changed(edit)
    row = rng.randrange(32)

    def zero_row(base) -> None:
        weight(base, name)[row].zero_()
    return f"row {row} of {name.split('encoder.')[1]} zeroed", changed(zero_row)


def attempt(loader: str, folder: Path, base: torch.nn.Module, same: bool) -> list[str]:
    before = {k: v.clone() for k, v in base.state_dict().items()}
    try:
        if loader == "load":
            partial_lora.load(base, folder)
        else:
            partial_lora.import_peft(base, folder)
    except AdapterFileError as err:
        problems = [] if not same else [f"refused the same weights: {err}"[:300]]
        after = base.state_dict()
        if partial_lora.adapter_layers(base) or any(not torch.equal(before[k], after[k]) for k in before):
            problems.append("refused, but the base model was changed")
        if len(str(err)) < 20:
            problems.append(f"a too-short message {str(err)!r}")
        return problems
    except Exception as err:  # noqa: BLE001 - every failure is counted
        return [f"raised {type(err).__name__}: {err}"[:300]]
    return [] if same else ["accepted other base weights"]


def run(args, work: Path) -> list[Section]:
    inside = Section("fingerprint", "adapter loaded onto other base weights (load, import_peft)")
    outside = Section("fingerprint-outside", "bases that differ only outside the adapted layers")
    with Timer(inside):
        model = partial_lora.apply(tiny_bert(), CONFIG)
        randomize_adapters(model)
        folders = {"load": partial_lora.save(model, work / "adapter"),
                   "import_peft": partial_lora.export_peft(model, work / "peft")}
        cases = [(name, builder, same, inside, "same weights" if same else "other weights")
                 for name, (builder, same) in BASES.items()]
        cases += [(*random_edit(args.seed, i), False, inside, "random one-entry or one-row edit")
                  for i in range(args.fingerprint_edits)]
        cases += [(name, builder, same, outside, "outside the adapted layers")
                  for name, (builder, same) in OUTSIDE.items()]
        for name, builder, same, section, kind in cases:
            if args.case is not None and args.case != name:
                continue
            for loader, folder in folders.items():
                problems = attempt(loader, folder, builder(), same)
                if problems:  # failures alike are printed once, the others by name
                    section.signatures.append(f"{kind}: {problems[0][:40]}")
                section.record(f"{kind} ({loader})", f"fingerprint '{name}' ({loader})", problems,
                               f"python -m benchmarks.reliability --only fingerprint --seed {args.seed} "
                               f"--case '{name}'")
    outside.seconds = 0.0
    for section in (inside, outside):
        say("fingerprint", f"{section.name}: {section.clean}/{section.tried} clean")
    return [s for s in (inside, outside) if s.tried]
