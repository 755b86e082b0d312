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
has not been finalized writes the equivalent plain Partial-LoRA (at the initial rank).
:func:`finalize` turns every layer into a plain, rank-pruned Partial-LoRA layer.

Usage (any training loop; the package's ``train`` takes ``extra_loss`` and ``callbacks``)::

    import partial_lora
    from partial_lora import adalora

    config = partial_lora.PartialLoraConfig(r=12, alpha=32, keep_ratios=ticket.keep_ratios(),
                                            target_modules=["query_proj", "key_proj", "value_proj"],
                                            modules_to_save=["classifier"])
    model = adalora.apply_partial_adalora(model, config)
    allocator = adalora.RankAllocator(model, target_r=8, total_steps=1000, tinit=100, tfinal=300)
    penalty = adalora.OrthogonalRegularizer(weight=0.1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for step, batch in enumerate(batches, start=1):
        loss = model(**batch).loss + penalty(model, step)
        loss.backward()
        optimizer.step()
        allocator.update_and_allocate(model, step)  # needs the gradients: before zero_grad()
        optimizer.zero_grad()
    adalora.finalize(model)  # plain Partial-LoRA layers at the allocated ranks
    partial_lora.save(model, "adapter")  # or export_peft, merge
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, Mapping

import torch
from torch import nn

from .config import PartialLoraConfig
from .layer import PartialLoraLayer, base_shape
from .selection import layer_generator, select_rows_and_columns
from .surgery import CONFIG_ATTRIBUTE, adapter_layers, find_target_modules, modules_to_save

INIT_STD = 0.02  # AdaLoRA's initialisation of P and Q (E starts at zero)
_MODULE_INTERNALS = frozenset(vars(nn.Module()))  # _parameters, _buffers, _modules, hooks, training, ...


# -- the layer ---------------------------------------------------------------------------
class PartialAdaLoraLayer(PartialLoraLayer):
    """A frozen linear (or 1x1 convolution) layer plus a compact SVD-form update.

    Args:
        base: the ``nn.Linear`` or 1x1 ``nn.Conv2d`` to adapt; its weight and bias are taken over.
        rows: sorted ``int64`` kept output features ``R``.
        columns: sorted ``int64`` kept input features ``C``.
        r: initial rank (number of triplets).
        alpha: scaling numerator; the update is scaled by ``alpha / r`` for good.
        dropout: dropout probability on the adapter's input.
        generator: optional generator for the initialisation of ``P`` and ``Q``.

    Trainable tensors: ``lora_P`` ``[|R|, r]`` and ``lora_Q`` ``[r, |C|]`` (``N(0, 0.02^2)``) and
    ``lora_E`` ``[r, 1]`` (zeros, so the adapted model starts equal to the base). Buffer
    ``rank_mask`` ``[r]`` (bool) marks the triplets the rank allocator keeps.
    """

    def __init__(
        self,
        base: nn.Module,
        rows: torch.Tensor,
        columns: torch.Tensor,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        # PartialLoraLayer.__init__ would register lora_A/lora_B parameters, which are views
        # here. A throw-away rank-1 layer validates the arguments and takes over the base;
        # its plain attributes (shape, conv settings, flags) are copied, then its tensors.
        template = PartialLoraLayer(base, rows, columns, r=1, alpha=alpha, dropout=dropout, generator=torch.Generator())
        nn.Module.__init__(self)
        for key, value in vars(template).items():
            if key not in _MODULE_INTERNALS:
                self.__dict__[key] = value
        self.weight, self.bias = template.weight, template.bias
        self.register_buffer("lora_rows", template.lora_rows)
        self.register_buffer("lora_columns", template.lora_columns)
        self.lora_dropout = template.lora_dropout
        self.r = int(r)
        self.alpha = float(alpha)
        self.scaling = self.alpha / self.r
        factory = {"device": template.lora_A.device, "dtype": template.lora_A.dtype}
        self.lora_P = nn.Parameter(torch.empty(len(self.lora_rows), self.r, **factory))
        self.lora_E = nn.Parameter(torch.zeros(self.r, 1, **factory))
        self.lora_Q = nn.Parameter(torch.empty(self.r, len(self.lora_columns), **factory))
        self.register_buffer("rank_mask", torch.ones(self.r, dtype=torch.bool, device=factory["device"]))
        self.reset_lora_parameters(generator)

    # -- parameters ----------------------------------------------------------------------
    def reset_lora_parameters(self, generator: torch.Generator | None = None) -> None:
        """``P, Q ~ N(0, 0.02^2)``, ``E = 0``, every triplet active (AdaLoRA's initialisation)."""
        with torch.no_grad():
            for tensor in (self.lora_P, self.lora_Q):
                tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=torch.float64) * INIT_STD)
            self.lora_E.zero_()
            self.rank_mask.fill_(True)

    def adapter_parameters(self) -> list[nn.Parameter]:
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

    Rows and columns are chosen exactly as :func:`partial_lora.apply` chooses them (same
    config fields, same seeds, same ``scores`` for ``targeted``/``stochastic``).

    Args:
        model: any ``nn.Module``; changed in place and returned.
        config: target modules, keep ratios, selection, seed, ``alpha`` and dropout. ``config.r``
            (or ``config.ranks``) is the initial rank of each layer.
        init_r: shorthand that replaces ``config.r``.
        scores: ``{module name: (row_scores [out], column_scores [in])}`` (a ticket's scores).
    """
    if init_r is not None:
        config = dataclasses.replace(config, r=init_r)
    if adapter_layers(model):
        raise ValueError("this model already has Partial-LoRA adapters; merge() them or start from a fresh base")
    targets = find_target_modules(model, config.target_modules, exclude_modules=config.exclude_modules,
                                  modules_to_save=config.modules_to_save)
    indices = {}
    for name, module in targets.items():
        pair = (scores or {}).get(name)
        if config.selection != "random" and pair is None:
            raise ValueError(
                f"selection={config.selection!r} needs row/column scores for every target layer; none for {name!r}. "
                "Pass scores=ticket.scores or use selection='random'."
            )
        indices[name] = select_rows_and_columns(
            name, base_shape(module), config.keep_ratio_for(name), config.selection, config.seed,
            *(pair if pair is not None else (None, None)),
        )
    setattr(model, CONFIG_ATTRIBUTE, config)
    try:
        saved = modules_to_save(model)
    except ValueError:
        delattr(model, CONFIG_ATTRIBUTE)
        raise
    model.requires_grad_(False)
    for name, (rows, columns) in indices.items():
        layer = PartialAdaLoraLayer(
            targets[name], rows, columns, r=config.rank_for(name), alpha=config.alpha,
            dropout=config.dropout, generator=layer_generator(config.seed, name, "init"),
        )
        _set_submodule(model, name, layer)
    for module in saved.values():
        module.requires_grad_(True)
    return model


def adalora_layers(model: nn.Module) -> dict[str, PartialAdaLoraLayer]:
    """Every Partial-AdaLoRA layer of ``model``, by full module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, PartialAdaLoraLayer)}


