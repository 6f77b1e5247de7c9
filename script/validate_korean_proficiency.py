"""Korean proficiency of the training data: Korean character ratio and medical-term coverage.

    python -m script.validate_korean_proficiency --all
    python -m script.validate_korean_proficiency --file data/refined/type1_text/train.jsonl
    python -m script.validate_korean_proficiency --all --input data/refined --no-fail --records-output /tmp/r.jsonl

What is measured, per record, then averaged per type (the guide's "Korean Proficiency Validation"):

* **Korean ratio** = Hangul characters (syllables and jamo) / letters (``str.isalpha``: Hangul, Latin,
  Hanja, ...). Digits, punctuation and spaces count for neither side, so "가나다 abc 123" is 3/6 = 0.5.
  The system prompt is left out (it is one constant per type). Types 1/2/4: user + assistant text;
  type 3 (and 02_kor_med_test): the question stem and option texts, because the answer is a letter.
  For types 2/4 the reasoning block and the final answer are also reported on their own.
* **Medical-term coverage** = share of records that contain at least one term of a medical lexicon
  (the refined or raw medical dictionary plus ``CURATED_TERMS``). Matching is on kiwipiepy morphemes,
  never on raw substrings: a term matches a run of whole consecutive morphemes ("진단" is found in
  "환자를 진단했다" but not in "전진단계", which is 전진 + 단계). See ``Lexicon``.

Targets (the guide's "Recommended Metrics"): Korean ratio >= 0.85 for types 1/2 and for the type-3
questions, medical-term coverage >= 0.70 for types 1-4 and 02_kor_med_test. Type 4's ratio is
reported, not checked (the guide notes its reasoning as English); 00_plain_text is general Korean
text, so its figures are reported only.

``--all`` reads ``<input>/<type>/*.jsonl`` for the four training types and
``<input>/02_kor_med_test/train.jsonl`` when present (``--input`` defaults to the clean data, or the
refined data before exclusion has run); ``--file`` reads any of these files or a 00_plain_text
shard (the type comes from each record). Prints a table, writes a JSON report (``--output``),
exit status 1 when a target fails or a line cannot be read (0 with ``--no-fail``), 2 when there is
nothing to read.
"""

from __future__ import annotations

import argparse
import functools
import heapq
import json
import logging
import re
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from script.cli import setup_logging
from script.data_io import (
    DataError,
    Reject,
    atomic_open,
    atomic_write_json,
    count_lines,
    iter_jsonl,
    read_json,
    write_rejects,
)
from script.formats import (
    OPTION_LETTERS,
    TRAINING_TYPES,
    TYPE1_TEXT,
    TYPE2_TEXT_REASONING,
    TYPE3_WORD,
    TYPE4_WORD_REASONING,
    split_reasoning,
)
from script.sources import get_source, raw_path
from script.training_config import CLEAN_DIR, LOG_DIR, RAW_DIR, REFINED_DIR

logger = logging.getLogger("validate_korean_proficiency")

PLAIN_TEXT = "00_plain_text"  # refined/00_plain_text/train-*.jsonl: {"id", "source", "text"}
KOR_MED_TEST = "02_kor_med_test"  # refined/02_kor_med_test/*.jsonl: {"question", "A".."E", "answer"}
MEDICAL_DICT_FILE = "01_medical_dict.json"
RECORD_KINDS = (*TRAINING_TYPES, KOR_MED_TEST, PLAIN_TEXT)

KOREAN_RATIO_TARGET = 0.85
COVERAGE_TARGET = 0.70
DEFAULT_OUTPUT = LOG_DIR / "korean_proficiency.json"
DEFAULT_BATCH = 256


# ===========================================================================
# Korean character ratio (also used by refine_scripts/refine_plain_text.py: one definition)
# ===========================================================================
# Hangul syllables, jamo, compatibility jamo, jamo extended A/B, halfwidth jamo. Unassigned code
# points inside these blocks are not letters, which count_hangul checks with str.isalpha.
_NOT_HANGUL = re.compile("[^\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\ud7b0-\ud7ff\uffa0-\uffdc]+")


