"""Random-number-generator states as plain tensors (no pickling).

:func:`capture_rng` returns every generator a training step may draw from (torch CPU, the
current CUDA device, python ``random``, numpy's global generator) as a dictionary of
1-D tensors of fixed shapes, so the states of all processes can be gathered with one
collective and written to safetensors; :func:`restore_rng` puts them back exactly.
"""

from __future__ import annotations

import contextlib
import random
from typing import Iterator, Mapping

import numpy as np
import torch


def capture_rng() -> dict[str, torch.Tensor]:
    """The current generator states of this process.

    Keys and shapes: ``torch_cpu`` uint8 ``[5056]``; ``torch_cuda`` uint8 (current device,
    only when CUDA is initialised); ``python_state`` int64 ``[625]`` and ``python_extra``
    float64 ``[3]`` (version, has-gauss flag, cached gauss); ``numpy_keys`` int64 ``[624]``
    and ``numpy_extra`` float64 ``[3]`` (position, has-gauss flag, cached gauss).
    """
    states = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch_cuda"] = torch.cuda.get_rng_state()
    version, internal, gauss = random.getstate()
    states["python_state"] = torch.tensor(internal, dtype=torch.int64)
    states["python_extra"] = torch.tensor(
        [float(version), float(gauss is not None), gauss if gauss is not None else 0.0], dtype=torch.float64
    )
    kind, keys, position, has_gauss, cached = np.random.get_state()
    if kind != "MT19937":  # numpy's legacy global generator is always MT19937
        raise RuntimeError(f"numpy's global generator is {kind}, expected MT19937")
    states["numpy_keys"] = torch.from_numpy(keys.astype(np.int64))
    states["numpy_extra"] = torch.tensor([float(position), float(has_gauss), float(cached)], dtype=torch.float64)
    return states


def restore_rng(states: Mapping[str, torch.Tensor]) -> None:
    """Put back states captured by :func:`capture_rng` (on this or a freshly started process)."""
    torch.set_rng_state(states["torch_cpu"].to(torch.uint8).cpu())
    if "torch_cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["torch_cuda"].to(torch.uint8).cpu())
    extra = states["python_extra"].tolist()
    internal = tuple(int(v) for v in states["python_state"].tolist())
    random.setstate((int(extra[0]), internal, extra[2] if extra[1] else None))
    position, has_gauss, cached = states["numpy_extra"].tolist()
    keys = states["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, int(position), int(has_gauss), float(cached)))


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (evaluation, a user hook) without changing the generators' states."""
    states = capture_rng()
    try:
        yield
    finally:
        restore_rng(states)