def active_ranks(model: nn.Module) -> dict[str, int]:
    """``{module name: triplets kept}`` of every Partial-AdaLoRA layer."""
    return {name: layer.active_rank for name, layer in adalora_layers(model).items()}


# -- the rank budget -----------------------------------------------------------------------
def rank_budget(step: int, *, init_budget: int, target_budget: int, total_steps: int, tinit: int, tfinal: int) -> int:
    """Total rank allowed after ``step`` optimizer steps (AdaLoRA's cubic schedule).

    ``init_budget`` up to ``tinit``; then ``target + (init - target) * (1 - t)^3`` with
    ``t = (step - tinit) / (total_steps - tfinal - tinit)``; ``target_budget`` from
    ``total_steps - tfinal`` on.
    """
    if step <= tinit:
        return init_budget
    if step >= total_steps - tfinal:
        return target_budget
    remaining = 1.0 - (step - tinit) / (total_steps - tfinal - tinit)
    return int((init_budget - target_budget) * remaining**3 + target_budget)


class RankAllocator:
    """Importance-driven rank allocation over every Partial-AdaLoRA layer of a model.

    The importance of a parameter entry is AdaLoRA's: the sensitivity ``s = |p * grad|``,
    smoothed ``s_bar <- beta1 s_bar + (1 - beta1) s``, times its uncertainty
    ``u_bar <- beta2 u_bar + (1 - beta2) |s - s_bar|``. A triplet ``i`` scores
    ``score(E_i) + mean_k score(P[k, i]) + mean_j score(Q[i, j])`` (means over the kept rows
    and columns only). At each allocation the ``budget`` best triplets of the whole model
    stay active and the singular values of the others are set to zero (they keep training
    and can win their place back at the next allocation, as in AdaLoRA).

    Phases (``step`` counts optimizer steps):

    * ``step <= tinit``: warm-up, every triplet active;
    * ``tinit < step < total_steps - tfinal``: every ``delta_t`` steps, mask down to
      :func:`rank_budget`;
    * ``step == total_steps - tfinal`` (or the first call past it): the final mask, at
      ``target_r`` per layer on average; importance is no longer tracked;
    * afterwards the final mask is re-applied at every step.

    Args:
        model: a model changed by :func:`apply_partial_adalora`.
        target_r: average rank per layer at the end.
        total_steps: optimizer steps of the whole run.
        tinit: warm-up steps before any masking.
        tfinal: steps at the end trained with the final ranks.
        delta_t: steps between two allocations.
        beta1, beta2: EMA factors of sensitivity and uncertainty, in (0, 1).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        target_r: int,
        total_steps: int,
        tinit: int = 0,
        tfinal: int = 0,
        delta_t: int = 1,
        beta1: float = 0.85,
        beta2: float = 0.85,
    ) -> None:
        self.layers = adalora_layers(model)
        if not self.layers:
            raise ValueError("the model has no Partial-AdaLoRA layers; call apply_partial_adalora(model, config) first")
        if not isinstance(target_r, int) or target_r < 1:
            raise ValueError(f"target_r={target_r!r} is invalid: the average final rank must be a positive integer")
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps={total_steps!r} is invalid: give the number of optimizer steps of the run")
        if not (0 <= tinit and 0 <= tfinal and tinit < total_steps - tfinal):
            raise ValueError(
                f"tinit={tinit}, tfinal={tfinal}, total_steps={total_steps} leave no budgeting phase; "
                "need 0 <= tinit < total_steps - tfinal"
            )
        if not isinstance(delta_t, int) or delta_t < 1:
            raise ValueError(f"delta_t={delta_t!r} is invalid: the allocation interval must be a positive integer")
        for name, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0 < beta < 1:
                raise ValueError(f"{name}={beta!r} is invalid: an EMA factor lies in (0, 1), e.g. 0.85")
        self.target_r, self.total_steps = target_r, total_steps
        self.tinit, self.tfinal, self.delta_t = tinit, tfinal, delta_t
        self.beta1, self.beta2 = beta1, beta2
        self.init_budget = sum(layer.r for layer in self.layers.values())
        self.target_budget = min(self.init_budget, target_r * len(self.layers))
        self.final_mask_done = False
        self.reset_importance()

    def reset_importance(self) -> None:
        self._sensitivity: dict[tuple[str, str], torch.Tensor] = {}
        self._uncertainty: dict[tuple[str, str], torch.Tensor] = {}

    def budget(self, step: int) -> int:
        """Total active rank allowed after ``step`` optimizer steps."""
        return rank_budget(
            step, init_budget=self.init_budget, target_budget=self.target_budget,
            total_steps=self.total_steps, tinit=self.tinit, tfinal=self.tfinal,
        )

    def update_and_allocate(self, model: nn.Module, global_step: int) -> int:
        """Track importance and mask to the budget; call after ``optimizer.step()``, before ``zero_grad()``.

        ``model`` may be the model or a wrapper of it (DDP, accelerate): the layers found at
        construction are used. Returns the total active rank after this call.
        """
        final_start = self.total_steps - self.tfinal
        if global_step < final_start:
            self._update_importance()
            if global_step > self.tinit and global_step % self.delta_t == 0:
                self.mask_to_budget(self.budget(global_step))
        elif not self.final_mask_done:
            if not self._sensitivity:  # e.g. a run resumed in its final phase
                self._update_importance()
            self.mask_to_budget(self.target_budget)
            self.final_mask_done = True
            self.reset_importance()
        else:
            for layer in self.layers.values():
                layer.apply_rank_mask()
        return sum(layer.active_rank for layer in self.layers.values())

    @torch.no_grad()
    def _update_importance(self) -> None:
        if all(p.grad is None for layer in self.layers.values() for p in layer.adapter_parameters()):
            raise RuntimeError(
                "RankAllocator.update_and_allocate found no gradients on the Partial-AdaLoRA parameters: call it "
                "after loss.backward() (and optimizer.step()) but before optimizer.zero_grad()"
            )
        for name, layer in self.layers.items():
            for part, parameter in (("P", layer.lora_P), ("E", layer.lora_E), ("Q", layer.lora_Q)):
                grad = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
                sensitivity = (parameter * grad).abs().float()
                key = (name, part)
                if key not in self._sensitivity:
                    self._sensitivity[key] = torch.zeros_like(sensitivity)
                    self._uncertainty[key] = torch.zeros_like(sensitivity)
                smoothed = self._sensitivity[key].mul_(self.beta1).add_(sensitivity, alpha=1 - self.beta1)
                self._uncertainty[key].mul_(self.beta2).add_((sensitivity - smoothed).abs(), alpha=1 - self.beta2)

    def triplet_scores(self) -> dict[str, torch.Tensor]:
        """``{layer name: [r] importance of each triplet}`` (zeros before any update)."""
        scores = {}
        for name, layer in self.layers.items():
            scores[name] = (
                self._entry_scores(name, "E", layer.lora_E).view(-1)
                + self._entry_scores(name, "P", layer.lora_P).mean(dim=0)
                + self._entry_scores(name, "Q", layer.lora_Q).mean(dim=1)
            )
        return scores

    def _entry_scores(self, name: str, part: str, parameter: torch.Tensor) -> torch.Tensor:
        """Smoothed sensitivity times uncertainty of every entry of one parameter (float32)."""
        key = (name, part)
        if key not in self._sensitivity:
            return torch.zeros(parameter.shape, device=parameter.device)
        return self._sensitivity[key] * self._uncertainty[key]

    @torch.no_grad()
    def mask_to_budget(self, budget: int) -> None:
        """Keep the ``budget`` most important triplets of the whole model; zero the others' ``E``."""
        scores = self.triplet_scores()
        names = list(scores)
        flat = torch.cat([scores[n].cpu() for n in names])
        keep = torch.zeros(len(flat), dtype=torch.bool)
        # A stable sort: equal scores keep the earlier triplet, so allocation is deterministic.
        keep[torch.sort(flat, descending=True, stable=True).indices[: max(0, budget)]] = True
        start = 0
        for name in names:
            layer = self.layers[name]
            layer.rank_mask.copy_(keep[start : start + layer.r])
            layer.apply_rank_mask()
            start += layer.r


