"""Evaluation library: the metrics every trainer, loop and report steers by.

What lives here (each a tested function; the command lines are thin wrappers around them):

* ``completion_perplexity``  token-weighted perplexity of the assistant turn (types 1/2, target < 3.0);
* ``score_mcq_cloze_mode``   MCQ answers as the most likely option text after the question alone (cloze);
* ``score_mcq_letter_mode``  MCQ answers from the option-letter logits at the answer position: one
  forward pass per left-padded batch, no generation, argmax over the item's own options;
* ``generate_mcq_answers``   batched greedy generation in one of the prompt styles (``PROMPT_STYLES``)
  followed by ``extract_answer``, the ONE answer-extraction function of the project;
* ``mcq_accuracy``           accuracy beside its chance baseline, per subject and per division;
* ``type3_accuracy``         the guide's type-3 metric (letter accuracy on refined type-3 records);
* ``type4_score``            the guide's type-4 score (answer 1.0 + reasoning 0.1 + key terms 0.05 each,
  at most 1.4) with ``load_medical_lexicon`` for the key terms;
* ``train02_score``          the train_02 score (answer 2/3 + reasoning format 1/3; 1/4 for a wrong
  answer with a well-formed reasoning) with its format checks;
* ``make_mcq_eval_fn``       the periodic evaluation hook for ``training_utils.make_periodic_eval_callback``;
* ``train02_eval_fn``        train_02's periodic evaluation (greedy train02 generations: accuracy + score);
* ``plain_text_perplexity``  perplexity of plain texts (train_00's validation, the forgetting monitor);

The floors below: the items come from ``script/eval_items.py`` (KorMedMCQA sets and splits, KMMLU,
any JSONL of items), the prompt each style shows from ``script/mcq_prompts.py`` (built on
formats.py), and the model and tokenizer from ``script/model_loading.py``.

The reports, tables and charts are built by ``script/validation_kor_med_test.py``:

    python -m script.validation_kor_med_test --model tiny --eval-samples 20
    python -m script.bench.bench_eval --model tiny --n 604
"""

from __future__ import annotations

import functools
import logging
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from script import formats
from script.data_io import DataError, iter_jsonl, read_json
from script.eval_items import item_letters
from script.mcq_prompts import (
    DEFAULT_MAX_NEW_TOKENS,
    LM_EVAL_STOP_STRINGS,
    PROMPT_LM_EVAL,
    PROMPT_TRAIN02,
    PROMPT_TYPE3,
    PROMPT_TYPE4,
    check_prompt_style,
    encode_prompt,
    render_mcq_prompt,
)
from script.sources import raw_path
from script.training_config import RAW_DIR, REFINED_DIR, SAMPLE_DATA_DIR

logger = logging.getLogger(__name__)


# ===========================================================================
# Perplexity (types 1/2)
# ===========================================================================
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
        start = next((i for i, (a, b) in enumerate(zip(prompt_ids, full_ids)) if a != b), len(full_ids))
    return full_ids[:max_length], min(start, max_length)


def completion_perplexity(model, tokenizer, records: Sequence[dict], batch_size: int = 8,
                          max_length: int = 512, progress: bool = False) -> dict:
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
        for begin in batch_starts(encoded, batch_size, progress, "completion perplexity"):
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
                logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                               use_cache=False).logits.float()
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


# ===========================================================================
# Multiple-choice scoring, letter mode: one forward pass per batch, no generation.
# ===========================================================================
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


# Letter-mode prompts of one style open with the same tokens (chat template + system prompt: 27 of
# the ~82 tokens of a type-3 prompt with the tiny tokenizer). Their keys/values are computed once and
# every batch starts from a copy, so the model only runs over each item's own tokens. A shorter
# common opening (the lm_eval prompt shares only <bos>) is not worth the cache copies.
MIN_SHARED_PREFIX = 8


def _shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all sequences share, leaving each at least one token of its own."""
    import os.path

    common = len(os.path.commonprefix([list(s) for s in sequences]))  # works on any sequences
    return min(common, min(len(s) for s in sequences) - 1)


def _prefix_cache(model, prefix: Sequence[int], device):
    """The model's key/value cache after ``prefix`` (batch of one), or None for a short prefix."""
    import torch

    if len(prefix) < MIN_SHARED_PREFIX:
        return None
    with torch.no_grad():
        output = model(input_ids=torch.tensor([list(prefix)], dtype=torch.long, device=device), use_cache=True)
    return output.cache


def _last_position_logits(model, input_ids, attention, positions, prefix_cache=None, prefix_length: int = 0):
    """Float logits at the last position of a left-padded batch, which may continue ``prefix_cache``.

    After a prefix the batch rows read ``prefix + padding + own tokens``: the mask hides the padding
    and the positions continue from the prefix, so each row sees exactly its unpadded prompt.
    """
    import copy

    import torch

    kwargs = {"use_cache": False}
    if prefix_cache is not None:
        cache = copy.deepcopy(prefix_cache)  # each forward appends to the cache it is given
        cache.batch_repeat_interleave(input_ids.shape[0])
        attention = torch.cat([attention.new_ones((attention.shape[0], prefix_length)), attention], dim=1)
        positions = positions + prefix_length
        kwargs = {"cache": cache, "use_cache": True}
    with torch.no_grad():
        output = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, logits_to_keep=1,
                       **kwargs)
    return output.logits[:, -1, :].float()


def batch_starts(order: Sequence, batch_size: int, progress: bool, desc: str):
    """Start offsets of the batches over ``order``, behind a progress bar when ``progress``."""
    batches = range(0, len(order), max(1, batch_size))
    if progress:
        from tqdm.auto import tqdm

        return tqdm(batches, desc=desc, unit="batch")
    return batches


