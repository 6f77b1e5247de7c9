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
* item loading: ``read_eval_set`` / ``load_eval_items`` (KorMedMCQA set files, raw or hub splits, any
  JSONL of items) and ``read_kmmlu`` (the chosen KMMLU-medical subset), with bad rows reported
  ``path:line: reason`` and skipped with a count; ``select_eval_subset`` for seeded subsets.

The scorers take a loaded model and tokenizer; ``script/model_loading.py`` loads them.

The reports, tables and charts are built by ``script/validation_kor_med_test.py``:

    python -m script.validation_kor_med_test --model tiny --eval-samples 20
    python -m script.bench_eval --model tiny --n 604
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from script import formats, kormedmcqa
from script.data_io import DataError, Reject, iter_jsonl, load_local_dataset, read_json, sha256_file
from script.kormedmcqa import cell_text
from script.sources import KMMLU_MEDICAL_SUBJECTS, raw_path
from script.training_config import KORMEDMCQA_TEST_DIR, RAW_DIR, REFINED_DIR, SAMPLE_DATA_DIR

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
def item_letters(item: Mapping[str, Any]) -> list[str]:
    """The item's option letters in order (5 for KorMedMCQA, 4 for KMMLU and MedQA)."""
    return [letter for letter in formats.OPTION_LETTERS if letter in item["options"]]


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
# Evaluation items: validation, KMMLU rows, set files, seeded subsets
# ===========================================================================
KMMLU_SOURCE = "kmmlu"
KMMLU_HUB_NAME = "HAERAE-HUB/KMMLU"
KMMLU_COLUMNS = ("question", "answer", "A", "B", "C", "D", "Category", "Human Accuracy")
KMMLU_REQUIRED = ("question", "A", "B", "C", "D", "answer")
KMMLU_LETTERS = formats.OPTION_LETTERS[:4]
DEFAULT_SUBSET_SEED = 42


def validate_item(item: Mapping[str, Any]) -> str | None:
    """None for a usable normalised item, else a short reason.

    Usable: a non-empty ``question``; ``options`` a mapping of consecutive letters from A (at
    least two, none empty); ``answer`` one of those letters.
    """
    question = item.get("question")
    if not isinstance(question, str) or not question.strip():
        return "empty 'question'"
    options = item.get("options")
    if not isinstance(options, Mapping):
        return f"'options' should be an object {{'A': ..., 'B': ...}}, found {type(options).__name__}"
    unknown = [key for key in options if key not in formats.OPTION_LETTERS]
    if unknown:
        return f"unknown option key {unknown[0]!r} (expected letters A-E)"
    letters = [letter for letter in formats.OPTION_LETTERS if letter in options]
    expected = list(formats.OPTION_LETTERS[: len(letters)])
    if letters != expected:
        missing = next(letter for letter in expected if letter not in options)
        return f"missing option {missing!r}"
    if len(letters) < 2:
        return f"only {len(letters)} option(s)"
    for letter in letters:
        if not isinstance(options[letter], str) or not options[letter].strip():
            return f"empty option {letter!r}"
    answer = item.get("answer")
    if not isinstance(answer, str) or answer not in options:
        return f"answer {answer!r} is out of range: expected one of {', '.join(letters)}"
    return None


def _normalised_item(record: Mapping[str, Any], default_id: str) -> dict:
    """A copy of a valid normalised item with text stripped and an id/config filled in."""
    item = dict(record)
    item["id"] = str(record.get("id") or default_id)
    item["question"] = record["question"].strip()
    item["options"] = {letter: record["options"][letter].strip() for letter in item_letters(record)}
    return item


def kmmlu_answer_to_letter(value: Any) -> str:
    """KMMLU's answer (integer 1-4, its own convention) as a letter A-D; else ValueError.

    A wrong type is a bad row like any other (ValueError, reported as a reject), not a bug.
    """
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"answer should be an integer 1-4, found {value!r}")  # noqa: TRY004
    if not 1 <= value <= len(KMMLU_LETTERS):
        raise ValueError(f"answer {value} is out of range: KMMLU answers are 1-4")
    return KMMLU_LETTERS[value - 1]


