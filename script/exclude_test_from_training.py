"""Remove every KorMedMCQA evaluation item from the training data (data/refined -> data/refined_clean).

Every ``*.jsonl`` under ``--source`` is copied to the same relative path under ``--output`` without
the records whose question matches an item of the evaluation sets (by default every ``*.jsonl`` in
``data/kormedmcqa_test``: all_test, guide604, official_test, steer, other_eval -- written by
``extract_kormedmcqa_test.py``; ``--test`` also takes upstream KorMedMCQA rows, e.g. a raw
``<config>/test.jsonl``). The comparison is on the question stem (and options and the right answer
where both sides have them), never on the rendered prompt; see ``script.kormedmcqa.EvaluationIndex``
for the rules: ``exact``, ``normalised``, ``demographics`` (equal once the patient's age and sex are
masked), ``contained``, ``near`` (character 3-gram Jaccard >= 0.8 on texts of 30+ normalised
characters with equal numbers, as they are and with age/sex masked) and ``options`` (the same option
set with the same right answer, for stems of any length). Each removal is counted under the first
rule that fired. The refined dictionaries (``*.json`` arrays of ``{term, definition}``) are copied
too, without the entries whose definition holds an evaluation question; train_01 reads them from
``--output``.

A line of a test file that is no item (bad JSON, no question, ...) is reported as ``path:line:
reason``, every one of them, and written to ``<test dir>/rejects/exclude_test_rejects.jsonl``; then
nothing is written and the exit status is 2 (an item that cannot be read cannot be excluded).

Outputs in ``--output``:

* the mirrored ``*.jsonl`` files (other files of the source are listed in the stats, not copied);
* ``test_exclusion_stats.json``: summary (total = removed + kept), per file, per method, per set,
  the removed record ids and, for each, the file:line, method, matched test id and score;
* the dictionaries, filtered (above);
* ``test_exclusion_rejects.ndjson``: lines that are not records (bad JSON, no question text), each
  with its ``path:line: reason``; they are copied nowhere. (``.ndjson`` so that a ``*.jsonl`` glob
  for training files never picks it up.)

The output folder is rebuilt on every run: everything is written to a sibling temp folder that then
replaces it, so a killed run leaves the previous output whole. A non-empty output folder without a
stats file is refused (it is not ours) unless ``--force``.

Speed: one pass over the training records; each record costs a normalisation, a gram set and a
few index lookups (prefix-filtered inverted index of 3-grams; see EvaluationIndex), so the run is
linear in the training data and does not grow with records x items. ``--bench N`` builds N
synthetic records against ~3,600 synthetic items in a temp folder and prints the timing as JSON.

    python -m script.exclude_test_from_training
    python -m script.exclude_test_from_training --source data/refined --output data/refined_clean \\
        --test data/kormedmcqa_test/guide604.jsonl data/kormedmcqa_test/official_test.jsonl
    python -m script.exclude_test_from_training --bench 184000
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from script.cli import setup_logging
from script.data_io import (
    DataError,
    Reject,
    atomic_open,
    atomic_write_dir,
    atomic_write_json,
    count_lines,
    iter_jsonl,
    read_json,
    sha256_file,
    write_rejects,
)
from script.kormedmcqa import (
    MATCH_METHODS,
    MIN_NEAR_CHARS,
    NEAR_THRESHOLD,
    NGRAM,
    SET_FILES,
    EvaluationIndex,
    char_ngrams,
    jaccard,
    normalise_item,
    normalise_text,
    record_question,
)
from script.training_config import CLEAN_DIR, KORMEDMCQA_TEST_DIR, REFINED_DIR

logger = logging.getLogger("exclude_test_from_training")

STATS_FILE = "test_exclusion_stats.json"
REJECTS_FILE = "test_exclusion_rejects.ndjson"
TEST_REJECTS_FILE = Path("rejects") / "exclude_test_rejects.jsonl"  # beside the test files, not a set file
_SET_NAME_OF_FILE = {file: name for name, file in SET_FILES.items()}


# ---------------------------------------------------------------------------
# Evaluation items
# ---------------------------------------------------------------------------
def default_test_files(test_dir: Path = KORMEDMCQA_TEST_DIR) -> list[Path]:
    """Every set file extract_kormedmcqa_test.py wrote (top level only: rejects/ is not a set)."""
    return sorted(Path(test_dir).glob("*.jsonl"))


def set_name(path: Path) -> str:
    return _SET_NAME_OF_FILE.get(path.name, path.stem)


class TestFileRejects(DataError):
    """Lines of the evaluation set files that are no item; ``rejects`` lists every one."""

    def __init__(self, rejects: list[Reject], rejects_path: Path) -> None:
        self.rejects, self.rejects_path = rejects, rejects_path
        super().__init__(f"{len(rejects)} line(s) of the evaluation set files are not items (first: {rejects[0]}; "
                         f"all in {rejects_path}); an item that cannot be read cannot be excluded, so nothing "
                         f"was written")


def test_item(record: dict, path: Path, line: int) -> dict:
    """An evaluation item from one line of a test file: an extracted item (``{"id", "question",
    "options", "answer"}``, what extract_kormedmcqa_test.py writes) or an upstream KorMedMCQA row
    (``question``, ``A``-``E``, ``answer`` 1-5), which is normalised here; ValueError says why not."""
    if "id" in record:
        if "question" not in record:
            raise ValueError("missing field 'question'")
        if not isinstance(record["question"], str):
            raise ValueError(f"field 'question' should be text, found {type(record['question']).__name__}")
        return record
    if "question" in record and "A" in record:
        return normalise_item(record, config=path.parent.name, split=path.stem, row=line - 1)
    raise ValueError("neither an extracted item (id, question, options, answer) nor an upstream KorMedMCQA row "
                     f"(question, A-E, answer 1-5); found fields: {', '.join(record) or 'none'}")


def load_test_items(paths: Sequence[Path]) -> tuple[list[dict], dict[str, list[str]], dict[str, dict]]:
    """(unique items, item id -> set names, per-file info). Every line that is not an item is
    reported; if there is one, all of them are written to ``<test dir>/rejects/`` and
    ``TestFileRejects`` is raised: an item that cannot be read cannot be excluded."""
    items: dict[tuple[str, str], dict] = {}
    sets_of: dict[str, list[str]] = defaultdict(list)
    files: dict[str, dict] = {}
    rejects: list[Reject] = []
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: test set file missing; run `python -m script.extract_kormedmcqa_test`")
        count = 0
        for line, record in iter_jsonl(path, on_reject=rejects.append):
            try:
                item = test_item(record, path, line)
            except ValueError as exc:
                rejects.append(Reject(str(path), line, str(exc), json.dumps(record, ensure_ascii=False)[:2000]))
                continue
            items.setdefault((str(item["id"]), item["question"]), item)
            if set_name(path) not in sets_of[str(item["id"])]:
                sets_of[str(item["id"])].append(set_name(path))
            count += 1
        files[path.name] = {"path": str(path), "set": set_name(path), "items": count, "sha256": sha256_file(path)}
    if rejects:
        rejects_path = Path(paths[0]).parent / TEST_REJECTS_FILE
        write_rejects(rejects_path, rejects)
        raise TestFileRejects(rejects, rejects_path)
    return list(items.values()), dict(sets_of), files


# ---------------------------------------------------------------------------
# Output folder handling
# ---------------------------------------------------------------------------
def check_paths(source: Path, output: Path, force: bool) -> None:
    if not source.is_dir():
        raise DataError(f"{source}: source folder missing")
    src, out = source.resolve(), output.resolve()
    if src == out or src in out.parents or out in src.parents:
        raise DataError(f"--output {output} must be outside --source {source} (and not contain it)")
    if out.exists() and not (out / STATS_FILE).exists() and any(out.iterdir()) and not force:
        raise DataError(f"{output}: exists, is not empty and has no {STATS_FILE}; it does not look like an "
                        f"earlier output of this script (pass --force to replace it)")


# ---------------------------------------------------------------------------
# Exclusion
# ---------------------------------------------------------------------------
def _reject_non_question(record: dict) -> str | None:
    if record_question(record) is None:
        return "no question text (expected a 'question' field, a user message or a 'text' field)"
    return None


def filter_file(path: Path, rel: str, out_path: Path, index: EvaluationIndex, rejects: list[Reject],
                removals: list[dict]) -> dict:
    """Copy one JSONL file without the matching records; returns its counts."""
    counts: Counter[str] = Counter()
    file_rejects: list[Reject] = []
    with atomic_open(out_path) as handle:
        records = iter_jsonl(path, _reject_non_question, on_reject=file_rejects.append)
        progress = tqdm(records, total=count_lines(path), desc=rel, unit="rec", mininterval=2.0, leave=False)
        for line, record in progress:
            counts["total"] += 1
            match = index.match_record(record)
            if match is None:
                handle.write(json.dumps(record, ensure_ascii=False))
                handle.write("\n")
                counts["kept"] += 1
                continue
            counts["removed"] += 1
            counts[match.method] += 1
            removals.append({"file": rel, "line": line, "id": str(record.get("id", f"{rel}:{line}")),
                             "method": match.method, "test_id": match.item_id, "score": match.score})
    for reject in file_rejects:
        logger.warning("%s", reject)
    rejects.extend(file_rejects)
    return {"total": counts["total"], "removed": counts["removed"], "kept": counts["kept"],
            "rejected": len(file_rejects), "per_method": {m: counts[m] for m in MATCH_METHODS}}


def read_dictionary(path: Path) -> list[dict] | None:
    """A refined dictionary (a JSON array of ``{"term", "definition"}``, what refine_dictionaries.py
    writes), or None when the file is anything else (stats, manifests)."""
    try:
        entries = read_json(path)
    except (DataError, OSError, ValueError):
        return None
    if isinstance(entries, list) and entries and all(isinstance(e, dict) and "definition" in e for e in entries):
        return entries
    return None


def filter_dictionary(entries: list[dict], rel: str, out_path: Path, index: EvaluationIndex,
                      removals: list[dict]) -> dict:
    """Copy one dictionary without the entries whose definition holds an evaluation question.

    Definitions state facts, which is how held-out knowledge is meant to reach a model; a
    definition that contains (or is) an exam question is a leak, and goes (``line`` counts entries).
    """
    counts: Counter[str] = Counter()
    kept = []
    for number, entry in enumerate(entries, start=1):
        counts["total"] += 1
        match = index.match(str(entry.get("definition") or ""))
        if match is None:
            kept.append(entry)
            counts["kept"] += 1
            continue
        counts["removed"] += 1
        counts[match.method] += 1
        removals.append({"file": rel, "line": number, "id": str(entry.get("term", f"{rel}:{number}")),
                         "method": match.method, "test_id": match.item_id, "score": match.score})
    atomic_write_json(out_path, kept)
    return {"total": counts["total"], "removed": counts["removed"], "kept": counts["kept"], "rejected": 0,
            "kind": "dictionary", "per_method": {m: counts[m] for m in MATCH_METHODS}}


def exclude(source: Path, output: Path, test_files: Sequence[Path], threshold: float = NEAR_THRESHOLD,
            min_near_chars: int = MIN_NEAR_CHARS, force: bool = False) -> dict:
    """Mirror ``source`` into ``output`` minus evaluation items; returns (and writes) the stats."""
    started = time.perf_counter()
    source, output = Path(source), Path(output)
    check_paths(source, output, force)
    if not test_files:
        raise DataError(f"no test set files (looked in {KORMEDMCQA_TEST_DIR}); "
                        f"run `python -m script.extract_kormedmcqa_test` first")
    items, sets_of, test_sets = load_test_items(test_files)
    index = EvaluationIndex(items, threshold=threshold, min_near_chars=min_near_chars)
    logger.info("%d evaluation items from %d files", len(index), len(test_files))

    files = sorted(p for p in source.rglob("*.jsonl") if p.is_file())
    dictionaries = {p: entries for p in sorted(source.rglob("*.json")) if p.is_file()
                    and (entries := read_dictionary(p)) is not None}
    others = sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file()
                    and p.suffix != ".jsonl" and p not in dictionaries)
    stats: dict = {}

    def build(building: Path) -> None:  # a temp folder beside output, renamed into place when complete
        rejects: list[Reject] = []
        removals: list[dict] = []
        per_file = {}
        for path in tqdm(files, desc="files", unit="file", disable=len(files) < 2):
            rel = path.relative_to(source).as_posix()
            per_file[rel] = filter_file(path, rel, building / rel, index, rejects, removals)
        for path, entries in dictionaries.items():
            rel = path.relative_to(source).as_posix()
            per_file[rel] = filter_dictionary(entries, rel, building / rel, index, removals)
        if rejects:
            write_rejects(building / REJECTS_FILE, rejects)
        stats.update(build_stats(source, output, per_file, removals, rejects, sets_of, test_sets, len(index),
                                 threshold, min_near_chars, others, time.perf_counter() - started))
        atomic_write_json(building / STATS_FILE, stats)

    atomic_write_dir(output, build)
    return stats


def build_stats(source: Path, output: Path, per_file: dict, removals: list[dict], rejects: list[Reject],
                sets_of: dict[str, list[str]], test_sets: dict, n_items: int, threshold: float,
                min_near_chars: int, others: list[str], seconds: float) -> dict:
    total = sum(f["total"] for f in per_file.values())
    removed = sum(f["removed"] for f in per_file.values())
    per_set: Counter[str] = Counter()
    for removal in removals:
        per_set.update(sets_of.get(removal["test_id"], []))
    return {
        "source": str(source),
        "output": str(output),
        "summary": {"total": total, "removed": removed, "kept": total - removed, "rejected": len(rejects),
                    "files": len(per_file)},
        "per_file": per_file,
        "per_method": {m: sum(f["per_method"][m] for f in per_file.values()) for m in MATCH_METHODS},
        "per_set": {name: per_set[name] for name in sorted({s for names in sets_of.values() for s in names})},
        "removed_ids": [r["id"] for r in removals],
        "removals": removals,
        "test_sets": test_sets,
        "test_items": n_items,
        "threshold": threshold,
        "matching": {
            "ngram": NGRAM,
            "near_jaccard_threshold": threshold,
            "min_near_chars": min_near_chars,
            "methods": list(MATCH_METHODS),
            "rules": "exact: identical stem; normalised: identical NFKC/casefold/no-space/no-punctuation stem "
                     "(short stems with options on both sides need the same option set too); contained: a test "
                     "stem of min_near_chars+ inside the record's stem; near: char 3-gram Jaccard >= threshold, "
                     "both texts >= min_near_chars, same numbers, stem+sorted options when both have options",
        },
        "rejects_file": REJECTS_FILE if rejects else None,
        "not_mirrored": others,
        "seconds": round(seconds, 2),
    }


# ---------------------------------------------------------------------------
# --bench: synthetic data, no wall-clock assertions anywhere
# ---------------------------------------------------------------------------
_BENCH_WORDS = (
    "환자 남자 여자 발열 기침 복통 두통 설사 구토 호흡곤란 흉통 고혈압 당뇨병 폐렴 간경변 신부전 빈혈 "
    "심부전 천식 결핵 뇌졸중 패혈증 갑상선 부신 췌장염 담낭염 충수염 골절 관절염 백혈병 림프종 "
    "혈압 맥박 체온 호흡수 혈색소 백혈구 혈소판 크레아티닌 칼륨 나트륨 포도당 검사 소견 치료 진단 "
    "약물 투여 수술 처치 경과 관찰 내원 입원 외래 증상 징후 원인 기전 합병증 예후 가장 적절한 옳은 "
    "것은 다음 중 에서 으로 하였다 보였다 시행 결과 상승 감소 정상 이상 측정 확인 우선 필요한"
).split()


def _bench_sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(_BENCH_WORDS) for _ in range(words))
    if rng.random() < 0.5:  # half without numbers: they all share one index, the slow case
        return f"{text} 가장 적절한 것은?"
    return f"{rng.randint(20, 80)}세 {text} {rng.randint(1, 9)}.{rng.randint(0, 9)} 가장 적절한 것은?"


def _bench_item(rng: random.Random, number: int) -> dict:
    options = {letter: " ".join(rng.choice(_BENCH_WORDS) for _ in range(2)) for letter in "ABCDE"}
    return {"id": f"bench/test/{number}", "question": _bench_sentence(rng, rng.randint(10, 40)), "options": options,
            "answer": "A"}


def _bench_copy(rng: random.Random, question: str) -> str:
    """A planted copy: verbatim, respaced, or with one syllable (not a digit) changed."""
    kind = rng.choice(("exact", "spacing", "edit"))
    if kind == "exact":
        return question
    if kind == "spacing":
        return question.replace(" ", "", 3)
    positions = [i for i, c in enumerate(question) if "가" <= c <= "힣"]
    pos = rng.choice(positions)
    return question[:pos] + "훟" + question[pos + 1:]


def run_bench(n_records: int, n_items: int = 3600, seed: int = 0) -> dict:
    """Time exclusion of ``n_records`` synthetic records (1 % planted copies) against ``n_items`` items.

    The vocabulary is small on purpose: every record shares many 3-grams with many items, which is
    the hard case for candidate filtering. Also times the all-pairs Jaccard loop on 200 records and
    extrapolates, to show what the index saves.
    """
    rng = random.Random(seed)
    items = [_bench_item(rng, i) for i in range(n_items)]
    with tempfile.TemporaryDirectory(prefix="exclusion-bench-") as tmp:
        root = Path(tmp)
        test_file = root / "tests" / "official_test.jsonl"
        test_file.parent.mkdir()
        test_file.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items), encoding="utf-8")
        per_type = {"type1_text": 0.4, "type2_text_reasoning": 0.2, "type3_word": 0.3, "type4_word_reasoning": 0.1}
        planted = 0
        for type_name, share in per_type.items():
            path = root / "source" / type_name / "train.jsonl"
            path.parent.mkdir(parents=True)
            with open(path, "w", encoding="utf-8") as handle:
                for i in range(int(n_records * share)):
                    if rng.random() < 0.01:
                        item, planted = rng.choice(items), planted + 1
                        question = _bench_copy(rng, item["question"])
                        options = dict(zip("ABCDE", rng.sample(list(item["options"].values()), 5)))
                    else:
                        question = _bench_sentence(rng, rng.randint(8, 60))
                        options = _bench_item(rng, i)["options"]
                    record = {"id": f"{type_name}/{i}", "source": "bench", "type": type_name,
                              "messages": [{"role": "user", "content": question},
                                           {"role": "assistant", "content": "답"}]}
                    if type_name == "type3_word":
                        record |= {"question": question, "options": options, "answer": "A"}
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        started = time.perf_counter()
        stats = exclude(root / "source", root / "clean", [test_file])
        seconds = time.perf_counter() - started

        sample = [_bench_sentence(rng, rng.randint(8, 60)) for _ in range(200)]
        item_grams = [char_ngrams(normalise_text(i["question"])) for i in items]
        naive_started = time.perf_counter()
        for text in sample:
            grams = char_ngrams(normalise_text(text))
            max(jaccard(grams, other) for other in item_grams)
        naive_per_record = (time.perf_counter() - naive_started) / len(sample)
    total = stats["summary"]["total"]
    return {
        "records": total, "test_items": n_items, "planted_copies": planted,
        "removed": stats["summary"]["removed"], "per_method": stats["per_method"],
        "note": "planted copies not removed are one-syllable edits of stems under --min-near-chars "
                "in records without options, which the near rule leaves alone by design",
        "indexed_seconds": round(seconds, 2), "records_per_second": round(total / seconds),
        "all_pairs_seconds_estimate": round(naive_per_record * total, 1),
    }


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=REFINED_DIR, help=f"training data (default {REFINED_DIR})")
    parser.add_argument("--output", type=Path, default=CLEAN_DIR, help=f"cleaned copy (default {CLEAN_DIR})")
    parser.add_argument("--test", type=Path, nargs="+", default=None, metavar="FILE",
                        help=f"evaluation set files (default: every *.jsonl in {KORMEDMCQA_TEST_DIR})")
    parser.add_argument("--threshold", type=float, default=NEAR_THRESHOLD,
                        help=f"near-duplicate Jaccard threshold on character {NGRAM}-grams (default {NEAR_THRESHOLD})")
    parser.add_argument("--min-near-chars", type=int, default=MIN_NEAR_CHARS,
                        help=f"shortest normalised text the near/contained rules apply to (default {MIN_NEAR_CHARS})")
    parser.add_argument("--force", action="store_true", help="replace an output folder that is not ours")
    parser.add_argument("--bench", type=int, default=None, metavar="N",
                        help="time exclusion of N synthetic records in a temp folder, print JSON, touch nothing else")
    args = parser.parse_args(argv)
    if not 0 < args.threshold <= 1:
        parser.error("--threshold must be in (0, 1]")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    if args.bench is not None:
        print(json.dumps(run_bench(args.bench), ensure_ascii=False, indent=2))
        return 0
    test_files = args.test if args.test is not None else default_test_files()
    try:
        stats = exclude(args.source, args.output, test_files, args.threshold, args.min_near_chars, args.force)
    except TestFileRejects as exc:
        for reject in exc.rejects:
            print(reject, file=sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = stats["summary"]
    print(f"{args.source} -> {args.output}: {summary['total']} records, removed {summary['removed']}, "
          f"kept {summary['kept']}, rejected lines {summary['rejected']} ({stats['seconds']} s)")
    print("by method: " + ", ".join(f"{m} {n}" for m, n in stats["per_method"].items()))
    print("by set:    " + ", ".join(f"{s} {n}" for s, n in stats["per_set"].items()))
    for rel, counts in stats["per_file"].items():
        print(f"  {rel}: {counts['total']} -> {counts['kept']} (removed {counts['removed']}, "
              f"rejected {counts['rejected']})")
    if stats["not_mirrored"]:
        print(f"not copied (not *.jsonl): {', '.join(stats['not_mirrored'])}")
    if summary["rejected"]:
        print(f"{summary['rejected']} lines were not records; see {args.output / REJECTS_FILE}", file=sys.stderr)
    print(f"stats: {args.output / STATS_FILE}")
    return 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
