"""Download every registered source (script/sources.py) into data/raw as plain JSONL.

    python -m script.download_all_datasets                        # from the Hugging Face hub
    python -m script.download_all_datasets --from-dir data/sample # from a local hub mirror (offline)
    python -m script.download_all_datasets --only kormedmcqa kmmlu

Every source is loaded through ``datasets.load_dataset`` by its hub id, or with ``--from-dir DIR``
from ``DIR/<hub id>`` (a directory laid out like the hub repository, README.md ``configs:`` included).
The dictionaries are not on the hub: they are read from ``--local-dir`` (default ``DIR/local`` with
``--from-dir``, else the project's shipped ``data/sample/local``).

Volume: the large text corpora (C4 ko, NamuWiki, Wikipedia ko) are capped by the registry
(``Source.max_mb``: 500 MB of raw JSON Lines each, the guide's ~1.5 GB of plain text) and streamed,
so no whole dump lands in the hub cache or in data/raw. ``--max-mb MB`` sets the cap of every
capped source (0: no cap, download them whole); ``--max-rows N`` keeps the first N rows of every
split of every source (a smoke run).

Revisions: ``configs/data_revisions.json`` names the hub commit each source is read at (null: the
current main). The commit a hub download actually read is recorded per part in the manifest;
``--pin-revisions`` writes those commits into the revisions file, so later runs read the same data
even after an upstream re-upload.

Output, one file per source, config and split, in the upstream column schema:

    <output>/by_source/<name>/<config>/<split>.jsonl
    <output>/manifest.json   per part: hub id, config, split, revision asked and commit read, cap,
                             rows, bytes, columns, sha256, origin, time

The run is resumable: a source whose manifest entries match (same hub id, config, split, origin and
row limit, files present with the recorded sha256) is skipped. A source whose columns differ from
the registry fails with "expected columns X, found Y"; the other sources go on. Exit status 1 when a
required source (``Source.required``: KorMedMCQA, the dictionaries) failed, or any source with
``--strict``; a failed optional source is listed as skipped and the exit status stays 0; 2 when the
hub cannot be reached.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm import tqdm

from script.cli import setup_logging
from script.data_io import (
    DataError,
    atomic_open,
    atomic_write_json,
    iter_jsonl,
    read_json,
    safe_child_path,
    sha256_file,
)
from script.sources import DEFAULT_CONFIG, SOURCES, Source, get_source, missing_columns, raw_path, source_names
from script.training_config import PROJECT_ROOT, RAW_DIR, SAMPLE_DATA_DIR

logger = logging.getLogger("download_all_datasets")

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 2  # 2: revision, commit, max_mb and bytes per part
REVISIONS_FILE = PROJECT_ROOT / "configs" / "data_revisions.json"
MB = 1_000_000

OFFLINE_MESSAGE = (
    "The Hugging Face hub cannot be reached (HF_HUB_OFFLINE is set, or the connection failed).\n"
    "Either pass a local hub mirror, e.g.\n"
    "    python -m script.download_all_datasets --from-dir data/sample\n"
    "or go online (unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE and check the network)."
)


class SourceError(RuntimeError):
    """A source that cannot be downloaded as the registry describes it."""


class HubUnreachable(RuntimeError):
    """No network (or offline mode) while a hub download was needed: stops the whole run."""


@dataclass
class Settings:
    output: Path
    from_dir: Path | None
    local_dir: Path
    max_rows: int | None
    cache_dir: str | None
    force: bool
    max_mb: float | None = None  # None: each source's registry cap; 0: no cap
    revisions: dict[str, str | None] = field(default_factory=dict)  # hub id -> commit (None: main)

    def cap_mb(self, source: Source) -> float | None:
        """The MB cap of a source's parts: --max-mb for a capped source, else the registry's."""
        if source.max_mb is None:
            return None
        if self.max_mb is not None:
            return self.max_mb or None
        return source.max_mb

    def revision(self, source: Source) -> str | None:
        """The hub commit to read (None: main); a local mirror has no revisions."""
        return None if self.from_dir is not None or source.is_local else self.revisions.get(source.hub_id)


@dataclass
class SourceResult:
    name: str
    status: str  # "downloaded" | "skipped" | "FAILED"
    rows: int = 0
    parts: int = 0
    detail: str = ""
    entries: dict[str, dict] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------
def part_key(name: str, config: str, split: str) -> str:
    return f"{name}/{config}/{split}"


def load_manifest(output: Path) -> dict:
    path = output / MANIFEST_NAME
    if not path.exists():
        return {"version": MANIFEST_VERSION, "parts": {}}
    manifest = read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("parts"), dict):
        raise DataError(f"{path}: not a manifest written by this script (no 'parts' object)")
    return manifest


def files_fingerprint(locations: Sequence[Path]) -> str | None:
    """sha256 over the (path, size, modification time) of every file in ``locations`` (files, or
    directories walked recursively): a local mirror rewritten since the last run is read again.
    None when none of them exists."""
    files = sorted({p for loc in locations for p in ([loc] if loc.is_file() else loc.rglob("*") if loc.is_dir()
                                                     else []) if p.is_file()})
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def origin_of(source: Source, settings: Settings) -> dict:
    """What identifies where a part came from; a manifest entry is reused only when this matches.
    For a local directory that includes a fingerprint of its files, so an edited mirror is re-read."""
    if source.is_local:
        files = [settings.local_dir / name for name in (source.local_files or {}).values()]
        return {"origin": "dir", "from_dir": str(settings.local_dir.resolve()), "fingerprint": files_fingerprint(files)}
    if settings.from_dir is not None:
        return {"origin": "dir", "from_dir": str(settings.from_dir.resolve()),
                "fingerprint": files_fingerprint([settings.from_dir / source.hub_id])}
    return {"origin": "hub", "from_dir": None, "revision": settings.revision(source)}


def entry_is_current(entry: dict | None, expected: dict, output: Path) -> bool:
    """True when the recorded part matches ``expected`` (identity()) and its file is intact."""
    if not isinstance(entry, dict) or any(entry.get(key) != value for key, value in expected.items()):
        return False
    try:  # a hand-edited manifest must not point the check at files outside the output dir
        path = safe_child_path(output, entry.get("path"), f"{output / MANIFEST_NAME}: part path")
    except DataError as exc:
        logger.warning("%s; the part is downloaded again", exc)
        return False
    return path.is_file() and sha256_file(path) == entry.get("sha256")


def identity(source: Source, config: str, split: str, settings: Settings) -> dict:
    """Everything that decides a part's content; a manifest entry is reused only when all of it matches."""
    return {
        "source": source.name,
        "hub_id": source.hub_id,
        "config": config,
        "split": split,
        "data_file": data_file_of(source, config, split),
        "max_rows": settings.max_rows,
        "max_mb": settings.cap_mb(source),
        **origin_of(source, settings),
    }


