"""Layers beyond exact nn.Linear / nn.Conv2d: transformers' Conv1D (GPT-2, weight ``[in, out]``),
subclasses with a forward of their own, and the refusal of what cannot be right (float64)."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn
from transformers.pytorch_utils import Conv1D

import partial_lora
from partial_lora import AdapterFileError, PartialLoraConfig, PartialLoraLayer
from partial_lora.layer import weight_matrix
from partial_lora.naming import set_submodule
from partial_lora.ticket import find_ticket

from conftest import dense_reference, masked_layer, randomize_adapters, tiny_gpt2, token_batch

GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]


pytestmark = pytest.mark.usefixtures("float64_default")  # exact checks in float64 (conftest)


class SamePadConv2d(nn.Conv2d):
    """TensorFlow "same" padding computed from the input size, then ``F.conv2d`` (like timm's Conv2dSame)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = [max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
                for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation)]
        x = F.pad(x, [pads[1] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[0] - pads[0] // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class AlwaysPaddedConv2d(nn.Conv2d):
    """Pads one pixel on every side whatever the kernel: its output is larger than the update."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, [1, 1, 1, 1]), self.weight, self.bias, self.stride, 0, self.dilation)


class DoubledLinear(nn.Linear):
    """A forward that is not ``W x + b`` in its weight: the update can be added, not merged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


class ScaledLinear(nn.Linear):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


def dense_delta(layer: PartialLoraLayer):
    """Leaf ``A_full [r, n]``, ``B_full [m, r]`` and ``dW = diag(u_row) B A diag(u_col) * scaling`` ``[m, n]``."""
    A_full, B_full, u_row, u_col = dense_reference(layer)
    return A_full, B_full, torch.diag(u_row) @ B_full @ A_full @ torch.diag(u_col) * layer.scaling


def assert_gradients_match(layer, A_full, B_full):
    torch.testing.assert_close(layer.lora_A.grad, A_full.grad[:, layer.lora_columns], rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.lora_B.grad, B_full.grad[layer.lora_rows], rtol=0, atol=1e-12)


# -- the layer against a dense masked reference -------------------------------------------
def test_conv1d_layer_equals_the_dense_masked_reference_and_keeps_its_transposed_layout():
    torch.manual_seed(0)
    base = Conv1D(40, 24)  # nf=40 outputs, nx=24 inputs: weight [24, 40]
    original = base.weight.detach().clone()
    layer = masked_layer(base, 0.4, multiplier=2.0)
    assert layer.kind == "transposed_linear" and (layer.out_features, layer.in_features) == (40, 24)
    assert layer.weight is base.weight
    A_full, B_full, delta = dense_delta(layer)
    x, probe = torch.randn(3, 5, 24), torch.randn(3, 5, 40)
    y = layer(x)
    y_ref = x @ (base.weight + delta.T) + base.bias
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    (y * probe).sum().backward()
    (y_ref * probe).sum().backward()
    assert_gradients_match(layer, A_full, B_full)
    torch.testing.assert_close(layer.delta_weight(), delta.detach().T, rtol=0, atol=1e-12)  # [in, out], as W
    assert weight_matrix(base).shape == (40, 24) and weight_matrix(base).data_ptr() == base.weight.data_ptr()

    layer.merge()
    torch.testing.assert_close(layer.weight, original + delta.detach().T, rtol=0, atol=1e-12)
    assert layer.to_base() is base
    torch.testing.assert_close(base(x), y_ref.detach(), rtol=0, atol=1e-12)


def test_same_padded_pointwise_conv_subclass_adds_the_update_to_its_own_forward():
    torch.manual_seed(1)
    base = SamePadConv2d(12, 20, kernel_size=1, stride=2)
    layer = masked_layer(base, 0.4)
    assert layer.kind == "conv1x1" and layer.own_forward
    A_full, B_full, delta = dense_delta(layer)
    x = torch.randn(2, 12, 7, 7)
    y = layer(x)
    y_ref = F.conv2d(x, base.weight + delta[:, :, None, None], base.bias, stride=2)  # "same" is no padding at 1x1
    assert y.shape == (2, 20, 4, 4)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    probe = torch.randn_like(y)
    (y * probe).sum().backward()
    (y_ref * probe).sum().backward()
    assert_gradients_match(layer, A_full, B_full)
    layer.merge()
    assert layer.to_base() is base and type(base) is SamePadConv2d
    torch.testing.assert_close(base(x), y_ref.detach(), rtol=0, atol=1e-12)


def test_a_subclass_forward_runs_on_the_layers_current_weight_and_mode():
    base = DoubledLinear(6, 4)
    layer = masked_layer(base, 1.0)
    new_weight = nn.Parameter(torch.randn(4, 6))
    layer.load_state_dict({**layer.state_dict(), "weight": new_weight}, assign=True)
    x = torch.randn(3, 6)
    update = x @ layer.delta_weight().T
    torch.testing.assert_close(layer(x), 2 * F.linear(x, new_weight, layer.bias) + update, rtol=0, atol=1e-12)
    layer.train()
    layer(x)
    assert base.training and base.weight is new_weight
    assert layer.to_base() is base
    assert "weight" in layer.state_dict() and not any("base" in key for key in layer.state_dict())


# -- GPT-2: apply, reference, merge, save/load, PEFT -----------------------------------------
def gpt2_adapted(keep: float = 0.5, **config):
    model = partial_lora.apply(tiny_gpt2(), PartialLoraConfig(r=4, alpha=8, target_modules=GPT2_TARGETS,
                                                              keep_ratio=keep, **config))
    randomize_adapters(model)
    return model


def test_gpt2_conv1d_layers_are_adapted_and_match_a_dense_masked_reference():
    model = gpt2_adapted()
    layers = partial_lora.adapter_layers(model)
    assert len(layers) == 8 and all(layer.kind == "transposed_linear" for layer in layers.values())
    assert "transformer.h.0.attn.c_attn.weight" in model.state_dict()
    reference = tiny_gpt2()
    with torch.no_grad():
        for name, layer in layers.items():
            reference.get_submodule(name).weight.add_(dense_delta(layer)[2].T)
    batch = token_batch()
    torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=0, atol=1e-10)


def test_all_linear_on_gpt2_takes_the_conv1d_layers_and_skips_the_head():
    model = partial_lora.apply(tiny_gpt2(), PartialLoraConfig(target_modules="all-linear", keep_ratio=0.5))
    names = partial_lora.adapter_layers(model)
    assert {n.rsplit(".", 1)[1] for n in names} == {"c_attn", "c_proj", "c_fc"} and "lm_head" not in names


def test_merged_gpt2_is_a_plain_model_with_the_same_logits():
    model = gpt2_adapted()
    batch = token_batch()
    expected = model(**batch).logits
    merged = partial_lora.merge(model)
    assert not partial_lora.adapter_layers(merged)
    assert type(merged.transformer.h[0].attn.c_attn) is Conv1D
    torch.testing.assert_close(merged(**batch).logits, expected, rtol=0, atol=1e-10)


def test_gpt2_adapter_round_trips_through_save_and_load(tmp_path):
    model = gpt2_adapted()
    folder = partial_lora.save(model, tmp_path / "adapter")
    document = json.loads((folder / "adapter_config.json").read_text())
    info = document["layers"]["transformer.h.0.attn.c_attn"]
    assert (info["kind"], info["base_class"], info["shape"]) == ("transposed_linear", "Conv1D", [96, 32])
    loaded = partial_lora.load(tiny_gpt2(), folder)
    batch = token_batch()
    assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    partial_lora.load_weights(loaded, folder)


def test_an_adapter_is_refused_by_a_base_whose_layer_has_another_type_or_layout(tmp_path):
    folder = partial_lora.save(gpt2_adapted(), tmp_path / "adapter")
    linear_twin = as_linear(tiny_gpt2())  # same weights and outputs, nn.Linear layout
    with pytest.raises(AdapterFileError, match="transposed_linear"):
        partial_lora.load(linear_twin, folder)
    assert not partial_lora.adapter_layers(linear_twin)

    subclassed = partial_lora.apply(nn.Sequential(DoubledLinear(6, 4)), PartialLoraConfig(target_modules=["0"]))
    other = partial_lora.save(subclassed, tmp_path / "doubled")
    with pytest.raises(AdapterFileError, match="made for a DoubledLinear"):
        partial_lora.load(nn.Sequential(nn.Linear(6, 4)), other)


def test_gpt2_export_loads_in_peft_without_warnings_and_imports_back(tmp_path):
    model = gpt2_adapted(keep=0.4)
    batch = token_batch()
    expected = model(**batch).logits
    partial_lora.export_peft(model, tmp_path / "peft")
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(tiny_gpt2(), tmp_path / "peft").eval()
    assert not [w for w in caught if "fan_in_fan_out" in str(w.message)]
    torch.testing.assert_close(peft_model(**batch).logits, expected, rtol=0, atol=1e-10)
    merged = peft_model.merge_and_unload()  # PEFT's own merge, transposing for Conv1D
    torch.testing.assert_close(merged(**batch).logits, expected, rtol=0, atol=1e-10)

    imported = partial_lora.import_peft(tiny_gpt2(), tmp_path / "peft")
    for name, layer in partial_lora.adapter_layers(model).items():
        other = partial_lora.adapter_layers(imported)[name]
        assert torch.equal(layer.lora_rows, other.lora_rows) and torch.equal(layer.lora_columns, other.lora_columns)
    torch.testing.assert_close(imported(**batch).logits, expected, rtol=0, atol=1e-10)


def test_a_mix_of_conv1d_and_linear_layers_exports_what_peft_reproduces(tmp_path):
    """PEFT sets fan_in_fan_out per layer from its type (warning where the flag changes), so the
    folder's flag, that of the first adapted layer, only decides where the warnings fall."""
    model = partial_lora.apply(tiny_gpt2(), PartialLoraConfig(r=4, target_modules=["c_attn", "lm_head"],
                                                              keep_ratio=0.5))
    randomize_adapters(model)
    assert {layer.kind for layer in partial_lora.adapter_layers(model).values()} == {"transposed_linear", "linear"}
    batch = token_batch()
    partial_lora.export_peft(model, tmp_path / "peft")
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(tiny_gpt2(), tmp_path / "peft").eval()
    torch.testing.assert_close(peft_model(**batch).logits, model(**batch).logits, rtol=0, atol=1e-10)


def test_import_of_a_dense_peft_lora_made_on_gpt2(tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns that it sets fan_in_fan_out for Conv1D
        peft_model = get_peft_model(tiny_gpt2(), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"]))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    batch = token_batch()
    expected = peft_model(**batch).logits
    peft_model.save_pretrained(tmp_path / "dense")
    assert json.loads((tmp_path / "dense" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    imported = partial_lora.import_peft(tiny_gpt2(), tmp_path / "dense")
    torch.testing.assert_close(imported(**batch).logits, expected, rtol=0, atol=1e-10)


# -- a network of "same"-padded 1x1 convolutions ----------------------------------------------
def same_pad_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(SamePadConv2d(3, 8, 1), nn.ReLU(), SamePadConv2d(8, 6, 1, stride=2)).eval()


def test_same_padded_conv_net_round_trips_through_peft_merge_and_files(tmp_path):
    model = partial_lora.apply(same_pad_net(), PartialLoraConfig(r=2, alpha=4, target_modules=["0", "2"],
                                                                 keep_ratio=0.5))
    randomize_adapters(model)
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    expected = model(x)

    partial_lora.export_peft(model, tmp_path / "peft")
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["fan_in_fan_out"] is False
    peft_model = PeftModel.from_pretrained(same_pad_net(), tmp_path / "peft").eval()
    torch.testing.assert_close(peft_model(x), expected, rtol=0, atol=1e-12)

    folder = partial_lora.save(model, tmp_path / "adapter")
    assert json.loads((folder / "adapter_config.json").read_text())["layers"]["2"]["base_class"] == "SamePadConv2d"
    assert torch.equal(partial_lora.load(same_pad_net(), folder)(x), expected)

    merged = partial_lora.merge(model)
    assert [type(m) for m in merged] == [SamePadConv2d, nn.ReLU, SamePadConv2d]
    torch.testing.assert_close(merged(x), expected, rtol=0, atol=1e-12)


# -- refusals ------------------------------------------------------------------------------
class WithAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2)


@pytest.mark.parametrize("module, words", [
    (ScaledLinear(6, 4), "besides weight and bias"),
    (SamePadConv2d(4, 4, 3), "not pointwise"),
    (SamePadConv2d(4, 4, 1, groups=2), "not pointwise"),
    (nn.Conv2d(4, 4, 1, padding=1, padding_mode="reflect"), "zero padding"),
    (nn.utils.parametrizations.weight_norm(nn.Linear(6, 4)), "not a plain parameter"),
    (nn.Embedding(10, 4), "none of"),
])
def test_modules_that_cannot_be_adapted_are_refused_with_the_reason(module, words):
    with pytest.raises(ValueError, match=words):
        partial_lora.apply(nn.Sequential(module), PartialLoraConfig(target_modules=["0"]))
    with pytest.raises(TypeError, match=words):
        PartialLoraLayer(module, torch.arange(2), torch.arange(2), r=1, alpha=1)


def test_the_out_projection_of_multihead_attention_is_refused_and_left_out_of_all_linear():
    with pytest.raises(ValueError, match="never run"):
        partial_lora.apply(WithAttention(), PartialLoraConfig(target_modules=["out_proj"]))
    net = WithAttention()
    net.proj = DoubledLinear(8, 8)
    model = partial_lora.apply(net, PartialLoraConfig(target_modules="all-linear"))
    assert list(partial_lora.adapter_layers(model)) == ["proj"]


def test_a_forward_whose_output_the_update_cannot_follow_fails_naming_the_layer():
    torch.manual_seed(0)
    model = partial_lora.apply(nn.Sequential(nn.Conv2d(3, 4, 1), AlwaysPaddedConv2d(4, 4, 1)),
                               PartialLoraConfig(target_modules=["0", "1"]))
    with pytest.raises(RuntimeError, match=r"layer '1': .*AlwaysPaddedConv2d.*\(2, 4, 7, 7\).*\(2, 4, 5, 5\)"):
        model(torch.randn(2, 3, 5, 5))


def test_a_forward_not_linear_in_its_weight_trains_but_refuses_to_merge():
    torch.manual_seed(0)
    model = partial_lora.apply(nn.Sequential(nn.Linear(6, 6), DoubledLinear(6, 4)),
                               PartialLoraConfig(r=2, target_modules=["0", "1"], keep_ratio=0.5))
    randomize_adapters(model)
    layer = model[1]
    x = torch.randn(3, 6)
    hidden = model[0](x)
    torch.testing.assert_close(layer(hidden), 2 * F.linear(hidden, layer.weight, layer.bias)
                               + hidden @ layer.delta_weight().T, rtol=0, atol=1e-12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="'1'.*not W x \\+ b"):
        partial_lora.merge(model)
    assert len(partial_lora.adapter_layers(model)) == 2 and not model[0].merged and not layer.merged
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# -- tickets ---------------------------------------------------------------------------------
def as_linear(model: nn.Module) -> nn.Module:
    """``model`` with every Conv1D replaced by the equivalent ``nn.Linear`` (same map, ``[out, in]`` weight)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            linear = nn.Linear(module.nx, module.nf)
            with torch.no_grad():
                linear.weight.copy_(module.weight.T)
                linear.bias.copy_(module.bias)
            set_submodule(model, name, linear)
    return model


def lm_batches():
    ids = torch.randint(0, 100, (8, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :6] = -100
    return [{"input_ids": ids[i:i + 4], "labels": labels[i:i + 4]} for i in (0, 4)]


@pytest.mark.parametrize("method", ["svd", "snip", "imp"])
def test_a_conv1d_model_gets_the_ticket_of_its_linear_twin(method):
    options = dict(target_modules=GPT2_TARGETS, method=method, metric="neg-loss", progress=False)
    ticket = find_ticket(tiny_gpt2(), lm_batches(), **options)
    twin = find_ticket(as_linear(tiny_gpt2()), lm_batches(), **options)
    assert ticket.layers["transformer.h.0.attn.c_attn"].shape == (96, 32)
    assert ticket.keep_ratios() == pytest.approx(twin.keep_ratios(), rel=1e-9)
    for name, (rows, columns) in ticket.scores.items():
        twin_rows, twin_columns = twin.scores[name]
        torch.testing.assert_close(rows, twin_rows, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(columns, twin_columns, rtol=1e-6, atol=1e-9)
    model = partial_lora.apply(tiny_gpt2(), PartialLoraConfig.from_ticket(ticket, selection="targeted"),
                               scores=ticket.scores)
    assert len(partial_lora.adapter_layers(model)) == 8
