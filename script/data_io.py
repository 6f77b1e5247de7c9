"""JSONL reading with ``path:line: reason`` errors, rejects files and counts; atomic writes.

Every reader in the project goes through ``read_jsonl``/``iter_jsonl`` so that a bad line is
reported the same way everywhere and never silently dropped; every writer goes through the
``atomic_write_*`` functions so that a kill never leaves half a file behind.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import socket
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


def _parse_json(text: str) -> tuple[Any, str | None, int]:
    """(value, None, 0) or (None, reason, line within ``text``) for one JSON text; never raises on bad input."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg} at column {exc.colno})", exc.lineno
    except RecursionError:  # "[[[[...": the decoder recurses once per level
        return None, "invalid JSON (nested too deeply)", 1
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        return None, f"invalid JSON ({str(exc)[:120]})", 1
    # "\\ud800" alone decodes to a lone surrogate, which no UTF-8 writer can write back later.
    try:
        lone_surrogate = "\\u" in text and _has_lone_surrogate(value)
    except RecursionError:
        return None, "invalid JSON (nested too deeply)", 1
    if lone_surrogate:
        return None, "invalid JSON (a \\uD800-\\uDFFF escape that is not part of a surrogate pair)", 1
    return value, None, 0


_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


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
    first_line = True
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
                if first_line and text.lstrip().startswith("[") and is_json_array_file(path):
                    raise DataError(json_array_message(path_str))
                first_line = False
                record, reason, _ = _parse_json(text)
                if reason is None:
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


