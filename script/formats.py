"""The one place where system prompts, training formats and chat rendering live.

Training and evaluation both build their prompts here, so a model is always evaluated in the
format it was trained on. Records store messages (system, user, assistant), never rendered text;
the tokenizer's chat template renders them at training time.

Gemma 3 has no system role: its chat template folds the system prompt into the first user turn.
``GEMMA_CHAT_TEMPLATE`` below does the same for the embedded tiny model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# ---------------------------------------------------------------------------
# Special tokens
# ---------------------------------------------------------------------------
REASONING_START = "<R>"
REASONING_END = "<R/>"
MCQ_REASONING_START = "<reasoning>"  # train_02 format
MCQ_REASONING_END = "</reasoning>"
START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"

# Tokens the embedded tokenizer reserves (MedGemma's own vocabulary already has the turn markers;
# the reasoning markers are added to it as special tokens when extending the tokenizer).
CHAT_SPECIAL_TOKENS = [START_OF_TURN, END_OF_TURN]
REASONING_SPECIAL_TOKENS = [REASONING_START, REASONING_END, MCQ_REASONING_START, MCQ_REASONING_END]

# ---------------------------------------------------------------------------
# The four training types of the guide
# ---------------------------------------------------------------------------
TYPE1_TEXT = "type1_text"
TYPE2_TEXT_REASONING = "type2_text_reasoning"
TYPE3_WORD = "type3_word"
TYPE4_WORD_REASONING = "type4_word_reasoning"
TRAINING_TYPES = (TYPE1_TEXT, TYPE2_TEXT_REASONING, TYPE3_WORD, TYPE4_WORD_REASONING)
REASONING_TYPES = frozenset({TYPE2_TEXT_REASONING, TYPE4_WORD_REASONING})

SYSTEM_PROMPTS: dict[str, str] = {
    TYPE1_TEXT: "당신은 한국어 의료 전문 AI입니다. 상세하게 답변하세요.",
    TYPE2_TEXT_REASONING: "먼저 추론한 후 상세하게 답변하세요.",
    TYPE3_WORD: "정답 알파벳만 답하세요 (A, B, C, D, E 중 하나).",
    TYPE4_WORD_REASONING: "먼저 추론한 후 진단명을 한 단어로 답하세요.",
}

# Guide's type metrics and targets (evaluation.py computes them).
TYPE_TARGETS: dict[str, tuple[str, str, float]] = {
    TYPE1_TEXT: ("perplexity", "<", 3.0),
    TYPE2_TEXT_REASONING: ("perplexity", "<", 3.0),
    TYPE3_WORD: ("accuracy", ">=", 0.90),
    TYPE4_WORD_REASONING: ("type4_score", ">=", 1.2),
}

OPTION_LETTERS = ("A", "B", "C", "D", "E")


def check_type(type_name: str) -> str:
    if type_name not in SYSTEM_PROMPTS:
        raise ValueError(f"unknown training type {type_name!r}; valid: {', '.join(TRAINING_TYPES)}")
    return type_name


def wrap_reasoning(reasoning: str, answer: str) -> str:
    """Assistant text of types 2/4: ``<R>reasoning<R/>answer``."""
    return f"{REASONING_START}{reasoning.strip()}{REASONING_END}{answer.strip()}"


_REASONING_RE = re.compile(re.escape(REASONING_START) + r"(.*?)" + re.escape(REASONING_END), re.DOTALL)


def split_reasoning(text: str) -> tuple[str | None, str]:
    """Split ``<R>…<R/>answer`` into (reasoning, answer); (None, text) when there is no block."""
    match = _REASONING_RE.search(text)
    if match is None:
        return None, text.strip()
    return match.group(1).strip(), text[match.end() :].strip()


def format_options(options: Mapping[str, str]) -> str:
    """Options one per line as ``A) text``, in letter order."""
    return "\n".join(f"{letter}) {options[letter]}" for letter in OPTION_LETTERS if letter in options)


def format_mcq(question: str, options: Mapping[str, str]) -> str:
    """The one rendering of a multiple-choice question (types 3/4, train_02, evaluation)."""
    return f"{question.strip()}\n{format_options(options)}"


def build_messages(system: str | None, user: str, assistant: str | None = None) -> list[dict]:
    messages = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": user})
    if assistant is not None:
        messages.append({"role": "assistant", "content": assistant})
    return messages


def type_messages(type_name: str, user: str, assistant: str | None = None) -> list[dict]:
    """Messages of a refined record of ``type_name`` with that type's system prompt."""
    return build_messages(SYSTEM_PROMPTS[check_type(type_name)], user, assistant)


