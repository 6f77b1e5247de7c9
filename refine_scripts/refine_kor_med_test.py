"""Refine KorMedMCQA into the guide's 02_kor_med_test/ (train_02: MCQ with reasoning).

    python -m refine_scripts.refine_kor_med_test
    python -m refine_scripts.refine_kor_med_test --test-set official
    python -m refine_scripts.refine_kor_med_test --from-dir data/sample --configs doctor

Writes, in ``--output`` (default ``data/refined/02_kor_med_test``), one line per item in the guide's
format ``{"id", "subject", "question", "A", ..., "E", "answer": letter, "cot"?}``:

    train.jsonl   the train split of each config in --configs (default all four), MINUS the steer
                  slice and MINUS every item whose question matches an item of the evaluation sets
                  (guide604, official test, steer, other_eval) by script.kormedmcqa.EvaluationIndex (exact,
                  normalised, contained or near), compared with its options and by its stem alone
                  (the way exclude_test_from_training.py reads this file, so that step finds
                  nothing left to remove): exams reuse questions across years, and a reused test
                  question in training is a leaked test question
    test.jsonl    the evaluation set: the guide's 604 items (doctor dev + test + fewshot, default)
                  or ``--test-set official`` (the test split of all four configs)
    steer.jsonl   the steer slice of the same configs: what training loops and best-checkpoint
                  choice may look at instead of the test set
    stats.json    counts: train read / removed as steer / removed by match (per rule and set) / kept,
                  test and steer sizes per config and split, sha256 of each file

The evaluation sets, the 1-5 -> letter conversion and the matching all come from script.kormedmcqa,
the same code extract_kormedmcqa_test.py and exclude_test_from_training.py use. ``cot`` is written
when upstream fills it (only the fewshot split does). Items with four options have no ``E``.

The folder is replaced as a whole (temp folder, then rename). Rows that cannot be items are reported
as ``path:line: reason``; then nothing is written and the exit status is 1 (an evaluation item that
cannot be read cannot be excluded), unless ``--allow-rejects``. Exit status 2 when KorMedMCQA is missing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from script import kormedmcqa
from script.cli import setup_logging
from script.data_io import DataError, atomic_write_dir, atomic_write_json, atomic_write_jsonl, sha256_file
from script.formats import OPTION_LETTERS
from script.kormedmcqa import (
    CONFIGS,
    GUIDE604,
    MATCH_METHODS,
    OFFICIAL,
    SET_NAMES,
    STEER,
    STEER_FRACTION,
    EvaluationIndex,
    ItemSource,
    build_sets,
    count_by_config_split,
    dedupe_items,
)
from script.training_config import REFINED_DIR

logger = logging.getLogger("refine_kor_med_test")

OUTPUT_NAME = "02_kor_med_test"
TEST_SETS = (GUIDE604, OFFICIAL)
STATS_NAME = "stats.json"


def guide_record(item: dict) -> dict:
    """An item of script.kormedmcqa in the guide's 02_kor_med_test format."""
    record = {"id": item["id"], "subject": item["meta"].get("subject", item["config"]), "question": item["question"]}
    record |= {letter: item["options"][letter] for letter in OPTION_LETTERS if letter in item["options"]}
    record["answer"] = item["answer"]
    if item["meta"].get("cot"):
        record["cot"] = item["meta"]["cot"]
    return record


def split_train(train_items: Iterable[dict], steer_ids: set[str], index: EvaluationIndex,
                sets_of: dict[str, list[str]]) -> tuple[list[dict], dict]:
    """(kept train items, counts): steer items out by id, then anything matching an evaluation item."""
    kept: list[dict] = []
    counts: Counter = Counter()
    per_method: Counter = Counter()
    per_set: Counter = Counter()
    per_config: dict[str, Counter] = defaultdict(Counter)
    for item in train_items:
        config_counts = per_config[item["config"]]
        counts["read"] += 1
        config_counts["read"] += 1
        if item["id"] in steer_ids:
            counts["removed_steer"] += 1
            config_counts["removed_steer"] += 1
            continue
        # Stem with options, and the stem alone: exclude_test_from_training.py reads this file's
        # records (options in top-level A-E, no "options" field) by their stem alone, and a train
        # file that the exclusion step would still cut is not clean.
        match = index.match_item(item) or index.match_record(guide_record(item))
        if match is not None:
            counts["removed_matching_evaluation"] += 1
            config_counts["removed_matching_evaluation"] += 1
            per_method[match.method] += 1
            per_set.update(sets_of.get(match.item_id, []))
            continue
        kept.append(item)
        counts["kept"] += 1
        config_counts["kept"] += 1
    return kept, {
        "read": counts["read"],
        "removed_steer": counts["removed_steer"],
        "removed_matching_evaluation": counts["removed_matching_evaluation"],
        "kept": counts["kept"],
        "removed_per_method": {method: per_method[method] for method in MATCH_METHODS},
        "removed_per_matched_set": dict(sorted(per_set.items())),
        "per_config": {config: dict(c) for config, c in per_config.items()},
    }


