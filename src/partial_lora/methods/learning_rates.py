"""The learning-rate policy: each method's default rate, and the Partial-LoRA adapters' scale.

``method_learning_rate(name, base_lr)`` turns the rate used for LoRA into the method's own
(:data:`LEARNING_RATE_FACTORS`); ``sparse_learning_rate_scale(model)`` is the multiplier for
the compact adapter tensors (``TrainingConfig.adapter_lr_scale``).
"""

from __future__ import annotations

from torch import nn

from ..surgery import adapter_layers
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
MAX_SPARSE_LR_SCALE = 10.0


def method_learning_rate(name: str, base_lr: float) -> float:
    """A sensible default learning rate for ``name``, given the one used for LoRA.

    * LoRA, DoRA, AdaLoRA, LoRA-EVA and every Partial-LoRA variant: ``base_lr`` (the Partial-LoRA
      adapter tensors then train at ``base_lr`` times :func:`sparse_learning_rate_scale`,
      through ``TrainingConfig.adapter_lr_scale``; a new head stays at ``base_lr``).
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


def sparse_learning_rate_scale(model: nn.Module) -> float:
    """Learning-rate multiplier for Partial-LoRA adapter tensors: LoRA's parameter count at
    the same ranks over the adapters' own, capped at 10 (1.0 without Partial-LoRA layers).

    AdamW moves every trained entry by about the learning rate per step, whatever the size
    of its gradient. A kept row of a Partial-LoRA reads only ``|C|`` of the ``n`` inputs, so
    at LoRA's rate its output moves more slowly (measured on MiniLM / BBC News at keep
    ~0.2: 85.5 % after 3 epochs at LoRA's rate against 94.5 % for LoRA). Dividing the rate
    by the kept fraction restores the pace. Pass the result as ``TrainingConfig.adapter_lr_scale``.
    """
    kept = full = 0
    for layer in adapter_layers(model).values():
        kept += layer.r * (len(layer.lora_rows) + len(layer.lora_columns))
        full += layer.r * (layer.out_features + layer.in_features)
    if not kept:
        return 1.0
    return min(MAX_SPARSE_LR_SCALE, full / kept)
