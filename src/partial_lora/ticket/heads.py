"""Scoring heads: what turns the model's computation on a batch into logits to score.

* ``own``: the model's own output (``.logits``); right when the task head is trained (or
  for a causal LM, its language-model head).
* ``probe``: linear probes fitted on the inputs of the model's head module (recorded with a
  hook), for a new, untrained head (the seed's "separate training phase"). Scores are
  cross-fitted: the few-shot set is split per class into two halves, a probe fitted on each
  half scores the other, so every example is scored by a probe that did not see it. For
  heads applied per token and pooled after (``LlamaForSequenceClassification``) the pooled
  position is found by matching the head's output to the model's logits. SNIP, which needs
  gradients, uses one probe fitted on every example, standing in for the head's output.
* ``zero-shot``: for CLIP-like models (``get_text_features`` and ``get_image_features``):
  class prompts -> normalised text embeddings; logits = ``logit_scale * image @ text.T``.

A head is **new** when ``head_is_new=True`` is passed or its module is listed in the
model's ``partial_lora_new_modules`` attribute (names or name suffixes). ``head="auto"``
picks zero-shot for CLIP-like models, the probe for a new head, otherwise the own head.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..naming import HEAD_NAMES, inside, is_head_name
from .few_shot import CLASSIFICATION, model_inputs
from .probe import fit_linear_probe

HEADS = ("auto", "own", "probe", "zero-shot")
NEW_MODULES_ATTRIBUTE = "partial_lora_new_modules"


def extract_logits(output: Any) -> torch.Tensor:
    """The logits in a model's output: a tensor, ``.logits``, ``["logits"]`` or the first item."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ValueError(f"cannot find logits in the model's output ({type(output).__name__}); the model must return "
                     "a tensor, an object with .logits, or a tuple whose first item is the logits")


def find_head(model: nn.Module, head_module: str | None = None) -> tuple[str, nn.Linear]:
    """The model's output head: ``head_module`` if given, else the last ``nn.Linear`` whose
    name has a part in :data:`partial_lora.naming.HEAD_NAMES`."""
    modules = dict(model.named_modules())
    if head_module is not None:
        if head_module not in modules:
            matches = [n for n in modules if n.endswith("." + head_module)]
            if len(matches) != 1:
                raise ValueError(f"head_module={head_module!r} names no single module of {type(model).__name__}; "
                                 f"give its full name (candidates: {matches[:4] or 'none'})")
            head_module = matches[0]
        module = modules[head_module]
        if not isinstance(module, nn.Linear):
            raise ValueError(f"head_module={head_module!r} is a {type(module).__name__}; the probe replaces an "
                             "nn.Linear head (name the final linear layer, e.g. 'classifier.out_proj')")
        return head_module, module
    candidates = [n for n, m in modules.items() if isinstance(m, nn.Linear) and is_head_name(n)]
    if not candidates:
        raise ValueError(f"cannot tell which module of {type(model).__name__} is its head (no nn.Linear named "
                         f"{', '.join(HEAD_NAMES)}); pass head_module='<full name of the final nn.Linear>'")
    return candidates[-1], modules[candidates[-1]]


def head_is_flagged_new(model: nn.Module, head_name: str) -> bool:
    """Whether ``head_name`` (or a module containing it) is listed in ``partial_lora_new_modules``."""
    flagged = getattr(model, NEW_MODULES_ATTRIBUTE, None) or ()
    if isinstance(flagged, str):
        flagged = [flagged]
    return inside(head_name, flagged)


def is_clip_like(model: nn.Module) -> bool:
    return callable(getattr(model, "get_text_features", None)) and callable(getattr(model, "get_image_features", None))


