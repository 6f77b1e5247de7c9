"""Validate (and fix) the division fields of an annotated JSONL file (Phase 5, step 2).

    python -m phase5_subject_training.scripts.validate_divisions --input data/division/type1_text/train.jsonl
    python -m phase5_subject_training.scripts.validate_divisions \\
        --input data/division/type1_text/train.jsonl --output data/division/type1_text/train_fixed.jsonl --fix

Checks, per record (the guide's list):
  * missing ``divisions`` or ``primary_division`` field
  * invalid division ids (not in ``med_division.json``)
  * empty ``divisions`` list
  * primary division not in the ``divisions`` list
  * ``divisions`` that is not a list

With ``--fix`` every record is written to ``--output`` (which may be the input file: it is read
whole first and replaced atomically), fixed as the guide says: missing fields are added, a
non-list becomes a list ("1.4.1, 9.2" -> ["1.4.1", "9.2"], 1 -> ["1"]), invalid ids are removed,
the primary becomes the first valid division, an empty list becomes ["UNKNOWN"] (or the primary,
when only the primary is valid). No record is dropped. Lines that are not JSON objects cannot be
fixed: they are reported ``path:line: reason`` and kept in ``<output>.rejects.jsonl``.

Prints one JSON report (records, valid, problem counts, fixes, first examples). Exit status:
without --fix, 1 when any record has a problem; with --fix, 1 only when unreadable lines exist;
2 when the input or the taxonomy cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from phase5_subject_training.divisions import (
    PROBLEM_KINDS,
    TAXONOMY_PATH,
    division_problems,
    fix_divisions,
    load_taxonomy,
)
from script.cli import setup_logging
from script.data_io import DataError, atomic_write_jsonl, iter_jsonl, write_rejects


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, required=True, help="annotated JSONL file")
    parser.add_argument("--output", type=Path, help="where the fixed records go (needs --fix)")
    parser.add_argument("--fix", action="store_true", help="apply the auto-fixes and write every record to --output")
    parser.add_argument("--taxonomy", type=Path, default=TAXONOMY_PATH, help="taxonomy file (default: %(default)s)")
    parser.add_argument("--max-examples", type=int, default=10, help="problem lines shown in the report (default: 10)")
    args = parser.parse_args(argv)
    if args.fix and args.output is None:
        parser.error("--fix needs --output (it may be the input file)")
    if args.output is not None and not args.fix:
        parser.error("--output needs --fix (without it the file is only checked)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    try:
        taxonomy = load_taxonomy(args.taxonomy)
        if not args.input.is_file():
            raise DataError(f"{args.input}: input file not found")
        rejects: list = []
        rows = list(iter_jsonl(args.input, on_reject=rejects.append))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problems = {kind: 0 for kind in PROBLEM_KINDS}
    examples = [str(r) for r in rejects[: args.max_examples]]
    for reject in rejects:
        print(f"REJECT {reject}", file=sys.stderr)
    invalid_records = fixed_records = 0
    output = []
    for line, record in rows:
        found = division_problems(record, taxonomy)
        invalid_records += bool(found)
        for kind, detail in found:
            problems[kind] += 1
            if len(examples) < args.max_examples:
                examples.append(f"{args.input}:{line}: {PROBLEM_KINDS[kind]} ({detail})")
        if args.fix:
            fixed, fixes = fix_divisions(record, taxonomy) if found else (record, [])
            fixed_records += bool(fixes)
            output.append(fixed)
    report = {"input": str(args.input), "records": len(rows), "valid": len(rows) - invalid_records,
              "invalid": invalid_records, "unreadable_lines": len(rejects), "problems": problems,
              "examples": examples}
    if args.fix:
        atomic_write_jsonl(args.output, output)
        if rejects:
            write_rejects(args.output.with_name(args.output.name + ".rejects.jsonl"), rejects)
        report.update({"output": str(args.output), "fixed": fixed_records, "written": len(output)})
    print(json.dumps(report, ensure_ascii=False))
    if rejects:
        return 1
    return 1 if invalid_records and not args.fix else 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