def build(source: ItemSource, configs: Sequence[str], test_set: str,
          steer_fraction: float = STEER_FRACTION) -> tuple[dict[str, list[dict]], dict]:
    """(file name -> guide records, stats) for train, test and steer."""
    sets = build_sets(source, steer_fraction)
    evaluation = dedupe_items(item for name in SET_NAMES for item in sets[name])
    sets_of: dict[str, list[str]] = defaultdict(list)
    for name in SET_NAMES:
        for item in sets[name]:
            sets_of[item["id"]].append(name)
    index = EvaluationIndex(evaluation)
    steer = [item for item in sets[STEER] if item["config"] in configs]
    train_items = [item for config in configs for item in source.items(config, "train")]
    kept, train_stats = split_train(train_items, {item["id"] for item in sets[STEER]}, index, sets_of)
    test = sets[test_set]
    files = {"train.jsonl": [guide_record(i) for i in kept], "test.jsonl": [guide_record(i) for i in test],
             "steer.jsonl": [guide_record(i) for i in steer]}
    stats = {
        "source": source.description,
        "configs": list(configs),
        "train": train_stats,
        "test": {"set": test_set, "items": len(test), "per_config_split": count_by_config_split(test)},
        "steer": {"fraction": steer_fraction, "items": len(steer), "per_config_split": count_by_config_split(steer)},
        "evaluation_items_matched_against": len(index),
        "rejects": [str(r) for r in source.rejects],
    }
    return files, stats


def write_output(output: Path, files: dict[str, list[dict]], stats: dict) -> None:
    def fill(folder: Path) -> None:
        stats["files"] = {}
        for name, records in files.items():
            atomic_write_jsonl(folder / name, records)
            stats["files"][name] = {"records": len(records), "sha256": sha256_file(folder / name)}
        atomic_write_json(folder / STATS_NAME, stats)

    atomic_write_dir(output, fill)


def print_summary(stats: dict, output: Path) -> None:
    train = stats["train"]
    print(f"\nKorMedMCQA from {stats['source']} -> {output}")
    print(f"train ({', '.join(stats['configs'])}): read {train['read']}, removed steer {train['removed_steer']}, "
          f"removed matching an evaluation item {train['removed_matching_evaluation']} "
          f"({', '.join(f'{m} {n}' for m, n in train['removed_per_method'].items())}), kept {train['kept']}")
    print(f"test ({stats['test']['set']}): {stats['test']['items']} items "
          + ", ".join(f"{k} {v}" for k, v in stats["test"]["per_config_split"].items()))
    print(f"steer: {stats['steer']['items']} items")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kormedmcqa.add_source_arguments(parser)
    parser.add_argument("--output", type=Path, default=REFINED_DIR / OUTPUT_NAME,
                        help=f"output folder, replaced as a whole (default {REFINED_DIR / OUTPUT_NAME})")
    parser.add_argument("--test-set", choices=TEST_SETS, default=GUIDE604,
                        help="test.jsonl: guide604 (doctor dev+test+fewshot, the guide's 604) or official "
                             "(test split of all four configs); both are removed from train either way")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS),
                        help="configs whose train split forms train.jsonl (default: all four; the guide used doctor)")
    parser.add_argument("--steer-fraction", type=float, default=STEER_FRACTION,
                        help=f"share of each config's train split held out for steering (default {STEER_FRACTION})")
    parser.add_argument("--allow-rejects", action="store_true",
                        help="write even when some rows could not be read (they are then not excluded)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    if not 0 < args.steer_fraction < 1:
        parser.error("--steer-fraction must be between 0 and 1")
    try:
        source = kormedmcqa.source_from_args(args)
        files, stats = build(source, args.configs, args.test_set, args.steer_fraction)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for reject in source.rejects:
        print(f"REJECT {reject}", file=sys.stderr)
    if source.rejects and not args.allow_rejects:
        print(f"error: {len(source.rejects)} rows could not be read; nothing written (fix the data, or pass "
              "--allow-rejects)", file=sys.stderr)
        return 1
    write_output(args.output, files, stats)
    print_summary(stats, args.output)
    return 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
