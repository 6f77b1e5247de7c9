"""Add medical divisions to the training data of every type (Phase 5, "add divisions" step).

    python -m phase5_subject_training.scripts.add_divisions_to_reviewed --type all
    python -m phase5_subject_training.scripts.add_divisions_to_reviewed --type type1_text --resume
    python -m phase5_subject_training.scripts.add_divisions_to_reviewed --type all --model-scorer --device cuda:1

Reads ``<source-dir>/<type>/{train,validation}.jsonl`` -- by default ``data/refined_clean``, the
refined data with every evaluation item removed (what the guide calls the reviewed data) -- and
writes ``<output-dir>/<type>/{train,validation}.jsonl`` (default ``data/division_added``) with
``divisions``, ``primary_division`` and ``division_reasoning`` added, the same way as
``annotate_divisions.py`` (same annotator flags, checkpoints and ``--resume``; with ``--resume``
a file that is already complete is skipped). Prints one JSON object per file and a total;
exits 2 when an input file is missing, 1 when a file has too many unreadable lines.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from phase5_subject_training.divisions import (
    DIVISION_ADDED_DIR,
    annotate_jsonl,
    build_annotator,
    parse_annotator_args,
    too_many_rejects,
)
from script import formats
from script.cli import setup_logging
from script.data_io import DataError
from script.training_config import CLEAN_DIR, ConfigError

SPLITS = ("train", "validation")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--type", dest="type_name", choices=("all", *formats.TRAINING_TYPES), default="all",
                        help="which training type to annotate (default: all four)")
    parser.add_argument("--source-dir", type=Path, default=CLEAN_DIR,
                        help="dir with <type>/{train,validation}.jsonl (default: %(default)s)")
    parser.add_argument("--output-dir", type=Path, default=DIVISION_ADDED_DIR,
                        help="where <type>/{train,validation}.jsonl go (default: %(default)s)")
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS),
                        help="splits to annotate (default: train validation)")
    return parse_annotator_args(parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    types = formats.TRAINING_TYPES if args.type_name == "all" else (args.type_name,)
    inputs = [(args.source_dir / t / f"{s}.jsonl", args.output_dir / t / f"{s}.jsonl") for t in types for s in args.splits]
    missing = [str(i) for i, _ in inputs if not i.is_file()]
    if missing:
        print(f"error: input files not found: {', '.join(missing)} (build the data first: make data)", file=sys.stderr)
        return 2
    status, total = 0, {"files": 0, "records": 0, "rejected": 0, "unknown": 0, "general": 0}
    try:
        annotator = build_annotator(args)
        for source, target in inputs:
            stats = annotate_jsonl(source, target, annotator, resume=args.resume, checkpoint_every=args.checkpoint_every,
                                   batch_size=args.batch_size, progress=not args.no_progress)
            print(json.dumps(stats, ensure_ascii=False))
            total["files"] += 1
            for key in ("records", "rejected", "unknown", "general"):
                total[key] += stats.get(key, 0)
            problem = too_many_rejects(stats, args.max_reject_fraction)
            if problem:
                print(f"error: {problem}", file=sys.stderr)
                status = 1
    except (DataError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"total": total, "output_dir": str(args.output_dir)}, ensure_ascii=False))
    return status


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