def count_hangul(text: str) -> int:
    """Hangul letters in ``text`` (syllables and jamo)."""
    return sum(map(str.isalpha, _NOT_HANGUL.sub("", text)))


def count_letters(text: str) -> int:
    """Letters of any script (``str.isalpha``); ``map`` keeps the per-character loop in C."""
    return sum(map(str.isalpha, text))


def korean_ratio(text: str) -> float:
    """Hangul among letters; 0.0 for text without letters."""
    letters = count_letters(text)
    return count_hangul(text) / letters if letters else 0.0


# ===========================================================================
# Medical lexicon matched on kiwipiepy morphemes
# ===========================================================================
# Common clinical words (the guide's vocabulary list and its neighbours). Single syllables such as
# 간 (liver / interval) or 폐 (lung / nuisance) are left out: as morphemes they are too ambiguous.
CURATED_TERMS = (
    "환자", "진단", "치료", "증상", "질병", "질환", "약물", "검사", "수술", "처방", "투여", "복용",
    "감염", "염증", "통증", "발열", "혈압", "혈액", "혈관", "종양", "세포", "병원", "의사", "간호사",
    "진료", "입원", "외래", "응급", "합병증", "부작용", "예후", "소견", "병변", "감별", "의학", "의료",
    "처치", "재활", "예방", "백신", "항생제", "마취", "호흡", "심장", "당뇨병", "고혈압", "골절",
    "급성", "만성", "바이러스", "세균", "증후군",
)

# Morpheme tags that can be part of a (compound) term: nouns, numerals, prefixes/suffixes that build
# nouns (고-혈압, 감염-성), roots, Latin/Hanja/numbers and joining symbols (N-아세틸시스테인).
_TERM_TAG_PREFIXES = ("NN", "NR", "XPN", "XSN", "XR", "SL", "SH", "SN", "SO")
MAX_TERM_MORPHEMES = 8
_PUNCTUATION_TAGS = ("SF", "SP", "SS")  # sentence marks, commas, brackets: not part of a term's spelling


def is_term_tag(tag: str) -> bool:
    return tag.startswith(_TERM_TAG_PREFIXES)


def morpheme_form(form: str) -> str:
    """Kiwi may return a multi-word proper noun as one token ("비후성 심근병증"): spaces go."""
    return form.replace(" ", "").lower()


def get_kiwi(num_workers: int | None = None):
    """One Kiwi per process and thread setting (loading its model takes a few seconds)."""
    return _cached_kiwi(num_workers)  # positional, so get_kiwi() and get_kiwi(None) share one cache entry


@functools.lru_cache(maxsize=4)
def _cached_kiwi(num_workers: int | None):
    from kiwipiepy import Kiwi  # heavy import kept out of --help and of the refiners

    return Kiwi(num_workers=num_workers)


