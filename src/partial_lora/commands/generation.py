"""Exact-match evaluation of a causal LM that answers a prompt with a short label word."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .. import metrics


@torch.no_grad()
def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    batch_size: int = 8,
    max_length: int = 256,
    max_new_tokens: int | None = None,
) -> list[str]:
    """Greedy-decode each prompt (as many new tokens as the longest answer has, plus one).

    Prompts are left-padded and truncated from the left (the end of the prompt, where the
    question is, is kept). Returns the generated texts, one per prompt.
    """
    if len(prompts) != len(answers) or not prompts:
        raise ValueError("exact_match needs as many answers as prompts, and at least one")
    if max_new_tokens is None:
        max_new_tokens = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers) + 1
    was_training = model.training
    model.eval()
    padding_side, truncation_side = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    generated: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            encoded = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
            output = model.generate(
                **encoded, max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            generated += tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = padding_side, truncation_side
        model.train(was_training)
    return generated


def exact_match(model: Any, tokenizer: Any, prompts: Sequence[str], answers: Sequence[str],
                **options: Any) -> dict[str, float]:
    """``{"exact_match": fraction}`` of :func:`generate_answers` scored by
    :func:`partial_lora.metrics.exact_match` (the first word, normalised, must match)."""
    return {"exact_match": metrics.exact_match(generate_answers(model, tokenizer, prompts, answers, **options),
                                               answers)}
