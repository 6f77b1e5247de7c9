"""Refine the Korean plain-text sources (C4 ko, NamuWiki, Korean Wikipedia) into 00_plain_text shards.

    python -m refine_scripts.refine_plain_text
    python -m refine_scripts.refine_plain_text --input data/raw --output data/refined/00_plain_text \\
        --min-hangul-ratio 0.5 --min-chars 50 --shard-size 100000

Reads ``<input>/by_source/<name>/<config>/<split>.jsonl`` of every source that feeds plain text
(script/sources.py: c4_ko, namuwiki, wikipedia_ko; column ``text``), line by line, and writes

    <output>/train-00000.jsonl, train-00001.jsonl, ...   {"id", "source", "text"}, --shard-size records each
    <output>/stats.json                                  read / kept / dropped by reason, per source
    <output>.rejects.ndjson                              unreadable rows as path:line: reason (beside the folder)

Per row: whitespace is normalised (``normalise_text``); the row is dropped when the text is shorter
than ``--min-chars`` characters, when its Hangul ratio (``korean_ratio``: Hangul syllables and jamo
among letters) is below ``--min-hangul-ratio``, or when the same normalised text was already kept.

Why a Hangul ratio of 0.5 by default: Korean web and encyclopedia text routinely carries Latin
(English medical terms, drug and product names, URLs) and some Hanja, so a high bar such as the 0.85
the validator expects of curated training data would drop good documents; 0.5 means "Hangul is the
main script", which still removes the English, Chinese and Japanese pages that C4's language
identification files under ``ko``, code listings and romanised boilerplate.

Memory is constant in the input size except for the exact-dedup set: one 8-byte BLAKE2b digest of
each kept text, held in a Python ``set`` of ``bytes``. Measured on CPython 3.11 that costs about
75 MB per million kept texts (a 41-byte bytes object plus its set slot; 60-100 MB depending on
where the set's table is in its doubling cycle), e.g. ~0.7 GB for ten million documents. Rows are
never collected: each kept row is written to the open shard at once. With 8-byte digests the
chance that two different texts collide is about n^2 / 2^65 (3e-6 at ten million texts).

The folder is written atomically: shards and stats go to a temp folder beside ``--output`` that
replaces it at the end, so a killed run leaves the previous output (or none), never a mix.
``id`` is a hash of (source, config/split/row), so reruns give identical files.

Exit status: 0 on success; 1 when a source's unreadable rows exceed --max-reject-percent (the
previous output is left as it was); 2 when no plain-text raw file exists.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tqdm import tqdm

from refine_scripts.refine_4types import record_id
from script.cli import setup_logging
from script.data_io import Reject, atomic_open, atomic_write_dir, atomic_write_json, count_lines, iter_jsonl
from script.sources import FEED_PLAIN_TEXT, Source, get_field, raw_path, sources_feeding
from script.training_config import RAW_DIR, REFINED_DIR
from script.validate_korean_proficiency import korean_ratio

logger = logging.getLogger("refine_plain_text")

OUTPUT_NAME = "00_plain_text"
STATS_NAME = "stats.json"
TEXT_COLUMN = "text"
SHARD_PATTERN = "train-{:05d}.jsonl"
DEFAULT_MIN_HANGUL_RATIO = 0.5
DEFAULT_MIN_CHARS = 50
DEFAULT_SHARD_SIZE = 100_000
DEFAULT_MAX_REJECT_PERCENT = 5.0
DIGEST_BYTES = 8
SET_BYTES_PER_DIGEST = 75  # measured: CPython 3.11 set of 8-byte bytes objects, one million entries
DROP_REASONS = ("rejected", "too_short", "low_hangul", "duplicate")


# ---------------------------------------------------------------------------
# One text
# ---------------------------------------------------------------------------
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")  # any whitespace but a newline (tabs, NBSP, U+3000 ...)
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")
_INVISIBLE = re.compile("[\u200b\ufeff]")  # zero-width space, stray byte-order marks


def normalise_text(text: str) -> str:
    """NFC, one space for any run of horizontal whitespace, at most one blank line, trimmed.

    NFC first: decomposed Hangul (jamo sequences, common in text from macOS) becomes syllables, so
    the Hangul ratio and the duplicate check see one spelling. Paragraph breaks are kept because
    they carry document structure for continued pretraining.
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", text)
    text = _HORIZONTAL_SPACE.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()