@dataclass
class Lexicon:
    """Terms as morpheme sequences, matched on whole morphemes of a record.

    Two ways a term matches (both need whole-morpheme boundaries on both ends):

    * noun form: a term made only of noun-like morphemes (``is_term_tag``) matches any run of
      consecutive noun-like morphemes of the record whose forms, concatenated, spell the term
      without spaces. Kiwi splits the same compound differently in different contexts
      (심근경색 = 심근 + 경색, "비후성 심근병증" as one proper noun) and Korean spacing of compounds
      is optional, so comparing concatenated forms is what makes "급성 심근경색",
      "급성심근경색이" and the dictionary's "급성 심근경색" the same term.
    * morpheme sequence: a term holding other morphemes (a particle, a verb ending) matches the
      same consecutive morpheme forms in the record.

    A term never matches part of a morpheme: "환자" is not in 교환자 (one noun), "진단" is not in
    전진단계 (전진 + 단계), "검사" is not in 검사장.
    """

    noun_forms: set[str] = field(default_factory=set)
    sequences: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    longest: int = 0  # characters of the longest noun form: a longer run cannot be a term
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.noun_forms) + sum(len(v) for v in self.sequences.values())

    @classmethod
    def build(cls, terms: Iterable[str], kiwi, sources: Sequence[str] = ()) -> Lexicon:
        unique = list(dict.fromkeys(t for t in (normalise_term(term) for term in terms) if t))
        lexicon = cls(sources=list(sources))
        for tokens in kiwi.tokenize(unique):  # one batched call for the whole lexicon
            parts = [(morpheme_form(tok.form), tok.tag) for tok in tokens if not tok.tag.startswith(_PUNCTUATION_TAGS)]
            if not parts or len(parts) > MAX_TERM_MORPHEMES:
                continue
            if all(is_term_tag(tag) for _, tag in parts):
                noun_form = "".join(form for form, _ in parts)
                lexicon.noun_forms.add(noun_form)
                lexicon.longest = max(lexicon.longest, len(noun_form))
            else:
                forms = tuple(form for form, _ in parts)
                lexicon.sequences.setdefault(forms[0], []).append(forms)
        return lexicon

    def find(self, tokens: Sequence[Any]) -> list[str]:
        """Terms (spaces removed) found in a record's kiwi tokens, in order of appearance."""
        forms = [morpheme_form(tok.form) for tok in tokens]
        nounish = [is_term_tag(tok.tag) for tok in tokens]
        found: list[str] = []
        for start, form in enumerate(forms):
            if nounish[start]:
                # bounded by characters, not morphemes: a record may split a term into more
                # morphemes than the term alone was split into
                joined = ""
                for end in range(start, len(forms)):
                    if not nounish[end] or len(joined) + len(forms[end]) > self.longest:
                        break
                    joined += forms[end]
                    if joined in self.noun_forms:
                        found.append(joined)
            for sequence in self.sequences.get(form, ()):
                if tuple(forms[start : start + len(sequence)]) == sequence:
                    found.append("".join(sequence))
        return found


def normalise_term(term: Any) -> str:
    """A dictionary term ready for the lexicon; "" for terms that cannot be words (symbols, 1 char)."""
    if not isinstance(term, str):
        return ""
    text = " ".join(unicodedata.normalize("NFC", term).split())
    if len(text.replace(" ", "")) < 2 or not any(ch.isalpha() for ch in text):
        return ""
    return text


def dictionary_terms(refined_dir: Path, raw_dir: Path) -> tuple[list[str], list[str]]:
    """(terms, where they came from): refined 01_medical_dict.json, else the raw medical_dict files."""
    refined = refined_dir / MEDICAL_DICT_FILE
    if refined.is_file():
        entries = read_json(refined)
        if isinstance(entries, list):
            return [e.get("term") for e in entries if isinstance(e, dict)], [str(refined)]
        logger.warning("%s: not a JSON array of {term, definition}; using the raw dictionaries", refined)
    terms: list[str] = []
    used: list[str] = []
    source = get_source("medical_dict")
    for config, split in source.parts():
        path = raw_path(raw_dir, source.name, config, split)
        if path.is_file():
            # a malformed dictionary line only loses one lexicon term: log it and go on
            terms += [row.get("term") for _, row in iter_jsonl(path, on_reject=lambda r: logger.warning("%s", r))]
            used.append(str(path))
    return terms, used


def load_lexicon(dictionaries: Sequence[Path] | None, refined_dir: Path, raw_dir: Path, kiwi) -> Lexicon:
    """Curated terms plus the given dictionaries (JSON arrays or JSONL of {term}), or the default ones."""
    if dictionaries:
        terms, used = [], []
        for path in dictionaries:
            if path.suffix == ".json":
                entries = read_json(path)
                if not isinstance(entries, list):
                    raise DataError(f"{path}: expected a JSON array of {{'term', 'definition'}}, "
                                    f"found {type(entries).__name__}")
                terms += [e.get("term") for e in entries if isinstance(e, dict)]
            else:
                terms += [row.get("term") for _, row in iter_jsonl(path)]
            used.append(str(path))
    else:
        terms, used = dictionary_terms(refined_dir, raw_dir)
    if not used:
        logger.warning("no medical dictionary found (run refine_scripts/refine_dictionaries.py); "
                       "the lexicon is the %d curated terms only", len(CURATED_TERMS))
    return Lexicon.build([*CURATED_TERMS, *terms], kiwi, sources=["curated", *used])


