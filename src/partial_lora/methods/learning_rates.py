"""The learning-rate policy: each method's rate, given the one used for LoRA.

``method_learning_rate(name, base_lr)`` turns the rate used for LoRA into the method's own
(:data:`LEARNING_RATE_FACTORS`). Partial-LoRA needs no factor of its own: its layers carry
their keep compensation (:mod:`partial_lora.layer`), so they train at LoRA's rate.
"""

from __future__ import annotations

from .registry import METHODS

# Learning-rate multipliers relative to the LoRA learning rate (see method_learning_rate).
LEARNING_RATE_FACTORS = {
    "full": 0.05,
    "lora": 1.0, "dora": 1.0, "adalora": 1.0,
    "vera": 10.0,
    "random-masking": 10.0,
    "lora-eva": 1.0,
    "partial-lora": 1.0, "targeted": 1.0, "stochastic": 1.0, "uniform": 1.0, "partial-adalora": 1.0,
}


def method_learning_rate(name: str, base_lr: float) -> float:
    """A sensible default learning rate for ``name``, given the one used for LoRA.

    * LoRA, DoRA, AdaLoRA, LoRA-EVA and every Partial-LoRA variant: ``base_lr`` (Partial-LoRA
      layers are keep-compensated, so the same rate moves them at LoRA's pace).
    * VeRA: ``10 x`` (it trains only scaling vectors; its paper uses rates about ten times LoRA's).
    * random-masking: ``10 x`` (Xu & Zhang: the sparser the trained set, the larger the
      learning rate it needs; at our densities, near a Partial-LoRA's count, ten times LoRA's).
    * full: ``0.05 x`` (e.g. 1e-4 against LoRA's 2e-3; full fine-tuning diverges at LoRA's rates).
    """
    if name not in LEARNING_RATE_FACTORS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    if not base_lr > 0:
        raise ValueError(f"base_lr={base_lr!r} is invalid: a learning rate must be positive")
    return base_lr * LEARNING_RATE_FACTORS[name]