def score_mcq_letter_mode(model, tokenizer, items: Sequence[dict], batch_size: int = 16,
                          progress: bool = False, style: str = "type3",
                          max_new_tokens: int | None = None) -> list[dict]:
    """Predict each item's answer by the logits of its option letters at the answer position.

    Returns one prediction per item: ``{"id", "prediction", "gold", "correct", "letter_logprobs"}``
    where the log-probabilities are normalised over the item's own options (4 for KMMLU, 5 for
    KorMedMCQA), so a model can never answer a letter the item does not have.

    ``style`` is the prompt the letter follows: ``type3`` (the letter right after the prompt, the
    default), ``lm_eval`` (after the harness's "정답：" cue) or ``train02``: the model first writes
    its ``<reasoning>…</reasoning>`` greedily, as it was trained to, and the letter is read right
    after the closing tag (see ``reasoning_prefixes``). That keeps a reasoning model in its own
    format and still never lets an unparseable answer happen.

    Only the last position's logits are computed (``logits_to_keep=1``): with MedGemma's 262k
    vocabulary the full logits of a batch would take gigabytes for nothing.
    """
    import torch

    device = next(model.parameters()).device
    if check_prompt_style(style) == PROMPT_TYPE4:
        raise ValueError("the type4 prompt answers with a word, not a letter: score it with generate mode")
    prompts = [render_mcq_prompt(tokenizer, item, style) for item in items]
    if not prompts:
        return []
    reasoning: list[dict] | None = None
    if style == PROMPT_TRAIN02:
        reasoning = reasoning_prefixes(model, tokenizer, prompts, batch_size, max_new_tokens, progress)
        prompts = [prompt + r["text"] for prompt, r in zip(prompts, reasoning)]
    letter_ids = letter_token_ids(tokenizer, prompts[0])
    encoded = [encode_prompt(tokenizer, p, style) for p in prompts]
    shared = _shared_prefix_length(encoded)
    order = sorted(range(len(items)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
    # Only the option letters' logits are used: gather them once per batch (one device sync, not one per item).
    letter_order = list(letter_ids)
    letter_columns = torch.tensor([letter_ids[letter] for letter in letter_order])
    results: list[dict | None] = [None] * len(items)
    was_training = model.training
    model.eval()
    try:
        prefix_cache = _prefix_cache(model, encoded[0][:shared], device)
        skip = shared if prefix_cache is not None else 0
        for begin in batch_starts(order, batch_size, progress, "letter mode"):
            idx = order[begin: begin + batch_size]
            input_ids, attention, positions = left_padded_batch([encoded[i][skip:] for i in idx],
                                                                tokenizer.pad_token_id)
            logits = _last_position_logits(model, input_ids.to(device), attention.to(device), positions.to(device),
                                           prefix_cache, skip)
            letter_logits = logits[:, letter_columns.to(logits.device)].cpu()
            for row, i in enumerate(idx):
                letters = item_letters(items[i])
                option_logits = letter_logits[row, [letter_order.index(letter) for letter in letters]]
                logprobs = torch.log_softmax(option_logits, dim=-1).tolist()
                prediction = letters[max(range(len(letters)), key=lambda k: logprobs[k])]
                gold = items[i]["answer"]
                results[i] = {"id": items[i].get("id"), "prediction": prediction, "gold": gold,
                              "correct": prediction == gold,
                              "letter_logprobs": dict(zip(letters, (round(x, 5) for x in logprobs)))}
                if reasoning is not None:
                    results[i]["raw_output"] = reasoning[i]["text"]
                    results[i]["reasoning_closed"] = reasoning[i]["closed"]
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def score_mcq_cloze_mode(model, tokenizer, items: Sequence[dict], batch_size: int = 16,
                         progress: bool = False) -> list[dict]:
    """Predict each item's answer as the option text the model finds most likely (cloze form).

    The question alone is the user turn (formats.answer_text_messages, options not shown) and each
    option's text is scored as the model's answer: the summed log-probability of the completion
    tokens, the same positions a training loss covers. This is the "cloze" formulation
    lm-evaluation-harness uses for ``multiple_choice`` tasks (its ``acc``). Models of a few
    billion parameters and below score near chance when they must answer with an option letter
    (binding a letter to its option is a skill that appears with scale), yet show their knowledge
    in this form; so it is the measure for the embedded tiny model, reported beside letter mode.
    ``letter_logprobs`` are the option scores normalised over the item's options.

    Long options collect more negative log-probability, so the harness also reports ``acc_norm``:
    each option's log-probability divided by its length in characters. Both come back per item:
    ``prediction``/``correct`` (``acc``) and ``prediction_norm``/``correct_norm`` (``acc_norm``).
    """
    import torch

    if not items:
        return []
    device = next(model.parameters()).device
    sequences: list[tuple[int, str, list[int], int]] = []  # (item index, letter, ids, completion start)
    for i, item in enumerate(items):
        for letter in item_letters(item):
            messages = formats.answer_text_messages(item["question"], item["options"][letter])
            ids, start = tokenize_for_completion(tokenizer, messages, max_length=10**9)
            sequences.append((i, letter, ids, start))
    order = sorted(range(len(sequences)), key=lambda k: len(sequences[k][2]))
    scores: list[dict[str, float]] = [{} for _ in items]
    pad = tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    try:
        for begin in batch_starts(order, batch_size, progress, "cloze"):
            batch = [sequences[k] for k in order[begin: begin + batch_size]]
            width = max(len(ids) for _, _, ids, _ in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (_, _, ids, _) in enumerate(batch):  # right padding: real tokens keep positions 0..n-1
                input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                attention[row, : len(ids)] = 1
            with torch.no_grad():
                logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                               use_cache=False).logits
            for row, (i, letter, ids, start) in enumerate(batch):
                # Only the answer positions, row by row: fp32 log-probs of a whole batch over a
                # 262k vocabulary would take gigabytes.
                answer_logprobs = torch.log_softmax(logits[row, start - 1: len(ids) - 1].float(), dim=-1)
                targets = input_ids[row, start: len(ids)].to(device)
                scores[i][letter] = float(answer_logprobs.gather(-1, targets.unsqueeze(-1)).sum())
    finally:
        model.train(was_training)
    results = []
    for item, option_scores in zip(items, scores):
        letters = list(option_scores)
        normalised = torch.log_softmax(torch.tensor([option_scores[x] for x in letters]), dim=-1).tolist()
        prediction = max(letters, key=lambda x: option_scores[x])
        prediction_norm = max(letters, key=lambda x: option_scores[x] / max(1, len(str(item["options"][x]))))
        results.append({"id": item.get("id"), "prediction": prediction, "gold": item["answer"],
                        "correct": prediction == item["answer"],
                        "prediction_norm": prediction_norm, "correct_norm": prediction_norm == item["answer"],
                        "letter_logprobs": dict(zip(letters, (round(x, 5) for x in normalised))),
                        "option_logprobs": {x: round(option_scores[x], 4) for x in letters}})
    return results


def verdict_token_ids(tokenizer, head: str) -> tuple[int, int]:
    """First token of " 정답" and of " 오답" right after a verdict head (``A) …:``), as in training."""
    base = tokenizer(head, add_special_tokens=False)["input_ids"]
    ids = []
    for verdict in (formats.MCQ_VERDICT_ANSWER, formats.MCQ_VERDICT_OTHER):
        full = tokenizer(f"{head} {verdict}", add_special_tokens=False)["input_ids"]
        if full[: len(base)] != base or len(full) == len(base):
            raise ValueError(f"verdict {verdict!r} does not start a new token after {head!r}")
        ids.append(full[len(base)])
    if ids[0] == ids[1]:
        raise ValueError(f"the verdicts share their first token ({ids[0]}); cannot tell them apart in one pass")
    return ids[0], ids[1]


def score_mcq_verdicts(model, tokenizer, items: Sequence[dict], batch_size: int = 16,
                       progress: bool = False) -> list[dict]:
    """train_02's per-choice judgement, read without generation: one forward pass per item.

    The item is rendered in the train02 format with the simple reasoning train_02 teaches, one
    line per option (``A) <option>: 정답|오답``, formats.mcq_verdict_line), every verdict written
    "오답". At the position of each option's verdict the model's log-odds of "정답" over "오답"
    is read; the option with the highest log-odds is the answer. Those verdict tokens are the
    only places where that format carries a decision: the rest of the lines restate the options.
    Reading them teacher-forced means the score does not depend on the model copying the option
    texts correctly (a small model's weak point), and an answer is never unparseable.
    ``letter_logprobs`` are the log-odds normalised over the options.
    """
    import torch

    if not items:
        return []
    device = next(model.parameters()).device
    rows = []
    for item in items:
        letters = item_letters(item)
        prompt = render_mcq_prompt(tokenizer, item, PROMPT_TRAIN02) + formats.MCQ_REASONING_START + "\n"
        heads = [formats.mcq_verdict_head(letter, item["options"][letter]) for letter in letters]
        lines = [formats.mcq_verdict_line(letter, item["options"][letter], False) for letter in letters]
        positions, text = [], prompt
        for k, head in enumerate(heads):
            prefix = text + head
            positions.append(len(tokenizer(prefix, add_special_tokens=False)["input_ids"]) - 1)
            text = text + lines[k] + "\n"
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for k, head in enumerate(heads):  # the full text must tokenize as its prefixes did
            prefix_ids = tokenizer(prompt + "".join(line + "\n" for line in lines[:k]) + head,
                                   add_special_tokens=False)["input_ids"]
            if ids[: len(prefix_ids)] != prefix_ids:
                raise ValueError(f"{item.get('id')}: the verdict line of option {letters[k]} does not tokenize "
                                 "on its own boundary; verdict scoring needs prefix-stable tokenization")
        rows.append((letters, positions, ids, verdict_token_ids(tokenizer, heads[0])))
    order = sorted(range(len(items)), key=lambda i: len(rows[i][2]))
    results: list[dict | None] = [None] * len(items)
    was_training = model.training
    model.eval()
    try:
        for begin in batch_starts(order, batch_size, progress, "verdicts"):
            idx = order[begin: begin + batch_size]
            input_ids, attention, positions = left_padded_batch([rows[i][2] for i in idx], tokenizer.pad_token_id)
            with torch.no_grad():
                logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                               position_ids=positions.to(device), use_cache=False).logits.float()
            width = input_ids.shape[1]
            for row, i in enumerate(idx):
                letters, verdict_positions, ids, (yes, no) = rows[i]
                shift = width - len(ids)  # left padding
                scores = [float(logits[row, shift + pos, yes] - logits[row, shift + pos, no])
                          for pos in verdict_positions]
                logprobs = torch.log_softmax(torch.tensor(scores), dim=-1).tolist()
                prediction = letters[max(range(len(letters)), key=lambda k: scores[k])]
                gold = items[i]["answer"]
                results[i] = {"id": items[i].get("id"), "prediction": prediction, "gold": gold,
                              "correct": prediction == gold,
                              "letter_logprobs": dict(zip(letters, (round(x, 5) for x in logprobs))),
                              "verdict_log_odds": dict(zip(letters, (round(x, 4) for x in scores)))}
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def reasoning_prefixes(model, tokenizer, prompts: Sequence[str], batch_size: int = 8,
                       max_new_tokens: int | None = None, progress: bool = False) -> list[dict]:
    """The model's own ``<reasoning>…</reasoning>`` after each train02 prompt, closed.

    Greedy generation stops at the closing tag (or the end of the turn, or the budget); the text
    is cut right after the tag. A model that never closes its reasoning (an untrained one, or a
    budget too small) gets the tag appended, so the letter is still read at the place the format
    puts it; ``closed`` records which happened. Per prompt: ``{"text", "closed"}``.
    """
    closer = formats.MCQ_REASONING_END
    budget = max_new_tokens or DEFAULT_MAX_NEW_TOKENS[PROMPT_TRAIN02]
    ids = [encode_prompt(tokenizer, p, PROMPT_TRAIN02) for p in prompts]
    outputs = generate_texts(model, tokenizer, ids, budget, batch_size, stop_strings=[closer], progress=progress)
    prefixes = []
    for out in outputs:
        text = out["text"]
        cut = text.find(closer)
        if cut >= 0:
            prefixes.append({"text": text[: cut + len(closer)], "closed": True})
            continue
        text = text.rstrip()
        if formats.MCQ_REASONING_START not in text:
            text = formats.MCQ_REASONING_START + "\n" + text
        prefixes.append({"text": f"{text}\n{closer}", "closed": False})
    return prefixes


def item_subject(item: Mapping[str, Any]) -> str:
    """Per-subject key: KorMedMCQA config (doctor/nurse/pharm/dentist), KMMLU subject, else source."""
    meta = item.get("meta") or {}
    return str(item.get("config") or meta.get("subject") or item.get("source") or "all")


def item_divisions(item: Mapping[str, Any]) -> list[str]:
    """Divisions an item counts under: its ``primary_division`` if it has one, else each of its
    ``divisions`` (top level or in ``meta``); [] when it carries none."""
    meta = item.get("meta") or {}
    primary = item.get("primary_division") or meta.get("primary_division")
    if primary:
        return [str(primary)]
    divisions = item.get("divisions") or meta.get("divisions") or []
    if isinstance(divisions, str):
        divisions = [divisions]
    return [str(d) for d in divisions if d]


def gold_nll(prediction: Mapping[str, Any]) -> float | None:
    """-log p(gold letter), normalised over the item's options (letter mode only; else None)."""
    logprobs = prediction.get("letter_logprobs")
    if not logprobs or prediction.get("gold") not in logprobs:
        return None
    return -float(logprobs[prediction["gold"]])


def _tally(rows: Iterable[tuple[str, Mapping, Mapping]]) -> dict[str, dict]:
    """Per key: accuracy, correct, total, chance, unparseable and (letter mode) avg_loss, the mean
    gold-letter NLL -- the guide's division table has accuracy, count and average loss."""
    table: dict[str, list] = {}
    for key, item, pred in rows:
        entry = table.setdefault(key, [0, 0, 0.0, 0, []])
        entry[0] += bool(pred["correct"])
        entry[1] += 1
        entry[2] += 1 / len(item["options"])
        entry[3] += pred.get("prediction") is None
        loss = gold_nll(pred)
        if loss is not None:
            entry[4].append(loss)
    return {key: {"accuracy": c / n, "correct": int(c), "total": int(n), "chance": ch / n, "unparseable": int(u),
                  "avg_loss": round(sum(losses) / len(losses), 5) if len(losses) == n else None}
            for key, (c, n, ch, u, losses) in sorted(table.items())}


def mcq_accuracy(items: Sequence[dict], predictions: Sequence[dict]) -> dict:
    """Accuracy (a fraction, 0-1) with its chance baseline, overall, per subject and per division.

    Chance is the mean of 1/number-of-options over the items (20 % for KorMedMCQA, 25 % for KMMLU).
    A prediction of None (an unparseable generation) is wrong and stays in the denominator; how
    many there were is ``unparseable``. ``per_division`` is empty unless items carry divisions
    (see ``item_divisions``; an item with several divisions counts under each). ``avg_loss`` is
    the mean -log p(gold letter) over the options, when every prediction has letter logprobs.
    """
    if len(items) != len(predictions):
        raise ValueError(f"{len(items)} items but {len(predictions)} predictions")
    total = len(predictions)
    correct = sum(bool(p["correct"]) for p in predictions)
    chance = sum(1 / len(item["options"]) for item in items) / total if total else float("nan")
    pairs = list(zip(items, predictions))
    losses = [gold_nll(p) for p in predictions]
    return {
        "accuracy": correct / total if total else float("nan"),
        "correct": correct,
        "total": total,
        "chance": chance,
        "unparseable": sum(p.get("prediction") is None for p in predictions),
        "avg_loss": round(sum(losses) / total, 5) if total and None not in losses else None,
        "per_subject": _tally((item_subject(item), item, pred) for item, pred in pairs),
        "per_division": _tally((d, item, pred) for item, pred in pairs for d in item_divisions(item)),
    }


def type3_accuracy(model, tokenizer, records: Sequence[dict], batch_size: int = 16) -> dict:
    """The guide's type-3 metric: letter-mode accuracy over refined type-3 records (target >= 90 %).

    Refined type-3 records carry ``question``, ``options`` and ``answer`` beside their messages;
    they are scored with the same type-3 prompt they were trained with.
    """
    return mcq_accuracy(records, score_mcq_letter_mode(model, tokenizer, records, batch_size))


# ===========================================================================
# Batched greedy generation
# ===========================================================================
def stop_token_ids(tokenizer, model=None) -> list[int]:
    """<eos>, <end_of_turn> and whatever the model's generation config ends on."""
    ids = {tokenizer.eos_token_id}
    end_of_turn = tokenizer.convert_tokens_to_ids(formats.END_OF_TURN)
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        ids.add(end_of_turn)
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return sorted(i for i in ids if i is not None)


def generate_texts(model, tokenizer, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
                   batch_size: int = 8, stop_strings: Sequence[str] | None = None,
                   progress: bool = False) -> list[dict]:
    """Greedy continuations of already-tokenized prompts, batched with left padding.

    Returns per prompt ``{"text", "new_tokens", "stopped"}``: the decoded text up to (not
    including) the first stop token, special tokens kept visible (reasoning markers may be special
    tokens after a vocabulary extension), and whether a stop token or stop string ended it
    (False: cut by ``max_new_tokens``).
    """
    import torch
    from transformers import GenerationConfig

    if not prompt_ids:
        return []
    device = next(model.parameters()).device
    stops = stop_token_ids(tokenizer, model)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.bos_token_id,
                              stop_strings=list(stop_strings) if stop_strings else None)
    extra = {"tokenizer": tokenizer} if stop_strings else {}
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    results: list[dict | None] = [None] * len(prompt_ids)
    was_training = model.training
    model.eval()
    try:
        for begin in batch_starts(order, batch_size, progress, "generating"):
            idx = order[begin: begin + batch_size]
            input_ids, attention, _ = left_padded_batch([prompt_ids[i] for i in idx], tokenizer.pad_token_id)
            with torch.no_grad():
                output = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                        generation_config=config, **extra)
            new_tokens = output[:, input_ids.shape[1]:].tolist()
            for row, i in enumerate(idx):
                results[i] = _decode_generation(tokenizer, new_tokens[row], stops, stop_strings)
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def _decode_generation(tokenizer, ids: list[int], stops: Sequence[int], stop_strings: Sequence[str] | None) -> dict:
    stop_at = next((k for k, token in enumerate(ids) if token in stops), None)
    kept = ids if stop_at is None else ids[:stop_at]
    kept = [t for t in kept if t != tokenizer.pad_token_id]
    text = tokenizer.decode(kept, skip_special_tokens=False)
    stopped = stop_at is not None or bool(stop_strings and any(s in text for s in stop_strings))
    return {"text": text, "new_tokens": len(kept), "stopped": stopped}