# ===========================================================================
# Records: what text each kind is measured on
# ===========================================================================
@dataclass
class RecordText:
    kind: str
    id: str
    text: str  # Korean ratio and term coverage are measured on this
    reasoning: str | None = None  # types 2/4
    answer: str | None = None  # types 2/4: text after the reasoning block; type 3: the letter


def _message(record: Mapping[str, Any], role: str) -> str:
    for message in record.get("messages") or ():
        if isinstance(message, Mapping) and message.get("role") == role and isinstance(message.get("content"), str):
            return message["content"]
    return ""


def record_kind(record: Mapping[str, Any]) -> str | None:
    kind = record.get("type")
    if kind in TRAINING_TYPES:
        return kind
    if isinstance(record.get("text"), str):
        return PLAIN_TEXT
    if isinstance(record.get("question"), str) and "A" in record:
        return KOR_MED_TEST
    return None


def record_text(record: Mapping[str, Any], kind: str, fallback_id: str) -> RecordText:
    rec_id = str(record.get("id", fallback_id))
    if kind == PLAIN_TEXT:
        return RecordText(kind, rec_id, record["text"])
    if kind == KOR_MED_TEST:
        options = "\n".join(str(record[letter]) for letter in OPTION_LETTERS if record.get(letter))
        return RecordText(kind, rec_id, f"{record['question']}\n{options}", answer=str(record.get("answer", "")))
    user, assistant = _message(record, "user"), _message(record, "assistant")
    if kind == TYPE3_WORD:
        # the stem and option texts when the record carries them: the rendered user turn adds the
        # option labels "A)".."E)", five Latin letters that are not part of the question
        question, options = record.get("question"), record.get("options")
        if isinstance(question, str) and isinstance(options, Mapping):
            user = "\n".join([question, *(str(v) for v in options.values())])
        return RecordText(kind, rec_id, user, answer=assistant.strip())
    if kind in (TYPE2_TEXT_REASONING, TYPE4_WORD_REASONING):
        reasoning, answer = split_reasoning(assistant)
        return RecordText(kind, rec_id, f"{user}\n{assistant}", reasoning=reasoning or "", answer=answer)
    return RecordText(kind, rec_id, f"{user}\n{assistant}")


def _unrecognised(record: dict) -> str | None:
    if record_kind(record) is None:
        return ("not a known record: expected a 'type' of " + ", ".join(TRAINING_TYPES)
                + ", a 'text' field (00_plain_text) or 'question' + 'A'..'E' (02_kor_med_test)")
    return None


# ===========================================================================
# Per-type tallies and checks
# ===========================================================================
RATIO_SUBJECT = {
    TYPE1_TEXT: "user + assistant",
    TYPE2_TEXT_REASONING: "user + assistant",
    TYPE3_WORD: "question stem and option texts (answers are letters)",
    TYPE4_WORD_REASONING: "user + assistant",
    KOR_MED_TEST: "question stem and option texts (answers are letters)",
    PLAIN_TEXT: "text",
}
RATIO_CHECKED = {TYPE1_TEXT, TYPE2_TEXT_REASONING, TYPE3_WORD, KOR_MED_TEST}
COVERAGE_CHECKED = {TYPE1_TEXT, TYPE2_TEXT_REASONING, TYPE3_WORD, TYPE4_WORD_REASONING, KOR_MED_TEST}
NOTES = {
    TYPE4_WORD_REASONING: "Korean ratio noted, not checked: the guide's type-4 reasoning is English",
    PLAIN_TEXT: "general Korean text: figures reported, not checked",
}
LOWEST_KEPT = 5