# -- orthogonality -------------------------------------------------------------------------
def orthogonal_penalty(model: nn.Module) -> torch.Tensor:
    """AdaLoRA's regulariser ``||P_R^T P_R - I||_F^2 + ||Q_C Q_C^T - I||_F^2``, averaged over layers.

    When a layer keeps fewer rows than its rank (``|R| < r``) its ``P_R`` cannot have
    orthonormal columns, so the smaller Gram matrix is used (``P_R P_R^T - I``: orthonormal
    rows); the same for ``Q_C`` with ``|C| < r``. The squared norm is the paper's; PEFT's
    AdaLoRA uses the plain Frobenius norm averaged over matrices.

    Returns a scalar tensor (zero, without gradient, when the model has no such layers).
    """
    layers = list(adalora_layers(model).values())
    if not layers:
        return torch.zeros(())
    total = 0.0
    for layer in layers:
        total = total + _gram_defect(layer.lora_P) + _gram_defect(layer.lora_Q)
    return total / len(layers)


def _gram_defect(matrix: torch.Tensor) -> torch.Tensor:
    """``||M^T M - I||_F^2`` on the smaller side of ``M``."""
    gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
    identity = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return (gram - identity).pow(2).sum()


# -- training-loop adapters ----------------------------------------------------------------
class OrthogonalRegularizer:
    """``extra_loss(model, step)`` hook: ``weight * orthogonal_penalty(model)`` (AdaLoRA uses 0.1-0.5)."""

    def __init__(self, weight: float = 0.1) -> None:
        if not weight >= 0:
            raise ValueError(f"weight={weight!r} is invalid: the orthogonal regularisation weight must be >= 0")
        self.weight = float(weight)

    def __call__(self, model: nn.Module, step: int) -> torch.Tensor:
        return self.weight * orthogonal_penalty(model)

    def __repr__(self) -> str:
        return f"OrthogonalRegularizer(weight={self.weight:g})"


