"""KorMedMCQA: loading, item normalisation, evaluation-set definitions and contamination matching.

This module is the one place that knows

* where KorMedMCQA lives (``data/raw/by_source/kormedmcqa/<config>/<split>.jsonl`` written by
  ``download_all_datasets.py``, or a local hub mirror such as ``data/sample/sean0042/KorMedMCQA``
  read with ``datasets.load_dataset``);
* how an upstream row becomes an item ``{"id", "config", "split", "question", "options",
  "answer", "meta"}`` -- the integer answer (1-5) is turned into a letter here, once;
* which items form each evaluation set:

  - ``guide604``  the guide's "604 test samples": doctor dev + test + fewshot (164 + 435 + 5);
  - ``official``  the test split of all four configs (3,009 items upstream);
  - ``steer``     a deterministic held-out slice (10 % per config) of the TRAIN split, the set that
                  training loops, best-checkpoint choice and type choice steer on;
  - ``other_eval`` the rest of the evaluation splits (nurse/pharm/dentist dev and fewshot): never
                  trained on, like every non-train split of every config;

* how a training record is compared with those items (``EvaluationIndex``), used by
  ``exclude_test_from_training.py`` and by the steer selection itself.

Matching rules (see ``EvaluationIndex`` for the details and the reasons):

``exact``        identical question stem (whitespace at the ends ignored);
``normalised``   identical stem after NFKC, casefold, removal of whitespace and punctuation;
``demographics`` identical normalised stem once the patient's age and sex are masked;
``contained``    a test stem of at least ``MIN_NEAR_CHARS`` normalised characters appears inside
                 the record's normalised question (a test question wrapped in a longer prompt);
``near``         Jaccard similarity of character 3-gram sets >= ``NEAR_THRESHOLD`` (0.8) to an item
                 whose normalised text has at least ``MIN_NEAR_CHARS`` (30) characters, numbers
                 equal (the patient's age masked);
``options``      the same option set and the same right option (a reworded stem of any length).

Where both sides carry options, a short stem (under ``MIN_NEAR_CHARS``) matches only together with
its options (as a set: option order never matters), because short stems such as "다음 중 옳은
것은?" are shared by many different questions.

    python -m script.kormedmcqa --raw-dir data/raw/by_source/kormedmcqa      # print set sizes
    python -m script.kormedmcqa --from-dir data/sample
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import re
import sys
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from script.data_io import DataError, Reject, iter_jsonl, load_local_dataset
from script.formats import MCQ_REASONING_INSTRUCTION, OPTION_LETTERS
from script.training_config import RAW_DIR

# ---------------------------------------------------------------------------
# Upstream layout (UPSTREAM_FACTS.md, KorMedMCQA section)
# ---------------------------------------------------------------------------
HUB_NAME = "sean0042/KorMedMCQA"
SOURCE_NAME = "kormedmcqa"  # folder under data/raw/by_source/
CONFIGS = ("doctor", "nurse", "pharm", "dentist")
SPLITS = ("train", "dev", "test", "fewshot")
UPSTREAM_COLUMNS = ("subject", "year", "period", "q_number", "question", "A", "B", "C", "D", "E", "answer", "cot")
# Without these a row cannot be an item; the others are metadata and may be missing.
REQUIRED_COLUMNS = ("question", "A", "B", "C", "D", "E", "answer")
META_COLUMNS = ("subject", "year", "period", "q_number", "cot")

# ---------------------------------------------------------------------------
# Evaluation sets
# ---------------------------------------------------------------------------
GUIDE604 = "guide604"
OFFICIAL = "official"
STEER = "steer"
OTHER_EVAL = "other_eval"
SET_NAMES = (GUIDE604, OFFICIAL, STEER, OTHER_EVAL)
SET_FILES = {GUIDE604: "guide604.jsonl", OFFICIAL: "official_test.jsonl", STEER: "steer.jsonl",
             OTHER_EVAL: "other_eval.jsonl"}
ALL_TEST_FILE = "all_test.jsonl"
SETS_MANIFEST = "sets.json"
GUIDE604_EXPECTED = 604  # rows: doctor dev 164 + test 435 + fewshot 5 upstream; the sample data too

# (config, split) pairs each fixed set is made of; steer is drawn from the train splits.
# other_eval is the rest of KorMedMCQA's evaluation material (nurse/pharm/dentist dev and fewshot):
# not scored by default, but evaluation-style questions all the same, so excluded from training too.
SET_SPLITS: dict[str, tuple[tuple[str, str], ...]] = {
    GUIDE604: (("doctor", "dev"), ("doctor", "test"), ("doctor", "fewshot")),
    OFFICIAL: tuple((config, "test") for config in CONFIGS),
    STEER: tuple((config, "train") for config in CONFIGS),
    OTHER_EVAL: tuple((config, split) for config in CONFIGS if config != "doctor" for split in ("dev", "fewshot")),
}
FIXED_SETS = (GUIDE604, OFFICIAL, OTHER_EVAL)  # the sets read as they are (steer is drawn)
STEER_FRACTION = 0.1
STEER_SALT = "kormedmcqa-steer-v1"  # changing it changes the steer slice; keep it fixed

# ---------------------------------------------------------------------------
# Matching parameters (the reasons are in EvaluationIndex's docstring)
# ---------------------------------------------------------------------------
NGRAM = 3
NEAR_THRESHOLD = 0.8
MIN_NEAR_CHARS = 30
MATCH_METHODS = ("exact", "normalised", "demographics", "contained", "near", "options")


# ===========================================================================
# Items
# ===========================================================================
def answer_to_letter(value: Any) -> str:
    """KorMedMCQA's answer (integer 1-5) as a letter A-E; anything else raises ValueError.

    Integer-valued strings ("3") are accepted because some JSON exports quote numbers; letters
    are not, since a letter here means the file was converted by someone else already and the
    convention can no longer be checked.
    """
    if isinstance(value, bool):
        raise ValueError(f"answer should be an integer 1-5, found {value!r}")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise ValueError(f"answer should be an integer 1-5, found {value!r}")
    if not 1 <= value <= len(OPTION_LETTERS):
        raise ValueError(f"answer {value} is out of range: KorMedMCQA answers are 1-5")
    return OPTION_LETTERS[value - 1]


def _clean_cell(value: Any) -> str:
    return "" if value is None else str(value).strip()


def cell_text(value: Any, column: str) -> str:
    """A question/option cell as trimmed text: None is empty and numbers are text (exports write
    "5" or 5); a list, an object or a boolean is no cell of an upstream row and raises ValueError."""
    if isinstance(value, (bool, list, dict)):
        raise ValueError(f"field {column!r} should be text, found {type(value).__name__}")
    return _clean_cell(value)


def item_key(record: Mapping[str, Any], row: int) -> str:
    """Stable per-split key: ``<year>-<period>-<q_number>`` where upstream has them, else ``row<N>``."""
    parts = [_clean_cell(record.get(name)) for name in ("year", "period", "q_number")]
    if all(parts):
        return "-".join(parts)
    return f"row{row}"


def make_item_id(config: str, split: str, key: str) -> str:
    return f"{SOURCE_NAME}/{config}/{split}/{key}"


def normalise_item(record: Mapping[str, Any], config: str, split: str, row: int) -> dict:
    """An upstream row as an item; raises ValueError with a short reason for a bad row.

    ``row`` is the 0-based row index within the split (kept in ``meta`` and used for ids when the
    row lacks year/period/q_number).
    """
    missing = [name for name in REQUIRED_COLUMNS if name not in record]
    if missing:
        raise ValueError(
            f"missing column {missing[0]!r} (expected columns: {', '.join(UPSTREAM_COLUMNS)}; "
            f"found: {', '.join(record)})"
        )
    question = cell_text(record["question"], "question")
    if not question:
        raise ValueError("empty 'question'")
    options = {letter: cell_text(record[letter], letter) for letter in OPTION_LETTERS}
    empty = [letter for letter in OPTION_LETTERS[:4] if not options[letter]]
    if empty:
        raise ValueError(f"empty option {empty[0]!r}")
    if not options["E"]:
        del options["E"]  # a four-option row stays usable; its answer must then be 1-4
    letter = answer_to_letter(record["answer"])
    if letter not in options:
        raise ValueError(f"answer {letter} points at an empty option")
    meta = {name: record[name] for name in META_COLUMNS if record.get(name) not in (None, "")}
    meta["row"] = row
    return {
        "id": make_item_id(config, split, item_key(record, row)),
        "config": config,
        "split": split,
        "question": question,
        "options": options,
        "answer": letter,
        "meta": meta,
    }


def _normalise_rows(
    rows: Iterable[tuple[int, int, Mapping[str, Any]]],
    config: str,
    split: str,
    where: str,
    on_reject: Callable[[Reject], None],
) -> list[dict]:
    """Rows ``(row_index, line_number, record)`` -> items; duplicate keys get a row suffix."""
    items: list[dict] = []
    seen: set[str] = set()
    for row, line, record in rows:
        try:
            item = normalise_item(record, config, split, row)
        except ValueError as exc:
            on_reject(Reject(where, line, str(exc), json.dumps(record, ensure_ascii=False, default=str)[:2000]))
            continue
        if item["id"] in seen:  # the same year/period/q_number twice: keep both, ids stay unique
            item["id"] = f"{item['id']}-row{row}"
        seen.add(item["id"])
        items.append(item)
    return items


def load_raw_split(raw_dir: str | Path, config: str, split: str, on_reject: Callable[[Reject], None]) -> list[dict]:
    """Items of ``<raw_dir>/<config>/<split>.jsonl`` (download_all_datasets.py's layout)."""
    path = Path(raw_dir) / config / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(
            f"{path}: missing; run `python -m script.download_all_datasets` (or pass --from-dir data/sample)"
        )
    rows = ((row, line, record) for row, (line, record) in enumerate(iter_jsonl(path, on_reject=on_reject)))
    return _normalise_rows(rows, config, split, str(path), on_reject)


def resolve_hub_dir(from_dir: str | Path) -> Path:
    """Accept either a mirror root (``data/sample``) or the dataset folder itself."""
    root = Path(from_dir)
    candidate = root / HUB_NAME
    if candidate.is_dir():
        return candidate
    if (root / "README.md").is_file():
        return root
    raise DataError(f"{root}: no {HUB_NAME} mirror here (expected {candidate}/README.md)")


def load_hub_split(hub_dir: str | Path, config: str, split: str, on_reject: Callable[[Reject], None]) -> list[dict]:
    """Items of one config/split of a local hub mirror, read with ``datasets.load_dataset``."""
    hub_dir = Path(hub_dir)
    try:
        dataset = load_local_dataset(hub_dir, config, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; all mean "not there"
        raise DataError(f"{hub_dir} [{config}/{split}]: cannot load ({type(exc).__name__}: {exc})") from exc
    where = f"{hub_dir}/{config}/{split}"
    # A row's "line" is its 1-based position, so messages read like file:line ones.
    rows = ((row, row + 1, record) for row, record in enumerate(dataset))
    return _normalise_rows(rows, config, split, where, on_reject)


class ItemSource:
    """Loads each config/split once, from a raw dir or a hub mirror, and keeps every reject."""

    def __init__(self, raw_dir: str | Path | None = None, from_dir: str | Path | None = None) -> None:
        if (raw_dir is None) == (from_dir is None):
            raise ValueError("give exactly one of raw_dir and from_dir")
        self.hub_dir = resolve_hub_dir(from_dir) if from_dir is not None else None
        self.raw_dir = Path(raw_dir) if raw_dir is not None else None
        self.rejects: list[Reject] = []
        self._cache: dict[tuple[str, str], list[dict]] = {}

    @property
    def description(self) -> str:
        return f"hub mirror {self.hub_dir}" if self.hub_dir is not None else f"raw dir {self.raw_dir}"

    def items(self, config: str, split: str) -> list[dict]:
        key = (config, split)
        if key not in self._cache:
            if self.hub_dir is not None:
                self._cache[key] = load_hub_split(self.hub_dir, config, split, self.rejects.append)
            else:
                self._cache[key] = load_raw_split(self.raw_dir, config, split, self.rejects.append)
        return self._cache[key]


# ===========================================================================
# Evaluation sets
# ===========================================================================
def steer_rank(item_id: str) -> str:
    """Sort key of the steer draw: a salted hash of the id, so the slice depends on nothing else."""
    return hashlib.sha256(f"{STEER_SALT}:{item_id}".encode()).hexdigest()


def steer_count(n_items: int, fraction: float = STEER_FRACTION) -> int:
    """How many train items of a config go to steer: round(fraction * n), at least 1 if any."""
    if n_items == 0:
        return 0
    return min(n_items, max(1, round(n_items * fraction)))


def select_steer(
    train_items: Sequence[dict],
    fraction: float = STEER_FRACTION,
    held_out: "EvaluationIndex | None" = None,
) -> list[dict]:
    """The steer slice of one config's train split.

    Items are ranked by ``steer_rank(id)`` and the first ``steer_count`` are taken. Train items
    whose question matches an item of ``held_out`` (the test sets) are skipped first: exams reuse
    questions across years, and steering on a copy of a test question is steering on the test.
    """
    eligible = [item for item in train_items if held_out is None or held_out.match_item(item) is None]
    chosen = sorted(eligible, key=lambda item: steer_rank(item["id"]))[: steer_count(len(train_items), fraction)]
    return sorted(chosen, key=lambda item: item["meta"]["row"])  # file order, for readable output


def build_sets(source: ItemSource, steer_fraction: float = STEER_FRACTION) -> dict[str, list[dict]]:
    """The evaluation sets (``SET_NAMES``), each a list of items in upstream order."""
    sets = {name: drop_repeated_questions([item for config, split in SET_SPLITS[name]
                                           for item in source.items(config, split)])
            for name in FIXED_SETS}
    held_out = EvaluationIndex(dedupe_items(item for name in FIXED_SETS for item in sets[name]))
    sets[STEER] = [
        item
        for config, split in SET_SPLITS[STEER]
        for item in select_steer(source.items(config, split), steer_fraction, held_out)
    ]
    return sets


def drop_repeated_questions(items: Sequence[dict]) -> list[dict]:
    """Items minus rows that repeat an earlier row's question (same stem, same options): upstream
    draws each fewshot split from its config's dev split, so guide604 (doctor dev + test + fewshot)
    would score those questions twice. The kept item lists the dropped ids in
    ``meta["repeated_as"]``, so the set's row count stays visible."""
    first: dict[tuple, dict] = {}
    kept = []
    for item in items:
        key = (item["question"].strip(), tuple(sorted(item["options"].items())))
        if key in first:
            kept_meta = first[key]["meta"]
            kept_meta.setdefault("repeated_as", []).append(item["id"])
            if item["meta"].get("cot") and not kept_meta.get("cot"):
                kept_meta["cot"] = item["meta"]["cot"]  # the fewshot copy carries upstream's explanation
            continue
        first[key] = item
        kept.append(item)
    return kept


def set_rows(items: Iterable[dict]) -> int:
    """Upstream rows behind a set's items: each item plus the repeats dropped into it."""
    return sum(1 + len(item["meta"].get("repeated_as", ())) for item in items)


def dedupe_items(items: Iterable[dict]) -> list[dict]:
    """Items in first-seen order, one per id (doctor test is in guide604 and in official)."""
    seen: dict[str, dict] = {}
    for item in items:
        seen.setdefault(item["id"], item)
    return list(seen.values())


def count_by_config_split(items: Iterable[dict]) -> dict[str, int]:
    counts = Counter(f"{item['config']}/{item['split']}" for item in items)
    return dict(sorted(counts.items()))


# ===========================================================================
# Text normalisation
# ===========================================================================
# Thousands separators go ("5,000" == "5000"); any other punctuation between two digits stays,
# so "1.5" != "15" and "3-5" != "35" (a changed number is a different question).
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_BETWEEN_DIGITS = re.compile(r"(?<=\d)\D(?=\d)")  # one character between two digits


@functools.lru_cache(maxsize=1)
def _punctuation_table() -> dict[int, None]:
    """Every Unicode punctuation character (categories P*) mapped to None, for ``str.translate``.

    Built once (a scan of the code space, ~0.3 s).
    """
    return dict.fromkeys(code for code in range(sys.maxunicode + 1) if unicodedata.category(chr(code)).startswith("P"))


def strip_punctuation(text: str) -> str:
    """``text`` without punctuation, except a punctuation character preceded and followed by a digit.

    ``str.translate`` deletes in one C loop; only the few characters between digits are looked at
    one by one (a regex with the whole punctuation class, tried at every position, was 3x slower).
    """
    table = _punctuation_table()
    kept = [m.start() for m in _BETWEEN_DIGITS.finditer(text) if ord(text[m.start()]) in table]
    if not kept:
        return text.translate(table)
    pieces, start = [], 0
    for position in kept:
        pieces += [text[start:position].translate(table), text[position]]
        start = position + 1
    pieces.append(text[start:].translate(table))
    return "".join(pieces)


def normalise_text(text: str) -> str:
    """NFKC, casefold, no whitespace, no punctuation (except between digits).

    Whitespace is removed rather than collapsed because Korean word spacing (띄어쓰기) varies
    between copies of the same question ("고혈압 환자" / "고혈압환자"). NFKC folds full-width
    letters, digits and punctuation and circled numbers into their plain forms.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _THOUSANDS_COMMA.sub("", text)  # before spaces go, or "5,000 3" would read "5,0003"
    text = "".join(text.split())  # str.split() splits on exactly the characters regex \s matches
    return strip_punctuation(text)


# Who the patient is: an exam rewords a vignette by changing the age or the sex, and a twin that
# differs only there is the same question. Masked before the fuzzy rules compare texts, so that such
# numbers never split the numbers signature; every other number (doses, lab values, durations,
# gestational weeks) still has to be equal.
_AGE_RE = re.compile(
    r"생후\s*\d+\s*(?:개월|주|일)"            # 생후 6개월 / 생후 3주
    r"|\d+\s*(?:개월|주|일)\s*(?:된|의)?\s*(?=(?:남|여)아|영아|신생아|아기|아이)"  # 6개월 된 영아
    r"|\d+\s*세"                              # 45세
    r"|\b\d+-(?:year|month|week|day)-old\b",  # 45-year-old
    re.IGNORECASE)
_SEX_RE = re.compile(r"남자|여자|남성|여성|남아|여아|소년|소녀|\b(?:man|woman|men|women|boy|girl|male|female)\b",
                     re.IGNORECASE)
AGE_MASK, SEX_MASK = "나이", "성별"


def mask_demographics(text: str) -> str:
    """The patient's age and sex replaced by fixed words ("45세 남자" and "72세 여자" read the same)."""
    return _SEX_RE.sub(SEX_MASK, _AGE_RE.sub(AGE_MASK, text))


def char_ngrams(text: str, n: int = NGRAM) -> frozenset[str]:
    """Set of character n-grams; a text shorter than n is its own single gram."""
    if len(text) <= n:
        return frozenset([text]) if text else frozenset()
    return frozenset(text[i : i + n] for i in range(len(text) - n + 1))


def numbers_in(text: str) -> tuple[str, ...]:
    """The numbers of a normalised text, sorted (a multiset: order-insensitive like the options)."""
    return tuple(sorted(_NUMBER.findall(text)))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


# ===========================================================================
# Questions inside training records
# ===========================================================================
# "A) text", "A. text", "(A) text", "Ａ） text" ... one option per line.
_OPTION_LINE = re.compile(r"^\s*[\(\[]?([A-Ea-e])\s*[\)\]\.:．）：]\s*(.*?)\s*$")
_FENCED_BLOCK = re.compile(r"```.*?```", re.DOTALL)


def _message_text(content: Any) -> str:
    """A message's content as text (plain string, or structured ``[{"type": "text", ...}]``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (part for part in content if isinstance(part, dict) and part.get("type") == "text")
        return "".join(str(part.get("text", "")) for part in parts)
    return ""


def strip_prompt_scaffolding(text: str) -> str:
    """Remove what formats.py wraps around a question (instruction line, ```format/example``` blocks)."""
    text = _FENCED_BLOCK.sub("", text)
    lines = [line for line in text.splitlines() if line.strip() != MCQ_REASONING_INSTRUCTION]
    return "\n".join(lines).strip()


def split_stem_options(text: str) -> tuple[str, dict[str, str] | None]:
    """Split MCQ-like text into (stem, options): the stem is what precedes the first "A) ..." line.

    Options must run A, B, C, ... on consecutive lines (at least A and B); anything else means
    the text is not an MCQ and it is returned whole with ``None``.
    """
    lines = text.splitlines()
    for start, line in enumerate(lines):
        match = _OPTION_LINE.match(line)
        if not match or match.group(1).upper() != "A":
            continue
        options: dict[str, str] = {}
        for follow in lines[start:]:
            option = _OPTION_LINE.match(follow)
            expected = OPTION_LETTERS[len(options)] if len(options) < len(OPTION_LETTERS) else None
            if not option or option.group(1).upper() != expected:
                break
            options[expected] = option.group(2)
        if len(options) >= 2:
            return "\n".join(lines[:start]).strip(), options
    return text.strip(), None


def _options_of(value: Any) -> dict[str, str] | None:
    """A record's ``options`` field ({"A": ...} or a list) as a letter dict, None if unusable."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        options = {str(k).strip().upper(): _clean_cell(v) for k, v in value.items() if _clean_cell(v)}
    elif isinstance(value, (list, tuple)):
        letters = zip(OPTION_LETTERS, value)
        options = {letter: _clean_cell(v) for letter, v in letters if _clean_cell(v)}
    else:
        return None
    return options if len(options) >= 2 else None


def _letter_columns(record: Mapping[str, Any]) -> dict[str, str] | None:
    """Options kept as columns ``A`` ... ``E`` (upstream KorMedMCQA rows, 02_kor_med_test records)."""
    if "A" not in record or "B" not in record:
        return None
    return _options_of({letter: record[letter] for letter in OPTION_LETTERS if letter in record})


def record_question(record: Mapping[str, Any]) -> tuple[str, dict[str, str] | None] | None:
    """(stem, options or None) of a training record; None when it has no question text at all.

    Order: the record's own ``question`` field (+ ``options``, or columns ``A``-``E``); else the
    first user message; else a plain ``text`` field (00_plain_text records). MCQ-like text is split
    at its first option line so that the comparison is on the stem, never on the rendered prompt.
    """
    question = record.get("question")
    if isinstance(question, str) and question.strip():
        stem, parsed = split_stem_options(question)
        return stem, _options_of(record.get("options")) or _letter_columns(record) or parsed
    messages = record.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, Mapping) and message.get("role") == "user":
                text = strip_prompt_scaffolding(_message_text(message.get("content")))
                if text:
                    return split_stem_options(text)
                break
    text = record.get("text")
    if isinstance(text, str) and text.strip():
        return text.strip(), None
    return None


def record_gold(record: Mapping[str, Any], options: Mapping[str, str] | None) -> str | None:
    """The text of a record's right option (its ``answer`` letter among ``options``), else None."""
    answer = record.get("answer")
    if not options or not isinstance(answer, str):
        return None
    return options.get(answer.strip().upper())


# ===========================================================================
# Matching
# ===========================================================================
@dataclass(frozen=True)
class Match:
    method: str  # one of MATCH_METHODS
    item_id: str
    score: float  # 1.0 for exact/normalised/contained, the Jaccard similarity for near


@dataclass
class _Probe:
    """Everything about one question that the matcher compares, computed once.

    ``masked_stem`` is the normalised stem with the patient's age and sex masked
    (``mask_demographics``): the fuzzy rules compare the stem as it is, then masked.
    """

    raw_stem: str
    norm_stem: str
    masked_stem: str
    raw_options: frozenset[str] | None
    norm_options: frozenset[str] | None
    norm_gold: str | None = None

    @classmethod
    def build(cls, stem: str, options: Mapping[str, str] | None, gold: str | None = None) -> "_Probe":
        masked = normalise_text(mask_demographics(stem))
        if options:
            values = [str(v).strip() for v in options.values() if str(v).strip()]
            norm_gold = normalise_text(gold) if gold else None
            return cls(stem.strip(), normalise_text(stem), masked, frozenset(values),
                       frozenset(normalise_text(v) for v in values), norm_gold or None)
        return cls(stem.strip(), normalise_text(stem), masked, None, None)

    def stem(self, masked: bool) -> str:
        return self.masked_stem if masked else self.norm_stem

    def near_text(self, with_options: bool, masked: bool = False) -> str:
        """Stem alone, or stem + options in sorted order (order-insensitive); the stem normalised,
        or normalised with the patient's age and sex masked."""
        if with_options and self.norm_options:
            return self.stem(masked) + "|" + "|".join(sorted(self.norm_options))
        return self.stem(masked)

    def options_key(self) -> tuple[frozenset[str], str] | None:
        """(option set, right option) when both are known: the key of the ``options`` rule."""
        if self.norm_options and self.norm_gold and len(self.norm_options) >= 3:
            return self.norm_options, self.norm_gold
        return None


@dataclass
class _GramIndex:
    """Inverted index gram -> item positions, for Jaccard candidate search by prefix filtering.

    One index per numbers signature (see EvaluationIndex): texts whose numbers differ are never
    compared, which also keeps each index, and its posting lists, small.
    """

    threshold: float
    grams: list[frozenset[str]] = field(default_factory=list)
    owners: list[int] = field(default_factory=list)  # position in the index's item list
    postings: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    min_size: int = 0
    max_size: int = 0

    def add(self, owner: int, text: str) -> None:
        slot = len(self.grams)
        grams = char_ngrams(text)
        self.grams.append(grams)
        self.owners.append(owner)
        self.min_size = len(grams) if slot == 0 else min(self.min_size, len(grams))
        self.max_size = max(self.max_size, len(grams))
        for gram in grams:
            self.postings[gram].append(slot)

    def best(self, grams: frozenset[str]) -> tuple[int, float] | None:
        """(owner, similarity) of the most similar indexed gram set at or above the threshold."""
        n = len(grams)
        if n == 0 or not self.grams:
            return None
        # Length filter first: J <= min/max, so far shorter or longer texts can never match.
        if n * self.threshold > self.max_size + 1e-9 or n < self.min_size * self.threshold - 1e-9:
            return None
        # Prefix filter: J >= t needs |G & T| >= t*|G|, so at most n - ceil(t*n) grams of G can
        # miss T, and any n - ceil(t*n) + 1 of them must hit it. Grams absent from the index miss
        # every item, so they fill that budget first (an unrelated record stops here); the rest of
        # the prefix is taken from the rarest present grams, whose posting lists are short.
        postings = self.postings
        present = grams & postings.keys()  # set operation in C
        prefix_len = n - math.ceil(self.threshold * n - 1e-9) + 1 - (n - len(present))
        if prefix_len <= 0:
            return None
        prefix = sorted(present, key=lambda g: len(postings[g]))[:prefix_len]
        candidates: set[int] = set()
        for gram in prefix:
            candidates.update(postings[gram])
        low, high = self.threshold * n, n / self.threshold  # length filter: J <= min/max
        best: tuple[int, float] | None = None
        for slot in candidates:
            other = self.grams[slot]
            if not low - 1e-9 <= len(other) <= high + 1e-9:
                continue
            score = jaccard(grams, other)
            if score >= self.threshold - 1e-12 and (best is None or score > best[1]):
                best = (self.owners[slot], score)
        return best


class EvaluationIndex:
    """Finds whether a question is (a copy of) one of the evaluation items.

    Rules, tried in this order; the first that fires names the method:

    ``exact``        the stripped stem equals an item's stem;
    ``normalised``   ``normalise_text(stem)`` equals an item's (spacing, punctuation, full-width
                     forms, case do not matter);
    ``demographics`` the normalised stems are equal once the patient's age and sex are masked
                     (``mask_demographics``): "45세 남자 ..." and "72세 여자 ..." are one vignette.
                     For these three, when the record AND the item have options and the stem is
                     shorter than ``MIN_NEAR_CHARS`` normalised characters, the option sets must be
                     equal too (raw for exact, normalised otherwise; as sets, so a shuffled copy
                     still matches). A short stem like "다음 중 옳은 것은?" is the same for many
                     different questions; a long vignette is the question.
    ``contained``    the masked stem of an item (>= ``MIN_NEAR_CHARS`` characters) is a substring
                     of the record's masked stem: a test question inside a longer prompt
                     ("다음 문제를 풀어라: ...").
    ``near``         Jaccard similarity of character 3-gram sets >= ``NEAR_THRESHOLD`` to an item
                     whose masked text has >= ``MIN_NEAR_CHARS`` characters, with the same numbers
                     (as a multiset; the patient's age is masked and does not count). When both
                     sides have options the compared text is stem + options in sorted order,
                     otherwise the stem alone.
    ``options``      both sides have options and a known right answer, and the option sets (as
                     normalised sets, at least three options) and the right option's text are
                     equal, whatever the stems say: a reworded stem over the same options with the
                     same answer is the same question. This is the rule for short stems, which the
                     fuzzy rules leave alone.

    Why 3-grams, 0.8 and 30: a Korean syllable is one character, so 3-grams are about a short
    word. One substituted character changes at most 3 of the (L - 2) grams of an L-character
    text, giving J >= (L - 5) / (L + 1); at L = 30 that is 0.806, so every one-character edit
    (substitution, insertion or deletion) of an item text of 30+ characters clears 0.8 (for
    text without long runs of one repeated character, where grams are not distinct). Replacing a
    3-4 syllable word (a disease name) changes 5-6 grams and falls below 0.8 up to about 47-56
    characters; in longer texts such a swap can still clear 0.8, which errs toward removal (a
    lost training record is cheap, a leaked test item is not). Numbers are compared exactly
    because "K 2.5 mEq/L" and "K 6.5 mEq/L" are different questions although one character apart,
    so a one-character edit that changes a number is NOT matched by ``near``. Short stems are left
    to the exact/normalised/demographics and options rules: "혈중 칼륨 농도는?" / "혈중 칼슘
    농도는?" differ by one character and are different questions.

    Scaling: building the index is linear in the total length of the items. Items are indexed per
    numbers signature, so a record is only ever compared with items carrying the same numbers.
    Within that index a query costs one set intersection with the gram vocabulary (a record with
    more than ``n - ceil(0.8 n)`` unknown grams stops there), the posting lists of its rarest
    remaining prefix grams (prefix filtering), and one set intersection per candidate that passes
    the length filter -- so a whole run is linear in the training data, not records x items.
    Exact, normalised, demographics and options lookups are dict lookups; ``contained`` intersects
    the record's grams with a map from each item's rarest gram ("anchor") to the item, then checks
    substrings.
    """

    def __init__(self, items: Iterable[Mapping[str, Any]], threshold: float = NEAR_THRESHOLD,
                 min_near_chars: int = MIN_NEAR_CHARS) -> None:
        self.threshold = threshold
        self.min_near_chars = min_near_chars
        self.ids: list[str] = []
        self.probes: list[_Probe] = []
        self._exact: dict[str, list[int]] = defaultdict(list)
        self._normalised: dict[str, list[int]] = defaultdict(list)
        self._masked: dict[str, list[int]] = defaultdict(list)
        self._by_options: dict[tuple[frozenset[str], str], int] = {}
        # (with options?, masked?, numbers signature) -> gram index
        self._gram_indexes: dict[tuple[bool, bool, tuple[str, ...]], _GramIndex] = {}
        self._anchors: dict[bool, dict[str, list[int]]] = {False: defaultdict(list), True: defaultdict(list)}
        for item in items:
            self._add(item)
        self._build_anchors()

    def __len__(self) -> int:
        return len(self.ids)

    def _add(self, item: Mapping[str, Any]) -> None:
        question = item.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"evaluation item {item.get('id')!r} has no question")
        position = len(self.ids)
        options = _options_of(item.get("options"))
        probe = _Probe.build(question, options, record_gold(item, options))
        self.ids.append(str(item.get("id", position)))
        self.probes.append(probe)
        self._exact[probe.raw_stem].append(position)
        self._normalised[probe.norm_stem].append(position)
        self._masked[probe.masked_stem].append(position)
        key = probe.options_key()
        if key is not None:
            self._by_options.setdefault(key, position)
        for with_options in (False, True):
            for masked in (False, True):
                text = probe.near_text(with_options, masked)
                if len(text) >= self.min_near_chars:
                    index_key = (with_options, masked, numbers_in(text))
                    if index_key not in self._gram_indexes:
                        self._gram_indexes[index_key] = _GramIndex(self.threshold)
                    self._gram_indexes[index_key].add(position, text)

    def _build_anchors(self) -> None:
        """Each long stem's rarest gram (as it is, and masked): a record can contain the stem only
        if it has that gram."""
        for masked, anchors in self._anchors.items():
            long_stems = [(p, char_ngrams(probe.stem(masked))) for p, probe in enumerate(self.probes)
                          if len(probe.stem(masked)) >= self.min_near_chars]
            frequency = Counter(gram for _, grams in long_stems for gram in grams)
            for position, grams in long_stems:
                anchors[min(grams, key=lambda g: (frequency[g], g))].append(position)

    # -- rules -------------------------------------------------------------------------------
    def _options_agree(self, probe: _Probe, position: int, normalised: bool) -> bool:
        item = self.probes[position]
        if probe.raw_options is None or item.raw_options is None:
            return True  # nothing to compare: the stem decides
        if len(probe.norm_stem) >= self.min_near_chars:
            return True  # a long stem is the question whatever its options
        if normalised:
            return probe.norm_options == item.norm_options
        return probe.raw_options == item.raw_options

    def match(self, stem: str, options: Mapping[str, str] | None = None, gold: str | None = None) -> Match | None:
        """The first rule that matches ``stem`` (and ``options``, whose right one is ``gold``) to an item."""
        probe = _Probe.build(stem, options, gold)
        if not probe.norm_stem:
            return None
        for position in self._exact.get(probe.raw_stem, ()):
            if self._options_agree(probe, position, normalised=False):
                return Match("exact", self.ids[position], 1.0)
        for position in self._normalised.get(probe.norm_stem, ()):
            if self._options_agree(probe, position, normalised=True):
                return Match("normalised", self.ids[position], 1.0)
        for position in self._masked.get(probe.masked_stem, ()):
            if self._options_agree(probe, position, normalised=True):
                return Match("demographics", self.ids[position], 1.0)
        found = self._contained(probe) or self._near(probe)
        if found is not None:
            return found
        key = probe.options_key()
        if key is not None and key in self._by_options:
            return Match("options", self.ids[self._by_options[key]], 1.0)
        return None

    def match_item(self, item: Mapping[str, Any]) -> Match | None:
        options = _options_of(item.get("options"))
        return self.match(item["question"], options, record_gold(item, options))

    def match_record(self, record: Mapping[str, Any]) -> Match | None:
        question = record_question(record)
        if question is None:
            return None
        stem, options = question
        return self.match(stem, options, record_gold(record, options))

    def _contained(self, probe: _Probe) -> Match | None:
        for masked, anchors in self._anchors.items():
            text = probe.stem(masked)
            if len(text) <= self.min_near_chars:
                continue
            for gram in char_ngrams(text) & anchors.keys():
                for position in anchors[gram]:
                    if self.probes[position].stem(masked) in text:
                        return Match("contained", self.ids[position], 1.0)
        return None

    def _near(self, probe: _Probe) -> Match | None:
        """The texts as they are first (so that every one-character edit of a 30+ character text is
        caught, whatever it touches), then with the patient's age and sex masked on both sides."""
        with_options = probe.norm_options is not None
        for masked in (False, True):
            text = probe.near_text(with_options, masked)
            # Only items of min_near_chars+ are indexed; the record may be a little shorter (a
            # deletion), the index's length filter keeps it within [t*m, m/t] of the item.
            index = self._gram_indexes.get((with_options, masked, numbers_in(text)))
            found = index.best(char_ngrams(text)) if index is not None else None
            if found is not None:
                position, score = found
                return Match("near", self.ids[position], round(score, 4))
        return None


# ===========================================================================
# Command line: where KorMedMCQA is read from (shared by every CLI that reads it), set sizes
# ===========================================================================
def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """``--raw-dir`` / ``--from-dir``: the two places KorMedMCQA can be read from."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--raw-dir", type=Path, default=None,
                       help=f"KorMedMCQA as written by download_all_datasets.py "
                            f"(default {RAW_DIR / 'by_source' / SOURCE_NAME})")
    where.add_argument("--from-dir", type=Path, default=None,
                       help="local hub mirror root (e.g. data/sample) read with datasets.load_dataset")


def source_from_args(args: argparse.Namespace) -> ItemSource:
    if args.from_dir is not None:
        return ItemSource(from_dir=args.from_dir)
    return ItemSource(raw_dir=args.raw_dir or RAW_DIR / "by_source" / SOURCE_NAME)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(parser)
    args = parser.parse_args(argv)
    source = source_from_args(args)
    sets = build_sets(source)
    print(json.dumps({name: count_by_config_split(items) | {"total": len(items)} for name, items in sets.items()},
                     ensure_ascii=False, indent=2))
    for reject in source.rejects:
        print(f"REJECT {reject}")
    return 1 if source.rejects else 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