def normalise_kmmlu_row(record: Mapping[str, Any], subject: str, split: str, row: int) -> dict:
    """An upstream KMMLU row as an item (4 options, answer 1-4 -> A-D); ValueError for a bad row."""
    missing = [name for name in KMMLU_REQUIRED if name not in record]
    if missing:
        raise ValueError(f"missing column {missing[0]!r} (expected columns: {', '.join(KMMLU_COLUMNS)}; "
                         f"found: {', '.join(record)})")

    question = cell_text(record["question"], "question")
    if not question:
        raise ValueError("empty 'question'")
    options = {letter: cell_text(record[letter], letter) for letter in KMMLU_LETTERS}
    empty = [letter for letter, text in options.items() if not text]
    if empty:
        raise ValueError(f"empty option {empty[0]!r}")
    meta = {name: record[name] for name in ("Category", "Human Accuracy") if record.get(name) not in (None, "")}
    meta["row"] = row
    return {"id": f"{KMMLU_SOURCE}/{subject}/{split}/row{row}", "config": subject, "split": split,
            "question": question, "options": options, "answer": kmmlu_answer_to_letter(record["answer"]),
            "meta": meta}


def normalise_record(record: Mapping[str, Any], where: str, line: int, row: int, dataset: str = "kormedmcqa") -> dict:
    """Any accepted row shape -> item; ValueError with the reason otherwise.

    * a normalised item (``options`` mapping, letter ``answer``): a set file or refined type-3 record;
    * the guide's KorMedMCQA layout (columns A-E, a letter ``answer``): data/refined/02_kor_med_test;
    * an upstream row with columns A-E/A-D and an integer answer, converted with the convention of
      ``dataset`` (``kormedmcqa``: 1-5, ``kmmlu``: 1-4) -- never guessed from the row.
    """
    answer = record.get("answer")
    if "options" not in record and isinstance(answer, str) and answer.strip() in formats.OPTION_LETTERS:
        # the guide's own KorMedMCQA layout (data/refined/02_kor_med_test): columns A-E, a letter answer
        record = {**record, "options": formats.mcq_item_options(record), "answer": answer.strip()}
    if "options" in record:
        reason = validate_item(record)
        if reason:
            raise ValueError(reason)
        return _normalised_item(record, f"{Path(where).stem}/line{line}")
    split = Path(where).stem
    if dataset == KMMLU_SOURCE:
        # the raw layout is <subject>/<split>.jsonl; upstream "Category" is a supercategory at best
        subject = Path(where).parent.name or str(record.get("Category") or KMMLU_SOURCE)
        return normalise_kmmlu_row(record, subject, split, row)

    subject = record.get("subject")
    config = subject if subject in kormedmcqa.CONFIGS else Path(where).parent.name or "kormedmcqa"
    return kormedmcqa.normalise_item(record, config, split, row)


@dataclass
class EvalSet:
    """Items of one evaluation set, what was skipped, and where they came from."""

    name: str
    items: list[dict]
    rejects: list[Reject] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)  # {"path", "sha256"}
    source: str = ""

    @property
    def rows(self) -> int:
        return len(self.items) + len(self.rejects)

    def items_sha256(self) -> str:
        """Hash of exactly the items held (after skipping and subsetting): identifies what was scored."""
        digest = hashlib.sha256()
        for item in self.items:
            digest.update(json.dumps(item, ensure_ascii=False, sort_keys=True).encode())
            digest.update(b"\n")
        return digest.hexdigest()


