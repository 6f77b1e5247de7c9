"""Run one data stage against a real full disk or a real read-only folder, inside a private mount
namespace (``unshare -m``), and report what happened as one JSON line.

    unshare -m python -m tests.reliability.fs_child MODE STAGE WORK PREVIOUS

MODE ``full``: a tmpfs just large enough for the previous outputs (copied from PREVIOUS) is mounted
at WORK/fs, so the stage's new output runs out of space (ENOSPC) part way. MODE ``readonly``: the
previous outputs are bind-mounted read-only at WORK/fs (EROFS, which stops root as well). The
mounts vanish with the namespace when this process ends. The stage runs as its users run it
(``python -m <module>``, a child process inside the namespace), so what is checked is the command
line's exit status and stderr. Prints ``{"exit": ..., "stderr": ..., "intact": bool, "leftovers": [...]}``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def stage_command(stage: str, work: Path, out: Path) -> list[str]:
    """The stage's command line, writing into ``out`` (the mounted folder)."""
    if stage == "refine_plain_text":
        return [sys.executable, "-m", "refine_scripts.refine_plain_text", "--input", str(work / "raw"),
                "--output", str(out / "00_plain_text"), "--shard-size", "500"]
    if stage == "refine_4types":
        return [sys.executable, "-m", "refine_scripts.refine_4types", "--input", str(work / "raw"), "--output", str(out)]
    raise SystemExit(f"unknown stage {stage!r}")


def main(mode: str, stage: str, work: Path, previous: Path) -> dict:
    target = work / "fs"
    target.mkdir(exist_ok=True)
    size = sum(p.stat().st_size for p in previous.rglob("*") if p.is_file())
    if mode == "full":
        # Room for the previous outputs, some metadata and a little more: the new copy cannot fit.
        mount("-t", "tmpfs", "-o", f"size={size + size // 4 + 64 * 1024}", "tmpfs", str(target))
        shutil.copytree(previous, target, dirs_exist_ok=True)
    else:
        shutil.copytree(previous, target, dirs_exist_ok=True)
        mount("--bind", str(target), str(target))
        mount("-o", "remount,bind,ro", str(target))
    before = digest(target)
    child = subprocess.run(stage_command(stage, work, target), cwd=REPO, capture_output=True, text=True, timeout=540)
    result: dict = {"exit": child.returncode, "stderr": child.stderr[-6000:], "mount": str(target)}
    result["intact"] = digest(target) == before
    result["leftovers"] = sorted(p.name for p in target.rglob(".*"))
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))), flush=True)
