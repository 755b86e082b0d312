"""Callbacks of :func:`~partial_lora.training.train`: which hooks they have, whether they are checkpointed.

A callback has any of ``on_step_end(model, step)`` and ``on_epoch_end(model, epoch, metrics)``;
a plain function counts as ``on_step_end``. One with ``state_dict()`` and
``load_state_dict(state)`` is saved in, and restored from, every checkpoint.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence


def split_hooks(callbacks: Sequence[Any]) -> tuple[list[Callable], list[Callable]]:
    """``(on_step_end hooks, on_epoch_end hooks)``, in the order of ``callbacks``."""
    step_hooks, epoch_hooks = [], []
    for callback in callbacks:
        on_step, on_epoch = getattr(callback, "on_step_end", None), getattr(callback, "on_epoch_end", None)
        if on_step is None and on_epoch is None and callable(callback):
            on_step = callback
        if on_step is None and on_epoch is None:
            raise TypeError(
                f"callback {callback!r} has neither on_step_end(model, step) nor on_epoch_end(model, epoch, metrics)"
            )
        step_hooks += [on_step] if on_step is not None else []
        epoch_hooks += [on_epoch] if on_epoch is not None else []
    return step_hooks, epoch_hooks


def is_stateful(callback: Any) -> bool:
    return callable(getattr(callback, "state_dict", None)) and callable(getattr(callback, "load_state_dict", None))
