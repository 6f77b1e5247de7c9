"""Can the evaluation sets be answered by copying training data? Two scorers that use no model.

    python -m script.leakage_probe                       # guide604 + official test vs data/refined_clean
    python -m script.leakage_probe --strict --max-excess 5
    python -m script.leakage_probe --set steer --train data/refined_clean/02_kor_med_test/train.jsonl

A gain on KorMedMCQA says the model learnt medicine only if the exam cannot be answered by recall
of near-copies of its items in the training data. This probe measures how far recall alone goes:

* ``nearest_neighbour``: for each evaluation item, the training MCQ whose stem is most similar
  (character 3-gram Jaccard after masking the patient's age and sex and every number, so a twin
  that changes only those reads the same) is found, and the evaluation option most like that
  record's right answer (character-bigram Dice) is the answer. A reworded twin of the item in
  training makes this scorer right.
* ``question_blind``: each option is scored by how often its text is a right answer in the
  training MCQs; the most frequent wins (seeded random among ties). It reads no question: what it
  gets is what the option texts alone give away.

The first should not beat the second by more than noise: their paired difference (clustered over
items sharing their right answer's text, script/controls.py) is ``excess``. ``--strict`` exits 1
when the excess of a set is above ``--max-excess`` points (default 5): the evaluation then
measures recall of training twins, and no accuracy on it can be trusted. The embedded sample world
holds its evaluation conditions out of every MCQ training source (script/embedded/sample_knowledge.py), so
the pipeline runs this with ``--strict`` for the tiny model.

Training questions are the records of ``--train`` (files or directories of JSONL; default every
``*.jsonl`` under data/refined_clean) that carry a question and its answer: MCQs with options and
a right one (``kormedmcqa.record_question`` / ``record_gold``), and short-answer questions with an
``answer`` text (type 4); other records (plain text, explanations) are counted and skipped.
Common 3-grams (in more than ``--common-gram-share`` of the records, when there are over 2,000)
are left out of the index: they say nothing about which record is the twin, and the index stays
fast at the real data's scale.

Output: a JSON report (atomic; default data/refined_clean/leakage_probe.json) with both scorers'
accuracy and clustered 95 % CI per set, the excess with its CI and p-value, and the most similar
item/record pairs for a look by eye. Exit 0, 1 (``--strict`` and over the limit), 2 (bad input).
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from script import controls
from script.cli import setup_logging
from script.data_io import DataError, atomic_write_json, iter_jsonl
from script.eval_items import EvalSet, item_letters, read_eval_set
from script.formats import OPTION_LETTERS
from script.kormedmcqa import mask_demographics, normalise_text, record_gold, record_question
from script.training_config import CLEAN_DIR, KORMEDMCQA_TEST_DIR

logger = logging.getLogger("leakage_probe")

DEFAULT_SETS = ("guide604", "official")
DEFAULT_MAX_EXCESS = 5.0
COMMON_GRAM_SHARE = 0.05
MIN_RECORDS_FOR_PRUNING = 2_000
GRAM = 3
PAIRS_SHOWN = 20
_DIGITS = re.compile(r"\d+(?:[.,]\d+)*")


def stem_key(stem: str) -> str:
    """The stem as the probe compares it: age/sex masked, normalised, every number one mark."""
    return _DIGITS.sub("#", normalise_text(mask_demographics(stem)))


def grams(text: str, n: int) -> set[str]:
    if len(text) <= n:
        return {text} if text else set()
    return {text[i: i + n] for i in range(len(text) - n + 1)}


def dice(a: str, b: str) -> float:
    """Character-bigram Dice coefficient of two normalised texts (1.0 for equal texts)."""
    if a == b:
        return 1.0
    x, y = grams(a, 2), grams(b, 2)
    return 2 * len(x & y) / (len(x) + len(y)) if x or y else 0.0


class TrainingMCQs:
    """The training MCQs: masked stems in a 3-gram inverted index, right-answer texts, their counts."""

    def __init__(self, common_gram_share: float = COMMON_GRAM_SHARE):
        self.common_gram_share = common_gram_share
        self.where: list[str] = []
        self.stems: list[str] = []
        self.golds: list[str] = []
        self.gram_counts: list[int] = []
        self.postings: dict[str, list[int]] = {}
        self.skipped = 0
        self.files: list[dict] = []
        self._arrays: dict | None = None

    def add_file(self, path: Path) -> None:
        read = kept = bad = 0

        def on_reject(_reject) -> None:
            nonlocal bad
            bad += 1

        for line, record in iter_jsonl(path, on_reject=on_reject):
            read += 1
            found = record_question(record) if isinstance(record, Mapping) else None
            gold = record_gold(record, found[1]) if found else None
            if found and found[1] is None and gold is None:  # a short-answer question (type 4): its answer text
                answer = record.get("answer")
                gold = answer if isinstance(answer, str) and answer.strip().upper() not in OPTION_LETTERS else None
            if not found or not gold:
                self.skipped += 1
                continue
            key = stem_key(found[0])
            index = len(self.stems)
            self.where.append(f"{path}:{line}")
            self.stems.append(key)
            self.golds.append(normalise_text(gold))
            stem_grams = grams(key, GRAM)
            self.gram_counts.append(len(stem_grams))
            for gram in stem_grams:
                self.postings.setdefault(gram, []).append(index)
            kept += 1
        self.skipped += bad
        self.files.append({"path": str(path), "records": read, "mcqs": kept, "unreadable_lines": bad})

    def freeze(self) -> None:
        import numpy as np

        n = len(self.stems)
        limit = max(1, int(self.common_gram_share * n)) if n > MIN_RECORDS_FOR_PRUNING else n + 1
        self._arrays = {"postings": {g: np.asarray(ids, dtype=np.int64) for g, ids in self.postings.items()
                                     if len(ids) <= limit},
                        "sizes": np.asarray(self.gram_counts, dtype=np.float64)}
        self.common_grams = sum(len(ids) > limit for ids in self.postings.values())
        self.gold_counts = Counter(self.golds)

    def nearest(self, stem: str) -> tuple[int, float] | None:
        """(record index, Jaccard) of the training stem most like ``stem`` (ties: first record)."""
        import numpy as np

        assert self._arrays is not None, "freeze() first"
        query = grams(stem_key(stem), GRAM)
        hits = [self._arrays["postings"][g] for g in query if g in self._arrays["postings"]]
        if not hits:
            return None
        overlap = np.bincount(np.concatenate(hits), minlength=len(self.stems)).astype(np.float64)
        jaccard = overlap / (len(query) + self._arrays["sizes"] - overlap)
        best = int(np.argmax(jaccard))
        return best, float(jaccard[best])


def read_training(paths: Sequence[Path], common_gram_share: float) -> TrainingMCQs:
    training = TrainingMCQs(common_gram_share)
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.jsonl") if "rejects" not in p.parts)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or directory (training data)")
    for path in files:
        training.add_file(path)
    training.freeze()
    return training


def _pick(scores: Mapping[str, float], rng: random.Random) -> str:
    best = max(scores.values())
    return rng.choice(sorted(letter for letter, value in scores.items() if value == best))


def probe_set(evalset: EvalSet, training: TrainingMCQs, seed: int) -> dict:
    """Both scorers on one evaluation set, their paired difference, and the closest pairs."""
    rng = random.Random(seed)
    items = evalset.items
    nn_right, blind_right, pairs = [], [], []
    for item in items:
        letters = item_letters(item)
        options = {letter: normalise_text(str(item["options"][letter])) for letter in letters}
        found = training.nearest(item["question"])
        if found is None:
            nn_letter, similarity, record = rng.choice(letters), 0.0, None
        else:
            record, similarity = found
            copied = training.golds[record]
            nn_letter = _pick({x: dice(text, copied) for x, text in options.items()}, rng)
        blind_letter = _pick({x: float(training.gold_counts.get(text, 0)) for x, text in options.items()}, rng)
        nn_right.append(nn_letter == item["answer"])
        blind_right.append(blind_letter == item["answer"])
        pairs.append({"id": item["id"], "similarity": round(similarity, 4), "nn_correct": nn_right[-1],
                      "record": training.where[record] if record is not None else None})
    clusters = [controls.cluster_key(item) for item in items]

    def accuracy(right: list[bool]) -> dict:
        stats = controls.accuracy_ci(right, clusters, seed)
        return {"accuracy": stats["accuracy"], "correct": sum(right), "total": len(right),
                "ci95": [stats["ci_low"], stats["ci_high"]]}

    pairs.sort(key=lambda row: -row["similarity"])
    similar = [row["similarity"] for row in pairs]
    return {
        "set": evalset.name, "source": evalset.source, "items": len(items), "clusters": len(set(clusters)),
        "chance": controls.chance_rate(items),
        "nearest_neighbour": accuracy(nn_right),
        "question_blind": accuracy(blind_right),
        "excess": controls.paired_difference(nn_right, blind_right, clusters, seed),
        "similarity_quantiles": {q: similar[min(len(similar) - 1, int((1 - q) * len(similar)))]
                                 for q in (0.5, 0.9, 0.99)} if similar else {},
        "most_similar": pairs[:PAIRS_SHOWN],
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=None, metavar="NAME_OR_FILE",
                        help=f"evaluation set name or JSONL file; repeatable (default: {' '.join(DEFAULT_SETS)})")
    parser.add_argument("--sets-dir", type=Path, default=KORMEDMCQA_TEST_DIR,
                        help="where the set files are (default: %(default)s)")
    parser.add_argument("--train", type=Path, action="append", default=None, metavar="PATH",
                        help=f"training JSONL file or directory; repeatable (default: {CLEAN_DIR})")
    parser.add_argument("--max-excess", type=float, default=DEFAULT_MAX_EXCESS,
                        help="points the copying scorer may beat the question-blind one by (default %(default)s)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a set's excess is above --max-excess")
    parser.add_argument("--common-gram-share", type=float, default=COMMON_GRAM_SHARE,
                        help="3-grams in more than this share of the records are not indexed (default %(default)s)")
    parser.add_argument("--seed", type=int, default=controls.DEFAULT_SEED, help="tie-breaks and bootstrap seed")
    parser.add_argument("--output", type=Path, default=None,
                        help="report JSON (default: <first --train dir>/leakage_probe.json)")
    args = parser.parse_args(argv)
    args.set = args.set or list(DEFAULT_SETS)
    args.train = args.train or [CLEAN_DIR]
    if not 0 < args.common_gram_share <= 1:
        parser.error("--common-gram-share must be in (0, 1]")
    return args


def _line(result: dict) -> str:
    nn, blind = result["nearest_neighbour"], result["question_blind"]
    return (f"{result['set']}: {result['items']} items — copy-nearest-training-MCQ {100 * nn['accuracy']:.1f}%, "
            f"question-blind {100 * blind['accuracy']:.1f}%, chance {100 * result['chance']:.1f}%; "
            f"excess {result['excess']['delta_points']:+.1f} points (95 % CI {result['excess']['ci95_points'][0]:+.1f}"
            f" to {result['excess']['ci95_points'][1]:+.1f}, {result['excess']['clusters']} clusters)")


def run(args: argparse.Namespace) -> dict:
    training = read_training(args.train, args.common_gram_share)
    if not training.stems:
        raise DataError(f"no training MCQ (question + options + answer) under {', '.join(map(str, args.train))}")
    logger.info("%d training MCQs indexed (%d other records skipped, %d common 3-grams not indexed)",
                len(training.stems), training.skipped, training.common_grams)
    results = []
    for name in args.set:
        evalset = read_eval_set(name, args.sets_dir)
        if not evalset.items:
            raise DataError(f"{evalset.source}: no usable evaluation item")
        results.append(probe_set(evalset, training, args.seed))
    over = [r["set"] for r in results if r["excess"]["delta_points"] > args.max_excess]
    return {"training": {"files": training.files, "mcqs": len(training.stems), "other_records": training.skipped,
                         "common_grams_not_indexed": training.common_grams},
            "stem_key": "age/sex masked (kormedmcqa.mask_demographics), normalised, numbers -> '#'",
            "max_excess_points": args.max_excess, "over_limit": over, "sets": results}


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    try:
        report = run(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    first_dir = next((p for p in args.train if p.is_dir()), args.train[0].parent)
    output = args.output or first_dir / "leakage_probe.json"
    atomic_write_json(output, report)
    for result in report["sets"]:
        print(_line(result))
    print(f"report: {output}")
    if report["over_limit"]:
        print(f"{'error' if args.strict else 'warning'}: copying the nearest training MCQ beats the question-blind "
              f"scorer by more than {args.max_excess:g} points on {', '.join(report['over_limit'])}: these sets "
              "measure recall of training twins (see the report's most_similar pairs)", file=sys.stderr)
        return 1 if args.strict else 0
    return 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