def read_items_file(path: str | Path, dataset: str = "kormedmcqa", name: str | None = None) -> EvalSet:
    """Items of a JSONL file; bad lines are kept as rejects (``path:line: reason``), never raised."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rejects: list[Reject] = []
    items: list[dict] = []
    seen: set[str] = set()
    for row, (line, record) in enumerate(iter_jsonl(path, on_reject=rejects.append)):
        try:
            item = normalise_record(record, str(path), line, row, dataset)
        except ValueError as exc:
            rejects.append(Reject(str(path), line, str(exc), json.dumps(record, ensure_ascii=False)[:2000]))
            continue
        if item["id"] in seen:  # ids key the per-item report and the subset draw: keep them unique
            item["id"] = f"{item['id']}#line{line}"
        seen.add(item["id"])
        items.append(item)
    return EvalSet(name or path.stem, items, rejects, [{"path": str(path), "sha256": sha256_file(path)}], str(path))


# Names accepted for the set files of extract_kormedmcqa_test.py ("test" = the official test split).
SET_ALIASES = {"guide604": "guide604.jsonl", "official": "official_test.jsonl", "test": "official_test.jsonl",
               "steer": "steer.jsonl", "all": "all_test.jsonl"}


def resolve_set_path(set_name_or_path: str | Path, sets_dir: str | Path | None = None) -> tuple[str, Path]:
    """(name, file) of a set name (``SET_ALIASES``) or a path to a JSONL file."""
    text = str(set_name_or_path)
    if text in SET_ALIASES:
        directory = Path(sets_dir) if sets_dir is not None else KORMEDMCQA_TEST_DIR
        path = directory / SET_ALIASES[text]
        if not path.is_file():
            raise DataError(f"{path}: missing; write the evaluation sets first: "
                            "python -m script.extract_kormedmcqa_test --set all (add --from-dir data/sample offline)")
        return text, path
    path = Path(text)
    if not path.is_file():
        raise DataError(f"{path}: no such file (and not a set name: {', '.join(SET_ALIASES)})")
    return path.stem, path


def read_eval_set(set_name_or_path: str | Path, sets_dir: str | Path | None = None,
                  dataset: str = "kormedmcqa") -> EvalSet:
    name, path = resolve_set_path(set_name_or_path, sets_dir)
    return read_items_file(path, dataset, name)


def read_kormedmcqa_split(split: str, raw_dir: str | Path | None = None, from_dir: str | Path | None = None,
                          configs: Sequence[str] | None = None) -> EvalSet:
    """One upstream split (e.g. ``dev``) of every config, from the raw dir or a local hub mirror."""
    if from_dir is None and raw_dir is None:
        raw_dir = RAW_DIR / "by_source" / kormedmcqa.SOURCE_NAME
    source = (kormedmcqa.ItemSource(from_dir=from_dir) if from_dir is not None
              else kormedmcqa.ItemSource(raw_dir=raw_dir))
    items = [item for config in (configs or kormedmcqa.CONFIGS) for item in source.items(config, split)]
    files = []
    if source.raw_dir is not None:
        files = [{"path": str(p), "sha256": sha256_file(p)}
                 for p in (source.raw_dir / c / f"{split}.jsonl" for c in (configs or kormedmcqa.CONFIGS))]
    return EvalSet(split, items, list(source.rejects), files, source.description)


def resolve_kmmlu_hub_dir(from_dir: str | Path) -> Path:
    root = Path(from_dir)
    if (root / KMMLU_HUB_NAME).is_dir():
        return root / KMMLU_HUB_NAME
    if (root / "README.md").is_file():
        return root
    raise DataError(f"{root}: no {KMMLU_HUB_NAME} mirror here (expected {root / KMMLU_HUB_NAME}/README.md)")


def read_kmmlu(raw_dir: str | Path | None = None, from_dir: str | Path | None = None,
               subjects: Sequence[str] | None = None, split: str = "test") -> EvalSet:
    """KMMLU-medical (``sources.KMMLU_MEDICAL_SUBJECTS``, a chosen subset: KMMLU has no medicine subject).

    From ``<raw_dir>/by_source/kmmlu/<subject>/<split>.jsonl`` (download_all_datasets.py) or from a
    local hub mirror (``--from-dir``, read with ``datasets.load_dataset``). Answers 1-4 -> A-D.
    """
    subjects = list(subjects or KMMLU_MEDICAL_SUBJECTS)
    items: list[dict] = []
    rejects: list[Reject] = []
    files: list[dict] = []
    if from_dir is not None:
        hub_dir = resolve_kmmlu_hub_dir(from_dir)
        for subject in subjects:
            try:
                rows = load_local_dataset(hub_dir, subject, split=split)
            except Exception as exc:  # datasets raises many types; all mean "not there"
                raise DataError(f"{hub_dir} [{subject}/{split}]: cannot load ({type(exc).__name__}: {exc})") from exc
            where = f"{hub_dir}/{subject}/{split}"
            for row, record in enumerate(rows):
                _add_kmmlu_row(items, rejects, record, subject, split, row, where, row + 1)
        source = f"hub mirror {hub_dir}"
    else:
        base = Path(raw_dir) if raw_dir is not None else RAW_DIR
        for subject in subjects:
            path = raw_path(base, KMMLU_SOURCE, subject, split)
            if not path.is_file():
                raise DataError(f"{path}: missing; run `python -m script.download_all_datasets --only kmmlu` "
                                "(or pass --from-dir data/sample)")
            files.append({"path": str(path), "sha256": sha256_file(path)})
            for row, (line, record) in enumerate(iter_jsonl(path, on_reject=rejects.append)):
                _add_kmmlu_row(items, rejects, record, subject, split, row, str(path), line)
        source = f"raw dir {base}"
    return EvalSet(f"kmmlu_medical_{split}", items, rejects, files, source)


def _add_kmmlu_row(items: list, rejects: list, record: Mapping, subject: str, split: str, row: int,
                   where: str, line: int) -> None:
    try:
        items.append(normalise_kmmlu_row(record, subject, split, row))
    except ValueError as exc:
        rejects.append(Reject(where, line, str(exc), json.dumps(dict(record), ensure_ascii=False, default=str)[:2000]))


def subset_rank(item_id: str, seed: int) -> str:
    return hashlib.sha256(f"eval-subset:{seed}:{item_id}".encode()).hexdigest()


def select_eval_subset(items: Sequence[dict], n: int | None, seed: int = DEFAULT_SUBSET_SEED) -> list[dict]:
    """``n`` items chosen by a seeded hash of their ids, kept in file order.

    The same ids, ``n`` and seed always give the same items, whatever the file order, and a
    smaller ``n`` gives a subset of a larger one (the draw is a ranking, not a shuffle).
    """
    if n is None or n >= len(items):
        return list(items)
    if n < 0:
        raise ValueError(f"subset size must be >= 0, got {n}")
    ranked = sorted(range(len(items)), key=lambda i: (subset_rank(str(items[i].get("id", i)), seed), i))
    chosen = sorted(ranked[:n])
    return [items[i] for i in chosen]


def load_eval_items(set_name_or_path: str | Path, n: int | None = None, seed: int = DEFAULT_SUBSET_SEED,
                    sets_dir: str | Path | None = None) -> list[dict]:
    """Items of a set (``guide604``, ``official``/``test``, ``steer``, ``all``) or a JSONL file.

    Bad lines are logged (``path:line: reason``) and skipped; ``n`` takes a seeded subset
    (``select_eval_subset``). For trainers: ``make_mcq_eval_fn(tok, load_eval_items("steer", 50))``.
    """
    evalset = read_eval_set(set_name_or_path, sets_dir)
    for reject in evalset.rejects:
        logger.warning("skipped %s", reject)
    if evalset.rejects:
        logger.warning("%s: %d bad rows skipped", evalset.source, len(evalset.rejects))
    return select_eval_subset(evalset.items, n, seed)


# ===========================================================================
# Prompt styles and batched greedy generation
# ===========================================================================
PROMPT_TYPE3 = "type3"  # formats type-3 system prompt: answer with the letter only
PROMPT_TYPE4 = "type4"  # formats type-4 system prompt: <R>reasoning<R/> then the answer
PROMPT_TRAIN02 = "train02"  # formats.mcq_reasoning_user: <reasoning>…</reasoning> then the letter
PROMPT_LM_EVAL = "lm_eval"  # lm-evaluation-harness kormedmcqa template, no chat template
PROMPT_STYLES = (PROMPT_TYPE3, PROMPT_TYPE4, PROMPT_TRAIN02, PROMPT_LM_EVAL)
DEFAULT_MAX_NEW_TOKENS = {PROMPT_TYPE3: 8, PROMPT_LM_EVAL: 32, PROMPT_TYPE4: 384, PROMPT_TRAIN02: 512}

# lm-evaluation-harness's kormedmcqa task (v2.0 _template_yaml), reproduced ONLY to cross-check
# numbers against the harness; no trainer uses it, so it is not a project format (formats.py).
# "정답" is followed by a FULLWIDTH colon (U+FF1A) and nothing else.
LM_EVAL_ANSWER_CUE = "정답："
LM_EVAL_STOP_STRINGS = ("Q:", "</s>", "<|im_end|>", ".", "\n\n")


def lm_eval_prompt(item: Mapping[str, Any]) -> str:
    """``"{question}\\nA. {A}\\n…\\nE. {E}\\n정답："`` as in the harness's kormedmcqa yaml."""
    lines = [item["question"].strip()]
    lines += [f"{letter}. {item['options'][letter]}" for letter in item_letters(item)]
    lines.append(LM_EVAL_ANSWER_CUE)
    return "\n".join(lines)


