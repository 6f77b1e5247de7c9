"""Division quality report of annotated files (Phase 5, "check quality" step).

    python -m phase5_subject_training.scripts.check_divisions --all
    python -m phase5_subject_training.scripts.check_divisions --file data/division_added/type1_text/train.jsonl
    python -m phase5_subject_training.scripts.check_divisions --all --json logs/division_check.json

``--all`` checks ``<data-dir>/<type>/{train,validation}.jsonl`` of the four training types
(default data dir ``data/division_added``). For each file the guide's report is printed: total
samples; valid, invalid and unknown counts with their share (valid + invalid + unknown = total;
a record is invalid when any of validate_divisions.py's checks fails, unknown when its primary is
UNKNOWN); missing fields (a part of invalid); the primary division distribution (top 15, by major
division, with names); invalid division ids; errors and warnings (an UNKNOWN share above
``--max-unknown``, the guide's 5 %, is a warning).

Exit status: 0 when every file was read and holds no invalid record, 1 otherwise (run
validate_divisions.py --fix), 2 when no file could be checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from phase5_subject_training.divisions import (
    DIVISION_ADDED_DIR,
    PROBLEM_KINDS,
    TAXONOMY_PATH,
    DivisionFileReport,
    Taxonomy,
    check_file,
    load_taxonomy,
)
from script import formats
from script.cli import setup_logging
from script.data_io import DataError, atomic_write_json

WIDTH = 70


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every type's train and validation file in --data-dir")
    which.add_argument("--file", type=Path, action="append", help="one annotated JSONL file (repeatable)")
    parser.add_argument("--data-dir", type=Path, default=DIVISION_ADDED_DIR, help="for --all (default: %(default)s)")
    parser.add_argument("--top", type=int, default=15, help="rows of the primary distribution (default: 15)")
    parser.add_argument("--max-unknown", type=float, default=0.05,
                        help="warn when the UNKNOWN share is above this (default: %(default)s, the guide's bar)")
    parser.add_argument("--taxonomy", type=Path, default=TAXONOMY_PATH, help="taxonomy file (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the counts of every file to this JSON file")
    return parser.parse_args(argv)


def _pct(part: int, total: int) -> str:
    return f"{100 * part / total:.2f}%" if total else "-"


def format_report(report: DivisionFileReport, taxonomy: Taxonomy, top: int, max_unknown: float) -> str:
    """The guide's 'Division Check Report' block for one file."""
    total = report.total
    lines = ["=" * WIDTH, f"Division Check Report: {report.path}", "=" * WIDTH, "",
             "Overall Statistics:",
             f"  Total samples: {total}",
             f"  Valid: {report.valid} ({_pct(report.valid, total)})",
             f"  Invalid: {report.invalid} ({_pct(report.invalid, total)})",
             f"  Unknown: {report.unknown} ({_pct(report.unknown, total)})",
             f"  Missing fields: {report.missing_fields}", ""]
    lines += [f"Primary Division Distribution (Top {top}):",
              f"  {'Division':<10}{'Name':<41}{'Count':>7}{'%':>8}", "  " + "-" * (WIDTH - 4)]
    ranked = sorted(report.primary_top.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    for division, count in ranked:
        share = f"{100 * count / total:.1f}%" if total else "-"
        lines.append(f"  {division:<10}{taxonomy.name(division)[:40]:<41}{count:>7}{share:>8}")
    if report.invalid_ids:
        lines += ["", "Invalid Division IDs:"]
        lines += [f"  {value}: {count}" for value, count in sorted(report.invalid_ids.items(), key=lambda kv: -kv[1])]
    if any(report.problems.values()):
        lines += ["", "Problems:"]
        lines += [f"  {PROBLEM_KINDS[kind]}: {count}" for kind, count in report.problems.items() if count]
    errors = list(report.examples)
    warnings = []
    if report.unreadable:
        warnings.append(f"{report.unreadable} unreadable lines")
    if total and report.unknown / total > max_unknown:
        warnings.append(f"UNKNOWN share {report.unknown / total:.1%} is above {max_unknown:.0%}")
    if errors:
        lines += ["", "Errors:"] + [f"  {e}" for e in errors]
    if warnings:
        lines += ["", "Warnings:"] + [f"  {w}" for w in warnings]
    lines.append("")
    return "\n".join(lines)


def check(args: argparse.Namespace) -> int:
    taxonomy = load_taxonomy(args.taxonomy)
    if args.all:
        files = [args.data_dir / t / f"{s}.jsonl" for t in formats.TRAINING_TYPES for s in ("train", "validation")]
        files = [f for f in files if f.is_file()]
        if not files:
            print(f"error: no annotated files under {args.data_dir}/<type>/ (run add_divisions_to_reviewed.py)",
                  file=sys.stderr)
            return 2
    else:
        files = args.file
    reports, status = [], 0
    for path in files:
        if not path.is_file():
            print(f"error: {path}: file not found", file=sys.stderr)
            status = 1
            continue
        report = check_file(path, taxonomy)
        reports.append(report)
        print(format_report(report, taxonomy, args.top, args.max_unknown))
        if report.invalid or report.unreadable:
            status = 1
    if not reports:
        return 2
    if args.json:
        atomic_write_json(args.json, {"files": [dataclasses.asdict(r) for r in reports]})
    return status


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    try:
        return check(args)
    except DataError as exc:  # the taxonomy, or a file that cannot be read at all
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
