"""Evaluation items: what every scorer is given, read and checked in one place.

An item is ``{"id", "question", "options": {"A": ..}, "answer": "A".."E", "subject", ...}``.
Sources: the KorMedMCQA set files of script/extract_kormedmcqa_test.py (``guide604``,
``official``/``test``, ``steer``, ``all``), KorMedMCQA's raw or hub splits, the chosen
KMMLU-medical subjects (answers 1-4 become A-D), or any JSONL of items. Bad rows are reported
``path:line: reason`` and skipped with a count; ``select_eval_subset`` takes seeded subsets that
are stable across runs and machines.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from script import formats, kormedmcqa
from script.data_io import DataError, Reject, iter_jsonl, load_local_dataset, sha256_file
from script.kormedmcqa import cell_text
from script.sources import KMMLU_MEDICAL_SUBJECTS, raw_path
from script.training_config import KORMEDMCQA_TEST_DIR, RAW_DIR

logger = logging.getLogger(__name__)


def item_letters(item: Mapping[str, Any]) -> list[str]:
    """The item's option letters in order (5 for KorMedMCQA, 4 for KMMLU and MedQA)."""
    return [letter for letter in formats.OPTION_LETTERS if letter in item["options"]]


KMMLU_SOURCE = "kmmlu"
KMMLU_HUB_NAME = "HAERAE-HUB/KMMLU"
KMMLU_COLUMNS = ("question", "answer", "A", "B", "C", "D", "Category", "Human Accuracy")
KMMLU_REQUIRED = ("question", "A", "B", "C", "D", "answer")
KMMLU_LETTERS = formats.OPTION_LETTERS[:4]
DEFAULT_SUBSET_SEED = 42


def validate_item(item: Mapping[str, Any]) -> str | None:
    """None for a usable normalised item, else a short reason.

    Usable: a non-empty ``question``; ``options`` a mapping of consecutive letters from A (at
    least two, none empty); ``answer`` one of those letters.
    """
    question = item.get("question")
    if not isinstance(question, str) or not question.strip():
        return "empty 'question'"
    options = item.get("options")
    if not isinstance(options, Mapping):
        return f"'options' should be an object {{'A': ..., 'B': ...}}, found {type(options).__name__}"
    unknown = [key for key in options if key not in formats.OPTION_LETTERS]
    if unknown:
        return f"unknown option key {unknown[0]!r} (expected letters A-E)"
    letters = [letter for letter in formats.OPTION_LETTERS if letter in options]
    expected = list(formats.OPTION_LETTERS[: len(letters)])
    if letters != expected:
        missing = next(letter for letter in expected if letter not in options)
        return f"missing option {missing!r}"
    if len(letters) < 2:
        return f"only {len(letters)} option(s)"
    for letter in letters:
        if not isinstance(options[letter], str) or not options[letter].strip():
            return f"empty option {letter!r}"
    answer = item.get("answer")
    if not isinstance(answer, str) or answer not in options:
        return f"answer {answer!r} is out of range: expected one of {', '.join(letters)}"
    return None


def _normalised_item(record: Mapping[str, Any], default_id: str) -> dict:
    """A copy of a valid normalised item with text stripped and an id/config filled in."""
    item = dict(record)
    item["id"] = str(record.get("id") or default_id)
    item["question"] = record["question"].strip()
    item["options"] = {letter: record["options"][letter].strip() for letter in item_letters(record)}
    return item


def kmmlu_answer_to_letter(value: Any) -> str:
    """KMMLU's answer (integer 1-4, its own convention) as a letter A-D; else ValueError.

    A wrong type is a bad row like any other (ValueError, reported as a reject), not a bug.
    """
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"answer should be an integer 1-4, found {value!r}")  # noqa: TRY004
    if not 1 <= value <= len(KMMLU_LETTERS):
        raise ValueError(f"answer {value} is out of range: KMMLU answers are 1-4")
    return KMMLU_LETTERS[value - 1]


def normalise_kmmlu_row(record: Mapping[str, Any], subject: str, split: str, row: int) -> dict:
    """An upstream KMMLU row as an item (4 options, answer 1-4 -> A-D); ValueError for a bad row."""
    missing = [name for name in KMMLU_REQUIRED if name not in record]
    if missing:
        raise ValueError(f"missing column {missing[0]!r} (expected columns: {', '.join(KMMLU_COLUMNS)}; "
                         f"found: {', '.join(record)})")

    question = cell_text(record["question"], "question")
    if not question:
        raise ValueError("empty 'question'")
    options = {letter: cell_text(record[letter], letter) for letter in KMMLU_LETTERS}
    empty = [letter for letter, text in options.items() if not text]
    if empty:
        raise ValueError(f"empty option {empty[0]!r}")
    meta = {name: record[name] for name in ("Category", "Human Accuracy") if record.get(name) not in (None, "")}
    meta["row"] = row
    return {"id": f"{KMMLU_SOURCE}/{subject}/{split}/row{row}", "config": subject, "split": split,
            "question": question, "options": options, "answer": kmmlu_answer_to_letter(record["answer"]),
            "meta": meta}