def mcq_prompt_messages(item: Mapping[str, Any], style: str) -> list[dict]:
    """Chat messages of an MCQ in a chat prompt style (all from formats.py)."""
    if style == PROMPT_TYPE3:
        return mcq_messages(dict(item))
    if style == PROMPT_TYPE4:
        return formats.type_messages(formats.TYPE4_WORD_REASONING, formats.format_mcq(item["question"], item["options"]))
    if style == PROMPT_TRAIN02:
        return formats.build_messages(None, formats.mcq_reasoning_user(item["question"], item["options"]))
    raise ValueError(f"prompt style {style!r} has no chat messages; valid chat styles: type3, type4, train02")


def check_prompt_style(style: str) -> str:
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; valid: {', '.join(PROMPT_STYLES)}")
    return style


def render_mcq_prompt(tokenizer, item: Mapping[str, Any], style: str) -> str:
    """The exact text the model sees before answering, in ``style``."""
    if check_prompt_style(style) == PROMPT_LM_EVAL:
        return lm_eval_prompt(item)
    return formats.render_prompt(tokenizer, mcq_prompt_messages(item, style))


def encode_prompt(tokenizer, text: str, style: str) -> list[int]:
    """Token ids of a rendered prompt. Chat prompts carry their own <bos>; the harness adds one to
    plain prompts for Gemma models (``add_bos_token`` is forced for model type gemma), so do we."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    if style == PROMPT_LM_EVAL and bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
    return ids


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
