"""Extract the KorMedMCQA evaluation sets into data/kormedmcqa_test/.

Writes, in ``--output-dir`` (default ``data/kormedmcqa_test``):

* ``all_test.jsonl``       the set chosen with ``--set`` (default ``guide604``, the guide's 604 items);
* ``guide604.jsonl``       doctor dev + test + fewshot (164 + 435 + 5 = 604 rows upstream; a fewshot row
                           that repeats a dev question is scored once, so at most 604 items);
* ``official_test.jsonl``  the test split of doctor, nurse, pharm and dentist (3,009 upstream);
* ``steer.jsonl``          10 % of each config's TRAIN split, chosen by a hash of the item id: the
                           set training loops steer on (never the test sets);
* ``sets.json``            counts per set / config / split and the sha256 of every file written.

All set files are always written, whatever ``--set`` says, so that
``exclude_test_from_training.py`` removes every one of them from the training data. Each line is
an item ``{"id", "config", "split", "question", "options", "answer" (letter), "meta"}``.

Rows that cannot be items (missing columns, answer outside 1-5, ...) are reported as
``path:line: reason`` and written to ``rejects/extract_rejects.jsonl``; then nothing else is
written and the exit status is 1 (an evaluation item that is not extracted cannot be excluded
from training), unless ``--allow-rejects``.

    python -m script.extract_kormedmcqa_test                          # data/raw -> data/kormedmcqa_test
    python -m script.extract_kormedmcqa_test --from-dir data/sample   # from the local hub mirror
    python -m script.extract_kormedmcqa_test --set official --output-dir /tmp/kmcqa
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from script import kormedmcqa
from script.cli import setup_logging
from script.data_io import DataError, atomic_write_json, atomic_write_jsonl, sha256_file, write_rejects
from script.kormedmcqa import (
    ALL_TEST_FILE,
    GUIDE604,
    GUIDE604_EXPECTED,
    SET_FILES,
    SET_NAMES,
    SETS_MANIFEST,
    STEER,
    STEER_FRACTION,
    STEER_SALT,
    build_sets,
    count_by_config_split,
    dedupe_items,
    set_rows,
)
from script.training_config import KORMEDMCQA_TEST_DIR

logger = logging.getLogger("extract_kormedmcqa_test")

ALL_SETS = "all"
REJECTS_FILE = Path("rejects") / "extract_rejects.jsonl"  # a subfolder: not read as a test set


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="set_name", choices=(*SET_NAMES, ALL_SETS), default=GUIDE604,
                        help="which set all_test.jsonl holds (default guide604; 'all' = every set, deduplicated)")
    kormedmcqa.add_source_arguments(parser)
    parser.add_argument("--output-dir", type=Path, default=KORMEDMCQA_TEST_DIR,
                        help=f"where the set files go (default {KORMEDMCQA_TEST_DIR})")
    parser.add_argument("--steer-fraction", type=float, default=STEER_FRACTION,
                        help="share of each config's train split held out for steering (default 0.1)")
    parser.add_argument("--allow-rejects", action="store_true",
                        help="write the sets even when some rows were rejected (they are then not excluded)")
    args = parser.parse_args(argv)
    if not 0 < args.steer_fraction < 1:
        parser.error("--steer-fraction must be between 0 and 1")
    return args


def chosen_items(sets: dict[str, list[dict]], set_name: str) -> list[dict]:
    if set_name == ALL_SETS:
        return dedupe_items(item for name in SET_NAMES for item in sets[name])
    return sets[set_name]


def write_sets(output_dir: Path, sets: dict[str, list[dict]], set_name: str, source: str,
               steer_fraction: float, rejects: int) -> dict:
    """Write every set file, all_test.jsonl and sets.json; returns the manifest."""
    manifest_sets = {}
    for name in SET_NAMES:
        path = output_dir / SET_FILES[name]
        atomic_write_jsonl(path, sets[name])
        manifest_sets[name] = {
            "file": SET_FILES[name],
            "items": len(sets[name]),
            "rows": set_rows(sets[name]),  # upstream rows: items + repeated questions dropped
            "repeats_dropped": set_rows(sets[name]) - len(sets[name]),
            "per_config_split": count_by_config_split(sets[name]),
            "sha256": sha256_file(path),
        }
    all_items = chosen_items(sets, set_name)
    all_path = output_dir / ALL_TEST_FILE
    atomic_write_jsonl(all_path, all_items)
    manifest = {
        "source": source,
        "all_test": {"file": ALL_TEST_FILE, "set": set_name, "items": len(all_items),
                     "per_config_split": count_by_config_split(all_items), "sha256": sha256_file(all_path)},
        "sets": manifest_sets,
        "files": {ALL_TEST_FILE: sha256_file(all_path)} | {v["file"]: v["sha256"] for v in manifest_sets.values()},
        "steer": {"fraction": steer_fraction, "salt": STEER_SALT,
                  "rule": "per config: train items not matching a guide604/official item, ranked by "
                          "sha256(salt:id), first round(fraction * train size)"},
        "guide604_expected": GUIDE604_EXPECTED,
        "rejects": rejects,
    }
    atomic_write_json(output_dir / SETS_MANIFEST, manifest)
    return manifest


def print_summary(manifest: dict) -> None:
    for name, info in manifest["sets"].items():
        detail = ", ".join(f"{key} {count}" for key, count in info["per_config_split"].items())
        print(f"{name:9s} {info['items']:6d}  ({detail})  -> {info['file']}")
    all_test = manifest["all_test"]
    print(f"{'all_test':9s} {all_test['items']:6d}  (= {all_test['set']})  -> {all_test['file']}")


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    try:
        source = kormedmcqa.source_from_args(args)
        sets = build_sets(source, args.steer_fraction)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    output_dir: Path = args.output_dir
    rejects_path = output_dir / REJECTS_FILE
    for reject in source.rejects:
        print(f"REJECT {reject}", file=sys.stderr)
    if source.rejects:
        write_rejects(rejects_path, source.rejects)
        print(f"{len(source.rejects)} rows rejected; see {rejects_path}", file=sys.stderr)
        if not args.allow_rejects:
            print("error: not writing the sets: a rejected evaluation item could not be excluded from "
                  "training (fix the data, or pass --allow-rejects)", file=sys.stderr)
            return 1
    else:
        with contextlib.suppress(FileNotFoundError):
            rejects_path.unlink()  # a previous run's rejects no longer apply
    manifest = write_sets(output_dir, sets, args.set_name, source.description, args.steer_fraction,
                          len(source.rejects))
    print(f"KorMedMCQA from {source.description} -> {output_dir}")
    print_summary(manifest)
    guide = manifest["sets"][GUIDE604]
    if guide["rows"] != GUIDE604_EXPECTED:
        bar = "!" * 78
        print(f"{bar}\nWARNING: guide604 has {guide['rows']} items, not {GUIDE604_EXPECTED} "
              f"(doctor dev + test + fewshot). Scores on it are not comparable with the guide's.\n{bar}",
              file=sys.stderr)
    if guide["repeats_dropped"]:
        print(f"guide604: {guide['rows']} rows, {guide['items']} questions scored ({guide['repeats_dropped']} "
              "fewshot rows repeat a dev question and are scored once)")
    if not manifest["sets"][STEER]["items"]:
        print("WARNING: the steer set is empty (no train split items)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
