"""Medical divisions of Phase 5: the taxonomy, the two-stage annotator and per-division reports.

Every Phase 5 script imports this module; names and ids come only from ``med_division.json``.

The annotator cannot produce malformed output: it never parses free text written by a model.

* **Lexical stage** (default, CPU): the sample's text fields are split into kiwipiepy morphemes;
  runs of content morphemes (nouns, roots, affixes, Latin words, numbers) are joined and the
  taxonomy's keywords are matched on morpheme boundaries, leftmost-longest (so "간" matches the
  noun 간 but not 시간, and "급성 심근경색" wins over "심근경색"). Each match is evidence for its
  node: ``TERM_WEIGHT`` for disease/topic names (``terms_*``), ``KEYWORD_WEIGHT`` for findings,
  tests, drugs and anatomy (``keywords_*``), ``SPECIALTY_WEIGHT`` spread over a specialty's
  divisions, times the weight of the field it was found in (``FIELD_WEIGHTS``: the question and
  the answer count fully, reasoning half, the wrong options of a multiple-choice item 0.3).
  A top-level division's score is its evidence sorted from strongest, each item counting
  ``DECAY`` times the one before it: one specific name outweighs a list of generic cues.
* **Model stage** (``--model-scorer``): a causal LM ranks the ten division names by the
  log-likelihood it gives each Korean name right after a prompt holding the sample
  (``DIVISION_PROMPT``), minus the log-likelihood of the same name after the prompt with no sample
  (calibration against the model's prior for each name), softmax-normalised. The names are scored
  in one batched pass that reuses the prompt's keys/values.

Combination rule (``decide``), per sample:

1. no text at all -> ``UNKNOWN`` ("no text fields");
2. lexical division score below ``MIN_SIGNAL`` -> the model's division if it is sure
   (top probability >= ``MODEL_ALONE_MIN``), else ``GENERAL`` when general medical vocabulary is
   present (score >= ``GENERAL_MIN``), else ``UNKNOWN`` ("no medical keyword");
3. lexical confidence (top share x strength, see ``LexicalResult.confidence``) >= ``CONFIDENT``
   -> the lexical ranking decides, the model is not consulted;
4. otherwise the two distributions are mixed, ``c * lexical + (1 - c) * model`` with c the lexical
   confidence (lexical alone when no model is given);
5. no division holds ``MULTI_SHARE_MAX`` of the mixed mass while ``MULTI_MIN_COUNT`` divisions hold
   ``MULTI_MIN_SHARE`` each -> ``GENERAL`` (genuinely multi-division), followed by the two best.

The primary division is the winning top-level division refined down its sub-tree while one child
clearly leads the lexical evidence (e.g. 1 -> 1.4 -> 1.4.1); up to two secondaries follow, the
other divisions scoring at least ``SECONDARY_RATIO`` of the primary. The output fields are
``divisions`` (1-3 ids, primary first), ``primary_division`` and ``division_reasoning`` (the rule
used, the scores and the keywords behind them).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import signal
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from script import formats
from script.data_io import (
    DataError,
    Reject,
    atomic_open,
    atomic_write_json,
    count_lines,
    iter_jsonl,
    read_json,
    sha256_file,
    write_rejects,
)
from script.evaluation import batch_starts, left_padded_batch, score_mcq_letter_mode, tokenize_for_completion
from script.model_loading import load_model_for_eval
from script.training_config import DATA_DIR, DEFAULT_MODEL, DIVISIONS_MODEL_DIR

logger = logging.getLogger(__name__)

TAXONOMY_PATH = Path(__file__).resolve().parent / "med_division.json"  # read from the checkout, like data/sample
DIVISION_DIR = DATA_DIR / "division"  # the guide's first layout: annotate -> validate -> train per type
DIVISION_ADDED_DIR = DATA_DIR / "division_added"  # the guide's second layout: type folders + division folders
MODELS_DIR = DIVISIONS_MODEL_DIR  # generated models live under model/, never in the source tree
GENERAL = "GENERAL"
UNKNOWN = "UNKNOWN"
SPECIAL_IDS = (GENERAL, UNKNOWN)
MAX_DIVISIONS = 3

# Reliability tests only: SIGKILL the annotating process right after this many input records were
# handled (a real kill -9 at a known point; see annotate_jsonl). Unset, nothing happens.
KILL_AT_RECORD_ENV = "MEDGEMMA_KOREAN_KILL_AT_RECORD"

# ---- lexical evidence weights (see the module docstring) --------------------------------------
TERM_WEIGHT = 3.0  # a disease / condition / topic name
KEYWORD_WEIGHT = 1.0  # a finding, test, drug, procedure or anatomy word
SPECIALTY_WEIGHT = 0.5  # a specialty name, spread over the divisions it maps to
GENERAL_WEIGHT = 1.0  # general medical vocabulary (counts only towards GENERAL)
FIELD_WEIGHTS = {"question": 1.0, "answer": 1.0, "reasoning": 0.5, "options": 0.3}
REPEAT_BONUS = 0.5  # each further occurrence of a keyword in the same field, at most MAX_REPEATS
MAX_REPEATS = 2
DECAY = 0.5  # each further evidence item of a division counts half the one before

# ---- decision thresholds ------------------------------------------------------------------------
MIN_SIGNAL = 1.0  # lexical division score needed to name a division (one plain keyword)
GENERAL_MIN = 2.0  # general medical vocabulary needed for GENERAL when no division matched
CONFIDENT = 0.5  # lexical confidence at and above which the model is not consulted
MODEL_ALONE_MIN = 0.5  # model probability needed to decide alone (no lexical signal)
MULTI_SHARE_MAX = 0.4  # multi-division: the best division holds less than this share ...
MULTI_MIN_SHARE = 0.2  # ... and at least MULTI_MIN_COUNT divisions hold this share each
MULTI_MIN_COUNT = 3
SECONDARY_RATIO = 0.5  # a secondary division scores at least this share of the primary

# The model stage's prompt (a Korean question; the answer is a division's Korean name).
DIVISION_PROMPT = "다음 의료 텍스트는 어느 진료 분야에 속합니까? 분야 이름만 답하세요.\n\n{text}"


class TaxonomyError(DataError):
    """med_division.json cannot be used; the message says where and why."""


# ===========================================================================
# Taxonomy
# ===========================================================================
KEYWORD_KINDS = {"terms_ko": TERM_WEIGHT, "terms_en": TERM_WEIGHT,
                 "keywords_ko": KEYWORD_WEIGHT, "keywords_en": KEYWORD_WEIGHT}
_ID_RE = re.compile(r"^[1-9][0-9]*(\.[1-9][0-9]*)*$")


@dataclass(frozen=True)
class Division:
    id: str
    name_en: str
    name_ko: str
    keywords: dict[str, tuple[str, ...]]  # KEYWORD_KINDS key -> keywords

    @property
    def parent(self) -> str | None:
        return self.id.rsplit(".", 1)[0] if "." in self.id else None

    @property
    def top(self) -> str:
        return self.id.split(".")[0]


@dataclass(frozen=True)
class Specialty:
    name_ko: str
    name_en: str
    aliases: tuple[str, ...]
    divisions: tuple[str, ...]


@dataclass
class Taxonomy:
    divisions: dict[str, Division]  # in file order
    specialties: list[Specialty]
    path: str
    sha256: str

    def is_valid(self, division_id: Any) -> bool:
        return isinstance(division_id, str) and division_id in self.divisions

    @property
    def top_level(self) -> list[str]:
        """The major categories ("1" ... "10"), in file order."""
        return [d for d in self.divisions if "." not in d and d not in SPECIAL_IDS]

    def top(self, division_id: str) -> str:
        """The major category of an id (1.4.1 -> 1); GENERAL and UNKNOWN are their own."""
        return division_id if division_id in SPECIAL_IDS else division_id.split(".")[0]

    def children(self, division_id: str) -> list[str]:
        if not hasattr(self, "_children"):
            self._children: dict[str, list[str]] = defaultdict(list)
            for d, node in self.divisions.items():
                if node.parent is not None:
                    self._children[node.parent].append(d)
        return self._children.get(division_id, [])

    def name(self, division_id: str) -> str:
        node = self.divisions.get(division_id)
        return node.name_en if node else division_id

    def label(self, division_id: str) -> str:
        """``1.4.1 Ischemic Heart Disease`` -- an id with its English name."""
        return f"{division_id} {self.name(division_id)}"

    def resolve_label(self, text: str) -> str | None:
        """An id for a division id or name (Korean or English, any case/spacing), or a specialty
        name mapped to exactly one division; None when nothing matches."""
        key = normalize_term(text)
        if not key:
            return None
        if text.strip() in self.divisions:
            return text.strip()
        for division_id, node in self.divisions.items():
            if key in (normalize_term(node.name_en), normalize_term(node.name_ko)):
                return division_id
        for specialty in self.specialties:
            names = (specialty.name_ko, specialty.name_en, *specialty.aliases)
            if key in {normalize_term(n) for n in names} and len(specialty.divisions) == 1:
                return specialty.divisions[0]
        return None


def _problem(path: Path, where: str, reason: str) -> TaxonomyError:
    return TaxonomyError(f"{path}: {where}: {reason}")


def _string_list(value: Any, path: Path, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _problem(path, where, "expected a list of non-empty strings")
    return tuple(v.strip() for v in value)


def parse_taxonomy(doc: Any, path: Path, sha256: str = "") -> Taxonomy:
    """Check a taxonomy document and build the ``Taxonomy``.

    Rejected: a missing ``divisions`` list, malformed or duplicate ids, a node whose parent id is
    not defined, empty names, keyword lists that are not lists of strings, a keyword listed under
    two nodes (every keyword has one home), a missing GENERAL or UNKNOWN, and specialties mapped to
    ids that do not exist.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("divisions"), list):
        raise _problem(path, "top level", "expected an object with a 'divisions' list")
    divisions: dict[str, Division] = {}
    keyword_home: dict[str, tuple[str, str]] = {}
    for i, node in enumerate(doc["divisions"]):
        where = f"divisions[{i}]"
        if not isinstance(node, dict):
            raise _problem(path, where, "expected an object")
        division_id = node.get("id")
        if not isinstance(division_id, str) or not (division_id in SPECIAL_IDS or _ID_RE.match(division_id)):
            raise _problem(path, where, f"id {division_id!r} is not a dotted number (1, 1.4, 1.4.1), GENERAL or UNKNOWN")
        where = f"{where} ({division_id})"
        if division_id in divisions:
            raise _problem(path, where, "duplicate id")
        for name in ("name_en", "name_ko"):
            if not isinstance(node.get(name), str) or not node[name].strip():
                raise _problem(path, where, f"missing or empty {name!r}")
        keywords = {kind: _string_list(node.get(kind, []), path, f"{where} {kind}") for kind in KEYWORD_KINDS}
        for kind, words in keywords.items():
            for word in words:
                key = normalize_term(word)
                if not key:
                    raise _problem(path, f"{where} {kind}", f"keyword {word!r} has no letters or digits")
                if key in keyword_home:
                    other_id, other_word = keyword_home[key]
                    raise _problem(path, f"{where} {kind}",
                                   f"keyword {word!r} is also listed under {other_id} ({other_word!r})")
                keyword_home[key] = (division_id, word)
        divisions[division_id] = Division(division_id, node["name_en"].strip(), node["name_ko"].strip(), keywords)
    for division_id, node in divisions.items():
        if node.parent is not None and node.parent not in divisions:
            raise _problem(path, f"division {division_id}", f"parent {node.parent} is not defined")
    for special in SPECIAL_IDS:
        if special not in divisions:
            raise _problem(path, "divisions", f"the special id {special} is missing")
    specialties = []
    seen_names: set[str] = set()
    for i, item in enumerate(doc.get("specialties", [])):
        where = f"specialties[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name_ko"), str) or not item["name_ko"].strip():
            raise _problem(path, where, "expected an object with a non-empty 'name_ko'")
        aliases = _string_list(item.get("aliases", []), path, f"{where} aliases")
        mapped = _string_list(item.get("divisions", []), path, f"{where} divisions")
        if not mapped:
            raise _problem(path, where, "maps to no division")
        for division_id in mapped:
            if division_id not in divisions or division_id == UNKNOWN:
                raise _problem(path, where, f"maps to {division_id!r}, which is not a division")
        for name in (item["name_ko"], *aliases):
            key = normalize_term(name)
            if key in seen_names or key in keyword_home:
                raise _problem(path, where, f"name {name!r} is listed twice (as a specialty or a keyword)")
            seen_names.add(key)
        specialties.append(Specialty(item["name_ko"].strip(), str(item.get("name_en", "")).strip(), aliases, mapped))
    return Taxonomy(divisions, specialties, str(path), sha256)


