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

The layer owns the base ``weight`` and ``bias`` (the same ``Parameter`` objects the replaced
module had), so a model's state-dict keys for its base weights do not change.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED = "nn.Linear and pointwise (1x1, groups=1) nn.Conv2d"
MAX_KEEP_MULTIPLIER = 10.0


def keep_multiplier(kept_rows: int, kept_columns: int, shape: tuple[int, int]) -> float:
    """The keep compensation ``K = min(10, (m + n) / (|R| + |C|))`` of a layer of ``shape`` ``(m, n)``."""
    out_features, in_features = shape
    return min(MAX_KEEP_MULTIPLIER, (out_features + in_features) / (kept_rows + kept_columns))


def is_supported(module: nn.Module) -> bool:
    """Whether ``module`` can carry a Partial-LoRA adapter."""
    if type(module) is nn.Linear:
        return True
    if type(module) is nn.Conv2d:
        return module.kernel_size == (1, 1) and module.groups == 1 and module.padding_mode == "zeros"
    return False


def base_shape(module: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)`` of a supported module (or of a Partial-LoRA layer)."""
    if isinstance(module, PartialLoraLayer):
        return module.out_features, module.in_features
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels, module.in_channels
    raise TypeError(f"{type(module).__name__} is not supported; Partial-LoRA adapts {SUPPORTED}")


class PartialLoraLayer(nn.Module):
    """A frozen linear (or 1x1 convolution) layer plus a compact low-rank update.

    Args:
        base: the ``nn.Linear`` or 1x1 ``nn.Conv2d`` to adapt; its weight and bias are taken over.
        rows: sorted ``int64`` indices of the kept output features ``R`` (length ``|R|``).
        columns: sorted ``int64`` indices of the kept input features ``C`` (length ``|C|``).
        r: rank.
        alpha: scaling numerator (the update is scaled by ``multiplier^2 * alpha / r``).
        dropout: dropout probability on the adapter's input.
        generator: optional generator for the initialisation of ``lora_A``.
        multiplier: the keep compensation ``K`` (see the module docstring; :func:`keep_multiplier`
            gives the usual value); 1 is the plain LoRA parametrisation.

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
    ) -> None:
        super().__init__()
        if not is_supported(base):
            raise TypeError(f"cannot adapt {type(base).__name__}: Partial-LoRA adapts {SUPPORTED}")
        self.is_conv = isinstance(base, nn.Conv2d)
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
        factory_kwargs = {"device": self.weight.device, "dtype": self.weight.dtype}
        if not self.weight.dtype.is_floating_point:
            factory_kwargs["dtype"] = torch.float32
        self._create_adapter_tensors(factory_kwargs)
        self.reset_lora_parameters(generator)

    # -- parameters ----------------------------------------------------------------------
    def _create_adapter_tensors(self, factory_kwargs: dict) -> None:
        """Register the trainable tensors: ``lora_A`` ``[r, |C|]`` and ``lora_B`` ``[|R|, r]``.

        ``factory_kwargs`` holds the ``device`` and ``dtype`` they take (the base weight's;
        float32 for a non-floating weight). Values come from :meth:`reset_lora_parameters`.
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
            return _FusedPartialLinear.apply(
                x, self.weight, self.bias, self.lora_A, self.lora_B, self.lora_rows, self.lora_columns,
                self.scaling, self.all_rows, self.all_columns,
            )
        if self.is_conv:
            result = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        else:
            result = F.linear(x, self.weight, self.bias)
        if self.merged or not self.adapter_enabled:
            return result
        return self._add_update(result, x)

    def _fused_path_applies(self, x: torch.Tensor) -> bool:
        """Whether the fused linear kernel (base and update in one autograd node) can run: a
        linear layer, adapter active, no dropout, one floating dtype throughout, no autocast."""
        if self.is_conv or self.merged or not self.adapter_enabled:
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
        update = update.to(result.dtype)
        if self.all_rows:
            return result + update
        return result.index_add(feature_dim, self.lora_rows, update)

    # -- the update as a matrix, merge ---------------------------------------------------
    def compact_delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``scaling * B_R @ A_C`` as a ``[|R|, |C|]`` matrix (the nonzero block of dW)."""
        return (self.lora_B.to(dtype) @ self.lora_A.to(dtype)) * self.scaling

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense update ``dW`` with the base weight's shape (zeros outside ``R x C``)."""
        dtype = dtype or self.lora_A.dtype
        delta = torch.zeros(self.out_features, self.in_features, dtype=dtype, device=self.lora_A.device)
        delta[self.lora_rows[:, None], self.lora_columns[None, :]] = self.compact_delta(dtype)
        return delta[:, :, None, None] if self.is_conv else delta

    def merge(self) -> None:
        """Fold the update into ``weight`` (computed in float32 whatever the weight's dtype)."""
        if not self.merged:
            self._fold(+1.0)
            self.merged = True

    def unmerge(self) -> None:
        """Undo :meth:`merge` (exact in float32/float64 up to rounding of one add and subtract)."""
        if self.merged:
            self._fold(-1.0)
            self.merged = False

    @torch.no_grad()
    def _fold(self, sign: float) -> None:
        compute = torch.float64 if self.weight.dtype == torch.float64 else torch.float32
        weight = self.weight.data.view(self.out_features, self.in_features)
        block = weight[self.lora_rows[:, None], self.lora_columns[None, :]].to(compute)
        block += sign * self.compact_delta(compute)
        weight[self.lora_rows[:, None], self.lora_columns[None, :]] = block.to(weight.dtype)

    def to_base(self) -> nn.Module:
        """A plain ``nn.Linear``/``nn.Conv2d`` with this layer's current (merged or not) weight."""
        if self.is_conv:
            module = nn.Conv2d(
                self.in_features, self.out_features, 1, self.stride, self.padding, self.dilation,
                bias=self.bias is not None, device="meta",
            )
        else:
            module = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        module.weight = self.weight
        module.bias = self.bias
        return module

    def extra_repr(self) -> str:
        kind = "conv1x1" if self.is_conv else "linear"
        return (
            f"{kind}, in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha:g}, "
            f"multiplier={self.multiplier:.3g}, "
            f"rows={len(self.lora_rows)}/{self.out_features}, columns={len(self.lora_columns)}/{self.in_features}"
            + (", merged" if self.merged else "")
        )


