"""Evaluation library: the metrics every trainer and loop steers by.

Implemented here so far:
- ``completion_perplexity``: token-weighted perplexity of the assistant turn given the prompt
  (types 1/2; the guide's target is < 3.0). Prompt tokens and padding never count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from script import formats


def tokenize_for_completion(tokenizer, messages: Sequence[dict], max_length: int) -> tuple[list[int], int]:
    """Token ids of the whole conversation and the index where the assistant turn starts.

    The prompt is rendered with the generation prompt, exactly as at inference; it is a prefix
    of the rendered conversation with Gemma's template, which is checked.
    """
    prompt = formats.render_prompt(tokenizer, messages[:-1])
    full = formats.render_conversation(tokenizer, messages)
    if not full.startswith(prompt):
        raise ValueError("chat template renders the prompt differently inside the conversation")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    start = len(prompt_ids)
    if full_ids[:start] != prompt_ids:  # a token merged across the boundary: find where they diverge
        start = next(i for i, (a, b) in enumerate(zip(prompt_ids, full_ids)) if a != b)
    return full_ids[:max_length], min(start, max_length)


def completion_perplexity(model, tokenizer, records: Sequence[dict], batch_size: int = 8,
                          max_length: int = 512) -> dict:
    """exp(total NLL of completion tokens / number of completion tokens) over ``records``.

    Token-weighted over the whole set (not a mean of per-record perplexities), so long answers
    count by their length. Records whose completion is cut away by ``max_length`` are counted in
    ``truncated`` and contribute the tokens that remain.
    """
    import torch

    device = next(model.parameters()).device
    encoded = [tokenize_for_completion(tokenizer, r["messages"], max_length) for r in records]
    total_nll, total_tokens, truncated = 0.0, 0, 0
    was_training = model.training
    model.eval()
    try:
        for begin in range(0, len(encoded), batch_size):
            batch = encoded[begin : begin + batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, (ids, start) in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention[row, : len(ids)] = 1
                labels[row, start : len(ids)] = torch.tensor(ids[start:])
                truncated += start >= len(ids)
            with torch.no_grad():
                logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
            shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1).to(device)
            nll = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
            total_nll += float(nll)
            total_tokens += int((shift_labels != -100).sum())
    finally:
        model.train(was_training)
    mean_nll = total_nll / total_tokens if total_tokens else float("nan")
    return {
        "perplexity": math.exp(mean_nll) if total_tokens else float("nan"),
        "mean_nll": mean_nll,
        "completion_tokens": total_tokens,
        "records": len(records),
        "truncated": truncated,
    }