@functools.lru_cache(maxsize=4)
def _load_taxonomy(path: str, mtime: float) -> Taxonomy:
    return parse_taxonomy(read_json(path), Path(path), sha256_file(path))


def load_taxonomy(path: str | os.PathLike | None = None) -> Taxonomy:
    """Read and check ``med_division.json`` (cached until the file changes)."""
    path = Path(path) if path is not None else TAXONOMY_PATH
    if not path.is_file():
        raise TaxonomyError(f"{path}: taxonomy file not found")
    return _load_taxonomy(str(path), path.stat().st_mtime)


# ===========================================================================
# Lexical stage
# ===========================================================================
_LATIN_RE = re.compile(r"[A-Za-z]+")


def _singular(word: str) -> str:
    """Crude English singular so that 'seizures' meets 'seizure' (applied to keywords and text alike)."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def normalize_term(text: str) -> str:
    """Lower case, English words singular, letters and digits only: '급성 심근경색' -> '급성심근경색',
    'NT-proBNP' -> 'ntprobnp'. Keywords and text morphemes are compared in this form."""
    text = _LATIN_RE.sub(lambda m: _singular(m.group().lower()), text)
    return "".join(ch for ch in text if ch.isalnum())


# A keyword never starts on a particle, an ending, a suffix, a copula, a bound noun (뇌"내"출혈) or a
# symbol; Latin words, numbers and Hanja (SL, SN, SH) may start one. A one-syllable keyword (간, 폐)
# must be a whole noun morpheme that starts a word.
_NO_START_PREFIXES = ("J", "E", "XS", "VC", "NNB", "S")
_LATIN_START_TAGS = frozenset({"SL", "SN", "SH"})
_ONE_SYLLABLE_TAGS = frozenset({"NNG", "NNP", "XR"})
# A keyword may also end inside a morpheme that kiwipiepy glued to its particle ("반코마이신이").
PARTICLES = frozenset({"이", "가", "은", "는", "을", "를", "의", "에", "에서", "으로", "로", "와", "과", "도",
                       "만", "이다", "입니다", "이며", "이고", "에게", "께서", "란", "이란", "라는", "이라는"})
JOINERS = frozenset("-‐–·ㆍ/")
DISEASE_SUFFIX = "증"  # "condition": 심부전증, 빈혈증 name the same disease as 심부전, 빈혈
_PIECE_RE = re.compile(r"[A-Za-z]+|[^\W_]|\s|.", re.DOTALL)
BREAK = "\x00"  # stands for punctuation and line breaks in the compact text: no keyword spans it


@functools.lru_cache(maxsize=1)
def _kiwi():
    from kiwipiepy import Kiwi

    return Kiwi()


@dataclass
class CompactText:
    """``text`` without spaces and joiners, lower case, English words singular (``normalize_term``
    form), with the positions where a keyword may start and end (kiwipiepy morpheme boundaries)."""

    text: str
    starts: dict[int, tuple[str, int]]  # compact offset -> (tag, compact end) of the morpheme starting there
    ends: set[int]
    noun_ends: set[int]  # ends of nominalised verbs (두근거리+ㅁ): where a keyword starting on a verb may end
    word_starts: set[int]  # offsets that begin a word of the original text


def compact_text(text: str) -> CompactText:
    pieces: list[str] = []
    position = [0] * (len(text) + 1)  # original offset -> compact offset
    length = 0
    word_starts: set[int] = set()
    for match in _PIECE_RE.finditer(text):
        piece = match.group()
        if match.start() == 0 or not text[match.start() - 1].isalnum():
            word_starts.add(length)
        if piece[0].isascii() and piece[0].isalpha():
            piece = _singular(piece.lower())
        elif piece.isalnum():
            piece = piece.lower()
        elif piece in JOINERS or (piece.isspace() and piece != "\n"):
            piece = ""
        else:
            piece = BREAK
        for offset in range(match.start(), match.end()):
            position[offset] = length
        pieces.append(piece)
        length += len(piece)
        position[match.end()] = length
    compact = "".join(pieces)
    starts: dict[int, tuple[str, int]] = {}
    ends: set[int] = set()
    noun_ends: set[int] = set()
    for token in _kiwi().tokenize(text):
        begin, end = position[token.start], position[min(token.start + token.len, len(text))]
        if end <= begin:
            continue
        ends.add(end)
        if token.tag == "ETN":
            noun_ends.add(end)
        if token.tag.startswith(_NO_START_PREFIXES) and token.tag not in _LATIN_START_TAGS:
            continue
        if begin not in starts or starts[begin][1] < end:
            starts[begin] = (token.tag, end)
        surface = compact[begin:end]
        for cut in range(1, len(surface)):  # glued particle: the keyword may end before it
            if surface[cut:] in PARTICLES:
                ends.add(begin + cut)
        if len(surface) > 1 and surface.endswith(DISEASE_SUFFIX):  # 심근경색증 is 심근경색
            ends.add(end - 1)
    return CompactText(compact, starts, ends, noun_ends, word_starts)


@dataclass(frozen=True)
class Keyword:
    text: str  # as written in the taxonomy
    key: str  # normalize_term(text)
    targets: tuple[tuple[str, float], ...]  # (division id, weight); GENERAL for general vocabulary


@dataclass(frozen=True)
class Evidence:
    division: str
    keyword: str
    field: str
    weight: float


@dataclass
class LexicalResult:
    """What the lexical stage found in one sample."""

    evidence: list[Evidence]
    scores: dict[str, float]  # top-level division -> decayed score
    general: float  # general medical vocabulary score
    has_text: bool

    @property
    def total(self) -> float:
        return sum(self.scores.values())

    def ranking(self) -> list[tuple[str, float]]:
        return sorted(self.scores.items(), key=lambda kv: -kv[1])

    def distribution(self) -> dict[str, float]:
        total = self.total
        return {d: s / total for d, s in self.scores.items()} if total else {}

    @property
    def confidence(self) -> float:
        """Share of the best division times its strength (one disease name = full strength)."""
        ranking = self.ranking()
        if not ranking or not self.total:
            return 0.0
        best = ranking[0][1]
        return best / self.total * min(1.0, best / TERM_WEIGHT)


class LexicalScorer:
    """Taxonomy keywords matched on kiwipiepy morpheme boundaries (see the module docstring)."""

    def __init__(self, taxonomy: Taxonomy):
        self.taxonomy = taxonomy
        keywords: dict[str, Keyword] = {}
        for division_id, node in taxonomy.divisions.items():
            for kind, words in node.keywords.items():
                weight = GENERAL_WEIGHT if division_id == GENERAL else KEYWORD_KINDS[kind]
                for word in words:
                    keywords[normalize_term(word)] = Keyword(word, normalize_term(word), ((division_id, weight),))
        for specialty in taxonomy.specialties:
            share = SPECIALTY_WEIGHT / len(specialty.divisions)
            targets = tuple((d, share) for d in specialty.divisions)
            for name in (specialty.name_ko, *specialty.aliases):
                keywords[normalize_term(name)] = Keyword(name, normalize_term(name), targets)
        self.by_first: dict[str, list[Keyword]] = defaultdict(list)
        for keyword in keywords.values():
            self.by_first[keyword.key[0]].append(keyword)
        for bucket in self.by_first.values():
            bucket.sort(key=lambda k: -len(k.key))

    def matches(self, text: str) -> list[Keyword]:
        """Keywords found in ``text``, leftmost-longest, starting and ending on morpheme boundaries."""
        compact = compact_text(text)
        found, resume = [], 0
        for begin in sorted(compact.starts):
            if begin < resume:
                continue
            tag, token_end = compact.starts[begin]
            for keyword in self.by_first.get(compact.text[begin], ()):
                end = begin + len(keyword.key)
                if end not in compact.ends or not compact.text.startswith(keyword.key, begin):
                    continue
                if len(keyword.key) == 1 and (tag not in _ONE_SYLLABLE_TAGS or token_end != end
                                              or begin not in compact.word_starts):
                    continue  # a one-syllable keyword (간, 폐, 암) is a noun starting a word: not 3일"간"
                if tag.startswith("V") and end not in compact.noun_ends:
                    continue  # on a verb only as a noun form: 두근거림 yes, 보고 ("seeing") no
                found.append(keyword)
                resume = end
                break
        return found

    def score(self, fields: Sequence[tuple[str, str]]) -> LexicalResult:
        """Evidence and decayed division scores for a sample's ``(field kind, text)`` pairs."""
        evidence: list[Evidence] = []
        general = 0.0
        for kind, text in fields:
            field_weight = FIELD_WEIGHTS[kind]
            counts: dict[str, int] = defaultdict(int)
            by_key: dict[str, Keyword] = {}
            for keyword in self.matches(text):
                counts[keyword.key] += 1
                by_key[keyword.key] = keyword
            for key, count in counts.items():
                repeat = 1.0 + REPEAT_BONUS * min(count - 1, MAX_REPEATS)
                for division_id, weight in by_key[key].targets:
                    value = weight * field_weight * repeat
                    if division_id == GENERAL:
                        general += value
                    else:
                        evidence.append(Evidence(division_id, by_key[key].text, kind, value))
        per_top: dict[str, list[float]] = defaultdict(list)
        for item in evidence:
            per_top[self.taxonomy.top(item.division)].append(item.weight)
        scores = {top: sum(w * DECAY ** i for i, w in enumerate(sorted(weights, reverse=True)))
                  for top, weights in per_top.items()}
        return LexicalResult(evidence, scores, general, has_text=any(text.strip() for _, text in fields))

    def refine(self, top: str, evidence: Sequence[Evidence]) -> str:
        """The most specific node under ``top`` that the evidence clearly points to (1 -> 1.4 -> 1.4.1)."""
        mass: dict[str, float] = defaultdict(float)
        for item in evidence:
            if self.taxonomy.top(item.division) != top:
                continue
            node = item.division
            while node is not None:  # evidence for 1.4.1 also counts for 1.4 and 1
                mass[node] += item.weight
                node = self.taxonomy.divisions[node].parent
        current = top
        while True:
            ranked = sorted(((mass[c], c) for c in self.taxonomy.children(current) if mass[c] > 0), reverse=True)
            if not ranked or (len(ranked) > 1 and ranked[0][0] == ranked[1][0]):
                return current
            current = ranked[0][1]


