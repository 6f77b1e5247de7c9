"""A process that writes one big file (or folder) through data_io's atomic writers, to be SIGKILLed.

    python -m tests.reliability.writer_child KIND TARGET VERSION

KIND is jsonl, json, text, dir or figure. The content is a pure function of (KIND, VERSION)
(``expected``), so the test can tell the old version from the new one and either from a partial
write. The child prints ``start`` just before the write begins; for jsonl and dir ``half`` when half
of the records/files have been handed to the writer; for json, text and figure ``fsync`` when the
data is written and the writer is about to sync and rename (see ``hold_before_fsync``); ``done`` at
the end.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from script import data_io

RECORDS = 40_000  # ~5 MB of JSONL: the second half takes long enough for a kill to land in it
FSYNC_PAUSE = 0.3  # s the child waits before the fsync that precedes the rename (see hold_before_fsync)
DIR_FILES = 40
DIR_RECORDS = 3_000


def records(version: int, n: int, prefix: str = ""):
    for i in range(n):
        yield {"id": f"{prefix}v{version}-{i}", "version": version, "text": "고혈압 환자의 1차 약제 " * 4}


def say(word: str, signal: bool) -> None:
    if signal:  # only the child process talks; the test renders the old version in-process, silently
        print(word, flush=True)


def write(kind: str, target: Path, version: int, signal: bool = True) -> None:
    if kind == "jsonl":
        def stream():
            for i, record in enumerate(records(version, RECORDS)):
                if i == RECORDS // 2:
                    say("half", signal)
                yield record
        say("start", signal)
        data_io.atomic_write_jsonl(target, stream())
    elif kind == "json":
        say("start", signal)
        data_io.atomic_write_json(target, {"version": version, "rows": list(records(version, RECORDS // 2))})
    elif kind == "text":
        say("start", signal)
        data_io.atomic_write_text(target, "".join(f"line {i} of version {version}\n" for i in range(RECORDS * 4)))
    elif kind == "dir":
        def build(folder: Path) -> None:
            for i in range(DIR_FILES):
                if i == DIR_FILES // 2:
                    say("half", signal)
                data_io.atomic_write_jsonl(folder / f"part-{i:03d}.jsonl", records(version, DIR_RECORDS, f"{i}-"))
        say("start", signal)
        data_io.atomic_write_dir(target, build)
    elif kind == "figure":
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 6))
        for k in range(20):
            ax.plot(range(500), [((i * (k + version)) % 97) for i in range(500)], linewidth=0.5)
        ax.set_title(f"version {version}")
        say("start", signal)
        data_io.atomic_save_figure(fig, target, dpi=100, metadata={"Software": None})
        plt.close(fig)
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    say("done", signal)


def expected(kind: str, version: int):
    """What a complete file of (kind, version) reads back as (see ``read_back``)."""
    if kind == "jsonl":
        return [r["id"] for r in records(version, RECORDS)]
    if kind == "json":
        return {"version": version, "rows": list(records(version, RECORDS // 2))}
    if kind == "text":
        return "".join(f"line {i} of version {version}\n" for i in range(RECORDS * 4))
    if kind == "dir":
        return {f"part-{i:03d}.jsonl": [r["id"] for r in records(version, DIR_RECORDS, f"{i}-")]
                for i in range(DIR_FILES)}
    raise ValueError(kind)


def read_back(kind: str, target: Path):
    if kind == "jsonl":
        return [r["id"] for _, r in data_io.iter_jsonl(target)]
    if kind == "json":
        return data_io.read_json(target)
    if kind == "text":
        return target.read_text(encoding="utf-8")
    if kind == "dir":
        return {p.name: [r["id"] for _, r in data_io.iter_jsonl(p)] for p in sorted(target.iterdir())}
    if kind == "figure":
        return target.read_bytes()
    raise ValueError(kind)


def hold_before_fsync() -> None:
    """Say ``fsync`` and wait before the first fsync: the data is written, the rename not yet done.

    Writers that build their text first (json, text, figure) spend most of their time before the temp
    file exists; this pause puts the kill in the window that matters. Only this child does it.
    """
    real = os.fsync
    state = {"said": False}

    def fsync(fd: int) -> None:
        if not state["said"]:
            state["said"] = True
            print("fsync", flush=True)
            time.sleep(FSYNC_PAUSE)
        real(fd)

    os.fsync = fsync


if __name__ == "__main__":
    kind, target, version = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    if kind in ("json", "text", "figure"):
        hold_before_fsync()
    write(kind, target, version)
