"""``find_ticket``: per-layer keep ratios and scores from a few labelled examples."""

from __future__ import annotations

import time
import warnings
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..layer import weight_matrix
from ..naming import model_name_or_path
from ..surgery import find_target_modules
from .few_shot import example_count, fingerprint, prepare_batches, shots_per_class, task_kind
from .heads import build_head
from .magnitude_pruning import imp_layers
from .options import TicketOptions
from .passes import PassCounter
from .recording import InputRecorder
from .scoring import Scorer, prepare_scoring
from .snip import snip_layers
from .svd_search import joint_search, layer_entries, layerwise_search, spectra_of
from .ticket import LayerTicket, Provenance, Ticket, equivalent_k, recorded_targets


def find_ticket(
    model: nn.Module,
    data: Iterable[Mapping[str, Any]] | None,
    *,
    target_modules: Sequence[str] | str,
    method: str = "svd",
    threshold: float = 0.9,
    threshold_mode: str = "relative",
    metric: Any = "accuracy",
    head: str = "auto",
    head_module: str | None = None,
    head_is_new: bool | None = None,
    class_prompts: Any = None,
    tokenizer: Any = None,
    ratio: float | None = None,
    seed: int = 0,
    f_tolerance: float = 0.01,
    imp_rate: float = 0.2,
    imp_max_rounds: int = 30,
    progress: bool = True,
    model_name: str | None = None,
    data_fingerprint: str | None = None,
    shots: int | None = None,
) -> Ticket:
    """Derive a ticket (per-layer keep ratios and row/column scores) for ``model`` on ``data``.

    The model is used in eval mode and left exactly as it was (weights, training mode,
    ``requires_grad`` flags, gradients).

    Args:
        model: a transformers model or any ``nn.Module`` whose forward takes the batch's keys.
        data: the few-shot set: an iterable of batches, dicts of tensors with ``labels``
            (``[B]`` class indices, or ``[B, T]`` token ids with -100 where not scored for a
            causal LM). Read once into memory. May be None for ``method="uniform"``.
        target_modules: name suffixes, one regular expression or ``"all-linear"`` (as in
            :class:`partial_lora.PartialLoraConfig`); every matched layer gets an entry.
        method: ``"svd"`` (default: forward-only, task-aware spectra + joint bisection on the
            energy fraction), ``"svd-layerwise"`` (ablation only: one layer at a time, rank
            bisection; degenerate on MiniLM), ``"snip"`` (one backward pass; ``threshold`` is
            the saliency-mass fraction), ``"imp"`` (global magnitude pruning rounds until the
            score falls below the threshold) or ``"uniform"`` (``ratio`` everywhere).
        threshold: tau in (0, 1]: the fraction of the baseline score to keep (``svd``,
            ``svd-layerwise``, ``imp``), also the starting energy fraction ``f`` of ``svd``.
        threshold_mode: ``"relative"``: ``score - floor >= tau (a* - floor)`` with the
            metric's chance floor; ``"absolute"``: ``score >= tau a*`` (the paper's).
        metric: ``"accuracy"``, ``"macro_f1"``, ``"exact_match"``, ``"neg_loss"`` (``-`` or ``_``)
            or a callable ``fn(logits [N, C], labels [N]) -> float`` (higher is better).
        head: ``"auto"``, ``"own"``, ``"probe"`` or ``"zero-shot"`` (see :mod:`.heads`).
        head_module: full name of the head ``nn.Linear`` the probe stands in for (found by
            name when omitted).
        head_is_new: True if the head is untrained (then ``auto`` probes and ``own`` is
            refused); by default read from ``model.partial_lora_new_modules``.
        class_prompts, tokenizer: class texts (and their tokenizer) or tokenized texts for
            the zero-shot head of a CLIP-like model.
        ratio: the keep ratio of ``method="uniform"``.
        seed: seed of the probe's fit/held-out split (the only random choice).
        f_tolerance: ``svd`` bisection stops when the bracket on ``f`` is this narrow.
        imp_rate, imp_max_rounds: fraction of the remaining weights pruned per IMP round,
            and the most rounds.
        progress: show a progress bar per pass.
        model_name, data_fingerprint, shots: provenance; inferred when omitted.

    Returns:
        a :class:`Ticket`; ``ticket.provenance`` records the cost (forward-equivalents,
        seconds), the baseline, floor and required score, and the final ``f``.
    """
    options = TicketOptions(method=method, threshold=threshold, threshold_mode=threshold_mode, metric=metric,
                            head=head, ratio=ratio, seed=seed, f_tolerance=f_tolerance, imp_rate=imp_rate,
                            imp_max_rounds=imp_max_rounds, progress=progress)
    started = time.perf_counter()
    targets = find_target_modules(model, target_modules)
    provenance = Provenance(
        method=options.method, threshold=options.threshold, threshold_mode=options.threshold_mode,
        metric=options.metric.name, model_name=model_name or model_name_or_path(model) or type(model).__name__, seed=options.seed,
        target_modules=recorded_targets(target_modules),
    )
    if options.method == "uniform":
        provenance.threshold = options.ratio
        if data is not None:
            batches = prepare_batches(data, torch.device("cpu"))
            _describe_data(provenance, batches, data_fingerprint, shots)
        provenance.seconds = time.perf_counter() - started
        return Ticket(uniform_layers(targets, options.ratio), provenance)

    batches = prepare_batches(data, _device(model))
    _describe_data(provenance, batches, data_fingerprint, shots)
    kind = task_kind(batches)
    options.metric.check_kind(kind)
    scoring_head = build_head(model, kind, options.head, head_module=head_module, head_is_new=head_is_new,
                              class_prompts=class_prompts, tokenizer=tokenizer)
    provenance.head = scoring_head.name
    counter = PassCounter()
    was_training = model.training
    model.eval()
    try:
        layers = _search(model, batches, kind, scoring_head, targets, options, counter, provenance)
    finally:
        model.train(was_training)
    provenance.forward_equivalents = counter.forward_equivalents
    provenance.seconds = time.perf_counter() - started
    return Ticket(layers, provenance)


