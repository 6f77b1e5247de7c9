"""When a pipeline stage may be skipped: a record of what it last ran on, and a check against it.

A stage that has no single output whose presence proves it finished (the data stages, the
summaries) is skipped on a restart only when its command, its code and its inputs are what they
were when it last succeeded, and its outputs are still there. The record
(``<data>/.stages/<stage>.json``) holds the command, a sha256 of every Python module the stage can
run (its script and every project module it imports, followed through the imports) and a sha256
per input file. Rehashing GBs of raw data on every check would be slow, so a file whose size and
modification time are those recorded keeps its recorded hash; any other file is hashed again, so
a rewrite with the same content still counts as unchanged.

    record = record_path(DATA_DIR, "refine")
    if stage_is_current(record, command, code_digest(script), inputs, outputs): skip
    ... run ...
    write_stage_record(record, command, code_digest(script), inputs)
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from script.data_io import atomic_write_json, read_json, sha256_file
from script.training_config import PROJECT_ROOT

RECORD_VERSION = 1
PROJECT_PACKAGES = ("script", "refine_scripts", "phase5_subject_training")
_SHELL_MODULE = re.compile(r"-m\s+((?:script|refine_scripts)(?:\.\w+)+)")


def record_path(data_dir: Path, stage: str) -> Path:
    return data_dir / ".stages" / f"{stage}.json"


def module_file(module: str, root: Path = PROJECT_ROOT) -> Path | None:
    """The source file of a project module (``script.kormedmcqa`` -> script/kormedmcqa.py)."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Project modules a Python file imports, wherever the import is written."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from script import kormedmcqa" names a module too
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] in PROJECT_PACKAGES)
    return found


def code_files(script: Path, root: Path = PROJECT_ROOT) -> list[Path]:
    """``script`` and every project module it can run, followed through the imports (a shell
    script: the modules it starts with ``-m``)."""
    if script.suffix == ".py":
        pending = [script]
    else:
        pending = [script] + [f for m in _SHELL_MODULE.findall(script.read_text(encoding="utf-8"))
                              if (f := module_file(m, root)) is not None]
    seen: set[Path] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        if path.suffix == ".py":
            pending.extend(f for m in imported_modules(path) if (f := module_file(m, root)) is not None)
    return sorted(seen)


def code_digest(script: Path, root: Path = PROJECT_ROOT) -> str:
    digest = hashlib.sha256()
    for path in code_files(script, root):
        digest.update(f"{path.relative_to(root)}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def input_files(inputs: Iterable[Path], skip: Sequence[Path] = ()) -> list[Path]:
    """Every file under ``inputs`` (files, or directories walked), minus the ``skip`` trees (the
    records themselves)."""
    files = set()
    for location in inputs:
        if location.is_file():
            files.add(location)
        elif location.is_dir():
            files.update(p for p in location.rglob("*") if p.is_file())
    return sorted(p for p in files if not any(p.is_relative_to(s) for s in skip))


def hash_inputs(files: Sequence[Path], known: dict[str, dict] | None = None) -> dict[str, dict]:
    """path -> {size, mtime_ns, sha256}; a file whose size and mtime match ``known`` keeps its hash."""
    hashed = {}
    for path in files:
        stat = path.stat()
        before = (known or {}).get(str(path))
        if before and before.get("size") == stat.st_size and before.get("mtime_ns") == stat.st_mtime_ns:
            sha = before["sha256"]
        else:
            sha = sha256_file(path)
        hashed[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
    return hashed


def _content(hashed: dict[str, dict]) -> dict[str, str]:
    return {path: entry["sha256"] for path, entry in hashed.items()}


def stage_is_current(record: Path, command: str, code: str, inputs: Sequence[Path], outputs: Sequence[Path],
                     skip: Sequence[Path] = ()) -> bool:
    """True when ``record`` says the stage succeeded with this command, code and input content, and
    every output still exists."""
    if not record.is_file() or not all(path.exists() for path in outputs):
        return False
    try:
        before = read_json(record)
    except Exception:  # an unreadable record proves nothing: the stage reruns
        return False
    if not isinstance(before, dict) or before.get("version") != RECORD_VERSION:
        return False
    if before.get("command") != command or before.get("code") != code:
        return False
    known = before.get("inputs") or {}
    files = input_files(inputs, skip)
    if sorted(map(str, files)) != sorted(known):
        return False
    return _content(hash_inputs(files, known)) == _content(known)


def write_stage_record(record: Path, command: str, code: str, inputs: Sequence[Path],
                       skip: Sequence[Path] = ()) -> None:
    try:
        known = read_json(record).get("inputs", {}) if record.is_file() else {}
    except Exception:  # a damaged record is replaced
        known = {}
    atomic_write_json(record, {"version": RECORD_VERSION, "command": command, "code": code,
                               "inputs": hash_inputs(input_files(inputs, skip), known)})