def normalise_record(record: Mapping[str, Any], where: str, line: int, row: int, dataset: str = "kormedmcqa") -> dict:
    """Any accepted row shape -> item; ValueError with the reason otherwise.

    * a normalised item (``options`` mapping, letter ``answer``): a set file or refined type-3 record;
    * the guide's KorMedMCQA layout (columns A-E, a letter ``answer``): data/refined/02_kor_med_test;
    * an upstream row with columns A-E/A-D and an integer answer, converted with the convention of
      ``dataset`` (``kormedmcqa``: 1-5, ``kmmlu``: 1-4) -- never guessed from the row.
    """
    answer = record.get("answer")
    if "options" not in record and isinstance(answer, str) and answer.strip() in formats.OPTION_LETTERS:
        # the guide's own KorMedMCQA layout (data/refined/02_kor_med_test): columns A-E, a letter answer
        record = {**record, "options": formats.mcq_item_options(record), "answer": answer.strip()}
    if "options" in record:
        reason = validate_item(record)
        if reason:
            raise ValueError(reason)
        return _normalised_item(record, f"{Path(where).stem}/line{line}")
    split = Path(where).stem
    if dataset == KMMLU_SOURCE:
        # the raw layout is <subject>/<split>.jsonl; upstream "Category" is a supercategory at best
        subject = Path(where).parent.name or str(record.get("Category") or KMMLU_SOURCE)
        return normalise_kmmlu_row(record, subject, split, row)

    subject = record.get("subject")
    config = subject if subject in kormedmcqa.CONFIGS else Path(where).parent.name or "kormedmcqa"
    return kormedmcqa.normalise_item(record, config, split, row)


@dataclass
class EvalSet:
    """Items of one evaluation set, what was skipped, and where they came from."""

    name: str
    items: list[dict]
    rejects: list[Reject] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)  # {"path", "sha256"}
    source: str = ""

    @property
    def rows(self) -> int:
        return len(self.items) + len(self.rejects)

    def items_sha256(self) -> str:
        """Hash of exactly the items held (after skipping and subsetting): identifies what was scored."""
        digest = hashlib.sha256()
        for item in self.items:
            digest.update(json.dumps(item, ensure_ascii=False, sort_keys=True).encode())
            digest.update(b"\n")
        return digest.hexdigest()


