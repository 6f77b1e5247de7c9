"""Refine the raw sources into the guide's four training types.

    python -m refine_scripts.refine_4types
    python -m refine_scripts.refine_4types --input data/raw --output data/refined --short-answer-max-chars 30

Reads ``<input>/by_source/<name>/<config>/<split>.jsonl`` (written by script/download_all_datasets.py)
for every source that feeds a training type (script/sources.py) and writes

    <output>/type1_text/{train,validation}.jsonl            instruction / QA sources
    <output>/type2_text_reasoning/{train,validation}.jsonl  reasoning sources, long answers
    <output>/type3_word/{train,validation}.jsonl            multiple-choice sources, letter answers
    <output>/type4_word_reasoning/{train,validation}.jsonl  reasoning sources, short answers
    <output>/rejects.jsonl                                  rows that could not be used, with path:line: reason
    <output>/refine_stats.json                              counts per source and per type

Record: ``{"id", "source", "source_id", "type", "messages": [system, user, assistant]}``; type 3
adds ``question`` (stem only), ``options`` ({"A": ...}), ``answer`` (letter) and ``meta`` (upstream
metadata, config, split); type 4 adds ``answer`` (the short answer). Messages are stored, never the
rendered chat text. ``id`` is a hash of (source, source_id) and the train/validation split a hash
of the id, so reruns give identical files.

Evaluation material never becomes a training record: the splits a source declares as evaluation
splits in script/sources.py (KorMedMCQA dev/test/fewshot of all four configs, MedQA test) and the
evaluation-only sources (KMMLU) are not read. Training rows that copy or reword an evaluation item
are removed by the separate exclusion step that runs before training.

Exit status: 0 on success; 1 when a source's rejects exceed --max-reject-percent (the type files
are then left untouched; rejects.jsonl and refine_stats.json say why); 2 when there is no input.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import re
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from script import kormedmcqa
from script.cli import setup_logging
from script.data_io import Reject, atomic_open, atomic_write_json, count_lines, iter_jsonl, write_rejects
from script.formats import (
    OPTION_LETTERS,
    REASONING_END,
    REASONING_START,
    TRAINING_TYPES,
    TYPE1_TEXT,
    TYPE2_TEXT_REASONING,
    TYPE3_WORD,
    TYPE4_WORD_REASONING,
    format_mcq,
    type_messages,
    wrap_reasoning,
)
from script.sources import FEED_MCQ, FEED_REASONING, FEED_TYPE1, Source, get_field, raw_path, sources_feeding
from script.training_config import RAW_DIR, REFINED_DIR

logger = logging.getLogger("refine_4types")

DEFAULT_SHORT_ANSWER_MAX_CHARS = 30
DEFAULT_VALIDATION_PERCENT = 10.0
DEFAULT_MAX_REJECT_PERCENT = 5.0
SPLITS = ("train", "validation")
STATS_NAME = "refine_stats.json"
REJECTS_NAME = "rejects.jsonl"


class RowReject(ValueError):
    """A raw row that cannot become a training record; the message is the reason."""


@dataclass
class Draft:
    """What a row refines into, before it gets its id and split."""

    type: str
    messages: list[dict]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class McqItem:
    question: str
    options: dict[str, str]
    answer: str  # a letter among options
    used_columns: tuple[str, ...]  # everything else in the row goes to meta


# ---------------------------------------------------------------------------
# The long/short rule and the deterministic id / split
# ---------------------------------------------------------------------------
def is_short_answer(text: str, max_chars: int = DEFAULT_SHORT_ANSWER_MAX_CHARS) -> bool:
    """Whether a reasoning source's final answer is "a word" (type 4) rather than text (type 2).

    Short means: one line and at most ``max_chars`` characters after trimming (characters are
    Unicode code points, so a Hangul syllable counts one). Why 30: it holds a Korean diagnosis
    name, multi-word or with its English name in brackets ("급성 ST분절 상승 심근경색" is 15,
    "갑상선기능저하증 (Hypothyroidism)" 25), while the explained answers of these sources (diagnosis,
    reasons, tests, treatment) run to hundreds of characters; the gap between the two is wide, so
    the exact value matters little. A multi-line answer is never "a word", whatever its length.
    """
    stripped = text.strip()
    return "\n" not in stripped and len(stripped) <= max_chars


def record_id(source: str, source_id: str) -> str:
    """Stable id of a record: the same upstream row gets the same id on every run."""
    return hashlib.sha256(f"{source}\x1f{source_id}".encode()).hexdigest()[:16]


def split_of(rec_id: str, validation_percent: float) -> str:
    """``"validation"`` for about ``validation_percent`` % of ids, ``"train"`` for the rest.

    A hash of the id (not the id's own digits) so the split does not correlate with anything
    else derived from the id; buckets of 0.01 % allow fractional percentages.
    """
    bucket = int(hashlib.sha256(f"split\x1f{rec_id}".encode()).hexdigest()[:8], 16) % 10_000
    return "validation" if bucket < validation_percent * 100 else "train"


def messages_key(type_name: str, messages: list[dict]) -> str:
    """Identity of a record's content, for exact-duplicate detection."""
    return hashlib.sha256(json.dumps([type_name, messages], ensure_ascii=False, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------
# Field access with reasons
# ---------------------------------------------------------------------------
def required_text(row: Mapping[str, Any], column: str) -> str:
    value = get_field(row, column)
    if value is None:
        raise RowReject(f"missing field {column!r}")
    if not isinstance(value, str):
        raise RowReject(f"field {column!r} should be a string, found {type(value).__name__}")
    if not value.strip():
        raise RowReject(f"field {column!r} is empty")
    check_no_markers(value, f"field {column!r}")
    return value.strip()


def check_no_markers(text: str, what: str) -> None:
    """The markers are the model's reasoning delimiters; data that already holds them would teach
    a broken structure (and fail verify_formats)."""
    if REASONING_START in text or REASONING_END in text:
        raise RowReject(f"{what} contains the reserved marker {REASONING_START} or {REASONING_END}")


def optional_text(row: Mapping[str, Any], column: str) -> str:
    value = get_field(row, column)
    if value is None or (isinstance(value, str) and not value.strip()):
        return ""
    return required_text(row, column)


# ---------------------------------------------------------------------------
# Type 1 and reasoning sources (column roles come from the registry)
# ---------------------------------------------------------------------------
def refine_type1(source: Source, row: Mapping[str, Any]) -> Draft:
    """user = instruction (+ blank line + input when there is one), assistant = output."""
    user = required_text(row, source.roles["user"])
    if "input" in source.roles:
        extra_input = optional_text(row, source.roles["input"])
        if extra_input:
            user = f"{user}\n\n{extra_input}"
    assistant = required_text(row, source.roles["assistant"])
    return Draft(TYPE1_TEXT, type_messages(TYPE1_TEXT, user, assistant))


def refine_reasoning(source: Source, row: Mapping[str, Any], short_answer_max_chars: int) -> Draft:
    """Type 4 when the final answer is short (is_short_answer), type 2 otherwise."""
    question = required_text(row, source.roles["question"])
    reasoning = required_text(row, source.roles["reasoning"])
    answer = required_text(row, source.roles["answer"])
    assistant = wrap_reasoning(reasoning, answer)
    if is_short_answer(answer, short_answer_max_chars):
        messages = type_messages(TYPE4_WORD_REASONING, question, assistant)
        return Draft(TYPE4_WORD_REASONING, messages, {"answer": answer})
    return Draft(TYPE2_TEXT_REASONING, type_messages(TYPE2_TEXT_REASONING, question, assistant))


# ---------------------------------------------------------------------------
# Multiple-choice sources: one parser each, all ending in McqItem (letter answer)
# ---------------------------------------------------------------------------
def kormedmcqa_item(row: Mapping[str, Any]) -> McqItem:
    """Options in columns A-E; answer an integer 1-5, turned into a letter by script.kormedmcqa.

    KorMedMCQA's own module does the conversion, so training records and the evaluation sets
    (extract_kormedmcqa_test.py) read a row the same way, stems included: the exclusion step
    matches on those stems. Only its question/options/answer are used here; the item id and
    meta it builds belong to the evaluation sets (hence the placeholder config/split/row).
    """
    try:
        item = kormedmcqa.normalise_item(row, config="", split="", row=0)
    except ValueError as exc:
        raise RowReject(str(exc)) from None
    for text in (item["question"], *item["options"].values()):
        check_no_markers(text, "the question or an option")
    return McqItem(item["question"], item["options"], item["answer"], ("question", *OPTION_LETTERS, "answer"))


def medqa_item(row: Mapping[str, Any]) -> McqItem:
    """Korean columns question_ko, A_ko-D_ko; answer_idx is the letter."""
    options = {letter: required_text(row, f"{letter}_ko") for letter in OPTION_LETTERS[:4]}
    answer = check_letter(row.get("answer_idx"), options, "answer_idx")
    return McqItem(required_text(row, "question_ko"), options, answer,
                   ("question_ko", "A_ko", "B_ko", "C_ko", "D_ko", "answer_idx"))


_OPTION_LINE = re.compile(r"^\s*([A-E])\s*[.)]\s*(\S.*?)\s*$")
_EVOL_ANSWER = re.compile(r"정답\s*[:：]?\s*\(?([A-E])(?![A-Za-z])")


def parse_option_block(text: str) -> tuple[str, dict[str, str]]:
    """Split ``stem + lines "A. …" … "E. …"`` into (stem, options).

    The option block starts at the last line beginning with "A." (or "A)") and must then run
    A, B, C, … with nothing else but blank lines; anything else is unparseable.
    """
    lines = text.strip().splitlines()
    starts = [i for i, line in enumerate(lines) if (m := _OPTION_LINE.match(line)) and m.group(1) == "A"]
    if not starts:
        raise RowReject("unparseable options: no line starting with 'A.' in input")
    stem = "\n".join(lines[: starts[-1]]).strip()
    options: dict[str, str] = {}
    for line in lines[starts[-1] :]:
        if not line.strip():
            continue
        if len(options) == len(OPTION_LETTERS):
            raise RowReject(f"unparseable options: unexpected line after option E: {line[:60]!r}")
        expected = OPTION_LETTERS[len(options)]
        match = _OPTION_LINE.match(line)
        if match is None or match.group(1) != expected:
            raise RowReject(f"unparseable options: expected a line starting with '{expected}.', found {line[:60]!r}")
        options[expected] = match.group(2)
    if not stem:
        raise RowReject("unparseable options: no question text before the options")
    check_option_count(options)
    return stem, options


def medqa_evol_item(row: Mapping[str, Any]) -> McqItem:
    """input = question + option lines; output = "정답: C. <option text>\\n\\n해설: …"."""
    question, options = parse_option_block(required_text(row, "input"))
    match = _EVOL_ANSWER.search(required_text(row, "output"))
    if match is None:
        raise RowReject("unparseable answer: no '정답: <letter>' in output")
    return McqItem(question, options, check_letter(match.group(1), options, "output"), ("input", "output"))


def kormedlawqa_item(row: Mapping[str, Any]) -> McqItem:
    """options is a list of strings (lettered A, B, … in order); answer is a letter."""
    raw_options = row.get("options")
    if raw_options is None:
        raise RowReject("missing field 'options'")
    if not isinstance(raw_options, list):
        raise RowReject(f"field 'options' should be a list, found {type(raw_options).__name__}")
    if len(raw_options) > len(OPTION_LETTERS):
        raise RowReject(f"{len(raw_options)} options; at most {len(OPTION_LETTERS)} letters exist")
    options = {
        letter: required_text({f"options[{i}]": value}, f"options[{i}]")
        for i, (letter, value) in enumerate(zip(OPTION_LETTERS, raw_options))
    }
    check_option_count(options)
    answer = check_letter(row.get("answer"), options, "answer")
    return McqItem(required_text(row, "question"), options, answer, ("question", "options", "answer"))


def kormedconceptsqa_item(row: Mapping[str, Any]) -> McqItem:
    """Four options in option1-option4 (lettered A-D); answer_id is the letter."""
    options = {letter: required_text(row, f"option{i}") for i, letter in enumerate(OPTION_LETTERS[:4], start=1)}
    answer = check_letter(row.get("answer_id"), options, "answer_id")
    return McqItem(required_text(row, "question"), options, answer,
                   ("question", "option1", "option2", "option3", "option4", "answer_id"))


def check_option_count(options: Mapping[str, str]) -> None:
    if len(options) not in (4, 5):
        raise RowReject(f"{len(options)} options; expected 4 or 5")


def check_letter(value: Any, options: Mapping[str, str], column: str) -> str:
    """The answer letter, which must be one of the option keys."""
    if value is None:
        raise RowReject(f"missing field {column!r}")
    if not isinstance(value, str):
        raise RowReject(f"field {column!r} should be a letter, found {type(value).__name__} {value!r}")
    letter = value.strip()
    if letter not in options:
        raise RowReject(f"answer {value!r} is not one of the option letters {''.join(options)}")
    return letter


MCQ_PARSERS: dict[str, Callable[[Mapping[str, Any]], McqItem]] = {
    "kormedmcqa": kormedmcqa_item,
    "medqa": medqa_item,
    "medqa_evol_ko": medqa_evol_item,
    "kormedlawqa": kormedlawqa_item,
    "kormedconceptsqa": kormedconceptsqa_item,
}


def refine_mcq(source: Source, row: Mapping[str, Any], config: str, split: str) -> Draft:
    item = MCQ_PARSERS[source.name](row)
    meta = {key: value for key, value in row.items() if key not in item.used_columns}
    meta.update(config=config, split=split)
    user = format_mcq(item.question, item.options)
    return Draft(
        TYPE3_WORD,
        type_messages(TYPE3_WORD, user, item.answer),
        {"question": item.question, "options": item.options, "answer": item.answer, "meta": meta},
    )


def refine_row(source: Source, row: Mapping[str, Any], config: str, split: str, short_answer_max_chars: int) -> Draft:
    """Dispatch on what the source feeds; raises RowReject with the reason."""
    if source.feeds == FEED_TYPE1:
        return refine_type1(source, row)
    if source.feeds == FEED_REASONING:
        return refine_reasoning(source, row, short_answer_max_chars)
    return refine_mcq(source, row, config, split)


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------
@dataclass
class Settings:
    input: Path
    output: Path
    short_answer_max_chars: int = DEFAULT_SHORT_ANSWER_MAX_CHARS
    validation_percent: float = DEFAULT_VALIDATION_PERCENT
    max_reject_percent: float = DEFAULT_MAX_REJECT_PERCENT
    report_only: bool = False  # over the reject limit: warn and write the type files anyway


@dataclass
class SourceCounts:
    read: int = 0  # non-blank lines, readable or not
    kept: int = 0
    duplicates: int = 0
    rejects: int = 0
    kept_by_type: Counter = field(default_factory=Counter)
    kept_by_part: Counter = field(default_factory=Counter)  # "config/split" -> kept records

    def to_dict(self) -> dict:
        # not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs and counts the pairs
        return {**vars(self), "kept_by_type": dict(self.kept_by_type), "kept_by_part": dict(self.kept_by_part)}


@dataclass
class RunStats:
    sources: dict[str, SourceCounts] = field(default_factory=dict)
    types: dict[str, Counter] = field(default_factory=lambda: {t: Counter() for t in TRAINING_TYPES})
    inputs: list[str] = field(default_factory=list)
    missing_inputs: list[str] = field(default_factory=list)
    evaluation_inputs: list[str] = field(default_factory=list)  # evaluation splits: never refined
    rejects: list[Reject] = field(default_factory=list)

    def source(self, name: str) -> SourceCounts:
        return self.sources.setdefault(name, SourceCounts())

    def over_limit(self, max_reject_percent: float) -> list[str]:
        """Sources whose rejected share of read rows exceeds the limit."""
        return [
            f"{name}: {c.rejects} of {c.read} rows rejected ({100 * c.rejects / c.read:.1f}%)"
            for name, c in self.sources.items()
            if c.read and 100 * c.rejects / c.read > max_reject_percent
        ]


class TooManyRejects(RuntimeError):
    """Raised with the run's RunStats when a source is over --max-reject-percent."""


class NoInput(RuntimeError):
    """No raw file of any training source exists."""


def list_inputs(settings: Settings, stats: RunStats) -> list[tuple[Source, str, str, Path]]:
    """Every raw file of a training source, in registry order; absent ones are noted. Evaluation
    splits (the registry's ``evaluation_splits``: KorMedMCQA dev/test/fewshot, MedQA test) are
    listed apart and never read: evaluation material does not become training data."""
    inputs = []
    for source in sources_feeding(FEED_TYPE1, FEED_REASONING, FEED_MCQ):
        for config, split in source.parts():
            path = raw_path(settings.input, source.name, config, split)
            if source.is_evaluation_split(split):
                if path.is_file():
                    stats.evaluation_inputs.append(str(path))
            elif path.is_file():
                inputs.append((source, config, split, path))
                stats.inputs.append(str(path))
            else:
                stats.missing_inputs.append(str(path))
    return inputs


def refine_file(
    source: Source, config: str, split: str, path: Path, settings: Settings,
    stats: RunStats, seen: set[str], writers: dict[tuple[str, str], IO[str]], progress: tqdm,
) -> None:
    """Stream one raw file into the type writers, counting everything."""
    counts = stats.source(source.name)

    def note_reject(item: Reject) -> None:
        logger.warning("%s", item)
        stats.rejects.append(item)
        counts.rejects += 1

    def unreadable_line(item: Reject) -> None:  # lines iter_jsonl could not parse are read rows too
        progress.update()
        counts.read += 1
        note_reject(item)

    progress.set_postfix_str(f"{source.name}/{config}/{split}")
    for line_no, row in iter_jsonl(path, on_reject=unreadable_line):
        progress.update()
        counts.read += 1
        try:
            draft = refine_row(source, row, config, split, settings.short_answer_max_chars)
        except RowReject as exc:
            note_reject(Reject(str(path), line_no, str(exc), json.dumps(row, ensure_ascii=False)[:2000]))
            continue
        type_counts = stats.types[draft.type]
        key = messages_key(draft.type, draft.messages)
        if key in seen:
            counts.duplicates += 1
            type_counts["duplicates"] += 1
            continue
        seen.add(key)
        source_id = f"{config}/{split}/{line_no - 1}"  # row index = 0-based line of the raw file
        rec_id = record_id(source.name, source_id)
        record = {"id": rec_id, "source": source.name, "source_id": source_id, "type": draft.type,
                  "messages": draft.messages, **draft.extra}
        out_split = split_of(rec_id, settings.validation_percent)
        writers[(draft.type, out_split)].write(json.dumps(record, ensure_ascii=False) + "\n")
        counts.kept += 1
        counts.kept_by_type[draft.type] += 1
        counts.kept_by_part[f"{config}/{split}"] += 1
        type_counts["kept"] += 1
        type_counts[out_split] += 1


def refine_all(settings: Settings) -> RunStats:
    """The whole run. Type files are replaced only when the reject limit holds (TooManyRejects)."""
    stats = RunStats()
    inputs = list_inputs(settings, stats)
    if not inputs:
        raise NoInput(
            f"no raw files of training sources under {settings.input / 'by_source'}; run "
            "`python -m script.download_all_datasets --from-dir data/sample` (or from the hub) first"
        )
    for missing in stats.missing_inputs:
        logger.warning("no raw file %s (source not downloaded?)", missing)
    seen: set[str] = set()
    with contextlib.ExitStack() as stack:
        writers = {
            (type_name, split): stack.enter_context(atomic_open(settings.output / type_name / f"{split}.jsonl"))
            for type_name in TRAINING_TYPES
            for split in SPLITS
        }
        total_rows = sum(count_lines(path) for *_, path in inputs)
        with tqdm(total=total_rows, desc="refine", unit="row") as progress:
            for source, config, split, path in inputs:
                refine_file(source, config, split, path, settings, stats, seen, writers, progress)
        if stats.over_limit(settings.max_reject_percent) and not settings.report_only:
            raise TooManyRejects(stats)  # leaving the ExitStack with an error discards the temp files
    return stats


def stats_document(stats: RunStats, settings: Settings) -> dict:
    over_limit = stats.over_limit(settings.max_reject_percent)
    return {
        "passed": not over_limit,
        "settings": {
            "input": str(settings.input),
            "output": str(settings.output),
            "short_answer_max_chars": settings.short_answer_max_chars,
            "validation_percent": settings.validation_percent,
            "max_reject_percent": settings.max_reject_percent,
            "report_only": settings.report_only,
        },
        "sources": {name: counts.to_dict() for name, counts in stats.sources.items()},
        "types": {
            type_name: {key: counts.get(key, 0) for key in ("kept", "duplicates", "train", "validation")}
            for type_name, counts in stats.types.items()
        },
        "totals": {
            key: sum(getattr(c, key) for c in stats.sources.values())
            for key in ("read", "kept", "duplicates", "rejects")
        },
        "inputs": stats.inputs,
        "missing_inputs": stats.missing_inputs,
        "evaluation_inputs_not_refined": stats.evaluation_inputs,
        "over_reject_limit": over_limit,
    }


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def print_summary(document: dict) -> None:
    sources = document["sources"]
    width = max([len("source")] + [len(name) for name in sources])
    print(f"\n{'source':{width}}  {'read':>8}  {'kept':>8}  {'dupes':>6}  {'rejects':>7}")
    for name, c in sources.items():
        print(f"{name:{width}}  {c['read']:>8}  {c['kept']:>8}  {c['duplicates']:>6}  {c['rejects']:>7}")
    print(f"\n{'type':22}  {'train':>8}  {'valid':>8}  {'total':>8}  {'dupes':>6}")
    for type_name, c in document["types"].items():
        print(f"{type_name:22}  {c['train']:>8}  {c['validation']:>8}  {c['kept']:>8}  {c['duplicates']:>6}")
    totals = document["totals"]
    print(f"\nread {totals['read']}, kept {totals['kept']}, duplicates {totals['duplicates']}, "
          f"rejects {totals['rejects']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=RAW_DIR,
                        help=f"raw directory written by download_all_datasets.py (default: {RAW_DIR})")
    parser.add_argument("--output", type=Path, default=REFINED_DIR,
                        help=f"refined directory; type folders, {REJECTS_NAME} and {STATS_NAME} go here "
                             f"(default: {REFINED_DIR})")
    parser.add_argument("--short-answer-max-chars", type=int, default=DEFAULT_SHORT_ANSWER_MAX_CHARS, metavar="N",
                        help="reasoning rows whose final answer is one line of at most N characters become type 4, "
                             f"longer ones type 2 (default: {DEFAULT_SHORT_ANSWER_MAX_CHARS})")
    parser.add_argument("--validation-percent", type=float, default=DEFAULT_VALIDATION_PERCENT, metavar="P",
                        help="share of records (by a hash of their id) written to validation.jsonl "
                             f"(default: {DEFAULT_VALIDATION_PERCENT:g})")
    parser.add_argument("--max-reject-percent", type=float, default=DEFAULT_MAX_REJECT_PERCENT, metavar="P",
                        help="fail (exit 1, type files untouched) when any source rejects more than P %% of its rows "
                             f"(default: {DEFAULT_MAX_REJECT_PERCENT:g})")
    parser.add_argument("--report-only", action="store_true",
                        help="a source over --max-reject-percent is reported (warning, refine_stats.json "
                             "passed=false) and the type files are written all the same; exit 0")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.short_answer_max_chars <= 0:
        raise SystemExit("--short-answer-max-chars must be positive")
    if not 0 <= args.validation_percent <= 100:
        raise SystemExit("--validation-percent must be between 0 and 100")
    settings = Settings(args.input, args.output, args.short_answer_max_chars, args.validation_percent,
                        args.max_reject_percent, args.report_only)
    try:
        stats = refine_all(settings)
    except NoInput as exc:
        print(exc, file=sys.stderr)
        return 2
    except TooManyRejects as exc:
        stats = exc.args[0]
    document = stats_document(stats, settings)
    write_rejects(settings.output / REJECTS_NAME, stats.rejects)
    atomic_write_json(settings.output / STATS_NAME, document)

    print_summary(document)
    if stats.evaluation_inputs:
        print(f"not refined (evaluation splits): {len(stats.evaluation_inputs)} files, e.g. {stats.evaluation_inputs[0]}")
    if not document["passed"] and settings.report_only:
        print(f"\nWARNING: sources over the reject limit ({settings.max_reject_percent:g} %), kept (--report-only); "
              f"see {settings.output / REJECTS_NAME}:", file=sys.stderr)
        for line in document["over_reject_limit"]:
            print(f"  {line}", file=sys.stderr)
    elif not document["passed"]:
        print("\nFAILED: too many rejects (limit --max-reject-percent "
              f"{settings.max_reject_percent:g}); type files left unchanged. See {settings.output / REJECTS_NAME}:",
              file=sys.stderr)
        for line in document["over_reject_limit"]:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"\nwrote {settings.output} ({REJECTS_NAME}, {STATS_NAME})")
    return 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
