"""Module names: matching them against patterns, per-layer value tables, replacing a submodule.

One convention everywhere (PEFT's):

* a **list** of strings matches a module whose full dotted name equals an entry or ends with
  ``"." + entry`` (``["query", "value"]`` matches ``encoder.layer.0.attention.self.query``);
* a **string** is one regular expression matched against the whole name
  (``r".*\.(query|value)"``), except :data:`ALL_LINEAR`, which the caller expands;
* a **pattern table** (``{pattern: value}``, for per-layer keep ratios, ranks, alphas) gives
  a name the value of its exact key, else of its longest dotted-suffix key, else of the first
  key that, as a regular expression, matches the name's last dotted parts (PEFT's
  ``rank_pattern`` rule ``(.*\.)?(key)$``, so PEFT folders read the same way).

A bad regular expression is an error naming the pattern, never silently skipped.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Iterable, Mapping

from torch import nn

ALL_LINEAR = "all-linear"
# Name parts that mark a model's output head: never adapted by "all-linear"; the head a
# ticket's probe stands in for is found among the linear layers so named.
HEAD_NAMES = ("classifier", "score", "head", "lm_head", "fc", "_fc")


@lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> re.Pattern:
    """``re.compile(pattern)``; a bad expression raises ``ValueError`` naming it."""
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ValueError(
            f"{pattern!r} is not a valid regular expression ({err}); give a list of module name suffixes instead"
        ) from None


def matches_suffix(name: str, suffix: str) -> bool:
    """``name`` is ``suffix`` or ends with ``"." + suffix`` (dotted parts, not characters)."""
    return name == suffix or name.endswith("." + suffix)


def matches(name: str, patterns: Iterable[str] | str) -> bool:
    """Whether the full module name ``name`` matches ``patterns`` (suffix list or one regex)."""
    if isinstance(patterns, str):
        return compile_pattern(patterns).fullmatch(name) is not None
    return any(matches_suffix(name, pattern) for pattern in patterns)


def inside(name: str, modules: Iterable[str]) -> bool:
    """Whether ``name`` is one of ``modules`` (dotted suffixes or full names) or lies inside one.

    ``inside("model.classifier.dense", ["classifier"])`` is True: the module named by an
    entry is an ancestor of (or equal to) ``name``.
    """
    dotted = f".{name}."
    return any(f".{module}." in dotted for module in modules)


def pattern_key(table: Mapping[str, Any], name: str) -> str | None:
    """The key of ``table`` that applies to ``name``: exact, longest dotted suffix, or the
    first regular expression matching the name's last dotted parts; None when none applies."""
    if name in table:
        return name
    suffixes = [key for key in table if name.endswith("." + key)]
    if suffixes:
        return max(suffixes, key=len)
    for key in table:
        compile_pattern(key)  # a bad expression is an error naming it
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return None


def pattern_value(table: Mapping[str, Any], name: str, default: Any) -> Any:
    """``table``'s value for ``name`` (see :func:`pattern_key`), else ``default``."""
    key = pattern_key(table, name)
    return default if key is None else table[key]


def is_head_name(name: str) -> bool:
    """Whether a part of the dotted ``name`` is one of :data:`HEAD_NAMES`."""
    return bool(set(name.split(".")) & set(HEAD_NAMES))


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` of ``model`` by ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def model_name_or_path(model: nn.Module) -> str | None:
    """The name or folder a transformers model was loaded from (``config._name_or_path``), if any."""
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    return str(name) if name else None
