"""The compact Partial-LoRA layer.

A frozen linear map ``W`` (``m`` outputs x ``n`` inputs) gets the update

    dW = (alpha / r) * diag(u_row) @ B @ A @ diag(u_col)

stored compactly: only the kept rows ``R`` of ``B`` and the kept columns ``C`` of ``A`` exist,

    y = W x + b + scatter_R( B_R @ (A_C @ x[C]) ) * alpha / r

so parameters, gradients, optimizer state and files shrink by the keep ratio. With every
row and column kept the layer is exactly LoRA.

**Keep compensation.** An optimizer such as AdamW moves every trained entry by about the
learning rate per step, whatever the layer. A kept row of a sparse layer reads only ``|C|`` of
the ``n`` inputs, and only ``|R|`` of the ``m`` rows move at all, so at LoRA's learning rate a
Partial-LoRA layer's output moves more slowly than LoRA's. With a multiplier
``K = min(10, 1 / keep)`` (``keep = (|R| + |C|) / (m + n)``, the layer's share of LoRA's
parameters) the layer uses the scaling ``K^2 * alpha / r`` and starts ``A`` ``K`` times
smaller. Under Adam that is the same trajectory as training the plain layer at ``K`` times
the learning rate, so any training loop at the rate one would use for LoRA trains it at the
right pace. ``K = 1`` (every row and column kept) is exactly LoRA. The update is still
``scaling * B_R @ A_C``: merge and PEFT export see an ordinary LoRA with a per-layer alpha.

**Which layers.** Three weight layouts (the layer's ``kind``): ``"linear"`` (``nn.Linear``,
weight ``[m, n]``, features on the last axis), ``"conv1x1"`` (a pointwise ``nn.Conv2d``, weight
``[m, n, 1, 1]``, channels on axis 1) and ``"transposed_linear"`` (transformers' ``Conv1D`` of
GPT-2-style models, weight ``[n, m]``, ``y = x @ W + b``). Subclasses of these are adapted too,
if their only parameters are ``weight`` and ``bias``: the update is added to whatever the
module's own forward returns. Exact ``nn.Linear`` and ``nn.Conv2d`` compute their base output
here (``F.linear``, ``F.conv2d``, or the fused kernel of :mod:`partial_lora.fused_linear`).
:func:`weight_matrix` gives any of them as an ``[m, n]`` view.

The layer owns the base ``weight`` and ``bias`` (the same ``Parameter`` objects the replaced
module had), so a model's state-dict keys for its base weights do not change. It keeps the
replaced module itself outside the module tree (not a child: nothing of it is registered twice),
calls its forward where the module has its own, and gives it back, weight and all, in
:meth:`~PartialLoraLayer.to_base`.

**Precision.** On a half-precision base (float16, bfloat16) the adapter tensors are float32
by default (:func:`adapter_dtype_for`): an optimizer's small steps would round away in 8 bits
of mantissa. The input is cast to the adapter's dtype for the update, and the update back to
the base output's dtype, so the layer's output keeps the base's dtype.
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from .fused_linear import FusedPartialLinear

SUPPORTED = ("nn.Linear, pointwise (1x1, groups=1) nn.Conv2d, transformers' Conv1D, and subclasses of these "
             "whose only parameters are weight and bias")
MAX_KEEP_MULTIPLIER = 10.0
LINEAR, CONV1X1, TRANSPOSED_LINEAR = "linear", "conv1x1", "transposed_linear"
KINDS = (LINEAR, CONV1X1, TRANSPOSED_LINEAR)


def keep_multiplier(kept_rows: int, kept_columns: int, shape: tuple[int, int]) -> float:
    """The keep compensation ``K = min(10, (m + n) / (|R| + |C|))`` of a layer of ``shape`` ``(m, n)``."""
    out_features, in_features = shape
    return min(MAX_KEEP_MULTIPLIER, (out_features + in_features) / (kept_rows + kept_columns))


def adapter_dtype_for(weight_dtype: torch.dtype, autocast: bool = True) -> torch.dtype:
    """The dtype of the adapter tensors over a base weight of ``weight_dtype``.

    float32 for a non-floating (quantized) weight and, with ``autocast``, for floating dtypes
    narrower than 32 bits (float16, bfloat16, float8); otherwise the weight's own dtype.
    """
    if not weight_dtype.is_floating_point:
        return torch.float32
    if autocast and torch.finfo(weight_dtype).bits < 32:
        return torch.float32
    return weight_dtype


# -- which modules, and their weight as a matrix ------------------------------------------
def _layout(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return LINEAR
    if isinstance(module, nn.Conv2d):
        return CONV1X1
    # transformers' Conv1D; a module can only be one if transformers has been imported.
    pytorch_utils = sys.modules.get("transformers.pytorch_utils")
    if pytorch_utils is not None and isinstance(module, getattr(pytorch_utils, "Conv1D", ())):
        return TRANSPOSED_LINEAR
    return None


def unsupported_reason(module: nn.Module) -> str | None:
    """Why ``module`` cannot carry a Partial-LoRA adapter, or None if it can."""
    kind = _layout(module)
    if kind is None or isinstance(module, PartialLoraLayer):
        return f"a {type(module).__name__} is none of {SUPPORTED}"
    if isinstance(module, NonDynamicallyQuantizableLinear):
        return ("nn.MultiheadAttention reads its out_proj's weight directly, never calling its forward: an adapter "
                "there would never run")
    if kind == CONV1X1:
        if module.kernel_size != (1, 1) or module.groups != 1:
            return (f"a convolution with kernel {module.kernel_size} and groups={module.groups} is not pointwise "
                    "(1x1, groups=1): the update is a 1x1 convolution over all channels")
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r}: the update is computed with zero padding"
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if not isinstance(weight, nn.Parameter) or not (bias is None or isinstance(bias, nn.Parameter)):
        return "its weight or bias is not a plain parameter (a parametrization? a quantized layer?)"
    if kind == LINEAR:
        expected = (module.out_features, module.in_features)
    elif kind == CONV1X1:
        expected = (module.out_channels, module.in_channels, 1, 1)
    else:
        expected = (getattr(module, "nx", weight.shape[0]), module.nf)
    if tuple(weight.shape) != tuple(expected):
        return f"its weight has shape {tuple(weight.shape)}, not {tuple(expected)} (a packed or quantized weight?)"
    extra = [n for n, _ in module.named_parameters() if n not in ("weight", "bias")]
    extra += [n for n, _ in module.named_buffers()]
    if extra:
        return (f"it has parameters or buffers besides weight and bias ({', '.join(extra[:3])}), which the adapter "
                "layer would hide from the state dict")
    return None


def is_supported(module: nn.Module) -> bool:
    """Whether ``module`` can carry a Partial-LoRA adapter (see :func:`unsupported_reason`)."""
    return unsupported_reason(module) is None


def layer_kind(module: nn.Module) -> str:
    """The weight layout (one of :data:`KINDS`) of a supported module or a Partial-LoRA layer."""
    if isinstance(module, PartialLoraLayer):
        return module.kind
    reason = unsupported_reason(module)
    if reason is not None:
        raise TypeError(f"{type(module).__name__} is not supported: {reason}")
    return _layout(module)


def weight_matrix(module: nn.Module, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``weight`` (default: the module's own) as an ``[out, in]`` view, whatever the module's layout.

    A supported module or a Partial-LoRA layer; ``weight`` is any tensor laid out like the
    module's weight (a gradient, a saliency). A view: writing into it writes the weight.
    """
    kind = layer_kind(module)
    weight = module.weight if weight is None else weight
    if kind == TRANSPOSED_LINEAR:
        return weight.t()
    if kind == CONV1X1:
        return weight.view(weight.shape[0], weight.shape[1])
    return weight