class _FusedPartialLinear(torch.autograd.Function):
    """``y = x W^T + b + scatter_R( x[:, C] A_C^T (s B_R)^T )`` in one autograd node.

    Same result as the generic path (``F.linear`` plus ``_add_update``), with fewer and
    cheaper operations:

    * the update is added into the base output in place (``addmm_`` when every row is kept,
      else ``index_add_`` of the ``|R|`` kept columns), and its input gradient into the base
      input gradient in place, so the adapter adds no full-size elementwise pass and no
      separate gradient accumulation;
    * the thin rank-``r`` products are laid out with the token dimension as the long side
      (``A @ x^T``, ``h^T @ g``, ``B^T @ g^T``): on CPU BLAS these run several times faster than
      the ``x @ A^T`` / ``g^T @ h`` layout that ``nn.Linear``-based LoRA gets;
    * only the kept columns of ``x`` and kept rows of the output gradient enter the products,
      so the adapter's cost shrinks with the keep ratio.

    The base weight and bias get gradients too if they require them.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, rows, columns, scaling, all_rows, all_columns):
        out_features, in_features = weight.shape
        x2 = x.reshape(-1, in_features)
        x_kept = x2 if all_columns else x2.index_select(1, columns)  # [tokens, |C|]
        scaled_B = lora_B * scaling  # [|R|, r]
        out = x2 @ weight.t() if bias is None else torch.addmm(bias, x2, weight.t())
        hidden_t = lora_A @ x_kept.t()  # [r, tokens]
        if all_rows:
            out.addmm_(hidden_t.t(), scaled_B.t())
        else:
            out.index_add_(1, rows, hidden_t.t() @ scaled_B.t())
        ctx.save_for_backward(
            x2 if ctx.needs_input_grad[1] else None, x_kept, weight, lora_A, scaled_B, hidden_t, rows, columns,
        )
        ctx.scaling, ctx.all_rows, ctx.all_columns = scaling, all_rows, all_columns
        ctx.has_bias = bias is not None
        ctx.x_shape = x.shape
        return out.view(*x.shape[:-1], out_features)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        x2, x_kept, weight, lora_A, scaled_B, hidden_t, rows, columns = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad = grad_output.reshape(-1, weight.shape[0])
        grad_kept = grad if ctx.all_rows else grad.index_select(1, rows)  # [tokens, |R|]
        grad_hidden_t = scaled_B.t() @ grad_kept.t()  # [r, tokens]
        grad_x = grad_weight = grad_bias = grad_A = grad_B = None
        if needs[0]:
            grad_x = grad @ weight
            if ctx.all_columns:
                grad_x.addmm_(grad_hidden_t.t(), lora_A)
            else:
                grad_x.index_add_(1, columns, grad_hidden_t.t() @ lora_A)
            grad_x = grad_x.view(ctx.x_shape)
        if needs[1]:
            grad_weight = grad.t() @ x2
        if needs[2] and ctx.has_bias:
            grad_bias = grad.sum(0)
        if needs[3]:
            grad_A = grad_hidden_t @ x_kept
        if needs[4]:
            grad_B = (hidden_t @ grad_kept).t() * ctx.scaling
        return grad_x, grad_weight, grad_bias, grad_A, grad_B, None, None, None, None, None


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
