"""Configuration of a Partial-LoRA adapter.

A :class:`PartialLoraConfig` says which layers get an adapter (``target_modules``), its
rank and scaling (``r``, ``alpha``), and how much of each layer is kept (``keep_ratio`` for
all layers, ``keep_ratios`` per layer, usually filled from a ticket). It is validated on
creation: every wrong value raises :class:`ValueError` naming the field, the value and what
is allowed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, NoReturn

from .checks import invalid, known_fields
from .naming import ALL_LINEAR, compile_pattern, pattern_value

SELECTIONS = ("random", "targeted", "stochastic")


def _fail(name: str, value: Any, allowed: str) -> NoReturn:
    invalid(f"PartialLoraConfig.{name}", value, allowed)


def check_keep_ratio(name: str, value: Any) -> float:
    """``value`` as a float if it is a keep ratio in (0, 1]; else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(name, value, "expected a number in (0, 1]")
    if not (0.0 < float(value) <= 1.0) or math.isnan(float(value)):
        _fail(name, value, "a keep ratio must lie in (0, 1]; 1 keeps every row and column (plain LoRA)")
    return float(value)


@dataclass
class PartialLoraConfig:
    """Which layers to adapt, and how.

    Attributes:
        r: LoRA rank (> 0).
        alpha: LoRA scaling numerator; the update is ``K^2 (alpha / r) * B @ A`` with ``K`` the
            layer's keep compensation (1 without it, and for every fully kept layer).
        dropout: dropout probability on the adapter's input, in [0, 1).
        target_modules: name suffixes (``["query", "value"]``), one regular expression matched
            against the full module name, or ``"all-linear"`` (every linear layer: ``nn.Linear``,
            transformers' ``Conv1D`` and their supported subclasses, except the output head and
            ``modules_to_save``).
        exclude_modules: name suffixes or one regular expression of modules never adapted.
        modules_to_save: name suffixes of modules trained in full and saved with the adapter
            (for example a new classification head ``["classifier"]``).
        keep_ratio: the keep ratio of every layer not named in ``keep_ratios``, in (0, 1].
        keep_ratios: per-layer keep ratios, keyed by full module name, name suffix or regular
            expression; a ticket fills it (:meth:`from_ticket`).
        selection: how rows and columns are chosen given a ratio: ``"random"`` (Partial-LoRA),
            ``"targeted"`` (top-scored, needs scores) or ``"stochastic"`` (sampled in
            proportion to the scores, needs scores).
        seed: one seed for every layer's choice; each layer mixes in its own name.
        ranks: optional per-layer ranks (same keys as ``keep_ratios``).
        keep_compensation: give each layer the keep compensation ``K = min(10, 1 / keep)``
            (:mod:`partial_lora.layer`), so that a plain optimizer at the learning rate one would
            use for LoRA trains Partial-LoRA at LoRA's pace; False: the plain ``alpha / r`` (what
            adapters written by partial-lora 0.1 used).
        autocast_adapter_dtype: on a half-precision base (float16, bfloat16), keep the adapter
            tensors and the ``modules_to_save`` in float32 (an optimizer's small steps round away
            in half precision); the model's outputs keep the base's dtype. False: everything in
            the base's dtype. Nothing changes on a float32 base.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | str = field(default_factory=lambda: ["query", "key", "value"])
    exclude_modules: list[str] | str | None = None
    modules_to_save: list[str] = field(default_factory=list)
    keep_ratio: float = 1.0
    keep_ratios: dict[str, float] = field(default_factory=dict)
    selection: str = "random"
    seed: int = 0
    ranks: dict[str, int] = field(default_factory=dict)
    keep_compensation: bool = True
    autocast_adapter_dtype: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            _fail("r", self.r, "the rank must be a positive integer, e.g. 8")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            _fail("alpha", self.alpha, "alpha must be a positive number, e.g. 2 * r")
        self.alpha = float(self.alpha)
        if not isinstance(self.dropout, (int, float)) or not (0.0 <= self.dropout < 1.0):
            _fail("dropout", self.dropout, "dropout must lie in [0, 1)")
        self.target_modules = self._check_patterns("target_modules", self.target_modules, required=True)
        if self.exclude_modules is not None:
            self.exclude_modules = self._check_patterns("exclude_modules", self.exclude_modules, required=False)
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [self.modules_to_save]
        self.modules_to_save = list(self.modules_to_save or [])
        if not all(isinstance(m, str) and m for m in self.modules_to_save):
            _fail("modules_to_save", self.modules_to_save, "expected a list of module name suffixes")
        self.keep_ratio = check_keep_ratio("keep_ratio", self.keep_ratio)
        if not isinstance(self.keep_ratios, Mapping):
            _fail("keep_ratios", self.keep_ratios, "expected a mapping {module name or pattern: ratio}")
        self.keep_ratios = {str(k): check_keep_ratio(f"keep_ratios[{k!r}]", v) for k, v in self.keep_ratios.items()}
        if self.selection not in SELECTIONS:
            _fail("selection", self.selection, f"choose one of {', '.join(SELECTIONS)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            _fail("seed", self.seed, "the seed must be a non-negative integer")
        if not isinstance(self.ranks, Mapping):
            _fail("ranks", self.ranks, "expected a mapping {module name or pattern: rank}")
        for key, rank in self.ranks.items():
            if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
                _fail(f"ranks[{key!r}]", rank, "a rank must be a positive integer")
        self.ranks = dict(self.ranks)
        if not isinstance(self.keep_compensation, bool):
            _fail("keep_compensation", self.keep_compensation, "expected True or False")
        if not isinstance(self.autocast_adapter_dtype, bool):
            _fail("autocast_adapter_dtype", self.autocast_adapter_dtype, "expected True or False")

    @staticmethod
    def _check_patterns(name: str, value: Any, *, required: bool) -> list[str] | str:
        if isinstance(value, str):
            if value == ALL_LINEAR:
                return value
            try:
                compile_pattern(value)
            except ValueError as err:
                _fail(name, value, str(err))
            return value
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value):
            if required and not value:
                _fail(name, value, "name at least one module suffix, a regular expression or 'all-linear'")
            return list(value)
        _fail(name, value, "expected a list of module name suffixes, one regular expression or 'all-linear'")

    # -- per-layer lookups -------------------------------------------------------------
    def keep_ratio_for(self, module_name: str) -> float:
        """The keep ratio of one module: its ``keep_ratios`` entry, else ``keep_ratio``."""
        return pattern_value(self.keep_ratios, module_name, self.keep_ratio)

    def rank_for(self, module_name: str) -> int:
        """The rank of one module: its ``ranks`` entry, else ``r``."""
        return pattern_value(self.ranks, module_name, self.r)

    # -- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PartialLoraConfig":
        return cls(**known_fields(cls, data, "adapter config", hint=(
            "Was this file written by a newer partial-lora, or is it a PEFT folder (use import_peft)?")))

    @classmethod
    def from_ticket(cls, ticket: Any, *, budget: int | None = None, **overrides: Any) -> "PartialLoraConfig":
        """Build a config whose per-layer keep ratios come from a ticket.

        Args:
            ticket: a :class:`partial_lora.ticket.Ticket` (anything with ``keep_ratios()`` and
                ``layer_shapes()``).
            budget: optional total trainable-parameter budget; the ticket's ratios are then
                rescaled by one common factor so that the adapters add up to about ``budget``
                parameters (each ratio clipped to (0, 1]).
            overrides: any other config field (``r``, ``alpha``, ``selection``, ...).
        """
        ratios = dict(ticket.keep_ratios())
        overrides.setdefault("target_modules", list(ratios))
        config = cls(keep_ratios=ratios, **overrides)
        if budget is not None:
            from .budget import ratios_for_budget

            shapes = ticket.layer_shapes()
            ranks = {name: config.rank_for(name) for name in ratios}
            config.keep_ratios = ratios_for_budget(ratios, shapes, ranks, budget)
        return config