@dataclass
class Tally:
    records: int = 0
    ratio_sum: float = 0.0
    hangul: int = 0
    letters: int = 0
    mostly_korean: int = 0  # records whose ratio is at least 0.5
    with_term: int = 0
    reasoning_sum: float = 0.0
    reasoning_n: int = 0
    answer_sum: float = 0.0
    answer_n: int = 0
    letter_answers: int = 0
    terms: Counter = field(default_factory=Counter)  # records containing each term
    lowest: list = field(default_factory=list)  # heap of (-ratio, id): the LOWEST_KEPT lowest ratios

    def add(self, item: RecordText, ratio: float, hangul: int, letters: int, terms: set[str]) -> None:
        self.records += 1
        self.ratio_sum += ratio
        self.hangul += hangul
        self.letters += letters
        self.mostly_korean += ratio >= 0.5
        self.with_term += bool(terms)
        self.terms.update(terms)
        entry = (-ratio, item.id)
        if len(self.lowest) < LOWEST_KEPT:
            heapq.heappush(self.lowest, entry)
        elif entry > self.lowest[0]:
            heapq.heapreplace(self.lowest, entry)
        if item.reasoning is not None:
            self.reasoning_sum += korean_ratio(item.reasoning)
            self.reasoning_n += 1
        if item.kind in (TYPE2_TEXT_REASONING, TYPE4_WORD_REASONING) and item.answer is not None:
            self.answer_sum += korean_ratio(item.answer)
            self.answer_n += 1
        if item.kind in (TYPE3_WORD, KOR_MED_TEST):
            self.letter_answers += item.answer in OPTION_LETTERS

    def summary(self, kind: str) -> dict:
        n = self.records or 1
        mean_ratio = self.ratio_sum / n
        coverage = self.with_term / n
        checks = []
        if kind in RATIO_CHECKED:
            checks.append(_check("mean_korean_ratio", mean_ratio, KOREAN_RATIO_TARGET))
        if kind in COVERAGE_CHECKED:
            checks.append(_check("medical_term_coverage", coverage, COVERAGE_TARGET))
        out: dict[str, Any] = {
            "records": self.records,
            "ratio_measured_on": RATIO_SUBJECT[kind],
            "mean_korean_ratio": round(mean_ratio, 4),
            "pooled_korean_ratio": round(self.hangul / self.letters, 4) if self.letters else 0.0,
            "mostly_korean_share": round(self.mostly_korean / n, 4),
            "medical_term_coverage": round(coverage, 4),
        }
        if self.reasoning_n:
            out["mean_reasoning_korean_ratio"] = round(self.reasoning_sum / self.reasoning_n, 4)
        if self.answer_n:
            out["mean_answer_korean_ratio"] = round(self.answer_sum / self.answer_n, 4)
        if kind in (TYPE3_WORD, KOR_MED_TEST):
            out["letter_answer_share"] = round(self.letter_answers / n, 4)
        out |= {
            "checks": checks,
            "passed": all(c["passed"] for c in checks),
            "note": NOTES.get(kind, ""),
            "top_terms": [{"term": t, "records": c} for t, c in self.terms.most_common(10)],
            "lowest_ratio_records": [{"id": rec_id, "korean_ratio": round(-neg, 4)}
                                     for neg, rec_id in sorted(self.lowest, reverse=True)],
        }
        return out


def _check(metric: str, value: float, target: float) -> dict:
    return {"metric": metric, "value": round(value, 4), "target": f">= {target}", "passed": value >= target}