def text_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=DIGEST_BYTES).digest()


@dataclass(frozen=True)
class Filters:
    min_hangul_ratio: float = DEFAULT_MIN_HANGUL_RATIO
    min_chars: int = DEFAULT_MIN_CHARS

    def drop_reason(self, text: str) -> str | None:
        """Why a normalised text is dropped (before the duplicate check), or None to keep it."""
        if len(text) < self.min_chars:
            return "too_short"  # checked first: it is the cheaper test
        if korean_ratio(text) < self.min_hangul_ratio:
            return "low_hangul"
        return None


# ---------------------------------------------------------------------------
# Counting and writing
# ---------------------------------------------------------------------------
@dataclass
class SourceCounts:
    read: int = 0
    kept: int = 0
    kept_chars: int = 0
    dropped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"read": self.read, "kept": self.kept, "kept_chars": self.kept_chars,
                "dropped": {reason: self.dropped.get(reason, 0) for reason in DROP_REASONS}}


class ShardWriter:
    """Writes records to ``train-00000.jsonl``, ``train-00001.jsonl``, ... in ``folder``.

    Only the current shard is open; a shard is closed (complete) as soon as it holds
    ``shard_size`` records, so memory does not depend on how many records pass through.
    """

    def __init__(self, folder: Path, shard_size: int) -> None:
        if shard_size <= 0:
            raise ValueError("shard size must be positive")
        self.folder = Path(folder)
        self.shard_size = shard_size
        self.shards: list[dict] = []  # {"file", "records"} of every shard started
        self._handle: IO[str] | None = None

    def write(self, record: dict) -> None:
        if self._handle is None:
            self._open_next()
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.shards[-1]["records"] += 1
        if self.shards[-1]["records"] >= self.shard_size:
            self.close()  # complete on disk now; the next record opens the next shard

    def _open_next(self) -> None:
        name = SHARD_PATTERN.format(len(self.shards))
        self._handle = open(self.folder / name, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.shards.append({"file": name, "records": 0})

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def refine_rows(
    rows: Iterable[tuple[int, dict]], source: str, part: str, filters: Filters,
    seen: set[bytes], counts: SourceCounts, where: str = "",
    on_reject: Callable[[Reject], None] | None = None,
) -> Iterator[dict]:
    """Kept records ``{"id", "source", "text"}`` of ``(line_number, row)`` pairs, lazily, in order.

    ``seen`` holds the digests of every text kept so far (across sources: the same page in C4 and
    Wikipedia is kept once, from the first source in registry order). ``part`` ("config/split")
    goes into the id, so ids are stable and unique per raw row.
    """
    for line_no, row in rows:
        counts.read += 1
        value = get_field(row, TEXT_COLUMN)
        if not isinstance(value, str):
            found = "missing" if value is None else f"a {type(value).__name__}"
            counts.dropped["rejected"] += 1
            if on_reject is not None:
                on_reject(Reject(where, line_no, f"field {TEXT_COLUMN!r} should be a string, found {found}",
                                 json.dumps(row, ensure_ascii=False)[:2000]))
            continue
        text = normalise_text(value)
        reason = filters.drop_reason(text)
        if reason is None:
            digest = text_digest(text)
            if digest in seen:
                reason = "duplicate"
            else:
                seen.add(digest)
        if reason is not None:
            counts.dropped[reason] += 1
            continue
        counts.kept += 1
        counts.kept_chars += len(text)
        yield {"id": record_id(source, f"{part}/{line_no - 1}"), "source": source, "text": text}


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------
@dataclass
class Settings:
    input: Path
    output: Path
    filters: Filters = Filters()
    shard_size: int = DEFAULT_SHARD_SIZE
    max_reject_percent: float = DEFAULT_MAX_REJECT_PERCENT

    @property
    def rejects_path(self) -> Path:
        return self.output.with_name(self.output.name + ".rejects.ndjson")


@dataclass
class RunStats:
    sources: dict[str, SourceCounts] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    missing_inputs: list[str] = field(default_factory=list)
    shards: list[dict] = field(default_factory=list)
    digests: int = 0

    def over_limit(self, max_reject_percent: float) -> list[str]:
        return [f"{name}: {c.dropped['rejected']} of {c.read} rows unreadable "
                f"({100 * c.dropped['rejected'] / c.read:.1f}%)"
                for name, c in self.sources.items()
                if c.read and 100 * c.dropped["rejected"] / c.read > max_reject_percent]


class NoInput(RuntimeError):
    pass


class TooManyRejects(RuntimeError):
    """Carries the RunStats; raised inside the folder build so the previous output stays."""


def list_inputs(input_dir: Path, stats: RunStats) -> list[tuple[Source, str, str, Path]]:
    found = []
    for source in sources_feeding(FEED_PLAIN_TEXT):
        for config, split in source.parts():
            path = raw_path(input_dir, source.name, config, split)
            (stats.inputs if path.is_file() else stats.missing_inputs).append(str(path))
            if path.is_file():
                found.append((source, config, split, path))
    return found


def stats_document(stats: RunStats, settings: Settings) -> dict:
    per_source = {name: counts.to_dict() for name, counts in stats.sources.items()}
    return {
        "passed": not stats.over_limit(settings.max_reject_percent),
        "settings": {"input": str(settings.input), "output": str(settings.output),
                     "min_hangul_ratio": settings.filters.min_hangul_ratio,
                     "min_chars": settings.filters.min_chars, "shard_size": settings.shard_size,
                     "max_reject_percent": settings.max_reject_percent},
        "sources": per_source,
        "totals": {"read": sum(c["read"] for c in per_source.values()),
                   "kept": sum(c["kept"] for c in per_source.values()),
                   "dropped": {r: sum(c["dropped"][r] for c in per_source.values()) for r in DROP_REASONS}},
        "shards": stats.shards,
        "dedup": {"digests": stats.digests, "digest_bytes": DIGEST_BYTES,
                  "approx_set_mb": round(stats.digests * SET_BYTES_PER_DIGEST / 1e6, 1)},
        "inputs": stats.inputs,
        "missing_inputs": stats.missing_inputs,
        "over_reject_limit": stats.over_limit(settings.max_reject_percent),
    }


def refine_all(settings: Settings, rejects_handle: IO[str] | None = None) -> RunStats:
    """Stream every plain-text raw file into a freshly built output folder."""
    stats = RunStats()
    inputs = list_inputs(settings.input, stats)
    if not inputs:
        raise NoInput(f"no plain-text raw files under {settings.input / 'by_source'} "
                      f"(expected {', '.join(stats.missing_inputs)}); run "
                      "`python -m script.download_all_datasets` (or --from-dir data/sample) first")
    for path in stats.missing_inputs:
        logger.warning("no raw file %s (source not downloaded?)", path)
    seen: set[bytes] = set()

    def on_reject(reject: Reject) -> None:
        logger.warning("%s", reject)
        if rejects_handle is not None:
            rejects_handle.write(json.dumps({"source": reject.path, "line": reject.line, "reason": reject.reason,
                                             "raw": reject.raw}, ensure_ascii=False) + "\n")

    def build(folder: Path) -> None:
        total = sum(count_lines(path) for *_, path in inputs)
        with contextlib.closing(ShardWriter(folder, settings.shard_size)) as shards, \
                tqdm(total=total, desc="plain text", unit="row") as progress:
            for source, config, split, path in inputs:
                counts = stats.sources.setdefault(source.name, SourceCounts())
                progress.set_postfix_str(f"{source.name}/{config}/{split}")

                def unreadable(reject: Reject, counts: SourceCounts = counts) -> None:
                    progress.update()
                    counts.read += 1
                    counts.dropped["rejected"] += 1
                    on_reject(reject)

                rows = _with_progress(iter_jsonl(path, on_reject=unreadable), progress)
                for record in refine_rows(rows, source.name, f"{config}/{split}", settings.filters, seen,
                                          counts, str(path), on_reject):
                    shards.write(record)
        stats.shards = shards.shards
        stats.digests = len(seen)
        if stats.over_limit(settings.max_reject_percent):
            raise TooManyRejects(stats)
        atomic_write_json(folder / STATS_NAME, stats_document(stats, settings))

    atomic_write_dir(settings.output, build)
    return stats


def _with_progress(rows: Iterator[tuple[int, dict]], progress: tqdm) -> Iterator[tuple[int, dict]]:
    for item in rows:
        progress.update()
        yield item


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def print_summary(document: dict) -> None:
    print(f"\n{'source':14}  {'read':>9}  {'kept':>9}  " + "  ".join(f"{r:>10}" for r in DROP_REASONS))
    for name, c in document["sources"].items():
        print(f"{name:14}  {c['read']:>9}  {c['kept']:>9}  "
              + "  ".join(f"{c['dropped'][r]:>10}" for r in DROP_REASONS))
    totals = document["totals"]
    print(f"{'total':14}  {totals['read']:>9}  {totals['kept']:>9}  "
          + "  ".join(f"{totals['dropped'][r]:>10}" for r in DROP_REASONS))
    print(f"\n{len(document['shards'])} shard(s) of at most {document['settings']['shard_size']} records; "
          f"dedup set {document['dedup']['digests']} digests (~{document['dedup']['approx_set_mb']} MB)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=RAW_DIR,
                        help=f"raw directory written by download_all_datasets.py (default: {RAW_DIR})")
    parser.add_argument("--output", type=Path, default=REFINED_DIR / OUTPUT_NAME,
                        help=f"output folder, replaced as a whole (default: {REFINED_DIR / OUTPUT_NAME})")
    parser.add_argument("--min-hangul-ratio", type=float, default=DEFAULT_MIN_HANGUL_RATIO, metavar="R",
                        help="keep texts whose Hangul letters are at least this share of all letters "
                             f"(default: {DEFAULT_MIN_HANGUL_RATIO}: Hangul is the main script)")
    parser.add_argument("--min-chars", type=int, default=DEFAULT_MIN_CHARS, metavar="N",
                        help=f"keep texts of at least N characters after normalisation (default: {DEFAULT_MIN_CHARS})")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, metavar="N",
                        help=f"records per output shard train-NNNNN.jsonl (default: {DEFAULT_SHARD_SIZE})")
    parser.add_argument("--max-reject-percent", type=float, default=DEFAULT_MAX_REJECT_PERCENT, metavar="P",
                        help="fail (exit 1, previous output kept) when a source has more than P %% unreadable rows "
                             f"(default: {DEFAULT_MAX_REJECT_PERCENT:g})")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    if not 0 <= args.min_hangul_ratio <= 1:
        parser.error("--min-hangul-ratio must be between 0 and 1")
    if args.min_chars < 0 or args.shard_size <= 0:
        parser.error("--min-chars must be >= 0 and --shard-size positive")
    settings = Settings(args.input, args.output, Filters(args.min_hangul_ratio, args.min_chars),
                        args.shard_size, args.max_reject_percent)
    try:
        with atomic_open(settings.rejects_path) as rejects:
            try:
                stats = refine_all(settings, rejects)
            except TooManyRejects as exc:
                stats = exc.args[0]
    except NoInput as exc:
        print(exc, file=sys.stderr)
        return 2
    document = stats_document(stats, settings)
    print_summary(document)
    if not document["passed"]:
        print(f"\nFAILED: too many unreadable rows; {settings.output} left unchanged. "
              f"See {settings.rejects_path}:", file=sys.stderr)
        for line in document["over_reject_limit"]:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"\nwrote {settings.output} ({STATS_NAME}); rejects: {settings.rejects_path}")
    return 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