def is_json_array_file(path: str | os.PathLike) -> bool:
    """Whether the whole file is one JSON array (``Dataset.to_json(lines=False)``, ``json.dump(list)``)."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return isinstance(json.load(handle), list)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False


def json_array_message(path: str) -> str:
    out = Path(path).with_suffix(".jsonl") if not path.endswith(".jsonl") else Path(path[:-6] + ".lines.jsonl")
    return (f"{path}: a JSON array, not JSON Lines (one object per line; Dataset.to_json(lines=False) and "
            f"json.dump(list) write arrays). Convert it: python -c \"import json, sys; "
            f"[print(json.dumps(r, ensure_ascii=False)) for r in json.load(open(sys.argv[1], encoding='utf-8'))]\" "
            f"{path} > {out}")


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
# Host part of temp names: short and file-name safe whatever the host name is.
_HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temp_marker(target: Path) -> str:
    return f".{target.name}.tmp-{_HOST_TAG}-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed writer not yet reaped by its parent is a zombie: gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_stale_temps(target: str | os.PathLike) -> int:
    """Delete the temp files/dirs a killed writer left beside ``target``; returns how many.

    Temp names carry the writer's host and pid (``.<name>.tmp-<host>-<pid>-...``): only those of
    this host whose process is gone are removed, never a live writer's (or another machine's on a
    shared filesystem). Called before every atomic write, so a crash loop cannot fill the disk.
    """
    target = Path(target)
    marker = _temp_marker(target)
    removed = 0
    for path in target.parent.glob(glob.escape(marker) + "*"):
        pid = path.name[len(marker):].split("-", 1)[0]
        if not pid.isdigit() or _process_alive(int(pid)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        logger.info("removed %s, left by a writer that was killed", path)
        removed += 1
    return removed


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temp file next to ``path``; on success it replaces ``path``, on error it is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f"{_temp_marker(target)}{os.getpid()}-",
                                        suffix=".tmp")
    except OSError as exc:
        if (named := _naming_destination(exc, target)) is not exc:
            raise named from exc
        raise
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError) and (named := _naming_destination(exc, target)) is not exc:
            raise named from exc
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
    remove_stale_temps(target)
    try:
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{_temp_marker(target)}{os.getpid()}-"))
    except OSError as exc:
        if (named := _naming_destination(exc, target)) is not exc:
            raise named from exc
        raise
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
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and (named := _naming_destination(exc, target)) is not exc:
            raise named from exc
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _naming_destination(exc: OSError, target: Path) -> OSError:
    """``exc`` naming ``target`` instead of a temp name (or of nothing), so that the error reads
    "out/train.jsonl: No space left on device", not "[Errno 28] No space left on device".

    A file inside the temp folder of ``atomic_write_dir`` is named at its place inside ``target``;
    an error about some other file (an input read while writing) is returned unchanged. The class
    follows the errno (EACCES is still a PermissionError).
    """
    if exc.errno is None:
        return exc
    ours = [os.path.normpath(os.path.join(os.fspath(target.parent), prefix))
            for prefix in (_temp_marker(target), f".{target.name}.old-")]
    names = []
    for name in (exc.filename, exc.filename2):
        if name is None:
            continue
        name = os.path.normpath(os.fsdecode(name))
        if name == os.path.normpath(target):
            names.append(os.fspath(target))
        elif any(name.startswith(prefix) for prefix in ours):
            inside = name[len(ours[0]):].partition(os.sep)[2] if name.startswith(ours[0]) else ""
            names.append(os.path.join(os.fspath(target), inside) if inside else os.fspath(target))
        else:
            return exc  # about a file of its own
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), names[0] if names else os.fspath(target))


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


def atomic_save_figure(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """``fig.savefig`` through ``atomic_open``: a kill mid-save leaves the previous image, never half a PNG.

    The format comes from the suffix of ``path`` unless ``format=`` is given (the temp name has none).
    """
    target = Path(path)
    savefig_kwargs.setdefault("format", target.suffix.lstrip(".") or "png")
    with atomic_open(target, "wb") as handle:
        fig.savefig(handle, **savefig_kwargs)
    return target


def safe_child_path(root: str | os.PathLike, name: Any, what: str = "name") -> Path:
    """``root / name`` for a ``name`` taken from a data file, refused unless it stays inside ``root``.

    A record field that becomes a file or folder name ("../../x", "/etc/x", "a/b", "", ".") must
    not write outside the output directory. ``name`` may be a relative path of several plain parts
    (``config/split.jsonl``); absolute paths, ``..``, backslashes, NUL and empty parts are refused
    with a ``DataError`` saying which ``what`` was wrong.
    """
    if not isinstance(name, str):
        raise DataError(f"{what} {name!r} should be a string naming a file under {root}")
    parts = name.split("/")
    bad = (not name or name.startswith("/") or "\\" in name or "\0" in name
           or any(part in ("", ".", "..") for part in parts))
    candidate = Path(root, *parts) if not bad else None
    if candidate is not None:
        # A symlink inside root may still point outside it.
        resolved_root = Path(root).resolve()
        if resolved_root != candidate.resolve() and resolved_root not in candidate.resolve().parents:
            bad = True
    if bad:
        raise DataError(f"{what} {name!r} is not a safe path under {root}: expected plain names joined by '/' "
                        "(no '..', '.', empty parts, absolute paths, backslashes or links leading outside)")
    return candidate


def load_local_dataset(path: str | os.PathLike, config: str | None = None, **kwargs: Any):
    """``datasets.load_dataset`` on a local folder (a hub mirror such as data/sample), read afresh.

    The datasets library reuses the Arrow cache it built from a local folder even after the folder's
    files were rewritten (huggingface/datasets#2956), so a regenerated mirror would be read as it
    was. ``force_redownload`` rebuilds the cache from the files on every call; local folders are
    read at disk speed, and download_all_datasets.py reads one only when its fingerprint changed.
    """
    import datasets  # heavy import: only when a mirror is read

    return datasets.load_dataset(str(path), config, download_mode=datasets.DownloadMode.FORCE_REDOWNLOAD, **kwargs)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON document; a syntax error is reported as ``path:line: reason``."""
    with open(path, "rb") as handle:
        raw = handle.read()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # UTF-8 byte-order mark written by some editors
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: invalid UTF-8 at byte {exc.start}") from None
    if not text.strip():
        raise DataError(f"{path}:1: empty file, expected a JSON document")
    value, reason, line = _parse_json(text)
    if reason is not None:
        raise DataError(f"{path}:{line}: {reason}")
    return value


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
