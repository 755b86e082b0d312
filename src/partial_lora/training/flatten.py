"""Nested state (optimizer, scheduler, callbacks) as JSON plus a flat dict of tensors.

``optimizer.state_dict()`` and friends are nested dicts/lists of tensors and plain values,
with integer keys. :func:`split_tensors` turns such a tree into a JSON-able skeleton, in
which every tensor is replaced by ``{"__tensor__": key}``, and a ``{key: tensor}`` dict for
safetensors; :func:`join_tensors` rebuilds the tree. Key types (int vs str), tuples and
non-finite floats survive the round trip. Anything else (an arbitrary object) is refused:
nothing is pickled.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

_TENSOR, _DICT, _TUPLE, _FLOAT = "__tensor__", "__dict__", "__tuple__", "__float__"


def split_tensors(tree: Any, prefix: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """``(skeleton, tensors)``: the JSON-able skeleton of ``tree`` and its tensors by key.

    Tensor keys are ``prefix`` plus the path in the tree (``optimizer.state.3.exp_avg``).

    Raises:
        TypeError: for a value that is neither a tensor, a container nor a JSON scalar.
    """
    tensors: dict[str, torch.Tensor] = {}
    return _split(tree, prefix, tensors), tensors


def _split(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        if path in tensors:
            raise ValueError(f"two tensors of the training state map to the key {path!r}")
        tensors[path] = value.detach()
        return {_TENSOR: path}
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            if not (key is None or isinstance(key, (str, int, float, bool))):
                raise TypeError(f"cannot checkpoint a dict key of type {type(key).__name__} at {path!r}")
            items.append([key, _split(item, f"{path}.{key}", tensors)])
        return {_DICT: items}
    if isinstance(value, tuple):
        return {_TUPLE: [_split(item, f"{path}.{i}", tensors) for i, item in enumerate(value)]}
    if isinstance(value, list):
        return [_split(item, f"{path}.{i}", tensors) for i, item in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        return {_FLOAT: repr(value)}
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(
        f"cannot checkpoint a {type(value).__name__} at {path!r}: only tensors, dicts, lists, tuples and "
        "JSON scalars are written (nothing is pickled)"
    )


def join_tensors(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Rebuild the tree written by :func:`split_tensors`.

    Raises:
        KeyError: a tensor the skeleton refers to is missing.
    """
    if isinstance(skeleton, list):
        return [join_tensors(item, tensors) for item in skeleton]
    if isinstance(skeleton, dict):
        if set(skeleton) == {_TENSOR}:
            key = skeleton[_TENSOR]
            if key not in tensors:
                raise KeyError(f"tensor {key!r} of the training state is missing")
            return tensors[key]
        if set(skeleton) == {_DICT}:
            return {key: join_tensors(item, tensors) for key, item in skeleton[_DICT]}
        if set(skeleton) == {_TUPLE}:
            return tuple(join_tensors(item, tensors) for item in skeleton[_TUPLE])
        if set(skeleton) == {_FLOAT}:
            return float(skeleton[_FLOAT])
        raise ValueError(f"unexpected object in a training-state skeleton: keys {sorted(skeleton)}")
    return skeleton