class AllocatorCallback:
    """Training-loop callback: ``on_step_end(model, step)`` runs ``allocator.update_and_allocate``.

    The loop must call it after ``optimizer.step()`` and before ``optimizer.zero_grad()``.
    """

    def __init__(self, allocator: RankAllocator) -> None:
        self.allocator = allocator
        self.history: list[tuple[int, int]] = []  # (step, total active rank)

    def on_step_end(self, model: nn.Module, step: int) -> None:
        self.history.append((step, self.allocator.update_and_allocate(model, step)))


def training_hooks(
    model: nn.Module,
    *,
    target_r: int,
    total_steps: int,
    orth_reg_weight: float = 0.1,
    **schedule,
) -> tuple[OrthogonalRegularizer, list[AllocatorCallback]]:
    """``(extra_loss, callbacks)`` for a training loop: the penalty and the rank allocator.

    ``schedule`` takes :class:`RankAllocator`'s ``tinit``, ``tfinal``, ``delta_t``, ``beta1``, ``beta2``.
    """
    allocator = RankAllocator(model, target_r=target_r, total_steps=total_steps, **schedule)
    return OrthogonalRegularizer(orth_reg_weight), [AllocatorCallback(allocator)]


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
            _set_submodule(model, name, layer)
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
        _set_submodule(model, name, layer)
    setattr(model, CONFIG_ATTRIBUTE, dataclasses.replace(config, ranks=ranks))
    return layers, config


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


__all__ = [
    "AllocatorCallback",
    "OrthogonalRegularizer",
    "PartialAdaLoraLayer",
    "RankAllocator",
    "active_ranks",
    "adalora_layers",
    "apply_partial_adalora",
    "finalize",
    "finalized",
    "orthogonal_penalty",
    "rank_budget",
    "training_hooks",
]
