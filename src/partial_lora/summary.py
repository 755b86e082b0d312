"""What a Partial-LoRA model trains: per adapted layer and in total, against a dense LoRA.

A layer of shape ``m x n`` (out x in) with rank ``r`` keeps ``|R|`` of its ``m`` rows and ``|C|``
of its ``n`` columns and trains ``r * (|R| + |C|)`` adapter values, where a LoRA of the same
rank trains ``r * (m + n)``. :func:`adapter_summary` returns these numbers;
:func:`print_trainable_parameters` prints them as a table.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .surgery import adapter_layers, modules_to_save


@dataclass(frozen=True)
class LayerSummary:
    """One adapted layer.

    Attributes:
        name: full module name.
        shape: ``(out_features, in_features)`` of the base layer.
        rank: the adapter's rank ``r``.
        rows, columns: kept output rows ``|R|`` and input columns ``|C|``.
        parameters: entries of the layer's adapter tensors (``adapter_parameters()``).
        lora_parameters: what a dense LoRA of the same rank trains, ``r * (out + in)``.
    """

    name: str
    shape: tuple[int, int]
    rank: int
    rows: int
    columns: int
    parameters: int
    lora_parameters: int


@dataclass(frozen=True)
class AdapterSummary:
    """A whole model.

    Attributes:
        layers: one :class:`LayerSummary` per adapted layer, in model order.
        adapter_parameters: the adapters' entries, summed over ``layers``.
        lora_parameters: what dense LoRAs of the same ranks on the same layers would train.
        saved_modules: names of the modules trained in full (``modules_to_save``).
        saved_parameters: their parameters (each shared tensor once).
        trainable_parameters: every parameter that requires gradients now.
        total_parameters: every parameter of the model, trainable or frozen.
    """

    layers: list[LayerSummary]
    adapter_parameters: int
    lora_parameters: int
    saved_modules: list[str]
    saved_parameters: int
    trainable_parameters: int
    total_parameters: int

    @property
    def adapter_share_of_lora(self) -> float:
        """Adapter parameters relative to the same-rank dense LoRA (0 when no layer is adapted)."""
        return self.adapter_parameters / self.lora_parameters if self.lora_parameters else 0.0

    @property
    def with_saved_share_of_lora(self) -> float:
        """The same, with the modules trained in full added to both sides."""
        lora = self.lora_parameters + self.saved_parameters
        return (self.adapter_parameters + self.saved_parameters) / lora if lora else 0.0

    def table(self) -> str:
        """The summary as text: one line per layer, then the totals."""
        header = ("layer", "out x in", "rank", "rows kept", "columns kept", "parameters", "of LoRA's")
        rows = [header] + [
            (layer.name, f"{layer.shape[0]} x {layer.shape[1]}", str(layer.rank),
             f"{layer.rows}/{layer.shape[0]}", f"{layer.columns}/{layer.shape[1]}", f"{layer.parameters:,}",
             f"{layer.parameters / layer.lora_parameters:.1%}")
            for layer in self.layers
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                 for row in rows]
        lines.append(f"adapters: {self.adapter_parameters:,} parameters in {len(self.layers)} layers, "
                     f"{self.adapter_share_of_lora:.1%} of a LoRA of the same ranks ({self.lora_parameters:,})")
        if self.saved_modules:
            lines.append(f"trained in full: {self.saved_parameters:,} parameters ({', '.join(self.saved_modules)}); "
                         f"with them {self.adapter_parameters + self.saved_parameters:,}, "
                         f"{self.with_saved_share_of_lora:.1%} of LoRA's "
                         f"{self.lora_parameters + self.saved_parameters:,}")
        share = self.trainable_parameters / self.total_parameters if self.total_parameters else 0.0
        lines.append(f"trainable: {self.trainable_parameters:,} of {self.total_parameters:,} parameters ({share:.3%})")
        return "\n".join(lines)


def adapter_summary(model: nn.Module) -> AdapterSummary:
    """Count what ``model`` (changed by :func:`partial_lora.apply` or :func:`partial_lora.load`) trains."""
    layers = []
    for name, layer in adapter_layers(model).items():
        shape = (layer.out_features, layer.in_features)
        layers.append(LayerSummary(
            name=name, shape=shape, rank=layer.r, rows=len(layer.lora_rows), columns=len(layer.lora_columns),
            parameters=sum(p.numel() for p in layer.adapter_parameters()), lora_parameters=layer.r * sum(shape),
        ))
    saved = modules_to_save(model)
    return AdapterSummary(
        layers=layers,
        adapter_parameters=sum(layer.parameters for layer in layers),
        lora_parameters=sum(layer.lora_parameters for layer in layers),
        saved_modules=list(saved),
        saved_parameters=_count(p for module in saved.values() for p in module.parameters()),
        trainable_parameters=_count(p for p in model.parameters() if p.requires_grad),
        total_parameters=_count(model.parameters()),
    )


def print_trainable_parameters(model: nn.Module) -> None:
    """Print :func:`adapter_summary` as a table (per layer, then totals)."""
    print(adapter_summary(model).table())


def _count(parameters) -> int:
    seen: dict[int, int] = {}
    for parameter in parameters:
        seen.setdefault(id(parameter), parameter.numel())
    return sum(seen.values())
