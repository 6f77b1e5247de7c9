"""SIGKILL mid-write: a process writing a big file through data_io's atomic writers is killed at a
seeded random moment; the target is then the complete old version or the complete new one, never a
partial file. The kill is repeated until it has landed inside the write (a temp file of the writer
was left behind) the required number of times, and the next write cleans that temp file up.

    python -m pytest tests/reliability/test_atomic_kill_mid_write.py -q
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from script import data_io
from tests.reliability import writer_child
from tests.reliability.stages import sigkill

REPO = Path(__file__).resolve().parents[2]
MAX_ATTEMPTS = 12


def temp_leftovers(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.tmp-*"))


def kill_during_write(kind: str, target: Path, version: int, rng: random.Random, window: float) -> str:
    """Start the writer child, SIGKILL it ``uniform(0, window)`` s after its signal; return its last word."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.reliability.writer_child", kind, str(target), str(version)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_for = "half" if kind in ("jsonl", "dir") else "fsync"
        word = ""
        while word != wait_for:
            word = proc.stdout.readline().strip()
            if not word:  # ended without the signal
                raise AssertionError(f"writer ended early: {proc.wait()} {proc.stderr.read()[-2000:]}")
        time.sleep(rng.uniform(0, window))
        return sigkill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def run_kill_loop(kind: str, tmp_path: Path, seed: int, required: int, spread: float) -> dict:
    """Kill the writer ``uniform(0, spread x the time left after its signal)`` s after the signal, until
    ``required`` kills have landed inside the write; every time, check the target is old or new."""
    target = tmp_path / {"dir": "out_dir", "figure": "chart.png"}.get(kind, f"big.{kind}")
    started = time.perf_counter()
    writer_child.write(kind, target, 1, signal=False)  # the old, complete version
    # Time left after the signal: the second half of the records, or the child's pause before fsync.
    left = (time.perf_counter() - started) / 2 if kind in ("jsonl", "dir") else writer_child.FSYNC_PAUSE
    window = spread * left
    if kind == "figure":
        old = target.read_bytes()
        writer_child.write(kind, tmp_path / "reference.png", 2, signal=False)
        versions = {1: old, 2: (tmp_path / "reference.png").read_bytes()}
    else:
        versions = {v: writer_child.expected(kind, v) for v in (1, 2)}
    rng = random.Random(seed)
    landed, outcomes = 0, {"old": 0, "new": 0}
    for attempt in range(MAX_ATTEMPTS):
        version_now = 1 + attempt % 2  # alternate, so "new" always differs from what is on disk
        next_version = 3 - version_now
        assert writer_child.read_back(kind, target) == versions[version_now]
        kill_during_write(kind, target, next_version, rng, window)
        state = writer_child.read_back(kind, target)  # must parse completely: old or new, nothing else
        if state == versions[version_now]:
            outcomes["old"] += 1
        else:
            assert state == versions[next_version], f"{kind}: target is neither the old nor the new version"
            outcomes["new"] += 1
        leftovers = temp_leftovers(target)
        if leftovers:  # the kill landed between the temp file's creation and the rename
            landed += 1
        # bring the target to a known version for the next attempt; this also removes the leftovers
        writer_child.write(kind, target, next_version, signal=False)
        assert not temp_leftovers(target), f"temp files of the killed writer were not cleaned up: {leftovers}"
        if landed >= required:
            break
    assert landed >= required, f"{kind}: only {landed} of {MAX_ATTEMPTS} kills landed inside the write ({outcomes})"
    return {"attempts": attempt + 1, "landed_mid_write": landed, **outcomes}


# The child signals "half" (jsonl, dir) or "fsync" (json, text, figure: then it pauses before syncing and
# renaming); the kill follows uniformly within 1.2 x the time the write still needs.
FAST = ["jsonl", "dir", "json"]
SLOW = ["text", "figure"]


@pytest.mark.parametrize("kind", [
    *[pytest.param(k, marks=pytest.mark.fault("kill -9 mid-write", f"atomic writer: {k}", "data_io atomic writers"))
      for k in FAST],
    *[pytest.param(k, marks=[pytest.mark.reliability_slow,
                             pytest.mark.fault("kill -9 mid-write", f"atomic writer: {k}", "data_io atomic writers")])
      for k in SLOW],
])
def test_kill_mid_write_leaves_old_or_new_never_partial(kind, tmp_path, record_property):
    result = run_kill_loop(kind, tmp_path, seed=sum(map(ord, kind)), required=1, spread=1.2)
    record_property("outcome", f"old or new, never partial ({result['landed_mid_write']} of {result['attempts']} "
                               "kills inside the write)")


@pytest.mark.reliability_slow
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.fault("kill -9 mid-write", "atomic writer: jsonl, random kill points", "data_io.atomic_write_jsonl")
def test_repeated_random_kills_of_the_jsonl_writer(seed, tmp_path, record_property):
    result = run_kill_loop("jsonl", tmp_path, seed=seed, required=3, spread=1.2)
    record_property("outcome", f"old or new, never partial ({result['landed_mid_write']} of {result['attempts']} "
                               "kills inside the write)")


@pytest.mark.fault("kill -9 mid-write", "stale temp files of a killed writer", "data_io.remove_stale_temps")
def test_only_temp_files_of_dead_writers_are_removed(tmp_path, record_property):
    target = tmp_path / "data.jsonl"
    marker = data_io._temp_marker(target)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"{marker}{dead.pid}-abc.tmp"
    live = tmp_path / f"{marker}{os.getpid()}-def.tmp"
    other_host = tmp_path / f".{target.name}.tmp-00000000-{dead.pid}-ghi.tmp"
    for path in (stale, live, other_host):
        path.write_text("partial")
    data_io.atomic_write_jsonl(target, [{"id": 1}])
    assert not stale.exists() and live.exists() and other_host.exists()
    record_property("outcome", "dead writer's temp removed; live writer's and other hosts' kept")
