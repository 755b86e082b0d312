"""Model-ready :class:`~partial_lora.training.TensorBatches` from a dataset: tokenized texts,
EfficientNet pixels, prompt + answer sequences for a causal LM."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..training.batches import TensorBatches
from .examples import LabelledData

IMAGE_SIZE = 64  # EfficientNet-Lite0's input here: pixels per side

def _check_length(tokenizer: Any, max_length: int | None) -> int:
    limit = getattr(tokenizer, "model_max_length", None)
    if max_length is None:
        if not limit or limit > 100_000:
            raise ValueError("give --max-length: the tokenizer does not say how many tokens the model takes")
        return int(limit)
    if limit and limit < 100_000 and max_length > limit:
        raise ValueError(f"--max-length {max_length} exceeds the model's maximum of {limit} tokens; "
                         f"use at most {limit} (longer texts are truncated)")
    return max_length


def text_batches(data: LabelledData, tokenizer: Any, batch_size: int, *, max_length: int | None,
                 shuffle: bool, seed: int) -> TensorBatches:
    """Tokenized texts (truncated to ``max_length``) with class labels."""
    length = _check_length(tokenizer, max_length)
    encoded = tokenizer(list(data.examples), truncation=True, max_length=length, padding="longest",
                        return_tensors="pt")
    tensors = {key: encoded[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded}
    tensors["labels"] = torch.tensor(data.labels, dtype=torch.long)
    return TensorBatches(tensors, batch_size, shuffle=shuffle, seed=seed)


def image_pixels(images: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """``uint8 [N, C, H, W]`` -> float ``[N, 3, size, size]`` scaled as ``(x - 127) / 128``."""
    pixels = images.float()
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    if pixels.shape[-1] != size or pixels.shape[-2] != size:
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
    return (pixels - 127.0) / 128.0


def image_batches(data: LabelledData, batch_size: int, *, shuffle: bool, seed: int) -> TensorBatches:
    """Images as EfficientNet pixels with class labels."""
    if data.kind != "image":
        raise ValueError(f"{data.source} holds {data.kind} examples, not images")
    tensors = {"pixel_values": image_pixels(data.examples), "labels": torch.tensor(data.labels, dtype=torch.long)}
    return TensorBatches(tensors, batch_size, shuffle=shuffle, seed=seed)


def generation_batches(data: LabelledData, tokenizer: Any, batch_size: int, *, max_length: int | None,
                       shuffle: bool, seed: int) -> TensorBatches:
    """Prompt + answer + end-of-sequence, right-padded; labels ``-100`` except on the answer.

    Where a prompt is too long, its beginning is cut so the answer always fits.
    """
    length = _check_length(tokenizer, max_length)
    end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    sequences, targets = [], []
    for prompt, answer in zip(data.prompts, data.answers):
        prompt_ids = tokenizer(prompt)["input_ids"]
        answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + end
        prompt_ids = prompt_ids[max(0, len(prompt_ids) + len(answer_ids) - length):]
        sequences.append(prompt_ids + answer_ids)
        targets.append([-100] * len(prompt_ids) + answer_ids)
    width = max(len(s) for s in sequences)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    labels = torch.full((len(sequences), width), -100, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (sequence, target) in enumerate(zip(sequences, targets)):
        input_ids[row, :len(sequence)] = torch.tensor(sequence)
        labels[row, :len(target)] = torch.tensor(target)
        mask[row, :len(sequence)] = 1
    return TensorBatches({"input_ids": input_ids, "attention_mask": mask, "labels": labels}, batch_size,
                         shuffle=shuffle, seed=seed)
