"""The trainers' record readers: refined JSONL splits, plain-text shards (streamed), dictionaries and
KorMedMCQA-style items, each checked against its contract (DESIGN.md) with bad lines reported
``path:line: reason``, kept in a rejects file and counted.

    records = load_split_records(CLEAN_DIR / "type1_text" / "train.jsonl", max_samples, seed)
    dataset = to_sft_dataset(records)                       # TRL prompt/completion conversations
    items = load_mcq_items(CLEAN_DIR / "02_kor_med_test" / "train.jsonl")
    records = train02_records(items, seed)                  # formats.train02_messages

datasets is imported inside the functions that build a Dataset (kept lazy).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from script import formats
from script.data_io import DataError, atomic_write_jsonl, count_lines, iter_jsonl, read_json, read_jsonl, sha256_file
from script.launch import world_size
from script.training_config import LOG_DIR, ConfigError

logger = logging.getLogger(__name__)


def select_samples(records: list[dict], max_samples: int | None, seed: int) -> list[dict]:
    """A seeded, order-independent subset: the same records for the same seed and limit."""
    if max_samples is None or max_samples >= len(records):
        return records
    rng = random.Random(seed)
    return rng.sample(records, max_samples)



def validate_messages_record(record: dict) -> str | None:
    """Contract of a refined record: ``messages`` = [system?, user, assistant] with non-empty text."""
    messages = record.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        return "field 'messages' should be a list of at least user and assistant turns"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            return f"messages[{i}] should be an object with a string 'content'"
        if not message["content"].strip():
            return f"messages[{i}] ({message.get('role')}) is empty"
    roles = [m.get("role") for m in messages]
    expected = ["system", "user", "assistant"] if roles[0] == "system" else ["user", "assistant"]
    if roles != expected:
        return f"roles {roles}, expected {expected}"
    return None



def load_split_records(path: Path, max_samples: int | None = None, seed: int = 42,
                       rejects_dir: Path | None = None) -> list[dict]:
    """Read one refined JSONL split; bad lines are reported (path:line) and kept in a rejects file."""
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; build the data first (make data)")
    rejects = (rejects_dir or LOG_DIR) / f"rejects_{path.parent.name}_{path.stem}.jsonl"
    report = read_jsonl(path, validate_messages_record, rejects_path=rejects, max_reject_fraction=0.05)
    if report.rejects:
        logger.warning("%s: %d bad lines skipped (written to %s)", path, len(report.rejects), rejects)
    if not report.records:
        raise ConfigError(f"{path}: no usable records")
    return select_samples(report.records, max_samples, seed)



def to_sft_dataset(records: Sequence[dict]):
    """Refined records (``messages``) -> datasets.Dataset of TRL prompt/completion conversations."""
    from datasets import Dataset

    return Dataset.from_list([formats.to_prompt_completion(r["messages"]) for r in records])



def describe_data_file(path: str | Path) -> dict:
    path = Path(path)
    return {"path": str(path), "rows": count_lines(path), "sha256": sha256_file(path)}



PLAIN_TEXT_PATTERN = "train-*.jsonl"



PLAIN_TEXT_HOLDOUT_WINDOW = 2000  # held-out texts come from the first lines of each shard: no full scan



PLAIN_TEXT_ESTIMATE_RECORDS = 256  # records tokenized to estimate how many packed rows a stream makes



MAX_REJECT_FRACTION = 0.05



def plain_text_files(data: str | Path) -> list[Path]:
    """The ``train-*.jsonl`` shards of a plain-text dir (or one JSONL file), in name order."""
    data = Path(data)
    if data.is_file():
        return [data]
    files = sorted(data.glob(PLAIN_TEXT_PATTERN)) if data.is_dir() else []
    if not files:
        raise ConfigError(f"{data}: no {PLAIN_TEXT_PATTERN} shards; build them with "
                          "python -m refine_scripts.refine_plain_text (make data)")
    return files



def plain_text_problem(record: dict) -> str | None:
    text = record.get("text")
    if text is None:
        return "missing field 'text' (expected {\"id\", \"source\", \"text\"})"
    if not isinstance(text, str):
        return f"field 'text' should be a string, found {type(text).__name__}"
    return None if text.strip() else "field 'text' is empty"



def _plain_text_key(record: dict, path: str | Path, line: int) -> str:
    return str(record.get("id") or f"{Path(path).name}:{line}")



def _seeded_rank(key: str, seed: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "big")



def _ignore_reject(reject) -> None:
    """For readers that only peek at the first lines: the stream reports every bad line, once."""



def plain_text_heldout(files: Sequence[Path], n: int, seed: int,
                       window: int = PLAIN_TEXT_HOLDOUT_WINDOW) -> list[dict]:
    """``n`` texts kept out of training, ``{"id", "text"}``: the lowest seeded hash ranks among the
    first ``window`` records of every shard (so every source is represented and only those lines
    are read). A smaller ``n`` gives a subset of a larger one: with the same seed, the forgetting
    monitor of train_01 (32 texts) reads texts that train_00 (64 held out) never trained on.
    """
    if n <= 0:
        return []
    candidates = []
    for path in files:
        for line, record in itertools.islice(iter_plain_text(path), window):
            key = _plain_text_key(record, path, line)
            candidates.append((_seeded_rank(key, seed), key, record["text"]))
    candidates.sort()
    return [{"id": key, "text": text} for _, key, text in candidates[:n]]



def iter_plain_text(path: str | Path, on_reject=_ignore_reject):
    """``(line, record)`` of the good lines of one plain-text shard, streamed."""
    return iter_jsonl(path, plain_text_problem, on_reject=on_reject)



def plain_text_stream(files: Sequence[Path], exclude_ids: set[str], max_samples: int | None, seed: int,
                      buffer_size: int, rejects: dict):
    """A streamed ``datasets.IterableDataset`` of ``{"text"}``: the shards read line by line (never
    all in memory), held-out ids left out, the first ``max_samples`` records only, shuffled with a
    seeded buffer (the shard order is shuffled too, and differently each epoch, still seeded).
    Bad lines are logged ``path:line: reason`` once and collected in ``rejects``.
    """
    from datasets import IterableDataset

    def keep_reject(reject) -> None:
        if (reject.path, reject.line) not in rejects:
            logger.warning("%s", reject)
            rejects[(reject.path, reject.line)] = reject

    def rows(files: list[str]):
        for path in files:
            for line, record in iter_plain_text(path, keep_reject):
                if _plain_text_key(record, path, line) not in exclude_ids:
                    yield {"text": record["text"]}

    dataset = IterableDataset.from_generator(rows, gen_kwargs={"files": [str(f) for f in files]})
    if max_samples:
        dataset = dataset.take(max_samples)  # the same first records every epoch, whatever the shuffle
    return dataset.shuffle(seed=seed, buffer_size=buffer_size)



def plain_text_step_plan(tokenizer, files: Sequence[Path], exclude_ids: set[str], records: int,
                         run) -> dict:
    """``max_steps`` of a streamed, packed run (an IterableDataset has no length the Trainer could count).

    packed rows = records x mean tokens per record (``<bos>`` text ``<eos>``, measured on the first
    records) / max_length; steps = rows x epochs / effective batch. Rejected lines are counted as
    records, so the estimate errs towards a little more than the requested epochs.
    """
    lengths: list[int] = []
    for path in files:
        for line, record in iter_plain_text(path):
            if _plain_text_key(record, path, line) not in exclude_ids:
                lengths.append(len(tokenizer(record["text"])["input_ids"]) + 1)
            if len(lengths) >= PLAIN_TEXT_ESTIMATE_RECORDS:
                break
        if len(lengths) >= PLAIN_TEXT_ESTIMATE_RECORDS:
            break
    if not lengths:
        raise ConfigError(f"{files[0].parent}: no usable plain-text records")
    mean_tokens = sum(lengths) / len(lengths)
    rows = max(1, math.ceil(records * mean_tokens / run.max_length))
    effective_batch = run.batch * run.grad_accum * world_size()
    steps_per_epoch = max(1, math.ceil(rows / effective_batch))
    return {"records": records, "mean_tokens_per_record": round(mean_tokens, 1), "measured_on": len(lengths),
            "packed_rows_per_epoch": rows, "effective_batch": effective_batch, "steps_per_epoch": steps_per_epoch,
            "max_steps": max(1, math.ceil(steps_per_epoch * run.epochs))}



def dictionary_entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return f"expected an object with 'term' and 'definition', found {type(entry).__name__}"
    for name in ("term", "definition"):
        value = entry.get(name)
        if value is None:
            return f"missing field {name!r}"
        if not isinstance(value, str):
            return f"field {name!r} should be a string, found {type(value).__name__}"
        if not value.strip():
            return f"field {name!r} is empty"
    return None



def load_dictionary_records(paths: Sequence[str | Path], rejects_path: Path | None = None) -> tuple[list[dict], dict]:
    """Dictionary JSON arrays (``[{"term", "definition"}, ...]``) -> train_01 records (``messages`` in
    formats.dictionary_messages). A malformed entry is reported ``path: entry [i]: reason``, written
    to the rejects file and skipped; per-file counts come back with the records."""
    records: list[dict] = []
    rejects: list[dict] = []
    stats: dict[str, dict] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise ConfigError(f"{path} does not exist; build the dictionaries first "
                              "(python -m refine_scripts.refine_dictionaries, or make data)")
        entries = read_json(path)
        if not isinstance(entries, list):
            raise DataError(f"{path}: expected a JSON array of {{\"term\", \"definition\"}} objects, "
                            f"found {type(entries).__name__}")
        kept = 0
        for index, entry in enumerate(entries):
            reason = dictionary_entry_problem(entry)
            if reason:
                logger.warning("%s: entry [%d]: %s", path, index, reason)
                rejects.append({"source": str(path), "index": index, "reason": reason,
                                "raw": json.dumps(entry, ensure_ascii=False)[:2000]})
                continue
            records.append({"id": f"{path.stem}:{index}", "source": path.stem,
                            "messages": formats.dictionary_messages(entry["term"].strip(), entry["definition"].strip())})
            kept += 1
        stats[str(path)] = {"entries": len(entries), "kept": kept, "rejected": len(entries) - kept}
    if rejects:
        rejects_path = rejects_path or LOG_DIR / "rejects_dictionaries.jsonl"
        atomic_write_jsonl(rejects_path, rejects)
        logger.warning("%d malformed dictionary entries skipped (written to %s)", len(rejects), rejects_path)
    if not records:
        raise DataError(f"no usable dictionary entries in {', '.join(map(str, paths))}")
    return records, stats



def mcq_item_problem(record: dict) -> str | None:
    """Contract of a 02_kor_med_test item: question, options A.. in order, answer among them, cot optional."""
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        return "field 'question' should be a non-empty string"
    letters = list(formats.mcq_item_options(record))
    if len(letters) < 2 or letters != list(formats.OPTION_LETTERS[: len(letters)]):
        return f"options should be non-empty strings A, B, ... in order, found {letters}"
    if record.get("answer") not in letters:
        return f"field 'answer' should be one of {', '.join(letters)}, found {record.get('answer')!r}"
    if record.get("cot") is not None and not isinstance(record["cot"], str):
        return "field 'cot' should be a string"
    return None



def load_mcq_items(path: Path) -> list[dict]:
    """02_kor_med_test items; bad lines reported ``path:line: reason``, kept in a rejects file, counted."""
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; build it first (python -m refine_scripts.refine_kor_med_test, "
                          "or make data)")
    rejects = LOG_DIR / f"rejects_{path.parent.name}_{path.stem}.jsonl"
    report = read_jsonl(path, mcq_item_problem, rejects_path=rejects, max_reject_fraction=MAX_REJECT_FRACTION)
    if report.rejects:
        logger.warning("%s: %d bad lines skipped (written to %s)", path, len(report.rejects), rejects)
    if not report.records:
        raise ConfigError(f"{path}: no usable items")
    return [dict(item, id=str(item.get("id") or f"{path.stem}:{i}")) for i, item in enumerate(report.records)]



def train02_records(items: Sequence[dict], seed: int, detailed_fraction: float = formats.DETAILED_FRACTION,
                    answer_text: bool = False) -> list[dict]:
    """train_02 records: each item in the simple or (for a seeded ``detailed_fraction`` of ids) the
    detailed format of formats.train02_messages; with ``answer_text`` each item also once in its
    cloze form (the question alone, answered with the right option's text)."""
    records = []
    for item in items:
        detailed = formats.train02_is_detailed(item["id"], seed, detailed_fraction)
        records.append({"id": item["id"], "detailed": detailed, "messages": formats.train02_messages(item, detailed)})
        if answer_text:
            gold = formats.mcq_item_options(item)[item["answer"]]
            records.append({"id": f"{item['id']}#answer_text", "detailed": False, "answer_text": True,
                            "messages": formats.answer_text_messages(item["question"], gold)})
    return records