def base_shape(module: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)`` of a supported module (or of a Partial-LoRA layer)."""
    if isinstance(module, PartialLoraLayer):
        return module.out_features, module.in_features
    out_features, in_features = weight_matrix(module).shape
    return int(out_features), int(in_features)


class PartialLoraLayer(nn.Module):
    """A frozen linear (or 1x1 convolution, or transposed linear) layer plus a compact low-rank update.

    Args:
        base: the module to adapt (see :func:`unsupported_reason`); its weight and bias are taken over.
        rows: sorted ``int64`` indices of the kept output features ``R`` (length ``|R|``).
        columns: sorted ``int64`` indices of the kept input features ``C`` (length ``|C|``).
        r: rank.
        alpha: scaling numerator (the update is scaled by ``multiplier^2 * alpha / r``).
        dropout: dropout probability on the adapter's input.
        generator: optional generator for the initialisation of ``lora_A``.
        multiplier: the keep compensation ``K`` (see the module docstring; :func:`keep_multiplier`
            gives the usual value); 1 is the plain LoRA parametrisation.
        adapter_dtype: dtype of ``lora_A`` and ``lora_B``; default :func:`adapter_dtype_for` the
            base weight's dtype (float32 on a half-precision base).
        name: the module's full name in its model, for error messages.

    Trainable tensors: ``lora_A`` ``[r, |C|]`` (Kaiming-uniform like LoRA, divided by ``K``) and
    ``lora_B`` ``[|R|, r]`` (zeros, so the adapted model starts equal to the base).

    A variant with other adapter tensors (Partial-AdaLoRA) overrides
    :meth:`_create_adapter_tensors` and :meth:`reset_lora_parameters` and provides ``lora_A``
    and ``lora_B`` as the equivalent factors; everything else (forward, merge, export) is shared.
    """

    keep_compensated = True  # whether apply() gives this class its keep compensation

    def __init__(
        self,
        base: nn.Module,
        rows: torch.Tensor,
        columns: torch.Tensor,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
        multiplier: float = 1.0,
        adapter_dtype: torch.dtype | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        reason = unsupported_reason(base)
        if reason is not None:
            raise TypeError(f"cannot adapt {name or type(base).__name__}: {reason}. Partial-LoRA adapts {SUPPORTED}")
        self.name = name
        self.kind = _layout(base)
        # The replaced module, kept outside the module tree (it shares weight and bias with this
        # layer, so registering it would list them twice); exact nn.Linear / nn.Conv2d are
        # computed here, any other module by its own forward.
        self.__dict__["_base_module"] = base
        self.own_forward = type(base) not in (nn.Linear, nn.Conv2d)
        self.out_features, self.in_features = base_shape(base)
        self.weight = base.weight
        self.bias = base.bias
        if self.is_conv:
            self.stride, self.padding, self.dilation = base.stride, base.padding, base.dilation
        rows = _check_indices("rows", rows, self.out_features)
        columns = _check_indices("columns", columns, self.in_features)
        self.r = int(r)
        self.alpha = float(alpha)
        if not (isinstance(multiplier, (int, float)) and 1.0 <= multiplier <= MAX_KEEP_MULTIPLIER):
            raise ValueError(f"multiplier={multiplier!r} is invalid: the keep compensation lies in [1, {MAX_KEEP_MULTIPLIER:g}]")
        self.multiplier = float(multiplier)
        self.scaling = self.alpha / self.r * self.multiplier**2
        self.register_buffer("lora_rows", rows.to(self.weight.device))
        self.register_buffer("lora_columns", columns.to(self.weight.device))
        self.all_rows = len(rows) == self.out_features
        self.all_columns = len(columns) == self.in_features
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.adapter_enabled = True
        dtype = adapter_dtype_for(self.weight.dtype) if adapter_dtype is None else adapter_dtype
        if not dtype.is_floating_point:
            raise ValueError(f"adapter_dtype={dtype} is not a floating dtype")
        self._create_adapter_tensors({"device": self.weight.device, "dtype": dtype})
        self.reset_lora_parameters(generator)

    @property
    def is_conv(self) -> bool:
        """Whether the base is a pointwise convolution (channels on axis 1)."""
        return self.kind == CONV1X1

    @property
    def base_class(self) -> str:
        """The class name of the adapted module (``"Linear"``, ``"Conv2d"``, ``"Conv1D"``, ...)."""
        return type(self.__dict__["_base_module"]).__name__

    # -- parameters ----------------------------------------------------------------------
    def _create_adapter_tensors(self, factory_kwargs: dict) -> None:
        """Register the trainable tensors: ``lora_A`` ``[r, |C|]`` and ``lora_B`` ``[|R|, r]``.

        ``factory_kwargs`` holds the ``device`` and ``dtype`` they take (the base weight's
        device; the adapter dtype). Values come from :meth:`reset_lora_parameters`.
        """
        self.lora_A = nn.Parameter(torch.empty(self.r, len(self.lora_columns), **factory_kwargs))
        self.lora_B = nn.Parameter(torch.zeros(len(self.lora_rows), self.r, **factory_kwargs))

    def reset_lora_parameters(self, generator: torch.Generator | None = None) -> None:
        """``A ~ U(-b, b)`` with ``b = 1 / (K sqrt(|C|))`` (PyTorch's Kaiming-uniform with a=sqrt(5),
        divided by the keep compensation ``K``), ``B = 0``."""
        bound = 1.0 / (math.sqrt(self.lora_A.shape[1]) * self.multiplier)
        with torch.no_grad():
            values = torch.rand(self.lora_A.shape, generator=generator, dtype=torch.float64)
            self.lora_A.copy_((values * 2 - 1) * bound)
            self.lora_B.zero_()

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The trainable adapter tensors (what an optimizer or a learning-rate scale is given)."""
        return [self.lora_A, self.lora_B]

    @property
    def keep_ratio(self) -> float:
        """Trainable parameters relative to a dense LoRA layer of the same rank."""
        return (len(self.lora_rows) + len(self.lora_columns)) / (self.out_features + self.in_features)

    # -- forward -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fused_path_applies(x):
            return FusedPartialLinear.apply(
                x, self.weight, self.bias, self.lora_A, self.lora_B, self.lora_rows, self.lora_columns,
                self.scaling, self.all_rows, self.all_columns,
            )
        if self.own_forward:
            result = self._synced_base().forward(x)
        elif self.is_conv:
            result = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        else:
            result = F.linear(x, self.weight, self.bias)
        if self.merged or not self.adapter_enabled:
            return result
        return self._add_update(result, x)

    def _fused_path_applies(self, x: torch.Tensor) -> bool:
        """Whether the fused linear kernel (base and update in one autograd node) can run: an
        exact ``nn.Linear``, adapter active, no dropout, one floating dtype throughout, no autocast."""
        if self.own_forward or self.is_conv or self.merged or not self.adapter_enabled:
            return False
        if self.training and not isinstance(self.lora_dropout, nn.Identity):
            return False
        dtype = self.weight.dtype
        if not dtype.is_floating_point or not (x.dtype == dtype == self.lora_A.dtype == self.lora_B.dtype):
            return False
        return not torch.is_autocast_enabled(x.device.type)

    def _add_update(self, result: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        feature_dim = 1 if self.is_conv else -1
        x = x.to(self.lora_A.dtype)
        if not self.all_columns:
            x = x.index_select(feature_dim, self.lora_columns)
        x = self.lora_dropout(x)
        if self.is_conv:
            hidden = F.conv2d(x, self.lora_A[:, :, None, None], None, self.stride, self.padding, self.dilation)
            update = F.conv2d(hidden, self.lora_B[:, :, None, None] * self.scaling)
        else:
            update = F.linear(F.linear(x, self.lora_A), self.lora_B * self.scaling)
        if self.own_forward:
            self._check_base_output(result, update, feature_dim)
        update = update.to(result.dtype)
        if self.all_rows:
            return result + update
        return result.index_add(feature_dim, self.lora_rows, update)

    def _check_base_output(self, result: torch.Tensor, update: torch.Tensor, feature_dim: int) -> None:
        """Refuse a base output the update cannot be added to (a forward that pads or reshapes)."""
        expected = list(update.shape)
        expected[feature_dim] = self.out_features
        if not isinstance(result, torch.Tensor) or list(result.shape) != expected:
            got = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
            raise RuntimeError(
                f"layer {self.name or self.base_class!r}: the {self.base_class}'s own forward returned {got}, but the "
                f"adapter's update has shape {tuple(expected)}: its forward does more than a "
                f"{'1x1 convolution' if self.is_conv else 'linear map'} of its input (extra padding, a reshape), so "
                "the update cannot follow it; leave this layer out of target_modules"
            )

    def _synced_base(self) -> nn.Module:
        """The replaced module, holding this layer's weight, bias and training mode (they can be
        replaced here, e.g. by ``load_state_dict(assign=True)``)."""
        base = self.__dict__["_base_module"]
        if base.weight is not self.weight:
            base.weight = self.weight
        if base.bias is not self.bias:
            base.bias = self.bias
        if base.training != self.training:
            base.train(self.training)
        return base

    # -- the update as a matrix, merge ---------------------------------------------------
    def compact_delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``scaling * B_R @ A_C`` as a ``[|R|, |C|]`` matrix (the nonzero block of dW)."""
        return (self.lora_B.to(dtype) @ self.lora_A.to(dtype)) * self.scaling

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense update ``dW`` in the base weight's own shape and layout (zeros outside ``R x C``):
        ``[m, n]``, ``[m, n, 1, 1]`` for a convolution, ``[n, m]`` for a transposed linear."""
        dtype = dtype or self.lora_A.dtype
        delta = torch.zeros(self.out_features, self.in_features, dtype=dtype, device=self.lora_A.device)
        delta[self.lora_rows[:, None], self.lora_columns[None, :]] = self.compact_delta(dtype)
        if self.kind == TRANSPOSED_LINEAR:
            return delta.t().contiguous()
        return delta[:, :, None, None] if self.is_conv else delta

    def merge(self) -> None:
        """Fold the update into ``weight`` (computed in float32 whatever the weight's dtype).

        Raises ``ValueError`` (weight unchanged) where that would change the layer's output: see
        :meth:`check_mergeable`.
        """
        if not self.merged:
            self.check_mergeable()
            self._fold(+1.0)
            self.merged = True

    @torch.no_grad()
    def check_mergeable(self) -> None:
        """Raise ``ValueError`` if the module's own forward, run on ``W + dW``, would not give this
        layer's output: a forward that is not ``W x + b`` in its weight (one that rescales or
        standardises the weight, say) can carry an adapter but not have it folded in.

        Exact ``nn.Linear`` / ``nn.Conv2d`` always merge. Any other module is probed on a fixed
        random input: the weight is folded, the output compared, and the weight restored
        exactly. In half precision, differences below the base's rounding cannot be seen.
        """
        if not self.own_forward or self.merged:
            return
        shape = (1, self.in_features, 5, 5) if self.is_conv else (2, self.in_features)
        probe = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        probe = probe.to(self.weight.device, self.weight.dtype)
        was_training, weight = self.training, weight_matrix(self, self.weight.data)
        block = weight[self.lora_rows[:, None], self.lora_columns[None, :]].clone()
        self.eval()
        try:
            base = self._synced_base()
            before = base.forward(probe)
            adapted = self._add_update(before, probe).double()
            self._fold(+1.0)
            merged = base.forward(probe).double()
        finally:
            weight[self.lora_rows[:, None], self.lora_columns[None, :]] = block
            self.train(was_training)
        error, update = (merged - adapted).abs().max(), (adapted - before.double()).abs().max()
        rounding = 16 * torch.finfo(self.weight.dtype).eps * adapted.abs().max()
        if error > 0.1 * update + rounding:
            raise ValueError(
                f"layer {self.name or self.base_class!r}: merging would change its output (by up to {error:.3g}, where "
                f"the update is up to {update:.3g}): the {self.base_class}'s forward is not W x + b in its weight. "
                "Keep the adapter unmerged (save, load and export_peft work), or leave the layer out of target_modules"
            )

    def unmerge(self) -> None:
        """Undo :meth:`merge` (exact in float32/float64 up to rounding of one add and subtract)."""
        if self.merged:
            self._fold(-1.0)
            self.merged = False

    @torch.no_grad()
    def _fold(self, sign: float) -> None:
        compute = torch.float64 if self.weight.dtype == torch.float64 else torch.float32
        weight = weight_matrix(self, self.weight.data)  # a view: writing it writes the weight
        block = weight[self.lora_rows[:, None], self.lora_columns[None, :]].to(compute)
        block += sign * self.compact_delta(compute)
        weight[self.lora_rows[:, None], self.lora_columns[None, :]] = block.to(weight.dtype)

    def to_base(self) -> nn.Module:
        """The module this layer replaced, with this layer's current (merged or not) weight and bias."""
        return self._synced_base()

    def extra_repr(self) -> str:
        kind = self.kind if not self.own_forward else f"{self.kind} ({self.base_class})"
        return (
            f"{kind}, in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha:g}, "
            f"multiplier={self.multiplier:.3g}, "
            f"rows={len(self.lora_rows)}/{self.out_features}, columns={len(self.lora_columns)}/{self.in_features}"
            + (f", {self.lora_A.dtype} adapter" if self.lora_A.dtype != self.weight.dtype else "")
            + (", merged" if self.merged else "")
        )


def _check_indices(what: str, indices: torch.Tensor, size: int) -> torch.Tensor:
    indices = torch.as_tensor(indices)
    if indices.dtype not in (torch.int64, torch.int32) or indices.dim() != 1:
        raise ValueError(f"{what} must be a 1-D integer tensor, got {indices.dtype} of shape {tuple(indices.shape)}")
    indices = indices.to(torch.int64).cpu()
    if len(indices) == 0 or len(indices) > size:
        raise ValueError(f"{what}: keep between 1 and {size} indices, got {len(indices)}")
    if indices.min() < 0 or indices.max() >= size:
        raise ValueError(f"{what}: indices must lie in [0, {size - 1}], got [{int(indices.min())}, {int(indices.max())}]")
    if len(indices) > 1 and not bool((indices[1:] > indices[:-1]).all()):
        raise ValueError(f"{what}: indices must be sorted and unique")
    return indices
