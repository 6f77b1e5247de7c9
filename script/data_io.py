"""JSONL reading with ``path:line: reason`` errors, rejects files and counts; atomic writes.

Every reader in the project goes through ``read_jsonl``/``iter_jsonl`` so that a bad line is
reported the same way everywhere and never silently dropped; every writer goes through the
``atomic_write_*`` functions so that a kill never leaves half a file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

# A validator returns None for a good record, or a short reason ("missing field 'answer'").
Validator = Callable[[dict], "str | None"]

# Lines longer than this are rejected before json.loads (a corrupt file can hold one huge line).
MAX_LINE_BYTES = 16 * 1024 * 1024


class DataError(ValueError):
    """Input that cannot be trusted; the message starts with ``path:line:`` where one applies."""


@dataclass
class Reject:
    path: str
    line: int
    reason: str
    raw: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class ReadReport:
    """What a read saw: kept records, rejects with their reasons, skipped blank lines."""

    path: str
    records: list[dict] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    blank_lines: int = 0

    @property
    def counts(self) -> dict[str, int]:
        return {"kept": len(self.records), "rejected": len(self.rejects), "blank": self.blank_lines}


def _decode_line(raw: bytes, line_no: int) -> str:
    if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # UTF-8 byte-order mark written by some editors
    return raw.decode("utf-8").rstrip("\r\n")


def iter_jsonl(
    path: str | os.PathLike,
    validate: Validator | None = None,
    on_reject: Callable[[Reject], None] | None = None,
) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` for every good line, streaming in constant memory.

    Bad lines (invalid UTF-8, invalid JSON, not an object, over-long, failing ``validate``) go to
    ``on_reject``; without one, the first bad line raises ``DataError("path:line: reason")``.
    Blank lines and CRLF line ends are accepted.
    """
    path_str = str(path)
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            reason, text, record = None, "", None
            if len(raw) > MAX_LINE_BYTES:
                reason = f"line is {len(raw)} bytes, more than the {MAX_LINE_BYTES} allowed"
            else:
                try:
                    text = _decode_line(raw, line_no)
                except UnicodeDecodeError as exc:
                    reason = f"invalid UTF-8 at byte {exc.start}"
            if reason is None:
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as exc:
                    reason = f"invalid JSON ({exc.msg} at column {exc.colno})"
                else:
                    if not isinstance(record, dict):
                        reason = f"expected a JSON object, found {type(record).__name__}"
                    elif validate is not None:
                        reason = validate(record)
            if reason is None:
                yield line_no, record
                continue
            reject = Reject(path_str, line_no, reason, raw.decode("utf-8", errors="replace")[:2000])
            if on_reject is None:
                raise DataError(str(reject))
            on_reject(reject)


def read_jsonl(
    path: str | os.PathLike,
    validate: Validator | None = None,
    rejects_path: str | os.PathLike | None = None,
    max_reject_fraction: float | None = None,
) -> ReadReport:
    """Read a whole JSONL file, collecting rejects instead of stopping at the first one.

    Each reject is logged as ``path:line: reason``; with ``rejects_path`` the rejected lines are
    also written there (atomically, with their reasons) so nothing is lost. With
    ``max_reject_fraction``, a file whose rejects exceed that share raises ``DataError``.
    """
    report = ReadReport(path=str(path))

    def keep_reject(reject: Reject) -> None:
        logger.warning("%s", reject)
        report.rejects.append(reject)

    for _, record in iter_jsonl(path, validate, on_reject=keep_reject):
        report.records.append(record)
    if rejects_path is not None and report.rejects:
        write_rejects(rejects_path, report.rejects)
    total = len(report.records) + len(report.rejects)
    if max_reject_fraction is not None and total and len(report.rejects) / total > max_reject_fraction:
        raise DataError(
            f"{path}: {len(report.rejects)} of {total} lines rejected, more than "
            f"{max_reject_fraction:.0%}; see the warnings above"
            + (f" and {rejects_path}" if rejects_path else "")
        )
    return report


def write_rejects(path: str | os.PathLike, rejects: Iterable[Reject]) -> None:
    atomic_write_jsonl(
        path, ({"source": r.path, "line": r.line, "reason": r.reason, "raw": r.raw} for r in rejects)
    )


def require_fields(*names: str, types: dict[str, type | tuple[type, ...]] | None = None) -> Validator:
    """A validator for the common case: these fields present, non-null, optionally of these types."""
    types = types or {}

    def validate(record: dict) -> str | None:
        missing = [n for n in names if record.get(n) is None]
        if missing:
            return f"missing field {missing[0]!r} (expected fields: {', '.join(names)})"
        for name, expected in types.items():
            if name in record and not isinstance(record[name], expected):
                want = expected.__name__ if isinstance(expected, type) else "/".join(t.__name__ for t in expected)
                return f"field {name!r} should be {want}, found {type(record[name]).__name__}"
        return None

    return validate


# ---------------------------------------------------------------------------
# Atomic writes: temp file in the same directory, fsync, rename over the target.
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temp file next to ``path``; on success it replaces ``path``, on error it is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_write_dir(target: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Build a directory with ``write(tmp_dir)`` beside ``target``, then rename it into place.

    A kill mid-write leaves the previous ``target`` (or none), never a half-written one. The old
    directory is renamed aside before the new one is renamed in and deleted only after, so the
    window without a ``target`` is two renames long instead of a whole ``rmtree``; a copy left
    aside by a kill in that window is put back by ``recover_dir`` (called here and by readers).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        write(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp creates it private
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            target.rename(old)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def recover_dir(target: str | os.PathLike) -> bool:
    """Put back a directory that ``atomic_write_dir`` renamed aside when a kill left no ``target``.

    Returns True when one was restored. Stale aside copies next to an existing ``target`` are removed.
    """
    target = Path(target)
    aside = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    restored = False
    if aside and not target.exists():
        aside[0].rename(target)
        aside = aside[1:]
        restored = True
    for path in aside:
        shutil.rmtree(path, ignore_errors=True)
    return restored


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=indent) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write records one per line; returns how many were written."""
    count = 0
    with atomic_open(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False))
            handle.write("\n")
            count += 1
    return count


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON document; a syntax error is reported as ``path:line: reason``."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: invalid UTF-8 at byte {exc.start}") from None


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def count_lines(path: str | os.PathLike) -> int:
    """Non-blank lines of a text file (the row count of a JSONL file)."""
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())
