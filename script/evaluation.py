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


# ---------------------------------------------------------------------------
# Multiple-choice scoring, letter mode: one forward pass per batch, no generation.
# ---------------------------------------------------------------------------
def mcq_messages(item: dict) -> list[dict]:
    """The Type-3 prompt of an MCQ item: the same format the type-3 trainer uses."""
    return formats.type_messages(formats.TYPE3_WORD, formats.format_mcq(item["question"], item["options"]))


def letter_token_ids(tokenizer, prompt: str, letters: Sequence[str] = formats.OPTION_LETTERS) -> dict[str, int]:
    """Id of the first token each answer letter gets right after the prompt, as in training."""
    base = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = {}
    for letter in letters:
        full = tokenizer(prompt + letter, add_special_tokens=False)["input_ids"]
        if full[: len(base)] != base or len(full) == len(base):
            raise ValueError(f"answer letter {letter!r} does not start a new token after the prompt")
        ids[letter] = full[len(base)]
    if len(set(ids.values())) != len(ids):
        raise ValueError(f"answer letters share tokens: {ids}")
    return ids


def left_padded_batch(sequences: Sequence[Sequence[int]], pad_id: int):
    """input_ids, attention_mask and position_ids for a left-padded batch.

    Position ids count real tokens only, so a padded row sees the same positions as it would
    alone (batch results equal one-by-one results).
    """
    import torch

    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        attention[row, width - len(seq):] = 1
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    return input_ids, attention, positions


def score_mcq_letter_mode(model, tokenizer, items: Sequence[dict], batch_size: int = 16,
                          progress: bool = False) -> list[dict]:
    """Predict each item's answer by the logits of its option letters at the answer position.

    Returns one prediction per item: ``{"id", "prediction", "gold", "correct", "letter_logprobs"}``
    where the log-probabilities are normalised over the item's own options (4 for KMMLU, 5 for
    KorMedMCQA), so a model can never answer a letter the item does not have.
    """
    import torch

    device = next(model.parameters()).device
    prompts = [formats.render_prompt(tokenizer, mcq_messages(item)) for item in items]
    if not prompts:
        return []
    letter_ids = letter_token_ids(tokenizer, prompts[0])
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(items)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
    results: list[dict | None] = [None] * len(items)
    batches = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="scoring", unit="batch")
    was_training = model.training
    model.eval()
    try:
        for begin in batches:
            idx = order[begin: begin + batch_size]
            input_ids, attention, positions = left_padded_batch([encoded[i] for i in idx], tokenizer.pad_token_id)
            with torch.no_grad():
                logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                               position_ids=positions.to(device)).logits[:, -1, :].float()
            for row, i in enumerate(idx):
                letters = [letter for letter in formats.OPTION_LETTERS if letter in items[i]["options"]]
                option_logits = logits[row, [letter_ids[letter] for letter in letters]]
                logprobs = torch.log_softmax(option_logits, dim=-1).tolist()
                prediction = letters[max(range(len(letters)), key=lambda k: logprobs[k])]
                gold = items[i]["answer"]
                results[i] = {"id": items[i].get("id"), "prediction": prediction, "gold": gold,
                              "correct": prediction == gold,
                              "letter_logprobs": dict(zip(letters, (round(x, 5) for x in logprobs)))}
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def mcq_accuracy(items: Sequence[dict], predictions: Sequence[dict]) -> dict:
    """Accuracy with its chance baseline, overall and per subject (KorMedMCQA config)."""
    total = len(predictions)
    correct = sum(p["correct"] for p in predictions)
    chance = sum(1 / len(item["options"]) for item in items) / total if total else float("nan")
    per_subject: dict[str, list[int]] = {}
    for item, pred in zip(items, predictions):
        subject = item.get("config") or item.get("meta", {}).get("subject") or "all"
        tally = per_subject.setdefault(subject, [0, 0])
        tally[0] += pred["correct"]
        tally[1] += 1
    return {
        "accuracy": correct / total if total else float("nan"),
        "correct": correct,
        "total": total,
        "chance": chance,
        "per_subject": {s: {"accuracy": c / n, "correct": c, "total": n} for s, (c, n) in sorted(per_subject.items())},
    }
