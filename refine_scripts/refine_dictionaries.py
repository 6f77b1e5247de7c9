"""Refine the local dictionaries into the guide's 01_medical_dict.json and 02_char_dict.json (train_01).

    python -m refine_scripts.refine_dictionaries
    python -m refine_scripts.refine_dictionaries --input data/raw --output data/refined

Reads the raw files of the dictionary sources (script/sources.py, written by
script/download_all_datasets.py):

    medical_dict  <input>/by_source/medical_dict/{korean_medical_dict,korean_animal_medical_dict}/train.jsonl
    char_dict     <input>/by_source/char_dict/default/train.jsonl

and writes, in the guide's format (a JSON array of ``{"term", "definition"}``):

    <output>/01_medical_dict.json            human terms first, then veterinary terms
    <output>/02_char_dict.json               special symbols (↑, ↓, →, ...)
    <output>/dictionaries_stats.json         per output and per input file: read, kept, dropped by reason
    <output>/dictionaries_rejects.ndjson     malformed lines, each with its path:line: reason

A line is *rejected* (path:line: reason) when it is not a JSON object with string ``term`` and
``definition``. A well-formed entry is *dropped* (counted, not an error) when its term or definition
is empty after trimming, or when its term was already seen in the same output: the first entry of
a term wins, so human terms take precedence over veterinary ones. Terms are compared after NFC
and whitespace normalisation ("급성  심근경색" == "급성 심근경색"); letter case is kept, because
case can carry meaning in abbreviations.

Exit status: 0 on success; 1 when an output's rejected lines exceed --max-reject-percent of its
lines (that output is not written); 2 when no dictionary raw file exists.
"""

from __future__ import annotations

import argparse
import logging
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from script.cli import setup_logging
from script.data_io import Reject, atomic_write_json, iter_jsonl, require_fields, write_rejects
from script.sources import get_source, raw_path
from script.training_config import RAW_DIR, REFINED_DIR

logger = logging.getLogger("refine_dictionaries")

# output file -> the dictionary sources it is made of, in precedence order
OUTPUTS: dict[str, tuple[str, ...]] = {
    "01_medical_dict.json": ("medical_dict",),
    "02_char_dict.json": ("char_dict",),
}
STATS_NAME = "dictionaries_stats.json"
REJECTS_NAME = "dictionaries_rejects.ndjson"  # not *.jsonl: globs for training files must not pick it up
DEFAULT_MAX_REJECT_PERCENT = 5.0
DROP_REASONS = ("empty_term", "empty_definition", "duplicate_term")

_validate_entry = require_fields("term", "definition", types={"term": str, "definition": str})


def normalise_term(term: str) -> str:
    """NFC, inner whitespace collapsed to one space, trimmed."""
    return " ".join(unicodedata.normalize("NFC", term).split())


@dataclass
class FileCounts:
    read: int = 0
    kept: int = 0
    rejected: int = 0
    dropped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"read": self.read, "kept": self.kept, "rejected": self.rejected,
                "dropped": {reason: self.dropped.get(reason, 0) for reason in DROP_REASONS}}


@dataclass
class OutputResult:
    name: str
    entries: list[dict] = field(default_factory=list)
    files: dict[str, FileCounts] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    @property
    def read(self) -> int:
        return sum(c.read for c in self.files.values())

    def over_limit(self, max_reject_percent: float) -> bool:
        return bool(self.read) and 100 * len(self.rejects) / self.read > max_reject_percent

    def summary(self, max_reject_percent: float) -> dict:
        return {
            "kept": len(self.entries),
            "read": self.read,
            "rejected": len(self.rejects),
            "dropped": {r: sum(c.dropped.get(r, 0) for c in self.files.values()) for r in DROP_REASONS},
            "written": bool(self.files) and not self.over_limit(max_reject_percent),
            "files": {path: counts.to_dict() for path, counts in self.files.items()},
            "missing_inputs": self.missing,
        }


def input_files(input_dir: Path, source_names: Iterable[str]) -> list[Path]:
    """Raw files of the sources, registry order (configs, then splits)."""
    return [raw_path(input_dir, name, config, split)
            for name in source_names for config, split in get_source(name).parts()]


