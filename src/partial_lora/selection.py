"""Choosing which rows (output features) and columns (input features) a layer keeps.

Given a keep ratio, a layer keeps ``ceil(ratio * m)`` of its ``m`` rows and
``ceil(ratio * n)`` of its ``n`` columns. Three rules choose them:

* ``random``: uniformly at random (Partial-LoRA);
* ``targeted``: the top-scored ones (the paper's Targeted-LoRA);
* ``stochastic``: sampled without replacement with probability proportional to the score.

Randomness comes from one seed mixed with the module's name, so two layers of the same
shape get different patterns and a run repeats exactly. Indices are returned sorted,
as ``int64``.
"""

from __future__ import annotations

import hashlib

import torch

from .budget import kept_count


def layer_generator(seed: int, module_name: str, purpose: str = "") -> torch.Generator:
    """A CPU generator seeded from ``seed`` and the module name (stable across runs and machines)."""
    digest = hashlib.sha256(f"{seed}\x00{module_name}\x00{purpose}".encode()).digest()
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return generator


def select_indices(
    size: int,
    count: int,
    rule: str,
    generator: torch.Generator,
    scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """Choose ``count`` of ``range(size)`` by ``rule``; sorted ``int64`` indices."""
    if not 0 < count <= size:
        raise ValueError(f"cannot keep {count} of {size} features; count must lie in [1, {size}]")
    if count == size:
        return torch.arange(size, dtype=torch.int64)
    if rule == "random":
        chosen = torch.randperm(size, generator=generator)[:count]
    else:
        if scores is None:
            raise ValueError(f"selection='{rule}' needs row/column scores; pass a ticket's scores or use 'random'")
        scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
        if scores.numel() != size:
            raise ValueError(f"got {scores.numel()} scores for {size} features; the scores belong to another layer")
        if not torch.isfinite(scores).all() or (scores < 0).any():
            raise ValueError("scores must be finite and non-negative")
        if rule == "targeted":
            # Stable order: the highest score first, ties broken by the lower index.
            order = sorted(range(size), key=lambda i: (-float(scores[i]), i))
            chosen = torch.tensor(order[:count], dtype=torch.int64)
        elif rule == "stochastic":
            weights = scores + scores.sum() * 1e-6 / size + 1e-12  # every feature stays possible
            chosen = torch.multinomial(weights, count, replacement=False, generator=generator)
        else:
            raise ValueError(f"unknown selection rule '{rule}'; choose random, targeted or stochastic")
    return torch.sort(chosen.to(torch.int64)).values


def select_rows_and_columns(
    module_name: str,
    shape: tuple[int, int],
    keep_ratio: float,
    rule: str,
    seed: int,
    row_scores: torch.Tensor | None = None,
    column_scores: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns one layer keeps. ``shape`` is ``(out_features, in_features)``."""
    out_features, in_features = shape
    rows = select_indices(
        out_features, kept_count(keep_ratio, out_features), rule,
        layer_generator(seed, module_name, "rows"), row_scores,
    )
    columns = select_indices(
        in_features, kept_count(keep_ratio, in_features), rule,
        layer_generator(seed, module_name, "columns"), column_scores,
    )
    return rows, columns