def _search(model, batches, kind, head, targets, options: TicketOptions, counter: PassCounter,
            provenance: Provenance) -> dict[str, LayerTicket]:
    needs_spectra = options.method in ("svd", "svd-layerwise")
    recorder = InputRecorder(targets) if needs_spectra else None
    common = dict(threshold=options.threshold, threshold_mode=options.threshold_mode, seed=options.seed,
                  counter=counter, progress=options.progress)
    if recorder is not None:
        with recorder:
            scorer = prepare_scoring(model, batches, head, kind, options.metric, recorder=recorder, **common)
    else:
        scorer = prepare_scoring(model, batches, head, kind, options.metric, **common)
    _describe_scoring(provenance, scorer)

    if options.method == "svd":
        spectra = spectra_of(targets, recorder)
        ks, fraction, score = joint_search(scorer, targets, spectra, threshold=options.threshold,
                                           tolerance=options.f_tolerance)
        provenance.final_f, provenance.final_score = fraction, score
        return layer_entries(targets, spectra, ks, recorder)
    if options.method == "svd-layerwise":
        spectra = spectra_of(targets, recorder)
        return layer_entries(targets, spectra, layerwise_search(scorer, targets, spectra), recorder)
    if options.method == "snip":
        provenance.required_score = None  # tau is a saliency mass here, not a share of the score
        if scorer.features is not None:  # probe head: the saliency uses a probe fitted on every shot
            head.fit(scorer.features, scorer.labels)
        return snip_layers(scorer, targets, options.threshold)
    layers, summary = imp_layers(scorer, targets, rate=options.imp_rate, max_rounds=options.imp_max_rounds)
    provenance.final_score = summary["final_score"]
    provenance.notes.append(f"imp: {summary['rounds']} rounds, global density {summary['global_density']:.4f}")
    return layers


def uniform_layers(targets: Mapping[str, nn.Module], ratio: float) -> dict[str, LayerTicket]:
    """One ratio for every layer; weight-magnitude row/column sums as scores (no data needed)."""
    layers = {}
    for name, module in targets.items():
        magnitude = weight_matrix(module).detach().abs().to("cpu", torch.float64)
        shape = tuple(magnitude.shape)
        layers[name] = LayerTicket(ratio, equivalent_k(ratio, shape), shape, magnitude.sum(1), magnitude.sum(0))
    return layers


def _describe_data(provenance: Provenance, batches, data_fingerprint: str | None, shots: int | None) -> None:
    provenance.data_fingerprint = data_fingerprint or fingerprint(batches)
    provenance.examples = example_count(batches)
    provenance.shots = shots if shots is not None else shots_per_class(batches)


def _describe_scoring(provenance: Provenance, scorer: Scorer) -> None:
    provenance.baseline_score, provenance.floor = scorer.baseline, scorer.floor
    provenance.required_score = scorer.required
    provenance.notes.extend(scorer.notes)
    for note in scorer.notes:
        warnings.warn(f"find_ticket: {note}. The model is at chance on these examples, so the ticket says little; "
                      "score an untrained head with head='probe', or choose a metric on which the model beats chance",
                      stacklevel=4)


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