def data_file_of(source: Source, config: str, split: str) -> str | None:
    """The upstream file a part is read from, where the registry names one."""
    if source.data_files is not None:
        return source.data_files[split]
    if source.local_files is not None:
        return source.local_files[config]
    return None


# ---------------------------------------------------------------------------
# Reading one part (config + split) of a source
# ---------------------------------------------------------------------------
def to_jsonable(value: Any) -> Any:
    """Make a datasets row JSON-serialisable (the json loader turns ISO strings into datetimes)."""
    if isinstance(value, dict):
        return {key: to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    return value


def open_hub_part(source: Source, config: str, split: str, settings: Settings) -> tuple[list[str], Iterator[dict]]:
    """Columns and rows of one split, through datasets.load_dataset (hub id or mirror directory)."""
    import datasets  # heavy import kept out of --help

    if settings.from_dir is not None:
        location = settings.from_dir / source.hub_id
        if not location.is_dir():
            raise SourceError(f"{location} not found: the mirror has no directory for {source.hub_id}")
        path = str(location)
    else:
        path = source.hub_id
    kwargs: dict[str, Any] = {"split": split, "cache_dir": settings.cache_dir}
    if source.data_files is not None:
        kwargs["data_files"] = dict(source.data_files)  # with data_files the config is the implicit one
    elif config != DEFAULT_CONFIG:
        kwargs["name"] = config
    if settings.revision(source):
        kwargs["revision"] = settings.revision(source)
    # A row or size limit streams instead of downloading whole splits (C4/NamuWiki are many gigabytes).
    streaming = settings.max_rows is not None or settings.cap_mb(source) is not None
    if settings.from_dir is not None and not streaming:
        # A local mirror is read afresh: datasets would reuse a cache built before it was rewritten.
        kwargs["download_mode"] = datasets.DownloadMode.FORCE_REDOWNLOAD
    try:
        dataset = datasets.load_dataset(path, streaming=streaming, **kwargs)
    except Exception as exc:
        if is_connection_error(exc):
            raise HubUnreachable(str(exc)) from exc
        raise
    rows: Iterable[dict] = dataset if settings.max_rows is None else islice(dataset, settings.max_rows)
    columns = dataset.column_names
    if columns is None:  # streaming datasets without declared features: look at the first row
        iterator = iter(rows)
        first = next(iterator, None)
        columns = list(first) if first is not None else []
        rows = iterator if first is None else _chain_first(first, iterator)
    return list(columns), iter(rows)


def _chain_first(first: dict, rest: Iterator[dict]) -> Iterator[dict]:
    yield first
    yield from rest


def open_local_part(source: Source, config: str, settings: Settings) -> tuple[list[str], Iterator[dict]]:
    """A local dictionary file; a bad line stops the source with ``path:line: reason``."""
    path = settings.local_dir / source.local_files[config]
    if not path.is_file():
        raise SourceError(f"{path} not found (local file; pass --local-dir)")
    records = [record for _, record in iter_jsonl(path)]
    if settings.max_rows is not None:
        records = records[: settings.max_rows]
    columns = list(dict.fromkeys(key for record in records for key in record))
    return columns, iter(records)


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or anything in its cause chain) means "the hub could not be reached"."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        kind = type(exc).__name__
        if isinstance(exc, ConnectionError) or kind in {"OfflineModeIsEnabled", "ConnectError", "ConnectTimeout"}:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def download_part(source: Source, config: str, split: str, settings: Settings) -> dict:
    """Write one part to raw/by_source/... and return its manifest entry."""
    if source.is_local:
        columns, rows = open_local_part(source, config, settings)
    else:
        columns, rows = open_hub_part(source, config, split, settings)
    missing = missing_columns(source, columns)
    if missing:
        raise SourceError(
            f"{config}/{split}: expected columns {list(source.columns)}, found {columns} "
            f"(missing: {', '.join(missing)})"
        )
    target = raw_path(settings.output, source.name, config, split)
    count, capped = write_capped_jsonl(target, (to_jsonable(row) for row in rows), settings.cap_mb(source))
    return {
        **identity(source, config, split, settings),
        "path": target.relative_to(settings.output).as_posix(),
        "rows": count,
        "bytes": target.stat().st_size,
        "capped": capped,  # True: the part has more rows upstream than the cap let through
        "columns": columns,
        "sha256": sha256_file(target),
        "downloaded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_capped_jsonl(path: Path, rows: Iterable[dict], cap_mb: float | None) -> tuple[int, bool]:
    """Write ``rows`` as JSON Lines (atomically) until the file reaches ``cap_mb`` megabytes (the
    row that crosses it is the last); returns (rows written, whether the cap stopped it). Each row
    is serialised once: this loop carries every byte of the text corpora."""
    limit = None if cap_mb is None else cap_mb * MB
    count = size = 0
    with atomic_open(path) as handle:
        for row in rows:
            if limit is not None and size >= limit:
                return count, True
            line = json.dumps(row, ensure_ascii=False) + "\n"
            handle.write(line)
            size += len(line.encode("utf-8"))
            count += 1
    return count, False


def resolved_commit(source: Source, settings: Settings) -> str | None:
    """The hub commit a download of ``source`` reads (its pin, or what main points at now); None
    for a local mirror, or when the hub does not say."""
    if settings.from_dir is not None or source.is_local:
        return None
    try:
        from huggingface_hub import HfApi  # lazy: only a hub download needs it

        return HfApi().dataset_info(source.hub_id, revision=settings.revision(source)).sha
    except Exception as exc:  # informative only: the rows are already read
        logger.warning("%s: could not resolve the hub commit (%s)", source.name, exc)
        return None


def download_source(source: Source, settings: Settings, manifest: dict) -> SourceResult:
    """All parts of one source; skipped when every part is already current in the manifest."""
    parts = source.parts()
    recorded = manifest["parts"]
    current = [
        entry_is_current(recorded.get(part_key(source.name, c, s)), identity(source, c, s, settings), settings.output)
        for c, s in parts
    ]
    if all(current) and not settings.force:
        rows = sum(recorded[part_key(source.name, c, s)]["rows"] for c, s in parts)
        return SourceResult(source.name, "skipped", rows=rows, parts=len(parts), detail="up to date in manifest")
    result = SourceResult(source.name, "downloaded")
    commit = resolved_commit(source, settings)
    for config, split in parts:
        entry = download_part(source, config, split, settings) | {"commit": commit}
        result.entries[part_key(source.name, config, split)] = entry
        result.rows += entry["rows"]
        result.parts += 1
        if entry["capped"]:
            result.detail = f"capped at {settings.cap_mb(source):g} MB per part (--max-mb)"
    return result


def load_revisions(path: Path) -> dict[str, str | None]:
    """hub id -> pinned commit (None: main) from a revisions file; a missing file pins nothing."""
    if not path.is_file():
        return {}
    document = read_json(path)
    revisions = document.get("revisions") if isinstance(document, dict) else None
    if not isinstance(revisions, dict) or not all(v is None or isinstance(v, str) for v in revisions.values()):
        raise DataError(f"{path}: expected {{\"revisions\": {{hub id: commit or null}}}}")
    return revisions


def pin_revisions(path: Path, manifest: dict) -> int:
    """Write the commits the manifest's hub parts were read at into the revisions file; returns how
    many sources it pins."""
    document = read_json(path) if path.is_file() else {"revisions": {}}
    commits = {entry["hub_id"]: entry["commit"] for entry in manifest["parts"].values()
               if entry.get("origin") == "hub" and entry.get("commit")}
    document["revisions"].update(commits)
    atomic_write_json(path, document)
    return len(commits)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def hub_offline() -> bool:
    """Offline mode as the datasets library sees it (HF_DATASETS_OFFLINE, else HF_HUB_OFFLINE)."""
    from datasets import config

    return bool(config.HF_HUB_OFFLINE)


def print_summary(results: list[SourceResult]) -> None:
    width = max([len("source")] + [len(r.name) for r in results])
    print(f"\n{'source':{width}}  {'status':10}  {'parts':>5}  {'rows':>9}  detail")
    print("-" * (width + 40))
    for r in results:
        print(f"{r.name:{width}}  {r.status:10}  {r.parts:>5}  {r.rows:>9}  {r.detail}")
    failed = sum(r.status == "FAILED" for r in results)
    print(f"{len(results) - failed} of {len(results)} sources ok, {failed} failed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog="Sources (python -m script.sources lists them with configs and splits): " + ", ".join(source_names()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--from-dir", type=Path, metavar="DIR",
                        help="read a local hub mirror instead of the hub: source X is loaded from DIR/<hub id of X> "
                             "(e.g. --from-dir data/sample); works offline")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=source_names(),
                        help="download only these sources (registry names, e.g. kormedmcqa kmmlu)")
    parser.add_argument("--output", type=Path, default=RAW_DIR,
                        help=f"raw data directory; files go to OUTPUT/by_source/<name>/<config>/<split>.jsonl and "
                             f"the manifest to OUTPUT/{MANIFEST_NAME} (default: {RAW_DIR})")
    parser.add_argument("--local-dir", type=Path, metavar="DIR",
                        help="directory holding the local dictionary files (01_medical_dict/*.jsonl); default: "
                             f"DIR/local with --from-dir, else {SAMPLE_DATA_DIR / 'local'}")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when any source fails (default: only when a required one does; a failed "
                             "optional source is skipped with its reason)")
    parser.add_argument("--check-local", action="store_true",
                        help="only check that the local dictionary files are in --local-dir (exit 2 naming the "
                             "missing ones); the pipeline runs this before its first stage")
    parser.add_argument("--max-rows", type=int, metavar="N",
                        help="keep only the first N rows of every split (hub data is streamed, not downloaded "
                             "whole); recorded in the manifest. Default: all rows")
    parser.add_argument("--max-mb", type=float, metavar="MB",
                        help="cap of every capped source (the text corpora; python -m script.sources shows the "
                             "caps), in MB of raw JSON Lines per part; 0 downloads them whole. Default: the "
                             "registry's (500 MB each, the guide's ~1.5 GB of plain text)")
    parser.add_argument("--revisions", type=Path, default=REVISIONS_FILE, metavar="FILE",
                        help=f"hub commit per source, {{\"revisions\": {{hub id: commit or null}}}} (default "
                             f"{REVISIONS_FILE.relative_to(PROJECT_ROOT)}; null reads main)")
    parser.add_argument("--pin-revisions", action="store_true",
                        help="after a hub download, write the commits it read into --revisions")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="datasets cache directory (default: the datasets library's, ~/.cache/huggingface)")
    parser.add_argument("--force", action="store_true",
                        help="download again even when the manifest says a source is up to date")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the datasets library's messages too")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    if args.max_rows is not None and args.max_rows <= 0:
        raise SystemExit("--max-rows must be a positive number of rows")
    if args.max_mb is not None and args.max_mb < 0:
        raise SystemExit("--max-mb must be a size in MB (0: no cap)")
    if args.local_dir is not None:
        local_dir = args.local_dir
    elif args.from_dir is not None:
        local_dir = args.from_dir / "local"
    else:
        local_dir = SAMPLE_DATA_DIR / "local"
    try:
        revisions = load_revisions(args.revisions)
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    return Settings(args.output, args.from_dir, local_dir, args.max_rows, args.cache_dir, args.force,
                    args.max_mb, revisions)


