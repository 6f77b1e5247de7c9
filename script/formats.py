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


def answer_text_messages(question: str, answer: str | None = None) -> list[dict]:
    """A question answered with the text of its right option, no options shown (no system prompt).

    The cloze form of an MCQ: train_02 can add one such record per item (``--answer-text``) and
    evaluation's cloze mode scores every option as this completion.
    """
    return build_messages(None, question.strip(), answer)


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


# train_02 records. The reasoning per choice is built from the item itself (no model writes it):
# upstream's `cot` where an item has one, else one verdict line per option (simple), or the four
# ordinal steps of MCQ_DETAILED_FORMAT (detailed) for the share of items that gets the long prompt.
DETAILED_FRACTION = 0.05  # the guide: 95% simple / 5% detailed
MCQ_VERDICT_ANSWER = "정답"
MCQ_VERDICT_OTHER = "오답"
MCQ_OPTION_WORDS = 8  # option text is clipped to this many words inside the reasoning (it is generated)
MCQ_CLUE_WORDS = 12
_SENTENCE_END_RE = re.compile(r"(?<=[.?!])\s+")


def mcq_item_options(item: Mapping) -> dict[str, str]:
    """Options of an MCQ item as letter -> text, from ``options`` or flat ``A``..``E`` columns."""
    source = item.get("options") if isinstance(item.get("options"), Mapping) else item
    return {letter: str(source[letter]).strip() for letter in OPTION_LETTERS
            if isinstance(source.get(letter), str) and source[letter].strip()}


def _clip_words(text: str, limit: int) -> str:
    words = text.split()
    return " ".join(words[:limit]) + (" …" if len(words) > limit else "")


def train02_is_detailed(item_id: str, seed: int = 42, fraction: float = DETAILED_FRACTION) -> bool:
    """Whether an item gets the detailed format: a seeded hash of its id, so the choice does not
    depend on file order, sample limits or the run (the same item is always in the same share)."""
    import hashlib

    digest = hashlib.blake2b(f"{seed}:{item_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def option_percentages(letters: Sequence[str], answer: str, other: int = 5) -> dict[str, int]:
    """Percent per option for the detailed 넷째 line: ``other`` each, the rest (the highest) to the answer."""
    shares = {letter: other for letter in letters}
    shares[answer] = 100 - other * (len(letters) - 1)
    return shares


def mcq_verdict_head(letter: str, text: str) -> str:
    """``A) <option text, clipped>:`` -- a verdict line up to the verdict (evaluation reads the verdict here)."""
    return f"{letter}) {_clip_words(text, MCQ_OPTION_WORDS)}:"


def mcq_verdict_line(letter: str, text: str, is_answer: bool) -> str:
    """One line of the simple train_02 reasoning: ``A) <option>: 정답`` or ``…: 오답``."""
    return f"{mcq_verdict_head(letter, text)} {MCQ_VERDICT_ANSWER if is_answer else MCQ_VERDICT_OTHER}"


def mcq_choice_reasoning(question: str, options: Mapping[str, str], answer: str, detailed: bool = False,
                         cot: str | None = None) -> str:
    """The reasoning of a train_02 completion.

    simple:   upstream ``cot`` when given, else ``A) <option>: 오답`` per option (정답 for ``answer``);
              kept short because the model generates it before every answer.
    detailed: 첫째 (what the stem asks) / 둘째 (key clues: an excerpt of the stem) / 셋째 (the knowledge
              applied, naming the answer; an excerpt of ``cot`` when given) / 넷째 (every option with a
              percentage, summing to 100, the answer highest) -- evaluation.train02_format_checks passes.
    """
    if answer not in options:
        raise ValueError(f"answer {answer!r} is not one of the options {sorted(options)}")
    cot = " ".join(cot.split()) if isinstance(cot, str) else ""
    if not detailed:
        if cot:
            return cot
        return "\n".join(mcq_verdict_line(letter, text, letter == answer) for letter, text in options.items())
    stem = " ".join(question.split())
    sentences = [s for s in _SENTENCE_END_RE.split(stem) if s.strip()] or [stem]
    asks = sentences[-1]
    clues = " ".join(sentences[:-1]) or stem
    knowledge = f"{_clip_words(cot, 30)} 따라서" if cot else "단서에 맞는 의학 지식을 적용하면"
    shares = option_percentages(list(options), answer)
    fourth = ", ".join(f"{letter}) {_clip_words(text, MCQ_OPTION_WORDS)}: "
                       f"{'가장 적절함' if letter == answer else '가능성 낮음'} {shares[letter]}%"
                       for letter, text in options.items())
    return "\n".join([
        f"{REASONING_ORDINALS[0]}: 문제가 묻는 것은 {_clip_words(asks, 20)} 입니다.",
        f"{REASONING_ORDINALS[1]}: 핵심 단서는 {_clip_words(clues, MCQ_CLUE_WORDS)} 입니다.",
        f"{REASONING_ORDINALS[2]}: {knowledge} 정답 선택지는 {answer}, 즉 {_clip_words(options[answer], MCQ_OPTION_WORDS)} 입니다.",
        f"{REASONING_ORDINALS[3]}: {fourth}",
    ])


def train02_messages(item: Mapping, detailed: bool) -> list[dict]:
    """A train_02 training conversation of a KorMedMCQA-style item (``question``, options, ``answer``,
    optional ``cot``): the instruction prompt (with the format block when ``detailed``) and
    ``<reasoning>…</reasoning>{answer}``."""
    options = mcq_item_options(item)
    reasoning = mcq_choice_reasoning(item["question"], options, item["answer"], detailed, item.get("cot"))
    return build_messages(None, mcq_reasoning_user(item["question"], options, detailed=detailed),
                          mcq_reasoning_completion(reasoning, item["answer"]))


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