def generate_mcq_answers(model, tokenizer, items: Sequence[dict], style: str = PROMPT_TYPE3,
                         batch_size: int = 8, max_new_tokens: int | None = None,
                         progress: bool = False) -> list[dict]:
    """Generate an answer for each item in prompt ``style`` and extract its letter.

    One prediction per item: ``{"id", "prediction", "gold", "correct", "raw_output",
    "stopped", "new_tokens"}``; ``prediction`` is None when the output could not be parsed, which
    counts as wrong.
    """
    check_prompt_style(style)
    max_new_tokens = max_new_tokens or DEFAULT_MAX_NEW_TOKENS[style]
    prompts = [encode_prompt(tokenizer, render_mcq_prompt(tokenizer, item, style), style) for item in items]
    stop_strings = LM_EVAL_STOP_STRINGS if style == PROMPT_LM_EVAL else None
    outputs = generate_texts(model, tokenizer, prompts, max_new_tokens, batch_size, stop_strings, progress)
    predictions = []
    for item, out in zip(items, outputs):
        prediction = extract_answer(out["text"], item["options"], style)
        predictions.append({"id": item.get("id"), "prediction": prediction, "gold": item["answer"],
                            "correct": prediction is not None and prediction == item["answer"],
                            "raw_output": out["text"], "stopped": out["stopped"], "new_tokens": out["new_tokens"]})
    return predictions