def to_prompt_completion(messages: Sequence[Mapping]) -> dict:
    """Split stored messages into TRL's conversational prompt/completion form.

    TRL then computes the loss on the completion (the assistant turn) only.
    """
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("the last message must be the assistant turn")
    return {"prompt": [dict(m) for m in messages[:-1]], "completion": [dict(messages[-1])]}


# ---------------------------------------------------------------------------
# Simplified pipeline formats (train_01 dictionary, train_02 MCQ with reasoning)
# ---------------------------------------------------------------------------
DICTIONARY_PROMPT = "Meaning of word {term}:"


def dictionary_messages(term: str, definition: str | None = None) -> list[dict]:
    """train_01: ``Meaning of word {term}:`` -> definition (no system prompt, as in the guide)."""
    return build_messages(None, DICTIONARY_PROMPT.format(term=term), definition)


MCQ_REASONING_INSTRUCTION = "Reasoning 후 정답 알파벳 하나만 답하세요."
REASONING_ORDINALS = ("첫째", "둘째", "셋째", "넷째")

MCQ_DETAILED_FORMAT = (
    "<reasoning>\n"
    "첫째: 문제에서 묻는 것을 한 문장으로 정리합니다.\n"
    "둘째: 핵심 단서(증상, 검사, 상황)를 나열합니다.\n"
    "셋째: 단서에 맞는 의학 지식을 적용합니다.\n"
    "넷째: A) 선택지 평가 xx%, B) 선택지 평가 yy%, C) … zz%, D) … ww%, E) … vv%\n"
    "</reasoning>정답 알파벳"
)


def mcq_reasoning_user(question: str, options: Mapping[str, str], detailed: bool = False,
                       example: str | None = None) -> str:
    """train_02 user turn: instruction, optional format/example blocks, question and options."""
    parts = [MCQ_REASONING_INSTRUCTION, ""]
    if detailed:
        parts += ["```format", MCQ_DETAILED_FORMAT, "```", ""]
        if example:
            parts += ["```example", example.strip(), "```", ""]
    parts += [format_mcq(question, options), ""]
    return "\n".join(parts)


def mcq_reasoning_completion(reasoning: str, answer: str) -> str:
    """train_02 model turn: ``<reasoning>\\n…\\n</reasoning>{answer}``."""
    return f"{MCQ_REASONING_START}\n{reasoning.strip()}\n{MCQ_REASONING_END}{answer.strip()}"


# ---------------------------------------------------------------------------
# Chat template of the embedded tokenizer: Gemma 3's turn format, written for this project.
# The system message becomes the start of the first user turn; "assistant" is spoken as "model";
# the generation prompt opens a model turn. Structured content ([{"type": "text", ...}]) is
# accepted as well as plain strings.
# ---------------------------------------------------------------------------
GEMMA_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- set ns = namespace(prefix='') -%}"
    "{%- set turns = messages -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set sys = messages[0]['content'] -%}"
    "{%- if sys is not string -%}{%- set sys = sys | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('') -%}{%- endif -%}"
    "{%- set ns.prefix = sys | trim + '\n\n' -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- endif -%}"
    "{%- for m in turns -%}"
    "{%- if (m['role'] == 'user') != (loop.index0 is even) -%}"
    "{{- raise_exception('turns must alternate user/assistant, starting with user') -}}"
    "{%- endif -%}"
    "{{- '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\n' -}}"
    "{%- if loop.first -%}{{- ns.prefix -}}{%- endif -%}"
    "{%- if m['content'] is string -%}{{- m['content'] | trim -}}"
    "{%- else -%}{%- for part in m['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] | trim -}}"
    "{%- elif part['type'] == 'image' -%}{{- '<start_of_image>' -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<end_of_turn>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}"
)


def render_prompt(tokenizer, messages: Sequence[Mapping]) -> str:
    """Text the model sees before it answers (generation prompt added)."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def render_conversation(tokenizer, messages: Sequence[Mapping]) -> str:
    """A whole conversation as trained (each turn closed by ``<end_of_turn>``)."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=False)
