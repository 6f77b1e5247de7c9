"""Organize annotated data into one folder per major division (Phase 5, "organize" step).

    python -m phase5_subject_training.scripts.organize_by_division \\
        --source data/division_added --output data/division_added --min-samples 10

Reads ``<source>/<type>/{train,validation}.jsonl`` of the four training types and writes, for each
major division of ``med_division.json`` (1 ... 10, and GENERAL) with at least ``--min-samples``
records:

    <output>/<division>/train.jsonl        every record whose primary division falls under it
    <output>/<division>/validation.jsonl
    <output>/<division>/metadata.json      {"division_id", "name", "train_samples", "validation_samples",
                                            "total_samples", "sources"}
    <output>/division_index.json           {"<division>": {"train_samples", "validation_samples",
                                            "total_samples", "path"}, ...}

Divisions with fewer records are listed in the index with ``"path": null`` and the reason, as are
UNKNOWN records (no folder). Re-running rebuilds every folder from the type files: each folder is
replaced atomically, a record id appears once per folder and split (repeats are dropped and
counted), and folders of divisions that no longer qualify are removed -- nothing is appended to
an earlier run's output. Records without a valid primary division stop the run (exit 1): fix them
first with validate_divisions.py --fix.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from phase5_subject_training.divisions import (
    DIVISION_ADDED_DIR,
    GENERAL,
    TAXONOMY_PATH,
    UNKNOWN,
    division_problems,
    load_taxonomy,
)
from script import formats
from script.cli import setup_logging
from script.data_io import DataError, atomic_write_dir, atomic_write_json, iter_jsonl, recover_dir, safe_child_path
from script.training_config import HOME

SPLITS = ("train", "validation")
INDEX_FILE = "division_index.json"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DIVISION_ADDED_DIR,
                        help="dir with <type>/{train,validation}.jsonl (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=None, help="where division folders go (default: --source)")
    parser.add_argument("--min-samples", type=int, default=10,
                        help="a division gets a folder only with at least this many records (default: %(default)s)")
    parser.add_argument("--types", nargs="+", choices=formats.TRAINING_TYPES, default=list(formats.TRAINING_TYPES),
                        help="type folders to read (default: all four)")
    parser.add_argument("--all", action="store_true", help="all types (the default; kept for the guide's command)")
    parser.add_argument("--taxonomy", type=Path, default=TAXONOMY_PATH, help="taxonomy file (default: %(default)s)")
    args = parser.parse_args(argv)
    args.output = args.output or args.source
    if args.min_samples < 1:
        parser.error("--min-samples must be at least 1")
    return args


def display_path(path: Path) -> str:
    """Relative to the project home when inside it (the guide's index shows data/division_added/1)."""
    try:
        return str(path.resolve().relative_to(HOME))
    except ValueError:
        return str(path)


def organize(args: argparse.Namespace) -> int:
    taxonomy = load_taxonomy(args.taxonomy)
    folders = set(taxonomy.top_level) | {GENERAL}
    # division -> split -> records; ids seen per (division, split) so a re-read record is not doubled
    grouped: dict[str, dict[str, list[dict]]] = defaultdict(lambda: {s: [] for s in SPLITS})
    seen: dict[tuple[str, str], set] = defaultdict(set)
    sources: dict[str, dict[str, int]] = defaultdict(dict)
    duplicates, unknown, bad = 0, {s: 0 for s in SPLITS}, []
    files = [(t, s, args.source / t / f"{s}.jsonl") for t in args.types for s in SPLITS]
    present = [f for f in files if f[2].is_file()]
    if not present:
        print(f"error: no <type>/{{train,validation}}.jsonl under {args.source} (run add_divisions_to_reviewed.py)",
              file=sys.stderr)
        return 2
    for type_name, split, path in present:
        for line, record in iter_jsonl(path, on_reject=lambda r: bad.append(str(r))):
            if division_problems(record, taxonomy):
                bad.append(f"{path}:{line}: invalid division fields")
                continue
            division = taxonomy.top(record["primary_division"])
            if division == UNKNOWN:
                unknown[split] += 1
                continue
            key = record.get("id")
            if key is not None and key in seen[(division, split)]:
                duplicates += 1
                continue
            seen[(division, split)].add(key)
            grouped[division][split].append(record)
            sources[division][type_name] = sources[division].get(type_name, 0) + 1
    if bad:
        for problem in bad[:20]:
            print(f"error: {problem}", file=sys.stderr)
        print(f"error: {len(bad)} records or lines cannot be organized; run validate_divisions.py --fix first",
              file=sys.stderr)
        return 1

    # Folder names come from the data (division ids): each must stay inside --output, checked
    # before anything is written.
    targets = {d: safe_child_path(args.output, d, "division id") for d in sorted(set(grouped) | folders)}
    index: dict[str, dict] = {}
    for division in sorted(grouped, key=lambda d: (d == GENERAL, int(d) if d.isdigit() else 0)):
        counts = {f"{s}_samples": len(grouped[division][s]) for s in SPLITS}
        total = sum(counts.values())
        folder = targets[division]
        entry = {**counts, "total_samples": total}
        if total < args.min_samples:
            index[division] = {**entry, "path": None, "skipped": f"fewer than {args.min_samples} samples"}
            continue

        def write(tmp: Path, division=division, entry=entry) -> None:
            for split in SPLITS:
                with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as handle:
                    for record in grouped[division][split]:
                        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            atomic_write_json(tmp / "metadata.json", {"division_id": division, "name": taxonomy.name(division),
                                                      **entry, "sources": sources[division]})

        atomic_write_dir(folder, write)
        index[division] = {**entry, "path": display_path(folder)}
    if any(unknown.values()):
        index[UNKNOWN] = {**{f"{s}_samples": unknown[s] for s in SPLITS}, "total_samples": sum(unknown.values()),
                          "path": None, "skipped": "no division assigned"}
    # folders of an earlier run whose division no longer qualifies
    for stale in sorted(folders):
        folder = targets[stale]
        recover_dir(folder)
        if folder.is_dir() and (folder / "metadata.json").is_file() and not (index.get(stale) or {}).get("path"):
            shutil.rmtree(folder)
    atomic_write_json(args.output / INDEX_FILE, index)
    print(json.dumps({"output": str(args.output), "folders": sum(bool(e.get("path")) for e in index.values()),
                      "duplicates_dropped": duplicates, "index": index}, ensure_ascii=False))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    try:
        return organize(args)
    except DataError as exc:  # the taxonomy cannot be used
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