# ===========================================================================
# Answer extraction: the ONE function that turns generated text into an option letter
# ===========================================================================
# Every reasoning format the project trains; a block of either kind is removed in every style.
REASONING_MARKERS = ((formats.REASONING_START, formats.REASONING_END),
                     (formats.MCQ_REASONING_START, formats.MCQ_REASONING_END))

# What may follow an answer letter: end, space, closing bracket/punctuation, or a Korean copula or
# particle ("B입니다", "B가 정답", "B번"). A following Latin letter or digit ("A patient", "B12")
# or any other Hangul syllable ("A형 간염") means the letter is part of a word, not an answer.
_KO_SUFFIX = r"(?:입니다|입|이다|이에요|예요|이요|요|번|임|가(?:\s|$)|이(?:\s|$))"
_LETTER_END = r"(?=$|\s|[)\]}.,:;!?'\"’”」』]|" + _KO_SUFFIX + ")"
_ANSWER_CUE = r"(?:최종\s*)?(?:정답|답|(?i:the\s+answer|answer))"
_MARKED_RE = re.compile(
    _ANSWER_CUE + r"\s*[)\]]?\s*(?:은|는|이|(?i:is)|:|=|->|→)?\s*(?:보기|선택지|(?i:option))?\s*"
    r"[(\[]?\s*([A-E])\s*[)\]]?" + _LETTER_END)
