"""AdaLoRA's rank allocation for Partial-AdaLoRA layers, and the hooks a training loop calls.

While training, AdaLoRA (Zhang et al., 2023) scores every triplet ``(P[:, i], E_i, Q[i, :])``
of every layer by the smoothed sensitivity ``|p * grad|`` of its entries and keeps the best
ones, zeroing the singular values ``E_i`` of the others; the total rank allowed shrinks on a
cubic schedule (:func:`rank_budget`) from the initial ranks to ``target_r`` per layer on
average. An orthogonal regulariser (PEFT's form, :func:`orthogonal_penalty`) keeps ``P_R`` and
``Q_C`` close to orthonormal. With every row and column kept, the allocator, the schedule and
the regulariser are PEFT's AdaLoRA's, so the two train alike (tests/test_adalora.py compares
them step by step).

* :class:`RankAllocator` - the importance scores and the masking, over a whole model;
* :func:`orthogonal_penalty` - the regulariser;
* :func:`training_hooks` - both as a training loop's ``extra_loss`` and ``callbacks``
  (:class:`OrthogonalRegularizer`, :class:`AllocatorCallback`).

The layers are :class:`~partial_lora.methods.partial_adalora.PartialAdaLoraLayer` (see that
module for the layer, injection and finalizing).
"""

from __future__ import annotations

import torch
from torch import nn

from .partial_adalora import adalora_layers


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
    """PEFT AdaLoRA's orthogonal regulariser over the kept factors: ``mean ||G - I||_F``.

    For every Partial-AdaLoRA layer, ``P_R`` ``[|R|, r]`` and ``Q_C`` ``[r, |C|]`` each count
    as one matrix, with the ``r x r`` Gram matrix ``G = P_R^T P_R`` (resp. ``Q_C Q_C^T``), as
    PEFT's ``AdaLoraModel.forward`` does for its ``lora_B`` and ``lora_A``: the plain
    (not squared) Frobenius norm of ``G - I``, averaged over all ``2 x layers`` matrices.
    With every row and column kept this is exactly PEFT's value, so Partial-AdaLoRA at keep
    ratio 1 trains as PEFT's AdaLoRA does. At initialisation (``P``, ``Q`` near zero) it is about
    ``sqrt(r)``; the squared norms summed over ``P`` and ``Q`` that the AdaLoRA paper writes
    would be about ``2 r`` (24 against 3.5 at ``r = 12``).

    When a layer keeps fewer rows than its rank (``|R| < r``) its ``P_R`` cannot have
    orthonormal columns, and ``||P_R^T P_R - I||_F`` could not fall below ``sqrt(r - |R|)``; the
    smaller Gram matrix is used instead (``P_R P_R^T - I``: orthonormal rows, which has the
    same nonzero spectrum), and the same for ``Q_C`` with ``|C| < r``.

    Returns a scalar tensor (zero, without gradient, when the model has no such layers).
    """
    layers = list(adalora_layers(model).values())
    if not layers:
        return torch.zeros(())
    defects = [_gram_defect(matrix) for layer in layers for matrix in (layer.lora_P, layer.lora_Q)]
    return sum(defects) / len(defects)


def _gram_defect(matrix: torch.Tensor) -> torch.Tensor:
    """``||G - I||_F`` with ``G`` the Gram matrix on the smaller side of ``matrix``."""
    gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
    identity = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.matrix_norm(gram - identity)


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

    def state_dict(self) -> dict:
        """The allocator's importance averages and phase, for training checkpoints (the rank masks
        are model buffers and travel with the model)."""
        allocator = self.allocator
        return {
            "sensitivity": {f"{name}/{part}": t.clone() for (name, part), t in allocator._sensitivity.items()},
            "uncertainty": {f"{name}/{part}": t.clone() for (name, part), t in allocator._uncertainty.items()},
            "final_mask_done": allocator.final_mask_done,
            "history": [list(entry) for entry in self.history],
        }

    def load_state_dict(self, state: dict) -> None:
        allocator = self.allocator
        allocator._sensitivity = {tuple(key.rsplit("/", 1)): t.clone() for key, t in state["sensitivity"].items()}
        allocator._uncertainty = {tuple(key.rsplit("/", 1)): t.clone() for key, t in state["uncertainty"].items()}
        allocator.final_mask_done = bool(state["final_mask_done"])
        self.history = [tuple(entry) for entry in state["history"]]


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


__all__ = [
    "AllocatorCallback",
    "OrthogonalRegularizer",
    "RankAllocator",
    "orthogonal_penalty",
    "rank_budget",
    "training_hooks",
]
