"""Partial-AdaLoRA: AdaLoRA's SVD-form adapter with Partial-LoRA's row/column masking.

AdaLoRA (Zhang et al., 2023) writes the update of a frozen ``W`` (``m`` x ``n``) as

    dW = (alpha / r) * P @ diag(E) @ Q          P: m x r, E: r, Q: r x n

and, while training, zeroes the singular values ``E_i`` of the least important triplets
``(P[:, i], E_i, Q[i, :])`` so that the total rank of all layers shrinks, on a cubic schedule,
from ``r`` per layer to ``target_r`` per layer on average. Partial-AdaLoRA keeps only the
rows ``R`` of ``P`` and the columns ``C`` of ``Q``, stored compactly like Partial-LoRA:

    dW = (alpha / r) * diag(u_row) @ P @ diag(E) @ Q @ diag(u_col)

with trainable ``lora_P`` ``[|R|, r]``, ``lora_E`` ``[r, 1]``, ``lora_Q`` ``[r, |C|]`` and the
index buffers ``lora_rows``/``lora_columns``. The scaling is ``alpha / r`` with ``r`` the initial
rank and never changes (PEFT's ``scaling / (ranknum + 1e-5)`` without the ``1e-5``).

:class:`PartialAdaLoraLayer` is a :class:`~partial_lora.layer.PartialLoraLayer` whose
``lora_A``/``lora_B`` are properties giving the equivalent LoRA factors (``A = Q_C``,
``B = P_R diag(E)``), so the forward pass, ``compact_delta``, ``delta_weight``, ``merge`` and
``disable_adapters`` are inherited unchanged, and :func:`partial_lora.save` of a model that
has not been finalized writes the equivalent plain Partial-LoRA (at the initial rank). It is
put into a model by the same surgery as Partial-LoRA (:func:`partial_lora.surgery.apply` with
``layer_class=PartialAdaLoraLayer``). :func:`finalize` turns every layer into a plain,
rank-pruned Partial-LoRA layer.

The rank allocator and the orthogonal regulariser that train it are in
:mod:`partial_lora.methods.rank_allocation`.

Usage (any training loop; the package's ``train`` takes ``extra_loss`` and ``callbacks``)::

    import partial_lora
    from partial_lora.methods import partial_adalora, rank_allocation

    config = partial_lora.PartialLoraConfig(r=12, alpha=32, keep_ratios=ticket.keep_ratios(),
                                            target_modules=["query_proj", "key_proj", "value_proj"],
                                            modules_to_save=["classifier"])
    model = partial_adalora.apply_partial_adalora(model, config)
    allocator = rank_allocation.RankAllocator(model, target_r=8, total_steps=1000, tinit=100, tfinal=300)
    penalty = rank_allocation.OrthogonalRegularizer(weight=0.1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for step, batch in enumerate(batches, start=1):
        loss = model(**batch).loss + penalty(model, step)
        loss.backward()
        optimizer.step()
        allocator.update_and_allocate(model, step)  # needs the gradients: before zero_grad()
        optimizer.zero_grad()
    partial_adalora.finalize(model)  # plain Partial-LoRA layers at the allocated ranks
    partial_lora.save(model, "adapter")  # or export_peft, merge
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, Mapping

import torch
from torch import nn

from ..config import PartialLoraConfig
from ..layer import PartialLoraLayer
from ..naming import set_submodule
from ..surgery import CONFIG_ATTRIBUTE, apply

INIT_STD = 0.02  # AdaLoRA's initialisation of P and Q (E starts at zero)


# -- the layer ---------------------------------------------------------------------------
class PartialAdaLoraLayer(PartialLoraLayer):
    """A frozen linear (or 1x1 convolution, or transposed linear) layer plus a compact SVD-form update.

    Args:
        base: the module to adapt (any that :class:`PartialLoraLayer` adapts); its weight and bias are taken over.
        rows: sorted ``int64`` kept output features ``R``.
        columns: sorted ``int64`` kept input features ``C``.
        r: initial rank (number of triplets).
        alpha: scaling numerator; the update is scaled by ``alpha / r`` for good.
        dropout: dropout probability on the adapter's input.
        generator: optional generator for the initialisation of ``P`` and ``Q``.
        multiplier, adapter_dtype, name: as for :class:`PartialLoraLayer` (``apply`` gives this
            class no keep compensation).

    Trainable tensors: ``lora_P`` ``[|R|, r]`` and ``lora_Q`` ``[r, |C|]`` (``N(0, 0.02^2)``) and
    ``lora_E`` ``[r, 1]`` (zeros, so the adapted model starts equal to the base). Buffer
    ``rank_mask`` ``[r]`` (bool) marks the triplets the rank allocator keeps. The constructor
    is :class:`PartialLoraLayer`'s; only the adapter tensors and their initialisation differ.

    No keep compensation: the rank allocator's importance scores are products of entries and
    their gradients, which a rescaling would change; its learning rate is searched instead.
    """

    keep_compensated = False

    # -- parameters ----------------------------------------------------------------------
    def _create_adapter_tensors(self, factory_kwargs: dict) -> None:
        """Register ``lora_P`` ``[|R|, r]``, ``lora_E`` ``[r, 1]``, ``lora_Q`` ``[r, |C|]`` and ``rank_mask`` ``[r]``."""
        self.lora_P = nn.Parameter(torch.empty(len(self.lora_rows), self.r, **factory_kwargs))
        self.lora_E = nn.Parameter(torch.zeros(self.r, 1, **factory_kwargs))
        self.lora_Q = nn.Parameter(torch.empty(self.r, len(self.lora_columns), **factory_kwargs))
        self.register_buffer("rank_mask", torch.ones(self.r, dtype=torch.bool, device=factory_kwargs["device"]))

    def reset_lora_parameters(self, generator: torch.Generator | None = None) -> None:
        """``P, Q ~ N(0, 0.02^2)``, ``E = 0``, every triplet active (AdaLoRA's initialisation)."""
        with torch.no_grad():
            for tensor in (self.lora_P, self.lora_Q):
                tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=torch.float64) * INIT_STD)
            self.lora_E.zero_()
            self.rank_mask.fill_(True)

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The trainable adapter tensors: ``[lora_P, lora_E, lora_Q]``."""
        return [self.lora_P, self.lora_E, self.lora_Q]

    @property
    def lora_A(self) -> torch.Tensor:
        """The equivalent LoRA ``A``: ``Q_C`` itself, ``[r, |C|]``."""
        return self.lora_Q

    @property
    def lora_B(self) -> torch.Tensor:
        """The equivalent LoRA ``B = P_R diag(E)``, ``[|R|, r]``: computed (differentiable), so writing to it
        changes nothing."""
        return self.lora_P * self.lora_E.view(1, -1)

    @property
    def active_rank(self) -> int:
        """Triplets the rank allocator keeps."""
        return int(self.rank_mask.sum())

    @torch.no_grad()
    def apply_rank_mask(self) -> None:
        """Zero the singular values of the masked triplets (AdaLoRA's masking)."""
        self.lora_E.masked_fill_(~self.rank_mask.view(-1, 1), 0.0)

    def to_partial_lora(self, rank_alpha: float) -> PartialLoraLayer:
        """A plain :class:`PartialLoraLayer` with the same rows, columns and update.

        Masked triplets are dropped: the new layer has rank ``k = active_rank`` (at least 1)
        and scaling ``rank_alpha / k``, with ``A = Q_C[active]`` and
        ``B = P_R[:, active] diag(E[active]) * (alpha / r) / (rank_alpha / k)``.
        """
        if self.merged:
            raise ValueError("this layer is merged into its base weight; unmerge() it before finalizing")
        keep = self.rank_mask.nonzero().flatten()
        if len(keep) == 0:  # every triplet masked: keep one, whose update is zero
            keep = torch.zeros(1, dtype=torch.int64, device=self.rank_mask.device)
        k = len(keep)
        dropout = getattr(self.lora_dropout, "p", 0.0)
        layer = PartialLoraLayer(
            self.to_base(), self.lora_rows, self.lora_columns, r=k, alpha=rank_alpha, dropout=dropout,
            adapter_dtype=self.lora_Q.dtype, name=self.name,
        )
        ratio = self.scaling / (rank_alpha / k)
        with torch.no_grad():
            energy = (self.lora_E * self.rank_mask.view(-1, 1))[keep].view(1, -1)
            layer.lora_A.copy_(self.lora_Q[keep])
            layer.lora_B.copy_(self.lora_P[:, keep] * energy * ratio)
        layer.lora_A.requires_grad_(self.lora_Q.requires_grad)
        layer.lora_B.requires_grad_(self.lora_P.requires_grad)
        layer.adapter_enabled = self.adapter_enabled
        layer.train(self.training)
        return layer

    def extra_repr(self) -> str:
        return super().extra_repr() + f", adalora, active_rank={self.active_rank}/{self.r}"


# -- surgery -------------------------------------------------------------------------------
def apply_partial_adalora(
    model: nn.Module,
    config: PartialLoraConfig,
    *,
    init_r: int | None = None,
    scores: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> nn.Module:
    """Put a Partial-AdaLoRA layer in place of every target layer; freeze everything else.

    :func:`partial_lora.surgery.apply` with ``layer_class=PartialAdaLoraLayer``: rows and
    columns are chosen exactly as for Partial-LoRA (same config fields, same seeds, same
    ``scores`` for ``targeted``/``stochastic``), and the same checks run before the model changes.

    Args:
        model: any ``nn.Module``; changed in place and returned.
        config: target modules, keep ratios, selection, seed, ``alpha`` and dropout. ``config.r``
            (or ``config.ranks``) is the initial rank of each layer.
        init_r: shorthand that replaces ``config.r``.
        scores: ``{module name: (row_scores [out], column_scores [in])}`` (a ticket's scores).
    """
    if init_r is not None:
        config = dataclasses.replace(config, r=init_r)
    return apply(model, config, scores=scores, layer_class=PartialAdaLoraLayer)


def adalora_layers(model: nn.Module) -> dict[str, PartialAdaLoraLayer]:
    """Every Partial-AdaLoRA layer of ``model``, by full module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, PartialAdaLoraLayer)}


def active_ranks(model: nn.Module) -> dict[str, int]:
    """``{module name: triplets kept}`` of every Partial-AdaLoRA layer."""
    return {name: layer.active_rank for name, layer in adalora_layers(model).items()}


# -- finalize ------------------------------------------------------------------------------
def finalize(model: nn.Module) -> nn.Module:
    """Turn every Partial-AdaLoRA layer into a plain, rank-pruned :class:`PartialLoraLayer`.

    Each layer keeps its rows and columns and its update (masked triplets, whose singular
    values the allocator zeroes, are dropped); the model's config records each layer's new
    rank in ``ranks``. Afterwards :func:`partial_lora.save`, ``load``, ``export_peft`` and
    ``merge`` work as for any Partial-LoRA model. Returns the same model, changed in place.
    """
    _swap_in_plain_layers(model)
    return model


@contextlib.contextmanager
def finalized(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the ``with`` block the model has plain Partial-LoRA layers; afterwards its
    Partial-AdaLoRA layers (and training state) are back. For saving without ending training."""
    originals, config = _swap_in_plain_layers(model)
    try:
        yield model
    finally:
        for name, layer in originals.items():
            set_submodule(model, name, layer)
        setattr(model, CONFIG_ATTRIBUTE, config)


def _swap_in_plain_layers(model: nn.Module) -> tuple[dict[str, PartialAdaLoraLayer], PartialLoraConfig]:
    layers = adalora_layers(model)
    config = getattr(model, CONFIG_ATTRIBUTE, None)
    if not layers or config is None:
        raise ValueError("the model has no Partial-AdaLoRA layers; call apply_partial_adalora(model, config) first")
    plain = {name: layer.to_partial_lora(config.alpha) for name, layer in layers.items()}
    ranks = dict(config.ranks)
    ranks.update({name: layer.r for name, layer in plain.items()})
    for name, layer in plain.items():
        set_submodule(model, name, layer)
    setattr(model, CONFIG_ATTRIBUTE, dataclasses.replace(config, ranks=ranks))
    return layers, config


__all__ = [
    "PartialAdaLoraLayer",
    "active_ranks",
    "adalora_layers",
    "apply_partial_adalora",
    "finalize",
    "finalized",
]