_BARE_RE = re.compile(r"[(\[]?([A-E])[)\]]?[.:]?")
_LEADING_RE = re.compile(r"(?:[(\[]([A-E])[)\]]|([A-E])(?:[)\]]|[.:](?!\d))|([A-E])(?=\s*$|\s+[^A-Za-z\s]|"
                         + _KO_SUFFIX + "))")
_CUE_PREFIX_RE = re.compile(r"^(?:최종\s*)?(?:정답|답)\s*(?:은|는|:)?\s*")
_COPULA_SUFFIX_RE = re.compile(r"(?:입니다|이다|이에요|예요|임)$")


def answer_region(text: str, style: str = PROMPT_TYPE3) -> str | None:
    """The part of a generation where the answer is: after the last closed reasoning block.

    An opened block that is never closed means the model never reached its answer: None.
    For ``lm_eval`` the harness's stop strings cut the text first (as its generate_until does).
    """
    check_prompt_style(style)
    if style == PROMPT_LM_EVAL:
        for stop in LM_EVAL_STOP_STRINGS:
            text = text.split(stop, 1)[0]
    end = -1
    for _, closer in REASONING_MARKERS:
        position = text.rfind(closer)
        if position >= 0:
            end = max(end, position + len(closer))
    region = text[end:] if end >= 0 else text
    if any(opener in region for opener, _ in REASONING_MARKERS):
        return None  # reasoning opened after the last close (or never closed)
    return region


def _clean_answer_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)  # fullwidth "：" and "Ｂ", circled Ⓑ -> plain
    text = text.replace(formats.END_OF_TURN, " ").replace("<eos>", " ")
    return re.sub(r"[*`]", "", text).strip()  # markdown emphasis around the letter


def _option_key(text: str) -> str:
    """Option text for comparison: NFKC, casefold, no whitespace, no punctuation at the ends."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"\s+", "", text)
    return text.strip(".,;:!?'\"()[]{}")


def extract_answer(text: str, letters: Sequence[str] | Mapping[str, str], style: str = PROMPT_TYPE3) -> str | None:
    """The option letter a generated ``text`` answers, or None when it cannot be told.

    ``letters`` are the item's option letters, or its options mapping (letter -> text), which also
    allows an answer given as the option's text. ``style`` is the prompt style the text answers
    (``PROMPT_STYLES``). Steps, first match wins:

    1. only the text after the last closed reasoning block counts (``<R>…<R/>`` or
       ``<reasoning>…</reasoning>``, whatever the style, so letters inside the reasoning such as
       "A) … 10%" are never read); an unclosed block gives None;
    2. a leading letter form: ``B``, ``B)``, ``B.``, ``(B)``, ``B 입니다``, ``B입니다``;
    3. an answer cue followed by a letter, last occurrence: ``정답: B``, ``정답은 B 입니다``,
       ``답: B``, ``최종 정답: (B)``, ``The answer is B``;
    4. the whole answer (an optional "정답:" and "입니다" aside) equal to exactly one option's
       text, compared without whitespace and case: that option's letter. An answer that is
       exactly one option's text is read as that option before step 2 ("E. coli 감염").

    A letter is only read when it stands alone (``_LETTER_END``), so an English word ("A patient")
    or a name ("A형 간염", "B12") is never an answer; a letter that is not among ``letters`` gives
    None. There is deliberately no fallback to "the first A-E character anywhere".
    """
    valid = list(letters.keys()) if isinstance(letters, Mapping) else list(letters)
    region = answer_region(text or "", style)
    if region is None:
        return None
    region = _clean_answer_text(region)
    if not region:
        return None
    if isinstance(letters, Mapping):  # the exact text of one option ("E. coli 감염" is no letter E)
        exact = [letter for letter, option in letters.items() if _option_key(option) == _option_key(region)]
        if len(exact) == 1:
            return exact[0]
    found = _read_letter(region)
    if found is not None:
        return found if found in valid else None
    if isinstance(letters, Mapping):
        return _match_option_text(region, letters)
    return None


def _read_letter(region: str) -> str | None:
    whole = _BARE_RE.fullmatch(region)
    if whole:
        return whole.group(1)
    lead = _LEADING_RE.match(region)
    if lead:
        return next(g for g in lead.groups() if g)
    marked = _MARKED_RE.findall(region)
    if marked:
        return marked[-1]
    return None


def _match_option_text(region: str, options: Mapping[str, str]) -> str | None:
    first_line = region.splitlines()[0] if region else ""
    for candidate in (region, first_line):
        candidate = _CUE_PREFIX_RE.sub("", candidate.strip())
        candidate = _COPULA_SUFFIX_RE.sub("", candidate.rstrip(" .!")).strip()
        key = _option_key(candidate)
        if not key:
            continue
        hits = [letter for letter, option in options.items() if _option_key(option) == key]
        if len(hits) == 1:
            return hits[0]
    return None


# ===========================================================================
# Type 4 score: answer + reasoning length + key terms
# ===========================================================================
TYPE4_ANSWER_POINTS = 1.0
TYPE4_REASONING_POINTS = 0.1
TYPE4_REASONING_MIN_TOKENS = 10
TYPE4_KEY_TERM_POINTS = 0.05
TYPE4_MAX_SCORE = 1.4
TYPE4_MAX_KEY_TERMS = round((TYPE4_MAX_SCORE - TYPE4_ANSWER_POINTS - TYPE4_REASONING_POINTS) / TYPE4_KEY_TERM_POINTS)

# Medical terms that are not dictionary headwords but are clinical vocabulary beyond doubt.
CURATED_MEDICAL_TERMS = (
    "혈압", "혈당", "심전도", "흉부 X선", "트로포닌", "인슐린", "항생제", "스테로이드", "염증", "감염",
    "종양", "골절", "부종", "발열", "호흡곤란", "흉통", "복통", "두통", "빈맥", "서맥", "저혈압", "고혈당",
    "저혈당", "황달", "객혈", "토혈", "혈변", "빈혈", "탈수", "쇼크", "패혈증", "전해질", "크레아티닌",
    "헤모글로빈", "백혈구", "혈소판", "CT", "MRI", "초음파", "내시경", "생검", "수술", "항응고제", "이뇨제",
)
# Nouns that kiwipiepy finds inside dictionary headwords but that say nothing medical on their own
# ("급성 심근경색" -> 급성, 심근, 경색: 급성 is dropped, 심근 and 경색 stay).
GENERIC_NOUNS = frozenset({
    "급성", "만성", "기능", "원인", "증상", "질환", "질병", "검사", "치료", "환자", "상태", "장애", "감소",
    "증가", "저하", "이상", "정상", "경우", "일차", "이차", "선천", "후천", "전신", "국소", "양성", "음성",
    "진단", "방법", "부위", "정도", "종류", "사용", "발생", "때문", "관련", "분야", "주요", "일반", "형",
})


def normalise_answer(text: str) -> str:
    """Answer text for the type-4 exact match: NFKC, case folded, every whitespace and punctuation
    character (Unicode categories Z*, P*) removed. "갑상선 기능저하증." == "갑상선기능저하증"."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in text if not ch.isspace() and not unicodedata.category(ch).startswith(("P", "Z")))