# ===========================================================================
# The run
# ===========================================================================
@dataclass
class Run:
    lexicon: Lexicon
    kiwi: Any
    batch_size: int = DEFAULT_BATCH
    tallies: dict[str, Tally] = field(default_factory=dict)
    files: dict[str, dict] = field(default_factory=dict)
    rejects: list[Reject] = field(default_factory=list)

    def measure_batch(self, batch: list[RecordText], records_out) -> None:
        """One kiwi call for the whole batch (its iterable form is much faster than one call per text)."""
        texts = [unicodedata.normalize("NFC", item.text) for item in batch]
        for item, text, tokens in zip(batch, texts, self.kiwi.tokenize(texts), strict=True):
            hangul, letters = count_hangul(text), count_letters(text)
            ratio = hangul / letters if letters else 0.0
            terms = set(self.lexicon.find(tokens))
            self.tallies.setdefault(item.kind, Tally()).add(item, ratio, hangul, letters, terms)
            if records_out is not None:
                row = {"id": item.id, "type": item.kind, "korean_ratio": round(ratio, 4),
                       "medical_terms": sorted(terms)[:10]}
                if item.reasoning is not None:
                    row["reasoning_korean_ratio"] = round(korean_ratio(item.reasoning), 4)
                if item.answer is not None and item.kind in (TYPE2_TEXT_REASONING, TYPE4_WORD_REASONING):
                    row["answer_korean_ratio"] = round(korean_ratio(item.answer), 4)
                records_out.write(json.dumps(row, ensure_ascii=False) + "\n")

    def read_file(self, path: Path, progress: tqdm, records_out) -> None:
        counts: Counter = Counter()

        def reject(item: Reject) -> None:
            progress.update()
            logger.warning("%s", item)
            self.rejects.append(item)
            counts["rejected"] += 1

        batch: list[RecordText] = []
        for line_no, record in iter_jsonl(path, _unrecognised, on_reject=reject):
            progress.update()
            kind = record_kind(record)
            counts[kind] += 1
            batch.append(record_text(record, kind, f"{path}:{line_no}"))
            if len(batch) >= self.batch_size:
                self.measure_batch(batch, records_out)
                batch = []
        if batch:
            self.measure_batch(batch, records_out)
        self.files[str(path)] = dict(counts)


def files_for_all(input_dir: Path) -> list[Path]:
    """The four type folders' *.jsonl and 02_kor_med_test/train.jsonl (test items are not training data)."""
    files = [path for type_name in TRAINING_TYPES for path in sorted((input_dir / type_name).glob("*.jsonl"))]
    kor_med_train = input_dir / KOR_MED_TEST / "train.jsonl"
    if kor_med_train.is_file():
        files.append(kor_med_train)
    return files


def validate(files: Sequence[Path], lexicon: Lexicon, kiwi, batch_size: int = DEFAULT_BATCH,
             records_output: Path | None = None) -> Run:
    run = Run(lexicon, kiwi, batch_size)
    total = sum(count_lines(path) for path in files)
    with tqdm(total=total, desc="korean proficiency", unit="record") as progress:
        if records_output is None:
            for path in files:
                run.read_file(path, progress, None)
        else:
            with atomic_open(records_output) as handle:
                for path in files:
                    run.read_file(path, progress, handle)
    return run


def build_report(run: Run, input_desc: str, seconds: float) -> dict:
    kinds = [kind for kind in RECORD_KINDS if kind in run.tallies]
    types = {kind: run.tallies[kind].summary(kind) for kind in kinds}
    return {
        "input": input_desc,
        "passed": all(t["passed"] for t in types.values()) and not run.rejects,
        "targets": {"korean_ratio": KOREAN_RATIO_TARGET, "korean_ratio_checked_for": sorted(RATIO_CHECKED),
                    "medical_term_coverage": COVERAGE_TARGET, "coverage_checked_for": sorted(COVERAGE_CHECKED)},
        "lexicon": {"entries": len(run.lexicon), "curated": len(CURATED_TERMS), "sources": run.lexicon.sources,
                    "matching": "whole kiwipiepy morphemes: noun-like runs whose concatenated forms spell a "
                                "term (spaces ignored), or a term's exact morpheme sequence"},
        "types": types,
        "files": run.files,
        "rejected_lines": len(run.rejects),
        "rejects": [str(r) for r in run.rejects[:50]],
        "seconds": round(seconds, 2),
    }