def read_items_file(path: str | Path, dataset: str = "kormedmcqa", name: str | None = None) -> EvalSet:
    """Items of a JSONL file; bad lines are kept as rejects (``path:line: reason``), never raised."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rejects: list[Reject] = []
    items: list[dict] = []
    seen: set[str] = set()
    for row, (line, record) in enumerate(iter_jsonl(path, on_reject=rejects.append)):
        try:
            item = normalise_record(record, str(path), line, row, dataset)
        except ValueError as exc:
            rejects.append(Reject(str(path), line, str(exc), json.dumps(record, ensure_ascii=False)[:2000]))
            continue
        if item["id"] in seen:  # ids key the per-item report and the subset draw: keep them unique
            item["id"] = f"{item['id']}#line{line}"
        seen.add(item["id"])
        items.append(item)
    return EvalSet(name or path.stem, items, rejects, [{"path": str(path), "sha256": sha256_file(path)}], str(path))


# Names accepted for the set files of extract_kormedmcqa_test.py ("test" = the official test split).
SET_ALIASES = {"guide604": "guide604.jsonl", "official": "official_test.jsonl", "test": "official_test.jsonl",
               "steer": "steer.jsonl", "all": "all_test.jsonl"}


def resolve_set_path(set_name_or_path: str | Path, sets_dir: str | Path | None = None) -> tuple[str, Path]:
    """(name, file) of a set name (``SET_ALIASES``) or a path to a JSONL file."""
    text = str(set_name_or_path)
    if text in SET_ALIASES:
        directory = Path(sets_dir) if sets_dir is not None else KORMEDMCQA_TEST_DIR
        path = directory / SET_ALIASES[text]
        if not path.is_file():
            raise DataError(f"{path}: missing; write the evaluation sets first: "
                            "python -m script.extract_kormedmcqa_test --set all (add --from-dir data/sample offline)")
        return text, path
    path = Path(text)
    if not path.is_file():
        raise DataError(f"{path}: no such file (and not a set name: {', '.join(SET_ALIASES)})")
    return path.stem, path


def read_eval_set(set_name_or_path: str | Path, sets_dir: str | Path | None = None,
                  dataset: str = "kormedmcqa") -> EvalSet:
    name, path = resolve_set_path(set_name_or_path, sets_dir)
    return read_items_file(path, dataset, name)


def read_kormedmcqa_split(split: str, raw_dir: str | Path | None = None, from_dir: str | Path | None = None,
                          configs: Sequence[str] | None = None) -> EvalSet:
    """One upstream split (e.g. ``dev``) of every config, from the raw dir or a local hub mirror."""
    if from_dir is None and raw_dir is None:
        raw_dir = RAW_DIR / "by_source" / kormedmcqa.SOURCE_NAME
    source = (kormedmcqa.ItemSource(from_dir=from_dir) if from_dir is not None
              else kormedmcqa.ItemSource(raw_dir=raw_dir))
    items = [item for config in (configs or kormedmcqa.CONFIGS) for item in source.items(config, split)]
    files = []
    if source.raw_dir is not None:
        files = [{"path": str(p), "sha256": sha256_file(p)}
                 for p in (source.raw_dir / c / f"{split}.jsonl" for c in (configs or kormedmcqa.CONFIGS))]
    return EvalSet(split, items, list(source.rejects), files, source.description)


def resolve_kmmlu_hub_dir(from_dir: str | Path) -> Path:
    root = Path(from_dir)
    if (root / KMMLU_HUB_NAME).is_dir():
        return root / KMMLU_HUB_NAME
    if (root / "README.md").is_file():
        return root
    raise DataError(f"{root}: no {KMMLU_HUB_NAME} mirror here (expected {root / KMMLU_HUB_NAME}/README.md)")


def read_kmmlu(raw_dir: str | Path | None = None, from_dir: str | Path | None = None,
               subjects: Sequence[str] | None = None, split: str = "test") -> EvalSet:
    """KMMLU-medical (``sources.KMMLU_MEDICAL_SUBJECTS``, a chosen subset: KMMLU has no medicine subject).

    From ``<raw_dir>/by_source/kmmlu/<subject>/<split>.jsonl`` (download_all_datasets.py) or from a
    local hub mirror (``--from-dir``, read with ``datasets.load_dataset``). Answers 1-4 -> A-D.
    """
    subjects = list(subjects or KMMLU_MEDICAL_SUBJECTS)
    items: list[dict] = []
    rejects: list[Reject] = []
    files: list[dict] = []
    if from_dir is not None:
        hub_dir = resolve_kmmlu_hub_dir(from_dir)
        for subject in subjects:
            try:
                rows = load_local_dataset(hub_dir, subject, split=split)
            except Exception as exc:  # datasets raises many types; all mean "not there"
                raise DataError(f"{hub_dir} [{subject}/{split}]: cannot load ({type(exc).__name__}: {exc})") from exc
            where = f"{hub_dir}/{subject}/{split}"
            for row, record in enumerate(rows):
                _add_kmmlu_row(items, rejects, record, subject, split, row, where, row + 1)
        source = f"hub mirror {hub_dir}"
    else:
        base = Path(raw_dir) if raw_dir is not None else RAW_DIR
        for subject in subjects:
            path = raw_path(base, KMMLU_SOURCE, subject, split)
            if not path.is_file():
                raise DataError(f"{path}: missing; run `python -m script.download_all_datasets --only kmmlu` "
                                "(or pass --from-dir data/sample)")
            files.append({"path": str(path), "sha256": sha256_file(path)})
            for row, (line, record) in enumerate(iter_jsonl(path, on_reject=rejects.append)):
                _add_kmmlu_row(items, rejects, record, subject, split, row, str(path), line)
        source = f"raw dir {base}"
    return EvalSet(f"kmmlu_medical_{split}", items, rejects, files, source)


def _add_kmmlu_row(items: list, rejects: list, record: Mapping, subject: str, split: str, row: int,
                   where: str, line: int) -> None:
    try:
        items.append(normalise_kmmlu_row(record, subject, split, row))
    except ValueError as exc:
        rejects.append(Reject(where, line, str(exc), json.dumps(dict(record), ensure_ascii=False, default=str)[:2000]))


def subset_rank(item_id: str, seed: int) -> str:
    return hashlib.sha256(f"eval-subset:{seed}:{item_id}".encode()).hexdigest()


def select_eval_subset(items: Sequence[dict], n: int | None, seed: int = DEFAULT_SUBSET_SEED) -> list[dict]:
    """``n`` items chosen by a seeded hash of their ids, kept in file order.

    The same ids, ``n`` and seed always give the same items, whatever the file order, and a
    smaller ``n`` gives a subset of a larger one (the draw is a ranking, not a shuffle).
    """
    if n is None or n >= len(items):
        return list(items)
    if n < 0:
        raise ValueError(f"subset size must be >= 0, got {n}")
    ranked = sorted(range(len(items)), key=lambda i: (subset_rank(str(items[i].get("id", i)), seed), i))
    chosen = sorted(ranked[:n])
    return [items[i] for i in chosen]


def load_eval_items(set_name_or_path: str | Path, n: int | None = None, seed: int = DEFAULT_SUBSET_SEED,
                    sets_dir: str | Path | None = None) -> list[dict]:
    """Items of a set (``guide604``, ``official``/``test``, ``steer``, ``all``) or a JSONL file.

    Bad lines are logged (``path:line: reason``) and skipped; ``n`` takes a seeded subset
    (``select_eval_subset``). For trainers: ``make_mcq_eval_fn(tok, load_eval_items("steer", 50))``.
    """
    evalset = read_eval_set(set_name_or_path, sets_dir)
    for reject in evalset.rejects:
        logger.warning("skipped %s", reject)
    if evalset.rejects:
        logger.warning("%s: %d bad rows skipped", evalset.source, len(evalset.rejects))
    return select_eval_subset(evalset.items, n, seed)