def count_words(text: str) -> int:
    """Whitespace-separated words holding at least one letter or digit (a lone "-" is no word).

    This is the "token" of the type-4 reasoning rule and the "word" of the train_02 checks: it
    depends on no tokenizer, so a score means the same for every model.
    """
    return sum(1 for word in text.split() if any(ch.isalnum() for ch in word))


def _term_key(term: str) -> str:
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", term)).casefold()


def _term_in(term_key: str, text_key: str, text_raw: str) -> bool:
    """Substring match, whitespace-insensitive; ASCII terms ("CT") must stand as a whole word."""
    if term_key.isascii():
        return re.search(rf"(?<![a-z0-9]){re.escape(term_key)}(?![a-z0-9])", text_raw) is not None
    return term_key in text_key


def key_terms(reference_reasoning: str, generated_reasoning: str, lexicon: Iterable[str]) -> list[str]:
    """Lexicon terms in the reference reasoning that the generated reasoning also has.

    Matching ignores whitespace and case; only maximal terms count (when both "갑상선" and
    "갑상선염" match, only "갑상선염" does), so one phrase is not counted twice.
    """
    ref_raw = unicodedata.normalize("NFKC", reference_reasoning).casefold()
    gen_raw = unicodedata.normalize("NFKC", generated_reasoning).casefold()
    ref_key, gen_key = re.sub(r"\s+", "", ref_raw), re.sub(r"\s+", "", gen_raw)
    common = {}
    for term in lexicon:
        key = _term_key(term)
        if len(key) < 2 or key in common:
            continue
        if _term_in(key, ref_key, ref_raw) and _term_in(key, gen_key, gen_raw):
            common[key] = term
    maximal = [key for key in common if not any(key != other and key in other for other in common)]
    return sorted(common[key] for key in maximal)


@dataclass(frozen=True)
class Type4Score:
    """A type-4 score and its parts; ``float(score)`` is the total."""

    score: float
    answer_match: bool
    generated_answer: str
    reasoning_tokens: int
    reasoning_bonus: float
    key_terms: tuple[str, ...]
    key_term_bonus: float

    def __float__(self) -> float:
        return self.score

    def to_dict(self) -> dict:
        return {**self.__dict__, "key_terms": list(self.key_terms)}


def type4_score(generated: str, reference_answer: str, reference_reasoning: str,
                lexicon: Iterable[str]) -> Type4Score:
    """The guide's type-4 score of one generation ``<R>reasoning<R/>answer``; at most 1.4.

    * 1.0 when the answer after ``<R/>`` equals ``reference_answer`` after ``normalise_answer``
      (whitespace, punctuation and case ignored). Without a reasoning block the whole text is the
      answer.
    * +0.1 when the generated reasoning has at least 10 tokens, a token being a whitespace word
      (``count_words``; Korean eojeol, not morphemes: no tokenizer or analyser changes the count).
    * +0.05 per key term: a term of ``lexicon`` (``load_medical_lexicon``: medical dictionary
      headwords, the kiwipiepy nouns inside them and a curated list) that occurs in
      ``reference_reasoning`` and also in the generated reasoning (``key_terms``). At most 6 count,
      which makes 1.0 + 0.1 + 6 x 0.05 = 1.4 the maximum.
    """
    reasoning, answer = formats.split_reasoning(generated or "")
    reasoning = reasoning or ""
    match = bool(normalise_answer(answer)) and normalise_answer(answer) == normalise_answer(reference_answer)
    tokens = count_words(reasoning)
    reasoning_bonus = TYPE4_REASONING_POINTS if tokens >= TYPE4_REASONING_MIN_TOKENS else 0.0
    terms = tuple(key_terms(reference_reasoning or "", reasoning, lexicon)) if reasoning else ()
    term_bonus = TYPE4_KEY_TERM_POINTS * min(len(terms), TYPE4_MAX_KEY_TERMS)
    total = (TYPE4_ANSWER_POINTS if match else 0.0) + reasoning_bonus + term_bonus
    return Type4Score(round(min(total, TYPE4_MAX_SCORE), 6), match, answer, tokens, reasoning_bonus, terms,
                      round(term_bonus, 6))


def medical_dictionary_path() -> Path:
    """The medical dictionary to take terms from: refined, else raw, else the shipped sample."""
    candidates = [REFINED_DIR / "01_medical_dict.json",
                  raw_path(RAW_DIR, "medical_dict", "korean_medical_dict", "train"),
                  SAMPLE_DATA_DIR / "local" / "01_medical_dict" / "korean_medical_dict.jsonl"]
    return next((path for path in candidates if path.is_file()), candidates[-1])


