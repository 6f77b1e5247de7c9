"""Annotate one JSONL file with medical divisions (Phase 5, step 1).

    python -m phase5_subject_training.scripts.annotate_divisions \\
        --input data/refined_clean/type1_text/train.jsonl --output data/division/type1_text/train.jsonl
    python -m phase5_subject_training.scripts.annotate_divisions --input IN --output OUT --resume
    python -m phase5_subject_training.scripts.annotate_divisions --input IN --output OUT \\
        --model-scorer --model medgemma-4b --device cuda:1

Every record is written back with three more fields: ``divisions`` (1-3 ids of
``phase5_subject_training/med_division.json``, primary first), ``primary_division`` and
``division_reasoning`` (rule, scores and keywords that decided). The default lexical stage matches
the taxonomy's Korean/English keywords on kiwipiepy morphemes (CPU, no model); ``--model-scorer``
adds a causal LM that ranks the division names by log-likelihood where the keywords are not
conclusive (the rule is in ``phase5_subject_training/divisions.py``). Output is always valid:
GENERAL for multi-division or general items, UNKNOWN (with the reason) only without any signal.

Records are committed every ``--checkpoint-every`` samples (default 100) to ``OUT.partial`` with
``OUT.checkpoint.json``; after a kill, ``--resume`` continues with no record written twice and none
missing. Lines that are not JSON objects are reported ``path:line: reason`` and written to
``OUT.rejects.jsonl``; the exit status is 1 when they are more than ``--max-reject-fraction``.
Prints one JSON object with the counts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from phase5_subject_training.divisions import annotate_jsonl, build_annotator, parse_annotator_args, too_many_rejects
from script.cli import setup_logging
from script.data_io import DataError
from script.training_config import ConfigError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, required=True, help="JSONL records to annotate")
    parser.add_argument("--output", type=Path, required=True, help="annotated JSONL (written when complete)")
    args = parse_annotator_args(parser, argv)
    if args.input.resolve() == args.output.resolve():
        parser.error("--output must differ from --input")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    try:
        annotator = build_annotator(args)
        stats = annotate_jsonl(args.input, args.output, annotator, resume=args.resume,
                               checkpoint_every=args.checkpoint_every, batch_size=args.batch_size,
                               progress=not args.no_progress)
    except (DataError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(stats, ensure_ascii=False))
    problem = too_many_rejects(stats, args.max_reject_fraction)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