def refine_output(name: str, paths: Iterable[Path]) -> OutputResult:
    """Read the dictionary files of one output; first occurrence of a term wins."""
    result = OutputResult(name)
    seen: dict[str, str] = {}  # normalised term -> path:line of the entry kept
    for path in paths:
        if not path.is_file():
            result.missing.append(str(path))
            continue
        counts = result.files.setdefault(str(path), FileCounts())

        def reject(item: Reject, counts: FileCounts = counts) -> None:
            logger.warning("%s", item)
            counts.read += 1
            counts.rejected += 1
            result.rejects.append(item)

        for line_no, row in iter_jsonl(path, _validate_entry, on_reject=reject):
            counts.read += 1
            term, definition = normalise_term(row["term"]), row["definition"].strip()
            reason = None
            if not term:
                reason = "empty_term"
            elif not definition:
                reason = "empty_definition"
            elif term in seen:
                reason = "duplicate_term"
                logger.debug("%s:%d: duplicate term %r (kept %s)", path, line_no, term, seen[term])
            if reason is not None:
                counts.dropped[reason] += 1
                continue
            seen[term] = f"{path}:{line_no}"
            result.entries.append({"term": term, "definition": definition})
            counts.kept += 1
    return result


def refine_all(input_dir: Path, output_dir: Path, max_reject_percent: float) -> dict[str, OutputResult]:
    """Build every output; write the ones that have input and are under the reject limit."""
    results = {name: refine_output(name, input_files(input_dir, sources)) for name, sources in OUTPUTS.items()}
    for name, result in results.items():
        if not result.files:
            logger.warning("%s: no input (%s); not written", name, ", ".join(result.missing))
        elif result.over_limit(max_reject_percent):
            logger.error("%s: %d of %d lines rejected; not written", name, len(result.rejects), result.read)
        else:
            atomic_write_json(output_dir / name, result.entries)
    return results


def print_summary(stats: dict) -> None:
    header = "  ".join(f"{r:>16}" for r in DROP_REASONS)
    print(f"\n{'output':22}  {'read':>6}  {'kept':>6}  {'rejected':>8}  {header}")
    for name, s in stats["outputs"].items():
        print(f"{name:22}  {s['read']:>6}  {s['kept']:>6}  {s['rejected']:>8}  "
              + "  ".join(f"{s['dropped'][r]:>16}" for r in DROP_REASONS)
              + ("" if s["written"] else "  NOT WRITTEN"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=RAW_DIR,
                        help=f"raw directory written by download_all_datasets.py (default: {RAW_DIR})")
    parser.add_argument("--output", type=Path, default=REFINED_DIR,
                        help=f"where {', '.join(OUTPUTS)}, {STATS_NAME} and {REJECTS_NAME} go "
                             f"(default: {REFINED_DIR})")
    parser.add_argument("--max-reject-percent", type=float, default=DEFAULT_MAX_REJECT_PERCENT, metavar="P",
                        help="do not write an output (exit 1) whose malformed lines exceed P %% of its lines "
                             f"(default: {DEFAULT_MAX_REJECT_PERCENT:g})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    results = refine_all(args.input, args.output, args.max_reject_percent)
    if not any(result.files for result in results.values()):
        missing = [path for result in results.values() for path in result.missing]
        print(f"no dictionary raw files ({', '.join(missing)}); run "
              "`python -m script.download_all_datasets --from-dir data/sample` first", file=sys.stderr)
        return 2
    stats = {"input": str(args.input), "output": str(args.output), "max_reject_percent": args.max_reject_percent,
             "outputs": {name: result.summary(args.max_reject_percent) for name, result in results.items()}}
    rejects = [item for result in results.values() for item in result.rejects]
    write_rejects(args.output / REJECTS_NAME, rejects)
    atomic_write_json(args.output / STATS_NAME, stats)
    print_summary(stats)
    for item in rejects[:20]:
        print(f"  rejected {item}")
    if len(rejects) > 20:
        print(f"  ... {len(rejects) - 20} more in {args.output / REJECTS_NAME}")
    if any(result.files and result.over_limit(args.max_reject_percent) for result in results.values()):
        print(f"\nFAILED: too many malformed lines (limit {args.max_reject_percent:g} %); "
              f"see {args.output / REJECTS_NAME}", file=sys.stderr)
        return 1
    print(f"\nwrote {args.output} ({', '.join(n for n, s in stats['outputs'].items() if s['written'])}, {STATS_NAME})")
    return 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
