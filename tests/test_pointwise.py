"""PEFT's linear-only VeRA and SHiRA on 1x1 convolutions, through the pointwise wrapper.

The wrapper must compute exactly what the convolution computes, share its weight, and
refuse other convolutions; VeRA and random masking must then train, save and reload on a
small convolutional network the way they do on linear layers.
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from torch import nn

from partial_lora.methods import MethodNotApplicable, build_method, save_method
from partial_lora.methods.pointwise import PointwiseConvAsLinear, is_pointwise_conv, wrap_pointwise_convs

pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks")  # PEFT's SHiRA


class TinyConvNet(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> project (1x1) -> pool -> head, like an EfficientNet block."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(4, 12, 1, bias=False)
        self.depthwise = nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False)
        self.project = nn.Conv2d(12, 6, 1, bias=True)
        self.head = nn.Linear(6, 3)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None):
        hidden = self.project(torch.relu(self.depthwise(torch.relu(self.expand(pixel_values)))))
        logits = self.head(hidden.mean(dim=(2, 3)))
        return logits if labels is None else nn.functional.cross_entropy(logits, labels)


def tiny_net(seed: int = 0) -> TinyConvNet:
    torch.manual_seed(seed)
    return TinyConvNet().double()


def images(seed: int = 1) -> torch.Tensor:
    return torch.randn(5, 4, 7, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_the_wrapper_computes_the_convolution_exactly_and_shares_its_weight():
    conv = nn.Conv2d(4, 12, 1, bias=True).double()
    wrapped = PointwiseConvAsLinear(conv)
    x = images()
    torch.testing.assert_close(wrapped(x), conv(x), rtol=0, atol=1e-12)
    with torch.no_grad():
        conv.weight.add_(1.0)  # the same storage: the wrapper sees the change
    torch.testing.assert_close(wrapped(x), conv(x), rtol=0, atol=1e-12)
    for other in (nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 1, stride=2), nn.Conv2d(4, 4, 1, groups=2),
                  nn.Conv2d(4, 4, 1, padding=1)):
        assert not is_pointwise_conv(other)
        with pytest.raises(ValueError, match="not a pointwise convolution"):
            PointwiseConvAsLinear(other)


def test_wrapping_checks_every_name_before_changing_the_model():
    model = tiny_net()
    with pytest.raises(TypeError, match="depthwise is a Conv2d"):
        wrap_pointwise_convs(model, ["expand", "depthwise"])
    assert isinstance(model.expand, nn.Conv2d)  # untouched
    assert wrap_pointwise_convs(model, ["expand", "head"]) == ["expand.linear", "head"]
    assert isinstance(model.expand, PointwiseConvAsLinear)
    assert wrap_pointwise_convs(model, ["expand"]) == ["expand.linear"]  # idempotent


@pytest.mark.parametrize("method", ["vera", "random-masking"])
def test_linear_only_peft_methods_train_save_and_reload_on_1x1_convolutions(method, tmp_path):
    base_output = tiny_net()(images())
    model, _ = build_method(method, tiny_net(), r=2, alpha=4, target_modules=["expand", "project"],
                            modules_to_save=["head"], seed=0,
                            **({"vera_r": 8} if method == "vera" else {"keep_ratio": 0.5}))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    own = "vera_lambda" if method == "vera" else "shira_weight"
    assert any(own in n and "expand" in n for n in trainable) and any(own in n and "project" in n for n in trainable)
    assert all(own in n or "head" in n for n in trainable)
    torch.testing.assert_close(model(images()), base_output)  # both start as the unchanged model
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for step in range(3):
        loss = model(pixel_values=images(step), labels=torch.tensor([0, 1, 2, 0, 1]))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    trained_output = model(images())
    assert not torch.allclose(trained_output, base_output)

    save_method(model, method, tmp_path / method, metadata={"method": method})
    metadata = json.loads((tmp_path / method / "training_metadata.json").read_text())
    assert metadata["pointwise_convs_as_linear"] == ["expand", "project"]
    fresh = tiny_net()
    wrap_pointwise_convs(fresh, metadata["pointwise_convs_as_linear"])
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / method)
    torch.testing.assert_close(reloaded(images()), trained_output, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", ["vera", "random-masking"])
def test_other_convolutions_are_refused_and_leave_the_model_alone(method):
    model = tiny_net()
    with pytest.raises(ValueError, match="depthwise"):
        build_method(method, model, r=2, target_modules=["expand", "depthwise"])
    assert isinstance(model.expand, nn.Conv2d)
    strided = tiny_net()
    strided.project.stride = (2, 2)  # a 1x1 convolution, but not a per-pixel linear map
    with pytest.raises(MethodNotApplicable, match="project"):
        build_method(method, strided, r=2, target_modules=["expand", "project"])
    assert isinstance(strided.expand, nn.Conv2d)


def test_lora_eva_initialises_1x1_convolutions_from_their_pixels_and_reloads(tmp_path):
    labels = torch.tensor([0, 1, 2, 0, 1])
    channel_scales = torch.tensor([0.5, 4.0, 1.0, 2.0], dtype=torch.float64).view(1, 4, 1, 1)  # distinct directions
    batches = [{"pixel_values": images(seed) * channel_scales, "labels": labels} for seed in range(3)]
    base_output = tiny_net()(images())
    model, _ = build_method("lora-eva", tiny_net(), r=2, alpha=4, target_modules=["expand", "project"],
                            modules_to_save=["head"], keep_ratio=1.0, seed=0, init_batches=batches)
    # PEFT's EVA runs on the wrapped convolutions: A holds the top directions of their inputs, one row per pixel.
    expand = model.get_submodule("base_model.model.expand.linear")
    pixels = torch.cat([batch["pixel_values"] for batch in batches]).movedim(1, -1).reshape(-1, 4)
    pixels = pixels - pixels.mean(0)
    a = expand.lora_A["default"].weight
    top = torch.linalg.svd(pixels, full_matrices=False).Vh[: len(a)]
    torch.testing.assert_close(a @ a.T, torch.eye(len(a), dtype=a.dtype), rtol=0, atol=1e-5)
    # (EVA stops once its incremental SVD has converged, so it may not have read every batch.)
    assert (pixels @ a.T).pow(2).sum() >= 0.98 * (pixels @ top.T).pow(2).sum()
    torch.testing.assert_close(model(images()), base_output)  # B = 0: the unchanged model
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for step in range(3):
        model(pixel_values=images(step), labels=labels).backward()
        optimizer.step()
        optimizer.zero_grad()
    trained_output = model(images())
    assert not torch.allclose(trained_output, base_output)
    save_method(model, "lora-eva", tmp_path / "eva")
    metadata = json.loads((tmp_path / "eva" / "training_metadata.json").read_text())
    fresh = tiny_net()
    wrap_pointwise_convs(fresh, metadata["pointwise_convs_as_linear"])
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "eva")
    torch.testing.assert_close(reloaded(images()), trained_output, rtol=1e-9, atol=1e-9)