def read_dictionary_terms(path: str | Path) -> list[str]:
    """Headwords of a dictionary: a JSON array or JSONL of ``{"term", "definition"}``.

    An entry without a text ``term`` is skipped with a warning naming it (``path: entry [i]`` or
    ``path:line``); the warning also counts them.
    """
    path = Path(path)
    if path.suffix == ".json":
        entries = read_json(path)
        if not isinstance(entries, list):
            raise DataError(f"{path}: expected a JSON array of {{'term', 'definition'}}, found {type(entries).__name__}")
        where = [f"{path}: entry [{i}]" for i in range(len(entries))]
    else:
        lines = list(iter_jsonl(path, on_reject=lambda r: logger.warning("%s", r)))
        entries, where = [record for _, record in lines], [f"{path}:{line}" for line, _ in lines]
    terms, skipped = [], 0
    for entry, place in zip(entries, where):
        term = entry.get("term") if isinstance(entry, dict) else None
        if isinstance(term, str) and term.strip():
            terms.append(term.strip())
        else:
            skipped += 1
            logger.warning("%s: no text 'term' (found %s); skipped", place, type(term if isinstance(entry, dict)
                                                                                  else entry).__name__)
    if skipped:
        logger.warning("%s: %d of %d entries skipped", path, skipped, len(entries))
    return terms


@functools.lru_cache(maxsize=1)
def _kiwi():
    from kiwipiepy import Kiwi

    return Kiwi()


def dictionary_nouns(terms: Iterable[str]) -> set[str]:
    """Nouns (kiwipiepy NNG/NNP morphemes) inside the headwords, and each run of nouns written
    together ("심근"+"경색" -> "심근경색"), of 2+ characters and not in ``GENERIC_NOUNS``.

    Lets "심근경색" count when the headword is "급성 심근경색"; with ``key_terms``' maximal-match
    rule "심근경색" then counts once, not as 심근 + 경색.
    """
    kiwi = _kiwi()
    nouns = set()
    for term in terms:
        run: list = []
        for token in [*kiwi.tokenize(term), None]:
            is_noun = token is not None and token.tag in ("NNG", "NNP")
            if is_noun and run and token.start == run[-1].start + run[-1].len:
                run.append(token)
                continue
            if len(run) > 1:
                nouns.add("".join(t.form for t in run))
            run = [token] if is_noun else []
            if is_noun:
                nouns.add(token.form)
    return {noun for noun in nouns if len(noun) >= 2 and noun not in GENERIC_NOUNS}


@functools.lru_cache(maxsize=4)
def _lexicon_from(path: str, mtime: float, use_kiwi: bool) -> frozenset[str]:
    terms = read_dictionary_terms(path)
    lexicon = set(terms) | set(CURATED_MEDICAL_TERMS)
    if use_kiwi:
        lexicon |= dictionary_nouns(terms)
    return frozenset(t for t in lexicon if len(_term_key(t)) >= 2)


def load_medical_lexicon(path: str | Path | None = None, use_kiwi: bool = True) -> frozenset[str]:
    """Key-term lexicon of ``type4_score``: dictionary headwords (``medical_dictionary_path``: the
    refined 01_medical_dict.json, else the raw korean_medical_dict, else the sample), the kiwipiepy
    nouns inside them (``dictionary_nouns``) and ``CURATED_MEDICAL_TERMS``; terms of 2+ characters."""
    path = Path(path) if path is not None else medical_dictionary_path()
    lexicon = _lexicon_from(str(path), path.stat().st_mtime, use_kiwi)
    logger.debug("medical lexicon: %d terms from %s", len(lexicon), path)
    return lexicon


def type4_evaluate(model, tokenizer, records: Sequence[dict], lexicon: Iterable[str] | None = None,
                   batch_size: int = 8, max_new_tokens: int = 256, progress: bool = False) -> dict:
    """Mean ``type4_score`` of greedy generations on refined type-4 records (target >= 1.2).

    Each record's messages are [system, user, assistant ``<R>reasoning<R/>answer``]; the model
    answers the prompt and is scored against the reference reasoning and answer.
    """
    lexicon = frozenset(lexicon) if lexicon is not None else load_medical_lexicon()
    prompts = [list(tokenizer(formats.render_prompt(tokenizer, r["messages"][:-1]), add_special_tokens=False)
                    ["input_ids"]) for r in records]
    outputs = generate_texts(model, tokenizer, prompts, max_new_tokens, batch_size, progress=progress)
    scores = []
    for record, out in zip(records, outputs):
        reference_reasoning, reference_answer = formats.split_reasoning(record["messages"][-1]["content"])
        scores.append(type4_score(out["text"], record.get("answer") or reference_answer, reference_reasoning or "",
                                  lexicon))
    n = len(scores)
    return {"type4_score": sum(s.score for s in scores) / n if n else float("nan"),
            "answer_accuracy": sum(s.answer_match for s in scores) / n if n else float("nan"),
            "records": n, "scores": [s.to_dict() for s in scores]}


# ===========================================================================
# train_02 score: answer (2/3) + reasoning format (1/3)
# ===========================================================================
TRAIN02_ANSWER_WEIGHT = 2 / 3
TRAIN02_FORMAT_WEIGHT = 1 / 3
TRAIN02_WRONG_GOOD_FORMAT = 1 / 4
TRAIN02_MIN_WORDS = 3
_ORDINAL_RE = re.compile("(" + "|".join(formats.REASONING_ORDINALS) + r")\s*:")
_OPTION_MARK_RE = re.compile(r"(?<![A-Za-z])([A-E])\)")
_PERCENT_RE = re.compile(r"\d+(?:\.\d+)?\s*%")
_PERCENT_WORD_RE = re.compile(r"^\d+(?:\.\d+)?%[,.;]?$")


@dataclass(frozen=True)
class Train02Score:
    """A train_02 score and its parts; ``float(score)`` is the total."""

    score: float
    prediction: str | None
    correct: bool
    format_ok: bool
    tags_ok: bool
    ordinals: dict[str, bool]
    options: dict[str, bool]

    def __float__(self) -> float:
        return self.score

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _reasoning_body(text: str) -> tuple[bool, str]:
    """(both tags present in order, text between them; the text after an opening tag otherwise)."""
    start = text.find(formats.MCQ_REASONING_START)
    end = text.find(formats.MCQ_REASONING_END, start + 1 if start >= 0 else 0)
    if start >= 0 and end > start:
        return True, text[start + len(formats.MCQ_REASONING_START): end]
    return False, text[start + len(formats.MCQ_REASONING_START):] if start >= 0 else ""


def _segments(body: str, pattern: re.Pattern[str]) -> dict[str, list[str]]:
    """Text after each marker up to the next marker of the same kind or the end of its line."""
    out: dict[str, list[str]] = {}
    for line in body.splitlines():
        marks = list(pattern.finditer(line))
        for k, mark in enumerate(marks):
            end = marks[k + 1].start() if k + 1 < len(marks) else len(line)
            out.setdefault(mark.group(1), []).append(line[mark.end(): end])
    return out


