"""Exact numeric checks of the compact layer against a dense masked LoRA (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from partial_lora import PartialLoraLayer
from conftest import dense_reference, masked_layer
from partial_lora.selection import layer_generator, select_rows_and_columns


pytestmark = pytest.mark.usefixtures("float64_default")  # exact checks in float64 (conftest)


@pytest.mark.parametrize("keep, multiplier", [(1.0, 1.0), (0.5, 1.0), (0.13, 1.0), (0.5, 2.0), (0.13, 7.5)])
def test_compact_linear_equals_dense_masked_lora_outputs_and_gradients(keep, multiplier):
    torch.manual_seed(0)
    base = nn.Linear(24, 40)
    layer = masked_layer(base, keep, multiplier=multiplier)
    assert layer.scaling == pytest.approx(8.0 / 4 * multiplier**2)
    A_full, B_full, u_row, u_col = dense_reference(layer)
    x = torch.randn(3, 5, 24)
    probe = torch.randn(3, 5, 40)

    y = layer(x)
    delta = torch.diag(u_row) @ B_full @ A_full @ torch.diag(u_col) * layer.scaling
    y_ref = x @ (base.weight + delta).T + base.bias
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)

    (y * probe).sum().backward()
    (y_ref * probe).sum().backward()
    torch.testing.assert_close(layer.lora_A.grad, A_full.grad[:, layer.lora_columns], rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.lora_B.grad, B_full.grad[layer.lora_rows], rtol=0, atol=1e-12)
    # The dense reference puts no gradient outside the kept block.
    assert A_full.grad[:, u_col == 0].abs().max() == 0 if keep < 1 else True
    torch.testing.assert_close(layer.delta_weight(), delta.detach(), rtol=0, atol=1e-12)


def test_compact_pointwise_conv_equals_dense_masked_reference():
    torch.manual_seed(1)
    base = nn.Conv2d(12, 20, kernel_size=1, stride=2, padding=1)
    layer = masked_layer(base, 0.4)
    A_full, B_full, u_row, u_col = dense_reference(layer)
    x = torch.randn(2, 12, 7, 7)
    y = layer(x)
    delta = (torch.diag(u_row) @ B_full @ A_full @ torch.diag(u_col) * layer.scaling)[:, :, None, None]
    y_ref = nn.functional.conv2d(x, base.weight + delta, base.bias, stride=2, padding=1)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    probe = torch.randn_like(y)
    (y * probe).sum().backward()
    (y_ref * probe).sum().backward()
    torch.testing.assert_close(layer.lora_A.grad, A_full.grad[:, layer.lora_columns], rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.lora_B.grad, B_full.grad[layer.lora_rows], rtol=0, atol=1e-12)


def test_keep_ratio_one_is_exactly_peft_lora():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(16, 16))
    layer = masked_layer(nn.Linear(16, 16), 1.0, r=4, alpha=8.0)
    with torch.no_grad():
        layer.weight.copy_(net[0].weight)
        layer.bias.copy_(net[0].bias)
    peft_model = get_peft_model(net, LoraConfig(r=4, lora_alpha=8, target_modules=["0"]))
    peft_layer = peft_model.base_model.model[0]
    with torch.no_grad():
        peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
        peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
    x = torch.randn(4, 16)
    torch.testing.assert_close(layer(x), peft_model(x), rtol=0, atol=1e-12)


def test_merge_then_unmerge_is_exact_and_merged_forward_matches():
    torch.manual_seed(3)
    base = nn.Linear(30, 18)
    original = base.weight.detach().clone()
    layer = masked_layer(base, 0.3)
    x = torch.randn(6, 30)
    before = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), before, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.weight, original + layer.delta_weight(), rtol=0, atol=1e-12)
    layer.unmerge()
    torch.testing.assert_close(layer.weight, original, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer(x), before, rtol=0, atol=1e-12)


def test_half_precision_merge_is_computed_in_float32():
    torch.manual_seed(4)
    base = nn.Linear(64, 64).to(torch.bfloat16)
    layer = masked_layer(base, 0.5)
    expected = (base.weight.detach().float() + layer.delta_weight(torch.float32)).to(torch.bfloat16)
    layer.merge()
    assert layer.weight.dtype == torch.bfloat16
    assert torch.equal(layer.weight, expected)


def test_adapter_starts_as_the_base_layer_because_B_is_zero():
    torch.manual_seed(5)
    base = nn.Linear(10, 10)
    rows, columns = select_rows_and_columns("x", (10, 10), 0.5, "random", 0)
    layer = PartialLoraLayer(base, rows, columns, r=2, alpha=4)
    x = torch.randn(3, 10)
    assert torch.equal(layer(x), base(x))
    assert layer.lora_A.abs().max() > 0
    assert layer.lora_A.abs().max() <= 1 / len(columns) ** 0.5


@pytest.mark.parametrize("bad", [torch.tensor([3, 1]), torch.tensor([1, 1]), torch.tensor([0, 99]), torch.tensor([0.0, 1.0])])
def test_layer_refuses_bad_indices(bad):
    with pytest.raises(ValueError):
        PartialLoraLayer(nn.Linear(8, 8), bad, torch.arange(4), r=2, alpha=2)


def test_layer_refuses_unsupported_modules():
    with pytest.raises(TypeError, match="pointwise"):
        PartialLoraLayer(nn.Conv2d(4, 4, 3), torch.arange(2), torch.arange(2), r=1, alpha=1)


def test_keep_compensation_under_adam_is_the_plain_layer_at_k_times_the_learning_rate():
    """``scaling K^2 alpha / r`` with ``A`` started ``K`` times smaller, trained by Adam at ``lr``,
    computes what the plain layer computes when Adam trains it at ``K lr`` (no weight decay)."""
    torch.manual_seed(3)
    rows, columns = select_rows_and_columns("layer", (40, 24), 0.25, "random", 0)
    k = 3.0
    plain = PartialLoraLayer(nn.Linear(24, 40), rows, columns, r=4, alpha=8.0,
                             generator=layer_generator(0, "layer", "init"))
    compensated = PartialLoraLayer(nn.Linear(24, 40), rows, columns, r=4, alpha=8.0,
                                   generator=layer_generator(0, "layer", "init"), multiplier=k)
    with torch.no_grad():
        compensated.weight.copy_(plain.weight)
        compensated.bias.copy_(plain.bias)
    torch.testing.assert_close(compensated.lora_A * k, plain.lora_A, rtol=0, atol=1e-15)
    for layer in (plain, compensated):
        layer.weight.requires_grad_(False)
        layer.bias.requires_grad_(False)
    lr = 1e-2
    optimizers = [torch.optim.Adam(plain.adapter_parameters(), lr=lr * k, eps=1e-16),
                  torch.optim.Adam(compensated.adapter_parameters(), lr=lr, eps=1e-16)]
    x, target = torch.randn(64, 24), torch.randn(64, 40)
    for _ in range(25):
        for layer, optimizer in zip((plain, compensated), optimizers):
            optimizer.zero_grad()
            ((layer(x) - target) ** 2).mean().backward()
            optimizer.step()
    torch.testing.assert_close(compensated(x), plain(x), rtol=0, atol=1e-9)
    torch.testing.assert_close(compensated.delta_weight(), plain.delta_weight(), rtol=0, atol=1e-9)
    assert plain.delta_weight().abs().max() > 1e-2  # it did train


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_exact_linear_layer_still_takes_the_fused_kernel(dtype):
    """The fused kernel is what the float32 numbers of past runs came from; only exact nn.Linear
    layers with one dtype throughout take it."""
    layer = masked_layer(nn.Linear(16, 12).to(dtype), 0.5)
    assert not layer.own_forward and layer.lora_A.dtype == dtype
    y = layer(torch.randn(3, 16, dtype=dtype))
    assert type(y.grad_fn).__name__ == "FusedPartialLinearBackward"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(layer(torch.randn(3, 16, dtype=dtype)).grad_fn).__name__ != "FusedPartialLinearBackward"