def check_local_files(local_dir: Path, sources: Sequence[Source]) -> int:
    """0 when every local source's files are in ``local_dir``; else 2, naming each missing file."""
    expected = [local_dir / name for source in sources for name in (source.local_files or {}).values()]
    missing = [path for path in expected if not path.is_file()]
    if missing:
        print(f"error: {local_dir} lacks {', '.join(map(str, missing))} (it must hold "
              f"{', '.join(str(p.relative_to(local_dir)) for p in expected)}: JSON Lines of "
              '{"term", "definition"}; README, "Dictionaries")', file=sys.stderr)
        return 2
    print(f"{local_dir}: {len(expected)} dictionary files present")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    settings = settings_from_args(args)
    selected = [get_source(name) for name in args.only] if args.only else list(SOURCES)
    if args.check_local:
        return check_local_files(settings.local_dir, [s for s in selected if s.is_local])

    if args.from_dir is not None and not args.from_dir.is_dir():
        print(f"--from-dir {args.from_dir}: no such directory", file=sys.stderr)
        return 2
    if args.from_dir is None and any(not s.is_local for s in selected) and hub_offline():
        print(OFFLINE_MESSAGE, file=sys.stderr)
        return 2

    import datasets

    if not args.verbose:  # our own progress bar is over sources; the per-split bars only add noise
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()

    manifest = load_manifest(settings.output)
    unpinned = [s.name for s in selected if not s.is_local and settings.from_dir is None and not settings.revision(s)]
    if unpinned:
        print(f"{len(unpinned)} source(s) read at the hub's current main, not a pinned commit: "
              f"{', '.join(unpinned)}; the commits read go to the manifest, and --pin-revisions writes them "
              f"to {args.revisions}", file=sys.stderr)
    results: list[SourceResult] = []
    for source in tqdm(selected, desc="sources", unit="source"):
        try:
            result = download_source(source, settings, manifest)
        except HubUnreachable as exc:
            logger.error("%s: %s", source.name, exc)
            print(OFFLINE_MESSAGE, file=sys.stderr)
            return 2
        except Exception as exc:  # one failing source is reported; the others go on
            logger.error("%s failed: %s", source.name, exc)
            result = SourceResult(source.name, "FAILED", detail=f"{type(exc).__name__}: {exc}")
        if result.entries:
            manifest["parts"].update(result.entries)
            manifest["version"] = MANIFEST_VERSION
            atomic_write_json(settings.output / MANIFEST_NAME, manifest)  # after each source: resumable
        results.append(result)

    print_summary(results)
    if args.pin_revisions:
        print(f"pinned {pin_revisions(args.revisions, manifest)} hub source(s) in {args.revisions}")
    failed = {r.name for r in results if r.status == "FAILED"}
    required = sorted(s.name for s in selected if s.required and s.name in failed)
    if required:
        print(f"FAILED: required source(s) {', '.join(required)}: the stages that need them cannot run",
              file=sys.stderr)
        return 1
    if failed:
        print(f"skipped optional source(s) {', '.join(sorted(failed))} (reasons above); the run goes on without "
              "them" + (" -- but --strict: exit 1" if args.strict else ""), file=sys.stderr)
        return 1 if args.strict else 0
    return 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
