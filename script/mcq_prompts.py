"""How a multiple-choice item is shown to the model: the prompt styles of every MCQ scorer.

* ``type3``    the type-3 chat prompt (formats.py): answer with the option letter only;
* ``type4``    the type-4 chat prompt: ``<R>`` reasoning ``<R/>``, then the answer;
* ``train02``  train_02's chat prompt (formats.mcq_reasoning_user): ``<reasoning>`` … then the letter;
* ``lm_eval``  lm-evaluation-harness's kormedmcqa template, plain text without a chat template:
  reproduced only to cross-check our numbers against the harness (no trainer uses it).

The chat styles are built from formats.py, the same messages the trainers train on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from script import formats
from script.eval_items import item_letters


def mcq_messages(item: dict) -> list[dict]:
    """The Type-3 prompt of an MCQ item: the same format the type-3 trainer uses."""
    return formats.type_messages(formats.TYPE3_WORD, formats.format_mcq(item["question"], item["options"]))




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