# ===========================================================================
# Command line
# ===========================================================================
def print_table(report: dict) -> None:
    print(f"\n{'type':22}  {'records':>8}  {'korean':>7}  {'reason.':>7}  {'answer':>7}  {'coverage':>8}  result")
    for kind, t in report["types"].items():
        reasoning = t.get("mean_reasoning_korean_ratio")
        answer = t.get("mean_answer_korean_ratio")
        result = ("PASS" if t["passed"] else "FAIL") if t["checks"] else "noted"
        failed = [c["metric"] for c in t["checks"] if not c["passed"]]
        reasoning_cell = "-" if reasoning is None else f"{reasoning:.3f}"
        answer_cell = "-" if answer is None else f"{answer:.3f}"
        print(f"{kind:22}  {t['records']:>8}  {t['mean_korean_ratio']:>7.3f}  {reasoning_cell:>7}  {answer_cell:>7}  "
              f"{t['medical_term_coverage']:>8.3f}  {result}{' (' + ', '.join(failed) + ')' if failed else ''}")
    print(f"\ntargets: Korean ratio >= {KOREAN_RATIO_TARGET} (types 1/2, type-3 questions), "
          f"medical-term coverage >= {COVERAGE_TARGET} (types 1-4, 02_kor_med_test); "
          f"lexicon {report['lexicon']['entries']} terms")
    if report["rejected_lines"]:
        print(f"{report['rejected_lines']} unreadable lines (listed in the report)", file=sys.stderr)


def default_input() -> Path:
    return CLEAN_DIR if CLEAN_DIR.is_dir() else REFINED_DIR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--all", action="store_true",
                      help="every type file under --input (<type>/*.jsonl for the four types, "
                           "02_kor_med_test/train.jsonl)")
    what.add_argument("--file", type=Path, nargs="+", metavar="F",
                      help="these JSONL files (type-1..4 records, 02_kor_med_test items or 00_plain_text shards)")
    parser.add_argument("--input", type=Path, default=None,
                        help=f"data directory for --all (default: {CLEAN_DIR} if it exists, else {REFINED_DIR})")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"JSON report (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--records-output", type=Path, default=None, metavar="FILE",
                        help="also write one JSONL line of figures per record (id, ratios, matched terms)")
    parser.add_argument("--dictionary", type=Path, nargs="+", default=None, metavar="FILE",
                        help=f"medical dictionaries for the lexicon (JSON array or JSONL of {{term}}); default: "
                             f"{REFINED_DIR / MEDICAL_DICT_FILE}, else the raw medical_dict files under {RAW_DIR}")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, metavar="N",
                        help=f"texts per kiwipiepy call (default: {DEFAULT_BATCH})")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="kiwipiepy threads (-1: all cores; default: kiwipiepy's own)")
    parser.add_argument("--no-fail", action="store_true", help="report only: exit 0 even when a target fails")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.batch_size <= 0:
        raise SystemExit("--batch-size must be positive")
    started = time.perf_counter()
    input_dir = args.input or default_input()
    files = files_for_all(input_dir) if args.all else list(args.file)
    missing = [path for path in files if not path.is_file()]
    if not files or missing:
        where = ", ".join(map(str, missing)) if missing else f"no type files under {input_dir}"
        print(f"error: nothing to validate ({where}); run refine_scripts/refine_4types.py first", file=sys.stderr)
        return 2
    kiwi = get_kiwi(args.workers)
    lexicon = load_lexicon(args.dictionary, REFINED_DIR, RAW_DIR, kiwi)
    run = validate(files, lexicon, kiwi, args.batch_size, args.records_output)
    report = build_report(run, str(input_dir) if args.all else ", ".join(map(str, files)),
                          time.perf_counter() - started)
    atomic_write_json(args.output, report)
    if run.rejects:
        write_rejects(args.output.with_name(args.output.stem + "_rejects.ndjson"), run.rejects)
    print_table(report)
    print(f"report: {args.output}")
    if report["passed"]:
        print("OK: every checked target met")
        return 0
    print("FAILED: a target is not met or lines could not be read" + (" (--no-fail: exit 0)" if args.no_fail else ""),
          file=sys.stderr)
    return 0 if args.no_fail else 1


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