# ===========================================================================
# What the annotator reads from a record
# ===========================================================================
# Fallback fields of records that are not refined ``messages`` records (raw rows, the guide's
# prompt/completion format, plain text): (field name, kind).
FALLBACK_FIELDS = (("question", "question"), ("instruction", "question"), ("input", "question"),
                   ("prompt", "question"), ("answer", "answer"), ("output", "answer"),
                   ("completion", "answer"), ("response", "answer"), ("text", "answer"))
_REASONING_BLOCKS = tuple(
    re.compile(re.escape(start) + r"(.*?)" + re.escape(end), re.DOTALL)
    for start, end in ((formats.REASONING_START, formats.REASONING_END),
                       (formats.MCQ_REASONING_START, formats.MCQ_REASONING_END)))


def _split_reasoning(text: str) -> list[tuple[str, str]]:
    parts = []
    for pattern in _REASONING_BLOCKS:
        for match in pattern.finditer(text):
            parts.append(("reasoning", match.group(1)))
        text = pattern.sub(" ", text)
    parts.append(("answer", text))
    return parts


def record_fields(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The ``(kind, text)`` pairs the annotator scores; kinds are the keys of ``FIELD_WEIGHTS``.

    A multiple-choice record (``question`` + ``options`` + ``answer`` letter) gives its stem, its
    correct option (as the answer) and the other options; a ``messages`` record gives the user
    turn and the assistant turn (``<R>…<R/>`` reasoning apart). The system prompt is never read:
    it is the same for every record of a type. Gold labels or earlier divisions are never read.
    """
    fields: list[tuple[str, str]] = []
    options = record.get("options")
    mcq = isinstance(record.get("question"), str) and isinstance(options, dict)
    if mcq:
        fields.append(("question", record["question"]))
        gold = record.get("answer")
        for letter, text in options.items():
            if isinstance(text, str):
                fields.append(("answer" if letter == gold else "options", text))
    messages = record.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                continue
            role = message.get("role")
            if role == "user" and not mcq:
                fields.append(("question", message["content"]))
            elif role == "assistant":
                fields.extend(part for part in _split_reasoning(message["content"])
                              if not (mcq and part[0] == "answer"))  # an MCQ's answer is its option text
    if not fields:
        for name, kind in FALLBACK_FIELDS:
            if isinstance(record.get(name), str):
                fields.extend((k, t) if kind == "answer" else (kind, t) for k, t in _split_reasoning(record[name]))
    return [(kind, text) for kind, text in fields if text.strip()]


# ===========================================================================
# Model stage
# ===========================================================================
class ModelScorer:
    """Ranks the top-level division names by a causal LM's calibrated conditional log-likelihood.

    ``score(texts)`` returns one ``{division id: probability}`` per text. Names are scored after the
    prompt in one pass per batch: the prompts run once (left-padded), their keys/values are
    repeated for every name, and the names' tokens run on top of them.
    """

    def __init__(self, model, tokenizer, taxonomy: Taxonomy, batch_size: int = 8, max_text_tokens: int = 256):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_text_tokens = max(1, batch_size), max_text_tokens
        self.ids = taxonomy.top_level
        self.name_tokens = [tokenizer(taxonomy.divisions[d].name_ko, add_special_tokens=False)["input_ids"]
                            for d in self.ids]
        if any(not tokens for tokens in self.name_tokens):
            raise ValueError("a division name encodes to no tokens")
        self._prior = None

    def prompt_ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.max_text_tokens]
        text = self.tokenizer.decode(ids) if ids else ""
        messages = formats.build_messages(None, DIVISION_PROMPT.format(text=text))
        return list(self.tokenizer(formats.render_prompt(self.tokenizer, messages), add_special_tokens=False)["input_ids"])

    def log_likelihoods(self, prompts: Sequence[Sequence[int]]):
        """Tensor [len(prompts), divisions]: sum of log p(name tokens | prompt)."""
        import torch


        model, n_names = self.model, len(self.name_tokens)
        device = next(model.parameters()).device
        input_ids, attention, positions = (t.to(device) for t in left_padded_batch(prompts, self.tokenizer.pad_token_id))
        rows = input_ids.shape[0]
        with torch.no_grad():
            out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True)
            first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # [B, V]
            first_ids = torch.tensor([tokens[0] for tokens in self.name_tokens], device=device)
            total = first[:, first_ids]  # [B, D]
            longest = max(len(tokens) for tokens in self.name_tokens)
            if longest > 1:
                cache = out.cache
                cache.batch_repeat_interleave(n_names)
                width = longest - 1
                cont = torch.full((rows * n_names, width), self.tokenizer.pad_token_id, dtype=torch.long)
                cont_mask = torch.zeros((rows * n_names, width), dtype=torch.long)
                targets = torch.zeros((rows * n_names, width), dtype=torch.long)
                keep = torch.zeros((rows * n_names, width), dtype=torch.bool)
                for r in range(rows):
                    for d, tokens in enumerate(self.name_tokens):
                        k = len(tokens) - 1
                        if k:
                            cont[r * n_names + d, :k] = torch.tensor(tokens[:-1])
                            targets[r * n_names + d, :k] = torch.tensor(tokens[1:])
                            cont_mask[r * n_names + d, :k] = 1
                            keep[r * n_names + d, :k] = True
                start = positions[:, -1:].repeat_interleave(n_names, dim=0) + 1
                cont_positions = start + torch.arange(width, device=device).unsqueeze(0)
                mask = torch.cat([attention.repeat_interleave(n_names, dim=0), cont_mask.to(device)], dim=1)
                out2 = model(input_ids=cont.to(device), attention_mask=mask, position_ids=cont_positions,
                             cache=cache, use_cache=True)
                logprobs = torch.log_softmax(out2.logits.float(), dim=-1)
                picked = logprobs.gather(-1, targets.to(device).unsqueeze(-1)).squeeze(-1) * keep.to(device)
                total = total + picked.sum(dim=-1).view(rows, n_names)
        return total.cpu()

    def score(self, texts: Sequence[str]) -> list[dict[str, float]]:
        import torch

        was_training = self.model.training
        self.model.eval()
        try:
            if self._prior is None:  # content-free prompt: the model's own preference for each name
                self._prior = self.log_likelihoods([self.prompt_ids("")])[0]
            results = []
            for begin in range(0, len(texts), self.batch_size):
                prompts = [self.prompt_ids(t) for t in texts[begin: begin + self.batch_size]]
                calibrated = self.log_likelihoods(prompts) - self._prior
                for row in torch.softmax(calibrated, dim=-1).tolist():
                    results.append(dict(zip(self.ids, row)))
        finally:
            self.model.train(was_training)
        return results


def model_text(fields: Sequence[tuple[str, str]]) -> str:
    """The sample as the model stage sees it: question, then answer (options and reasoning left out)."""
    return "\n".join(text for kind, text in fields if kind in ("question", "answer"))


# ===========================================================================
# The combination rule
# ===========================================================================
@dataclass
class Annotation:
    divisions: list[str]
    primary_division: str
    division_reasoning: str
    rule: str

    def fields(self) -> dict:
        return {"divisions": self.divisions, "primary_division": self.primary_division,
                "division_reasoning": self.division_reasoning}


def _evidence_note(lexical: LexicalResult, top: str, limit: int = 4) -> str:
    items: dict[str, float] = defaultdict(float)
    for item in lexical.evidence:
        if item.division.split(".")[0] == top:
            items[item.keyword] += item.weight
    ordered = sorted(items.items(), key=lambda kv: -kv[1])[:limit]
    return ", ".join(word for word, _ in ordered)


def decide(taxonomy: Taxonomy, scorer: LexicalScorer, lexical: LexicalResult,
           model_probs: Mapping[str, float] | None = None) -> Annotation:
    """Apply the combination rule of the module docstring to one sample."""
    lexical_part = "; ".join(f"{d}={s:.2f} [{_evidence_note(lexical, d)}]" for d, s in lexical.ranking()[:3])
    model_part = ""
    if model_probs:
        best = sorted(model_probs.items(), key=lambda kv: -kv[1])[:3]
        model_part = " Model: " + ", ".join(f"{d} p={p:.2f}" for d, p in best) + "."

    def note(rule: str, what: str) -> str:
        evidence = f" Lexical: {lexical_part}." if lexical_part else ""
        return f"{what}{evidence}{model_part} Rule: {rule}."

    if not lexical.has_text:
        return Annotation([UNKNOWN], UNKNOWN, "Unknown: no text fields (messages, question/options, prompt, "
                          "text, ...) to read. Rule: no-text.", "no-text")
    if lexical.total < MIN_SIGNAL:
        if model_probs:
            division, p = max(model_probs.items(), key=lambda kv: kv[1])
            if p >= MODEL_ALONE_MIN:
                return Annotation([division], division, note("model-only", f"Primary: {taxonomy.label(division)} "
                                  f"(no keyword; the model is sure, p={p:.2f})."), "model-only")
        if lexical.general >= GENERAL_MIN:
            return Annotation([GENERAL], GENERAL, note("general-vocabulary", "General: medical vocabulary "
                              f"({lexical.general:.1f}) but no division keyword."), "general-vocabulary")
        reason = ("no medical keyword" if not lexical.evidence and not lexical.general
                  else f"too little signal (division score {lexical.total:.2f} < {MIN_SIGNAL})")
        return Annotation([UNKNOWN], UNKNOWN, note("no-signal", f"Unknown: {reason}."), "no-signal")

    confidence = lexical.confidence
    if model_probs and confidence < CONFIDENT:
        lexical_dist = lexical.distribution()
        mixed = {d: confidence * lexical_dist.get(d, 0.0) + (1 - confidence) * model_probs.get(d, 0.0)
                 for d in taxonomy.top_level}
        rule = f"combined (lexical confidence {confidence:.2f} < {CONFIDENT})"
    else:
        mixed = lexical.distribution()
        rule = f"lexical (confidence {confidence:.2f})"
    ranking = sorted(mixed.items(), key=lambda kv: (-kv[1], taxonomy.top_level.index(kv[0])))
    best_top, best_share = ranking[0]
    strong = [d for d, share in ranking if share >= MULTI_MIN_SHARE]
    refined = [scorer.refine(d, lexical.evidence) for d, _ in ranking]
    if best_share < MULTI_SHARE_MAX and len(strong) >= MULTI_MIN_COUNT:
        divisions = [GENERAL, *refined[:MAX_DIVISIONS - 1]]
        names = ", ".join(taxonomy.label(d) for d in divisions[1:])
        return Annotation(divisions, GENERAL, note(rule, f"General: multi-division ({len(strong)} divisions hold "
                          f">= {MULTI_MIN_SHARE:.0%} each; best {best_share:.0%}): {names}."), "multi-division")
    primary = refined[0]
    secondaries = [r for (d, share), r in zip(ranking[1:], refined[1:]) if share >= SECONDARY_RATIO * best_share]
    divisions = [primary, *secondaries[:MAX_DIVISIONS - 1]]
    what = f"Primary: {taxonomy.label(primary)} ({taxonomy.name(best_top)})."
    if len(divisions) > 1:
        what += " Secondary: " + ", ".join(taxonomy.label(d) for d in divisions[1:]) + "."
    return Annotation(divisions, primary, note(rule, what), rule.split(" ")[0])


# ===========================================================================
# The annotator: lexical stage + optional model stage
# ===========================================================================
class DivisionAnnotator:
    def __init__(self, taxonomy: Taxonomy, model_scorer: ModelScorer | None = None, model_name: str | None = None):
        self.taxonomy = taxonomy
        self.lexical = LexicalScorer(taxonomy)
        self.model_scorer = model_scorer
        self.model_name = model_name

    def settings(self) -> dict:
        """What decides the output: a checkpoint only resumes under the same settings."""
        return {"taxonomy_sha256": self.taxonomy.sha256, "model_scorer": self.model_name if self.model_scorer else None}

    def annotate_many(self, records: Sequence[Mapping[str, Any]]) -> list[Annotation]:
        fields = [record_fields(r) for r in records]
        lexical = [self.lexical.score(f) for f in fields]
        model_probs: list[dict | None] = [None] * len(records)
        if self.model_scorer is not None:
            # the model is only consulted where the lexical stage is not confident (rule 3)
            need = [i for i, lex in enumerate(lexical) if lex.has_text and lex.confidence < CONFIDENT]
            for i, probs in zip(need, self.model_scorer.score([model_text(fields[i]) for i in need])):
                model_probs[i] = probs
        return [decide(self.taxonomy, self.lexical, lex, probs) for lex, probs in zip(lexical, model_probs)]

    def annotate(self, record: Mapping[str, Any]) -> Annotation:
        return self.annotate_many([record])[0]


def add_annotator_arguments(parser) -> None:
    """Flags shared by annotate_divisions.py and add_divisions_to_reviewed.py."""
    g = parser.add_argument_group("annotator")
    g.add_argument("--taxonomy", type=Path, default=TAXONOMY_PATH, help="taxonomy file (default: %(default)s)")
    g.add_argument("--model-scorer", action="store_true",
                   help="add the model stage: a causal LM ranks division names by log-likelihood where the "
                        "lexical stage is not confident (default: lexical only)")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help="model of the model stage: registry name (tiny, medgemma-4b, ...), model dir or hub id "
                        "(default: %(default)s)")
    g.add_argument("--device", default="auto", help="device of the model stage: cpu, cuda, cuda:N, auto (default: auto)")
    g.add_argument("--batch-size", type=int, default=16, help="samples per model-stage batch (default: %(default)s)")
    g.add_argument("--max-text-tokens", type=int, default=256,
                   help="sample tokens the model stage reads (default: %(default)s)")
    g.add_argument("--checkpoint-every", type=int, default=100,
                   help="commit annotated records to disk every N samples (default: %(default)s)")
    g.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint next to the output (no record twice, none missing)")
    g.add_argument("--max-reject-fraction", type=float, default=0.05,
                   help="exit 1 when more than this share of a file's lines is unreadable (default: %(default)s)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_annotator_args(parser, argv: Sequence[str] | None = None):
    """Add the annotator flags to ``parser``, parse ``argv`` and check them."""
    add_annotator_arguments(parser)
    args = parser.parse_args(argv)
    if args.checkpoint_every <= 0 or args.batch_size <= 0:
        parser.error("--checkpoint-every and --batch-size must be positive")
    return args


def too_many_rejects(stats: Mapping[str, Any], max_fraction: float) -> str | None:
    """Why an annotated file cannot be trusted (too many unreadable lines), or None."""
    lines = stats.get("records", 0) + stats.get("rejected", 0)
    if lines and stats["rejected"] / lines > max_fraction:
        return (f"{stats['rejected']} of {lines} lines of {stats['input']} are unreadable "
                f"(see {stats['output']}.rejects.jsonl)")
    return None


def build_annotator(args) -> DivisionAnnotator:
    taxonomy = load_taxonomy(args.taxonomy)
    if not args.model_scorer:
        return DivisionAnnotator(taxonomy)

    loaded = load_model_for_eval(args.model, device=args.device)
    logger.info("model stage: %s on %s", loaded.info["name"], loaded.info["device"])
    scorer = ModelScorer(loaded.model, loaded.tokenizer, taxonomy, args.batch_size, args.max_text_tokens)
    return DivisionAnnotator(taxonomy, scorer, model_name=str(args.model))


# ===========================================================================
# Annotating a JSONL file with checkpoints
# ===========================================================================
def checkpoint_paths(output: Path) -> tuple[Path, Path]:
    """(records annotated so far, checkpoint state) beside ``output``."""
    return output.with_name(output.name + ".partial"), output.with_name(output.name + ".checkpoint.json")


def _input_identity(path: Path) -> dict:
    return {"path": str(path), "size": path.stat().st_size, "sha256": sha256_file(path)}


def _maybe_kill(handled: int) -> None:
    value = os.environ.get(KILL_AT_RECORD_ENV)
    if value and int(value) == handled:
        logger.warning("%s=%s: killing this process now (fault injection)", KILL_AT_RECORD_ENV, value)
        os.kill(os.getpid(), signal.SIGKILL)


def annotate_jsonl(input_path: str | os.PathLike, output_path: str | os.PathLike, annotator: DivisionAnnotator,
                   resume: bool = False, checkpoint_every: int = 100, batch_size: int = 16,
                   progress: bool = True) -> dict:
    """Annotate every record of ``input_path`` into ``output_path`` (same order, same fields plus
    ``divisions``, ``primary_division``, ``division_reasoning``).

    Records are appended to ``<output>.partial`` and committed every ``checkpoint_every`` records:
    the file is flushed to disk and ``<output>.checkpoint.json`` records how many input lines and
    output bytes are final. ``resume=True`` cuts the partial file back to the committed size and
    continues after the last committed line, so a kill loses at most the uncommitted records and
    nothing is written twice. When done, the partial file is renamed to ``output_path``. Lines that
    are not JSON objects go to ``<output>.rejects.jsonl`` with ``path:line: reason``.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise DataError(f"{input_path}: input file not found")
    partial, state_path = checkpoint_paths(output_path)
    identity = _input_identity(input_path)
    state = {"input": identity, "settings": annotator.settings(), "lines_done": 0, "records": 0,
             "partial_bytes": 0, "rejects": [], "counts": {}, "complete": False}
    if resume and state_path.is_file():
        saved = read_json(state_path)
        if saved.get("input") != identity or saved.get("settings") != state["settings"]:
            raise DataError(f"{state_path}: the checkpoint was made for another input file or other annotator "
                            "settings; run without --resume to start over")
        state = saved
        logger.info("resuming %s after line %d (%d records committed)", input_path, state["lines_done"],
                    state["records"])
    elif resume and output_path.is_file():
        logger.info("%s is complete already (no checkpoint beside it); nothing to do", output_path)
        return {"input": str(input_path), "output": str(output_path), "skipped": "already complete"}
    else:
        if state_path.is_file():
            logger.warning("%s exists: starting over (pass --resume to continue it)", state_path)
        partial.unlink(missing_ok=True)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    if not state["complete"]:
        _annotate_into(input_path, partial, state_path, state, annotator, checkpoint_every, batch_size, progress)
    if partial.exists():
        os.replace(partial, output_path)
    rejects_file = output_path.with_name(output_path.name + ".rejects.jsonl")
    if state["rejects"]:
        write_rejects(rejects_file, [Reject(**r) for r in state["rejects"]])
    else:
        rejects_file.unlink(missing_ok=True)
    state_path.unlink(missing_ok=True)
    counts = state["counts"]
    return {"input": str(input_path), "output": str(output_path), "records": state["records"],
            "rejected": len(state["rejects"]), "unknown": counts.get(UNKNOWN, 0), "general": counts.get(GENERAL, 0),
            "primary_top": {k: v for k, v in sorted(counts.items())}, "seconds": round(state.get("seconds", 0.0), 3)}


def _annotate_into(input_path: Path, partial: Path, state_path: Path, state: dict, annotator: DivisionAnnotator,
                   checkpoint_every: int, batch_size: int, progress: bool) -> None:
    if partial.exists():  # drop whatever a kill left after the last commit
        with open(partial, "r+b") as handle:
            handle.truncate(state["partial_bytes"])
    elif state["partial_bytes"]:
        raise DataError(f"{partial}: missing, but {state_path} says {state['partial_bytes']} bytes were committed")
    started = time.perf_counter()
    elapsed_before = state.get("seconds", 0.0)
    buffer: list[str] = []
    pending: list[tuple[int, dict]] = []
    last_line = state["lines_done"]
    new_rejects: list[dict] = []
    handled = state["records"] + len(state["rejects"])

    def on_reject(reject) -> None:
        if reject.line > state["lines_done"]:
            logger.warning("%s", reject)
            new_rejects.append({"path": reject.path, "line": reject.line, "reason": reject.reason, "raw": reject.raw})

    def flush_pending() -> None:
        nonlocal handled
        for (line, record), annotation in zip(pending, annotator.annotate_many([r for _, r in pending])):
            out = dict(record)
            out.update(annotation.fields())
            buffer.append(json.dumps(out, ensure_ascii=False) + "\n")
            top = annotator.taxonomy.top(annotation.primary_division)
            state["counts"][top] = state["counts"].get(top, 0) + 1
            handled += 1
            bar.update(1)
            _maybe_kill(handled)
        pending.clear()

    def commit() -> None:
        with open(partial, "ab") as handle:
            handle.write("".join(buffer).encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
            state["partial_bytes"] = handle.tell()
        state["records"] += len(buffer)
        state["rejects"].extend(new_rejects)
        state["lines_done"] = last_line
        state["seconds"] = elapsed_before + time.perf_counter() - started
        buffer.clear()
        new_rejects.clear()
        atomic_write_json(state_path, state)

    from tqdm.auto import tqdm

    bar = tqdm(total=count_lines(input_path), initial=handled, desc=f"divisions {input_path.name}",
               unit="rec", disable=not progress)
    try:
        for line, record in iter_jsonl(input_path, on_reject=on_reject):
            if line <= state["lines_done"]:
                continue
            pending.append((line, record))
            last_line = line
            if len(pending) >= batch_size or len(buffer) + len(pending) >= checkpoint_every:
                flush_pending()
            if len(buffer) >= checkpoint_every:
                commit()
        flush_pending()
        state["complete"] = True
        commit()
    finally:
        bar.close()


# ===========================================================================
# Validation and auto-fixes (the guide's checks)
# ===========================================================================
PROBLEM_KINDS = {
    "missing_field": "missing 'divisions' or 'primary_division' field",
    "invalid_id": "division id not in the taxonomy",
    "empty_divisions": "empty divisions list",
    "primary_not_in_divisions": "primary division not in the divisions list",
    "not_a_list": "divisions field is not a list",
}


def division_problems(record: Mapping[str, Any], taxonomy: Taxonomy) -> list[tuple[str, str]]:
    """The guide's checks on one record: ``[(kind, detail), ...]``, empty when the record is valid."""
    problems = []
    missing = [name for name in ("divisions", "primary_division") if record.get(name) is None]
    if missing:
        problems.append(("missing_field", ", ".join(missing)))
    divisions = record.get("divisions")
    if divisions is not None:
        if not isinstance(divisions, list):
            problems.append(("not_a_list", f"divisions is {type(divisions).__name__}: {divisions!r}"))
        elif not divisions:
            problems.append(("empty_divisions", "divisions is []"))
        else:
            invalid = [d for d in divisions if not taxonomy.is_valid(d)]
            if invalid:
                problems.append(("invalid_id", f"divisions {invalid!r}"))
    primary = record.get("primary_division")
    if primary is not None:
        if not taxonomy.is_valid(primary):
            problems.append(("invalid_id", f"primary_division {primary!r}"))
        elif isinstance(divisions, list) and primary not in divisions:
            problems.append(("primary_not_in_divisions", f"primary {primary!r} not in {divisions!r}"))
    return problems


def _as_id_list(value: Any) -> list:
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [part for part in re.split(r"[\s,;|]+", value) if part]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    return []


def fix_divisions(record: Mapping[str, Any], taxonomy: Taxonomy) -> tuple[dict, list[str]]:
    """The guide's auto-fixes: add missing fields, turn a non-list into a list, remove invalid ids,
    set the primary to the first valid division, replace an empty list with ["UNKNOWN"].

    Numbers are read as ids (1 -> "1"). When no listed id is valid but the primary is, the primary
    becomes the list. Returns the fixed copy and what was changed (empty when nothing was)."""
    fixed = dict(record)
    fixes = []
    raw = record.get("divisions")
    if raw is None:
        fixes.append("added missing 'divisions'")
    elif not isinstance(raw, list):
        fixes.append(f"divisions {raw!r} made a list")
    ids: list[str] = []
    for item in _as_id_list(raw):
        candidate = str(item) if isinstance(item, (int, float)) and not isinstance(item, bool) else item
        if taxonomy.is_valid(candidate):
            if candidate != item:
                fixes.append(f"id {item!r} read as {candidate!r}")
            if candidate not in ids:
                ids.append(candidate)
        else:
            fixes.append(f"removed invalid id {item!r}")
    primary = record.get("primary_division")
    if not ids:
        ids = [primary] if taxonomy.is_valid(primary) else [UNKNOWN]
        fixes.append(f"empty divisions list replaced with {ids!r}")
    if primary is None:
        fixes.append("added missing 'primary_division'")
    if primary not in ids:
        if primary is not None:
            fixes.append(f"primary {primary!r} set to the first valid division {ids[0]!r}")
        primary = ids[0]
    fixed["divisions"] = ids
    fixed["primary_division"] = primary
    return fixed, fixes


# ===========================================================================
# Per-division evaluation (train_with_divisions.py)
# ===========================================================================
WEAK_ACCURACY = 0.80  # the guide: weak below 80 % accuracy ...
WEAK_LOSS = math.log(3.0)  # ... or "high loss": above ln 3, the guide's perplexity target of 3.0


def division_key(record: Mapping[str, Any], level: str = "full") -> str:
    """The division a validation record is reported under: its primary (or first) division, or UNKNOWN."""
    primary = record.get("primary_division")
    if not isinstance(primary, str) or not primary:
        divisions = record.get("divisions")
        primary = divisions[0] if isinstance(divisions, list) and divisions and isinstance(divisions[0], str) else UNKNOWN
    return primary if level == "full" or primary in SPECIAL_IDS else primary.split(".")[0]


def is_mcq_record(record: Mapping[str, Any]) -> bool:
    options = record.get("options")
    return (isinstance(record.get("question"), str) and isinstance(options, dict)
            and record.get("answer") in options)


def completion_token_stats(model, tokenizer, records: Sequence[Mapping], batch_size: int = 8,
                           max_length: int = 512, progress: bool = False) -> list[dict]:
    """Per record, teacher-forced over its assistant turn: ``{"loss": mean NLL per completion token,
    "token_accuracy": share of completion tokens that are the argmax prediction, "tokens"}``.

    Rows are left-padded, so every record's completion ends the row and only the last positions'
    logits are computed (``logits_to_keep``): a 262k vocabulary times whole prompts would not fit."""
    import torch


    device = next(model.parameters()).device
    encoded = []
    for record in records:
        ids, start = tokenize_for_completion(tokenizer, record["messages"], max_length)
        encoded.append((ids, len(ids) - max(start, 1)))  # token t is predicted at position t - 1
    stats: list[dict] = []
    was_training = model.training
    model.eval()
    try:
        for begin in batch_starts(encoded, batch_size, progress, "division token stats"):
            chunk = encoded[begin: begin + batch_size]
            input_ids, attention, positions = left_padded_batch([ids for ids, _ in chunk], tokenizer.pad_token_id)
            keep = max(n for _, n in chunk) + 1
            with torch.no_grad():
                logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                               position_ids=positions.to(device), use_cache=False, logits_to_keep=keep).logits
            for row, (ids, n) in enumerate(chunk):
                if n <= 0:  # the completion was cut away by max_length
                    stats.append({"loss": float("nan"), "token_accuracy": 0.0, "tokens": 0})
                    continue
                logprobs = torch.log_softmax(logits[row, keep - 1 - n: keep - 1].float(), dim=-1)
                targets = torch.tensor(ids[len(ids) - n:], device=logprobs.device)
                nll = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                correct = (logprobs.argmax(dim=-1) == targets).float()
                stats.append({"loss": float(nll.mean()), "token_accuracy": float(correct.mean()), "tokens": n})
    finally:
        model.train(was_training)
    return stats


def aggregate_division_rows(rows: Iterable[Mapping[str, Any]], taxonomy: Taxonomy | None = None,
                            weak_accuracy: float = WEAK_ACCURACY, weak_loss: float = WEAK_LOSS) -> dict:
    """``rows`` of ``{"division", "accuracy", "loss", "mcq"}`` (one per record) -> the report:
    per division ``accuracy`` (mean of the records' accuracies), ``avg_loss`` (mean of their mean
    completion losses), ``count``, ``mcq_count``, ``weak`` and why; ``OVERALL`` over all records."""
    groups: dict[str, list[Mapping]] = defaultdict(list)
    for row in rows:
        groups[row["division"]].append(row)

    def summary(items: Sequence[Mapping]) -> dict:
        losses = [r["loss"] for r in items if r["loss"] == r["loss"]]  # NaN: no completion token left
        return {"accuracy": round(sum(r["accuracy"] for r in items) / len(items), 6),
                "count": len(items),
                "avg_loss": round(sum(losses) / len(losses), 6) if losses else None,
                "mcq_count": sum(bool(r["mcq"]) for r in items)}

    def order(key: str) -> tuple:
        return (key in SPECIAL_IDS, [int(p) for p in key.split(".")] if key not in SPECIAL_IDS else [0], key)

    report: dict[str, dict] = {}
    for key in sorted(groups, key=order):
        entry = summary(groups[key])
        reasons = []
        if entry["accuracy"] < weak_accuracy:
            reasons.append(f"accuracy {entry['accuracy']:.2%} < {weak_accuracy:.0%}")
        if entry["avg_loss"] is not None and entry["avg_loss"] > weak_loss:
            reasons.append(f"avg loss {entry['avg_loss']:.4f} > {weak_loss:.4f}")
        entry.update({"name": taxonomy.name(key) if taxonomy else key, "weak": bool(reasons), "weak_reasons": reasons})
        report[key] = entry
    everything = [r for items in groups.values() for r in items]
    if everything:
        report["OVERALL"] = summary(everything)
    return report


def evaluate_by_division(model, tokenizer, records: Sequence[Mapping[str, Any]], taxonomy: Taxonomy,
                         batch_size: int = 8, max_length: int = 512, level: str = "full",
                         weak_accuracy: float = WEAK_ACCURACY, weak_loss: float = WEAK_LOSS,
                         progress: bool = False) -> dict:
    """Per-division accuracy, average completion loss and count on ``records`` (``messages`` records).

    A record's accuracy: for a multiple-choice record (question + options + answer letter), 1 or 0
    from letter mode (``evaluation.score_mcq_letter_mode``, the type-3 prompt); for any other
    record, the share of its completion tokens the model predicts exactly (teacher-forced argmax).
    Its loss is the mean NLL of its completion tokens. See ``aggregate_division_rows``."""
    token_stats = completion_token_stats(model, tokenizer, records, batch_size, max_length, progress=progress)
    mcq_index = [i for i, r in enumerate(records) if is_mcq_record(r)]
    letters = score_mcq_letter_mode(model, tokenizer, [dict(records[i]) for i in mcq_index], batch_size,
                                    progress=progress)
    correct = {i: bool(p["correct"]) for i, p in zip(mcq_index, letters)}
    rows = [{"division": division_key(r, level), "loss": s["loss"], "mcq": i in correct,
             "accuracy": float(correct[i]) if i in correct else s["token_accuracy"]}
            for i, (r, s) in enumerate(zip(records, token_stats))]
    return aggregate_division_rows(rows, taxonomy, weak_accuracy, weak_loss)


def format_division_table(report: Mapping[str, Mapping]) -> str:
    """The guide's 'Division Performance' table."""
    rule, thin = "=" * 60, "-" * 60
    lines = [rule, "Division Performance", rule, f"{'Division':<16}{'Count':>9}{'Accuracy':>11}{'Avg Loss':>11}", thin]
    for key, entry in report.items():
        if key == "OVERALL":
            continue
        loss = f"{entry['avg_loss']:.4f}" if entry["avg_loss"] is not None else "-"
        flag = "  weak" if entry.get("weak") else ""
        lines.append(f"{key:<16}{entry['count']:>9}{entry['accuracy']:>11.2%}{loss:>11}{flag}")
    lines.append(thin)
    if "OVERALL" in report:
        overall = report["OVERALL"]
        lines.append(f"{'OVERALL':<16}{overall['count']:>9}{overall['accuracy']:>11.2%}")
    lines.append(rule)
    return "\n".join(lines)


def plot_division_report(report: Mapping[str, Mapping], path: str | os.PathLike, title: str = "",
                         weak_accuracy: float = WEAK_ACCURACY, weak_loss: float = WEAK_LOSS) -> Path:
    """Bar charts of accuracy and average loss per division (weak ones red), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    keys = [k for k in report if k != "OVERALL"]
    colours = ["#c0392b" if report[k].get("weak") else "#2e86c1" for k in keys]
    fig, (acc_ax, loss_ax) = plt.subplots(2, 1, figsize=(max(6.0, 0.55 * len(keys) + 2), 7), sharex=True)
    positions = list(range(len(keys)))  # ids like "1.10" are labels, not numbers
    acc_ax.bar(positions, [100 * report[k]["accuracy"] for k in keys], color=colours)
    acc_ax.axhline(100 * weak_accuracy, color="grey", linestyle="--", linewidth=1)
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.set_ylim(0, 100)
    acc_ax.set_title(title or "Division performance (red: weak)")
    loss_ax.bar(positions, [report[k]["avg_loss"] or 0.0 for k in keys], color=colours)
    loss_ax.axhline(weak_loss, color="grey", linestyle="--", linewidth=1)
    loss_ax.set_ylabel("average completion loss")
    loss_ax.set_xlabel("division")
    loss_ax.set_xticks(positions, keys, rotation=45)
    fig.tight_layout()
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
    return path


@dataclass
class DivisionFileReport:
    """Counts of one annotated file (check_divisions.py)."""

    path: str
    total: int = 0
    valid: int = 0
    invalid: int = 0
    unknown: int = 0
    missing_fields: int = 0
    unreadable: int = 0
    problems: dict[str, int] = field(default_factory=dict)
    invalid_ids: dict[str, int] = field(default_factory=dict)
    primary_top: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)


def check_file(path: str | os.PathLike, taxonomy: Taxonomy, max_examples: int = 10) -> DivisionFileReport:
    """Valid / invalid / unknown / missing-field counts and the primary distribution of one file.

    valid + invalid + unknown = total: invalid = any of the guide's problems (missing fields are a
    subset of invalid), unknown = no problem and primary UNKNOWN. The distribution counts the top
    level of every usable primary division (valid and unknown records)."""
    report = DivisionFileReport(str(path))

    def on_reject(reject) -> None:
        report.unreadable += 1
        if len(report.examples) < max_examples:
            report.examples.append(str(reject))

    for line, record in iter_jsonl(path, on_reject=on_reject):
        report.total += 1
        problems = division_problems(record, taxonomy)
        if problems:
            report.invalid += 1
            for kind, detail in problems:
                report.problems[kind] = report.problems.get(kind, 0) + 1
                if len(report.examples) < max_examples:
                    report.examples.append(f"{path}:{line}: {PROBLEM_KINDS[kind]} ({detail})")
            if any(kind == "missing_field" for kind, _ in problems):
                report.missing_fields += 1
            for value in ([*record.get("divisions", [])] if isinstance(record.get("divisions"), list) else []) + \
                    [record.get("primary_division")]:
                if value is not None and not taxonomy.is_valid(value):
                    report.invalid_ids[repr(value)] = report.invalid_ids.get(repr(value), 0) + 1
            continue
        primary = record["primary_division"]
        if primary == UNKNOWN:
            report.unknown += 1
        else:
            report.valid += 1
        top = taxonomy.top(primary)
        report.primary_top[top] = report.primary_top.get(top, 0) + 1
    return report
