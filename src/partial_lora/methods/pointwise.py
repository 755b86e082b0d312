"""1x1 convolutions seen as linear maps, so PEFT's linear-only methods can adapt them.

A 1x1 convolution with stride 1, no padding, no dilation and one group applies the same
``out x in`` matrix to the channel vector at every pixel: it *is* an ``nn.Linear`` over the
channel dimension. PEFT's VeRA and SHiRA adapt only ``nn.Linear``; :func:`wrap_pointwise_convs`
replaces such convolutions by :class:`PointwiseConvAsLinear`, whose ``.linear`` child shares
the convolution's weight storage (no copy), so those methods run unchanged on vision models
such as EfficientNet-Lite0. A model whose convolutions a method wrapped records their names
(:func:`record_wrapped_convs`, read back by :func:`wrapped_convs`), so saving can list them for reloading.

Example (reloading a VeRA adapter trained on wrapped convolutions)::

    names = wrap_pointwise_convs(model, ["_blocks.1._expand_conv", ...])   # -> [..."._expand_conv.linear"]
    model = PeftModel.from_pretrained(model, "out/adapters/vera-seed0")
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..naming import set_submodule

WRAPPED_CONVS_ATTRIBUTE = "partial_lora_pointwise_convs"  # on a model: the names of its wrapped convolutions


def is_pointwise_conv(module: nn.Module) -> bool:
    """True for an ``nn.Conv2d`` that is a per-pixel linear map (1x1 kernel, stride 1, no padding, one group)."""
    return (
        isinstance(module, nn.Conv2d)
        and tuple(module.kernel_size) == (1, 1)
        and tuple(module.stride) == (1, 1)
        and tuple(module.dilation) == (1, 1)
        and module.groups == 1
        and (module.padding == "valid" or (not isinstance(module.padding, str) and tuple(module.padding) == (0, 0)))
    )


class PointwiseConvAsLinear(nn.Module):
    """A 1x1 convolution computed by an ``nn.Linear`` over channels; ``.linear`` shares its weight.

    Input and output are ``[N, C, H, W]``, exactly as for the convolution it replaces.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not is_pointwise_conv(conv):
            raise ValueError(
                f"{conv} is not a pointwise convolution (1x1 kernel, stride 1, no padding or dilation, one group)"
            )
        self.linear = nn.Linear(conv.in_channels, conv.out_channels, bias=conv.bias is not None,
                                device=conv.weight.device, dtype=conv.weight.dtype)
        self.linear.weight = nn.Parameter(conv.weight.data.view(conv.out_channels, conv.in_channels),
                                          requires_grad=conv.weight.requires_grad)
        if conv.bias is not None:
            self.linear.bias = nn.Parameter(conv.bias.data, requires_grad=conv.bias.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected a [N, C, H, W] input, got shape {tuple(x.shape)}")
        return self.linear(x.movedim(1, -1)).movedim(-1, 1)


def wrap_pointwise_convs(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Replace the named pointwise convolutions of ``model`` in place; return the targets to give PEFT.

    ``nn.Linear`` names are returned unchanged; a wrapped convolution ``name`` becomes
    ``name + ".linear"``. Any other module raises ``TypeError`` naming it, before ``model`` is changed.
    """
    modules = dict(model.named_modules())
    names = list(names)
    for name in names:
        module = modules.get(name)
        if module is None:
            raise KeyError(f"model has no module named {name!r}")
        if not isinstance(module, (nn.Linear, PointwiseConvAsLinear)) and not is_pointwise_conv(module):
            raise TypeError(f"{name} is a {type(module).__name__}, neither nn.Linear nor a 1x1 convolution")
    targets = []
    for name in names:
        module = modules[name]
        if isinstance(module, nn.Linear):
            targets.append(name)
            continue
        if not isinstance(module, PointwiseConvAsLinear):
            set_submodule(model, name, PointwiseConvAsLinear(module))
        targets.append(f"{name}.linear")
    return targets


def record_wrapped_convs(model: nn.Module, names: Iterable[str]) -> None:
    """Note on ``model`` the names (before wrapping) of the convolutions a method wrapped."""
    setattr(model, WRAPPED_CONVS_ATTRIBUTE, list(names))


def wrapped_convs(model: nn.Module) -> list[str]:
    """The names :func:`record_wrapped_convs` noted, on ``model`` or on the model a ``PeftModel`` wraps."""
    inner = getattr(getattr(model, "base_model", None), "model", None)
    return list(getattr(model, WRAPPED_CONVS_ATTRIBUTE, None) or getattr(inner, WRAPPED_CONVS_ATTRIBUTE, None) or [])