def train02_format_checks(generated: str, letters: Sequence[str]) -> dict:
    """The guide's reasoning format checks of a train_02 generation.

    1. ``tags``: ``<reasoning>`` and, after it, ``</reasoning>``;
    2. ``ordinals``: each of 첫째: 둘째: 셋째: 넷째: in the reasoning, followed by >= 3 words (up to
       the next ordinal or the end of its line);
    3. ``options``: each of the item's letters written ``X)`` in the reasoning, followed (up to the
       next option marker or the end of its line) by >= 3 words besides the percentage and by a
       percentage ``number%``.
    Words are ``count_words`` words.
    """
    tags_ok, body = _reasoning_body(generated or "")
    ordinal_segments = _segments(body, _ORDINAL_RE)
    ordinals = {name: any(count_words(s) >= TRAIN02_MIN_WORDS for s in ordinal_segments.get(name, ()))
                for name in formats.REASONING_ORDINALS}
    option_segments = _segments(body, _OPTION_MARK_RE)

    def option_ok(segment: str) -> bool:
        words = [w for w in segment.split() if any(ch.isalnum() for ch in w) and not _PERCENT_WORD_RE.match(w)]
        return len(words) >= TRAIN02_MIN_WORDS and _PERCENT_RE.search(segment) is not None

    options = {letter: any(option_ok(s) for s in option_segments.get(letter, ())) for letter in letters}
    return {"tags": tags_ok, "ordinals": ordinals, "options": options,
            "ok": tags_ok and all(ordinals.values()) and all(options.values())}


def train02_score(generated: str, gold_letter: str, options: Sequence[str] | Mapping[str, str]) -> Train02Score:
    """Score of one train_02 generation ``<reasoning>…</reasoning>{letter}``.

    The guide: correct answer 2/3, reasoning format 1/3, a wrong answer with good reasoning 1/4.
    "Good" reasoning means every ``train02_format_checks`` check passes; the format part is all or
    nothing. Hence: correct + good = 1.0, correct + bad = 2/3, wrong + good = 1/4, wrong + bad = 0.
    The answer is read by ``extract_answer`` (style train02); unparseable is wrong.
    """
    letters = list(options.keys()) if isinstance(options, Mapping) else list(options)
    prediction = extract_answer(generated or "", options, PROMPT_TRAIN02)
    correct = prediction is not None and prediction == gold_letter
    checks = train02_format_checks(generated or "", letters)
    if correct:
        score = TRAIN02_ANSWER_WEIGHT + (TRAIN02_FORMAT_WEIGHT if checks["ok"] else 0.0)
    else:
        score = TRAIN02_WRONG_GOOD_FORMAT if checks["ok"] else 0.0
    return Train02Score(score, prediction, correct, checks["ok"], checks["tags"], checks["ordinals"], checks["options"])


# ===========================================================================
# Periodic evaluation hook for trainers
# ===========================================================================
def make_mcq_eval_fn(tokenizer, items: Sequence[dict], batch_size: int = 16,
                     style: str = PROMPT_TYPE3) -> Callable[[Any, int], dict]:
    """``fn(model, step) -> {"accuracy": percent 0-100, "correct", "total"}`` in letter mode.

    The guide's ``validation_history`` entries look like ``{"step": 100, "accuracy": 50.0,
    "correct": 5, "total": 10}``; ``training_utils.make_periodic_eval_callback`` adds the step.
    Give it the steer set (``load_eval_items("steer", n)``), never a test set. ``style`` is the
    prompt the model is trained on (``train02``: letter read after its own reasoning).
    """
    items = list(items)

    def eval_fn(model, step: int) -> dict:
        predictions = score_mcq_letter_mode(model, tokenizer, items, batch_size, style=style)
        correct = sum(bool(p["correct"]) for p in predictions)
        total = len(predictions)
        return {"accuracy": round(100.0 * correct / total, 2) if total else 0.0, "correct": correct, "total": total}

    return eval_fn


# ---------------------------------------------------------------------------
# Evaluations the trainers run: train_02's generations, plain-text perplexity
# ---------------------------------------------------------------------------
def train02_eval_fn(tokenizer, items: Sequence[dict], batch_size: int = 8,
                    max_new_tokens: int | None = None) -> Callable[..., dict]:
    """``fn(model, step) -> metrics`` of greedy train02-style generations on ``items``: accuracy
    (percent), and the mean train02 score (answer 2/3 + reasoning format 1/3) of the same outputs."""
    items = list(items)

    def eval_fn(model, step: int = -1) -> dict:
        predictions = generate_mcq_answers(model, tokenizer, items, style=PROMPT_TRAIN02, batch_size=batch_size,
                                           max_new_tokens=max_new_tokens)
        scores = [train02_score(p["raw_output"], item["answer"], item["options"])
                  for p, item in zip(predictions, items)]
        total = len(items)
        correct = sum(bool(p["correct"]) for p in predictions)
        return {"accuracy": round(100.0 * correct / total, 2) if total else 0.0, "correct": correct, "total": total,
                "train02_score": round(sum(map(float, scores)) / total, 4) if total else 0.0,
                "format_ok": sum(s.format_ok for s in scores), "stopped": sum(bool(p["stopped"]) for p in predictions)}

    return eval_fn


def plain_text_perplexity(model, tokenizer, texts: Sequence[str], batch_size: int = 8,
                          max_length: int = 512, progress: bool = False) -> dict:
    """Token-weighted perplexity of plain texts (``<bos>`` + text, cut at ``max_length`` tokens):
    the language-modelling loss of train_00 on held-out text, exp(total NLL / predicted tokens)."""
    import torch

    device = next(model.parameters()).device
    encoded = [list(tokenizer(text)["input_ids"])[:max_length] for text in texts]
    total_nll, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for begin in batch_starts(encoded, batch_size, progress, "plain-text perplexity"):
            batch = encoded[begin: begin + batch_size]
            width = max(len(ids) for ids in batch)
            input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, ids in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention[row, : len(ids)] = 1
            with torch.no_grad():
                logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                               use_cache=False).logits
            for row, ids in enumerate(batch):  # row by row: fp32 logits of a whole batch can be GBs
                n = len(ids) - 1
                if n > 0:
                    target = input_ids[row, 1: n + 1].to(device)
                    total_nll += float(torch.nn.functional.cross_entropy(logits[row, :n].float(), target,
                                                                         reduction="sum"))
                    total_tokens += n
    finally:
        model.train(was_training)
    mean_nll = total_nll / total_tokens if total_tokens else float("nan")
    return {"perplexity": math.exp(mean_nll) if total_tokens else float("nan"), "mean_nll": mean_nll,
            "tokens": total_tokens, "texts": len(texts)}
