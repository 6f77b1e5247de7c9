"""Check every refined record against the format of its training type.

    python -m refine_scripts.verify_formats
    python -m refine_scripts.verify_formats --input data/refined

Reads ``<input>/<type>/{train,validation}.jsonl`` for the four types and checks, per record:
- the record's ``type`` matches its directory and its ``id`` is unique;
- messages are exactly system, user, assistant, in that order, each a non-empty string;
- the system prompt is the one formats.SYSTEM_PROMPTS gives its type;
- types 1/3 hold no reasoning marker (<R> or <R/>) anywhere;
- types 2/4 start the assistant turn with exactly one <R>…<R/> block (non-empty) followed by a
  non-empty answer, and hold no marker outside it;
- type 3: ``options`` are 4 or 5 letters from A, the user turn is formats.format_mcq(question,
  options), and the assistant turn (and ``answer``) is one letter among the option keys.

Prints a summary table (type, records, failures) and every failure as ``path:line: reason``
(the first --max-listed of them); exits 1 on any failure or when there is nothing to verify.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from refine_scripts.refine_4types import SPLITS
from script.data_io import Reject, count_lines, iter_jsonl
from script.formats import (
    OPTION_LETTERS,
    REASONING_END,
    REASONING_START,
    REASONING_TYPES,
    SYSTEM_PROMPTS,
    TRAINING_TYPES,
    TYPE3_WORD,
    TYPE4_WORD_REASONING,
    format_mcq,
)
from script.training_config import REFINED_DIR

ROLES = ["system", "user", "assistant"]


# ---------------------------------------------------------------------------
# Checks on one record; each returns the reasons it fails (empty when it is fine)
# ---------------------------------------------------------------------------
def check_messages(record: Mapping[str, Any], type_name: str) -> list[str]:
    messages = record.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return ["'messages' should be a list of {role, content} objects"]
    roles = [m.get("role") for m in messages]
    if roles != ROLES:
        return [f"roles are {roles}, expected {ROLES}"]
    problems = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            problems.append(f"empty {message['role']} turn")
    if problems:
        return problems
    if messages[0]["content"] != SYSTEM_PROMPTS[type_name]:
        problems.append(f"system prompt is not the {type_name} prompt: {messages[0]['content'][:60]!r}")
    return problems


def check_reasoning_markers(messages: list[dict], type_name: str) -> list[str]:
    """No marker in types 1/3; exactly one leading <R>…<R/> block then an answer in types 2/4."""
    problems = []
    for message in messages:
        text = message["content"]
        if message["role"] == "assistant" and type_name in REASONING_TYPES:
            continue
        if REASONING_START in text or REASONING_END in text:
            problems.append(f"{message['role']} turn contains a reasoning marker ({type_name} has none)")
    if type_name not in REASONING_TYPES:
        return problems
    text = messages[2]["content"]
    if not text.startswith(REASONING_START):
        return problems + [f"assistant turn does not start with {REASONING_START}"]
    starts, ends = text.count(REASONING_START), text.count(REASONING_END)
    if starts != 1 or ends != 1:
        return problems + [f"expected exactly one {REASONING_START}…{REASONING_END} block, "
                           f"found {starts} {REASONING_START} and {ends} {REASONING_END}"]
    reasoning, _, answer = text[len(REASONING_START) :].partition(REASONING_END)
    if not reasoning.strip():
        problems.append("empty reasoning block")
    if not answer.strip():
        problems.append(f"no answer after {REASONING_END}")
    return problems


def check_mcq(record: Mapping[str, Any]) -> list[str]:
    """Type 3: options schema, single rendering of the prompt, one-letter answer among the options."""
    options = record.get("options")
    if not isinstance(options, dict) or not all(isinstance(v, str) and v.strip() for v in options.values()):
        return ["'options' should be an object of non-empty option texts"]
    if list(options) != list(OPTION_LETTERS[: len(options)]) or len(options) not in (4, 5):
        return [f"option keys are {list(options)}, expected A-D or A-E"]
    problems = []
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        problems.append("'question' (the stem) is missing or empty")
    elif record["messages"][1]["content"] != format_mcq(question, options):
        problems.append("user turn is not formats.format_mcq(question, options)")
    answer = record["messages"][2]["content"]
    if answer not in options:
        problems.append(f"assistant answer {answer[:20]!r} is not one letter among {''.join(options)}")
    if record.get("answer") != answer:
        problems.append(f"'answer' {record.get('answer')!r} differs from the assistant turn {answer[:20]!r}")
    return problems


def check_record(record: Mapping[str, Any], type_name: str) -> list[str]:
    """Every reason ``record`` is not a valid record of ``type_name`` (empty list: valid)."""
    problems = []
    if record.get("type") != type_name:
        problems.append(f"type {record.get('type')!r} in the {type_name} directory")
    if not isinstance(record.get("id"), str) or not record["id"]:
        problems.append("missing 'id'")
    message_problems = check_messages(record, type_name)
    if message_problems:
        return problems + message_problems  # the remaining checks need well-formed messages
    problems += check_reasoning_markers(record["messages"], type_name)
    if type_name == TYPE3_WORD:
        problems += check_mcq(record)
    if type_name == TYPE4_WORD_REASONING and "answer" in record:
        _, _, answer = record["messages"][2]["content"].partition(REASONING_END)
        if record["answer"] != answer.strip():
            problems.append("'answer' differs from the text after the reasoning block")
    return problems


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------
@dataclass
class TypeReport:
    records: int = 0
    failures: list[str] = field(default_factory=list)


def verify_type(input_dir: Path, type_name: str, seen_ids: dict[str, str], progress: tqdm) -> TypeReport:
    report = TypeReport()

    def unreadable(reject: Reject) -> None:
        progress.update()
        report.records += 1
        report.failures.append(str(reject))

    for split in SPLITS:
        path = input_dir / type_name / f"{split}.jsonl"
        if not path.is_file():
            report.failures.append(f"{path}: missing file (run refine_scripts/refine_4types.py)")
            continue
        for line_no, record in iter_jsonl(path, on_reject=unreadable):
            progress.update()
            report.records += 1
            where = f"{path}:{line_no}"
            report.failures += [f"{where}: {reason}" for reason in check_record(record, type_name)]
            rec_id = record.get("id")
            if isinstance(rec_id, str) and rec_id:
                if rec_id in seen_ids:
                    report.failures.append(f"{where}: duplicate id {rec_id} (first at {seen_ids[rec_id]})")
                else:
                    seen_ids[rec_id] = where
    return report


def verify_all(input_dir: Path) -> dict[str, TypeReport]:
    seen_ids: dict[str, str] = {}
    files = [input_dir / t / f"{split}.jsonl" for t in TRAINING_TYPES for split in SPLITS]
    total = sum(count_lines(path) for path in files if path.is_file())
    with tqdm(total=total, desc="verify", unit="record") as progress:
        return {type_name: verify_type(input_dir, type_name, seen_ids, progress) for type_name in TRAINING_TYPES}


def print_report(reports: dict[str, TypeReport], max_listed: int) -> None:
    print(f"\n{'type':22}  {'records':>8}  {'failures':>8}")
    for type_name, report in reports.items():
        print(f"{type_name:22}  {report.records:>8}  {len(report.failures):>8}")
    failures = [failure for report in reports.values() for failure in report.failures]
    print(f"{'total':22}  {sum(r.records for r in reports.values()):>8}  {len(failures):>8}")
    if failures:
        print("\nfailures:")
        for failure in failures[:max_listed]:
            print(f"  {failure}")
        if len(failures) > max_listed:
            print(f"  ... and {len(failures) - max_listed} more (--max-listed)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=REFINED_DIR,
                        help=f"refined directory with the four type folders (default: {REFINED_DIR})")
    parser.add_argument("--max-listed", type=int, default=50, metavar="N",
                        help="list at most N failures (all are counted; default: 50)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reports = verify_all(args.input)
    print_report(reports, args.max_listed)
    total = sum(r.records for r in reports.values())
    failed = sum(len(r.failures) for r in reports.values())
    if total == 0:
        print(f"\nFAILED: no records under {args.input}", file=sys.stderr)
        return 1
    if failed:
        print(f"\nFAILED: {failed} problems in {total} records", file=sys.stderr)
        return 1
    print(f"\nOK: {total} records, all in the format of their type")
    return 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