class OwnHead:
    """The model's own output logits."""

    name = "own"

    def logits(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        return extract_logits(model(**model_inputs(batch)))


class ProbeHead:
    """A linear probe on the inputs of the head module ``module_name``."""

    name = "probe"

    def __init__(self, model: nn.Module, module_name: str, module: nn.Linear) -> None:
        self.module_name, self.module = module_name, module
        self.classes = module.out_features
        self.probe: nn.Linear | None = None
        self.folds: list[tuple[torch.Tensor, nn.Linear]] = []

    def features(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features [B, H], model logits)``: the head's input at the position the model pools."""
        captured = {}

        def hook(module, args, output):
            captured["input"], captured["output"] = args[0], output

        handle = self.module.register_forward_hook(hook)
        try:
            logits = extract_logits(model(**model_inputs(batch)))
        finally:
            handle.remove()
        if "input" not in captured:
            raise ValueError(f"the head module {self.module_name!r} did not run in the model's forward; "
                             "pass head_module='<full name of the final nn.Linear>'")
        x, out = captured["input"], captured["output"]
        if x.dim() == 2:
            return x, logits
        if x.dim() != 3 or logits.dim() != 2:
            raise ValueError(f"the probe needs head inputs [B, H] or [B, T, H] pooled to logits [B, C]; head "
                             f"{self.module_name!r} got {tuple(x.shape)} -> logits {tuple(logits.shape)}")
        # The model pools one position per example after its head: find which one.
        gap = (out - logits[:, None, :]).abs().amax(dim=-1)  # [B, T]
        position = gap.argmin(dim=1)
        rows = torch.arange(x.shape[0], device=x.device)
        scale = 1e-4 * (1.0 + logits.abs().amax())
        if (gap[rows, position] > scale).any():
            raise ValueError(f"the model does not select one position of head {self.module_name!r}'s output per "
                             "example, so the probe cannot stand in for it; use head='own' after training the head")
        return x[rows, position], logits

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Fit one probe on ``features [N, H]`` and ``labels [N]`` (used by :meth:`logits`)."""
        self.probe = self._fitted(features, labels)

    def fit_folds(self, features: torch.Tensor, labels: torch.Tensor,
                  folds: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Cross-fitting: for each ``(fit_index, score_index)`` a probe fitted on the first
        examples scores the second (used by :meth:`held_out_logits`)."""
        self.folds = [(score, self._fitted(features[fit], labels[fit])) for fit, score in folds]

    def held_out_logits(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, C]`` float64 logits, each example scored by the probe that did not see it."""
        logits = torch.empty(features.shape[0], self.classes, dtype=torch.float64)
        with torch.no_grad():
            for score, probe in self.folds:
                logits[score] = probe(features[score.to(features.device)]).to("cpu", torch.float64)
        return logits

    def logits(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        """The model's logits with the single probe standing in for the head (differentiable)."""
        if self.probe is None:
            raise RuntimeError("the probe is not fitted yet")
        handle = self.module.register_forward_hook(lambda module, args, output: self.probe(args[0]))
        try:
            return extract_logits(model(**model_inputs(batch)))
        finally:
            handle.remove()

    def _fitted(self, features: torch.Tensor, labels: torch.Tensor) -> nn.Linear:
        weight, bias = fit_linear_probe(features, labels, self.classes)
        probe = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            probe.weight.copy_(weight)
            probe.bias.copy_(bias)
        return probe.to(self.module.weight.device, self.module.weight.dtype).requires_grad_(False)


class ZeroShotHead:
    """CLIP-style zero-shot classification from class prompts."""

    name = "zero-shot"

    def __init__(self, model: nn.Module, class_prompts: Sequence[str] | Mapping[str, torch.Tensor],
                 tokenizer: Any = None) -> None:
        if isinstance(class_prompts, Mapping):
            text = dict(class_prompts)
        elif isinstance(class_prompts, Sequence) and class_prompts and all(isinstance(p, str) for p in class_prompts):
            if tokenizer is None:
                raise ValueError("class_prompts are strings, so the zero-shot head needs tokenizer=... "
                                 "(or pass the tokenized prompts: {'input_ids': ..., 'attention_mask': ...})")
            text = dict(tokenizer(list(class_prompts), padding=True, return_tensors="pt"))
        else:
            raise ValueError("head='zero-shot' needs class_prompts: one text per class in label order "
                             "(e.g. ['a photo of a cat', ...]) or their tokenized form")
        if not isinstance(text.get("input_ids"), torch.Tensor):
            raise ValueError("tokenized class_prompts need an 'input_ids' tensor [C, L]")
        device = next(model.parameters()).device
        self.text = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in text.items()}
        self.classes = int(self.text["input_ids"].shape[0])

    def logits(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        inputs = model_inputs(batch)
        if "pixel_values" not in inputs:
            raise ValueError(f"the zero-shot head needs 'pixel_values' in each batch; got {sorted(inputs)}")
        text = _embedding(model.get_text_features(**self.text))
        image = _embedding(model.get_image_features(pixel_values=inputs["pixel_values"]))
        text = text / text.norm(dim=-1, keepdim=True)
        image = image / image.norm(dim=-1, keepdim=True)
        scale = model.logit_scale.exp() if isinstance(getattr(model, "logit_scale", None), torch.Tensor) else 100.0
        return scale * image @ text.T


def _embedding(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    for key in ("pooler_output", "text_embeds", "image_embeds"):
        value = getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
    raise ValueError(f"cannot read embeddings from {type(output).__name__}")


def build_head(model: nn.Module, kind: str, head: str = "auto", *, head_module: str | None = None,
               head_is_new: bool | None = None, class_prompts: Any = None, tokenizer: Any = None):
    """The scoring head for ``model`` on ``kind`` data (see the module docstring)."""
    if head not in HEADS:
        raise ValueError(f"head={head!r} is unknown; choose one of {', '.join(HEADS)}")
    if head == "zero-shot" or (head == "auto" and is_clip_like(model) and head_is_new is None):
        if not is_clip_like(model):
            raise ValueError(f"head='zero-shot' needs a CLIP-like model (get_text_features and get_image_features); "
                             f"{type(model).__name__} is not one. Use head='own' or 'probe'.")
        if kind != CLASSIFICATION:
            raise ValueError("the zero-shot head scores classification batches (labels [B])")
        return ZeroShotHead(model, class_prompts, tokenizer)
    if head in ("own", "auto") and (head_is_new is False or (
            head_is_new is None and not getattr(model, NEW_MODULES_ATTRIBUTE, None))):
        return OwnHead()  # the head is trained (or nothing says it is new): no need to find it
    name, module = find_head(model, head_module)
    new = head_is_new if head_is_new is not None else head_is_flagged_new(model, name)
    if head == "own" and new:
        why = "head_is_new=True" if head_is_new else f"it is listed in model.{NEW_MODULES_ATTRIBUTE}"
        raise ValueError(
            f"the model's head {name!r} is new ({why}): untrained, it predicts at chance, so a ticket scored with it "
            "means nothing. Use head='probe' (a linear probe on frozen features, what head='auto' does) or train "
            "the head first."
        )
    if head == "own" or (head == "auto" and not new):
        return OwnHead()
    if kind != CLASSIFICATION:
        raise ValueError(f"a linear probe scores classification batches (labels [B]); these are {kind}. "
                         "Use head='own' with the model's trained language-model head")
    return ProbeHead(model, name, module)
