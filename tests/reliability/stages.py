"""The data stages of run_full_pipeline.sh as subprocesses on a scaled copy of the sample data, with
snapshots of what each one wrote, for the kill -9 / restart tests (test_faults.py).

The scaled input comes from the project's own tools: ``download_all_datasets --from-dir data/sample``
and ``bench_data.build_scaled`` (every training row copied SCALE times with a distinct tag), so a
stage runs long enough for a kill to land while it writes.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from script import data_io
from script.training_config import SAMPLE_DATA_DIR

REPO = Path(__file__).resolve().parents[2]
SCALE = 8
VOLATILE_KEYS = {"seconds", "elapsed", "items_per_second", "load_seconds"}


@dataclass(frozen=True)
class Stage:
    name: str
    module: str
    args: tuple[str, ...]  # relative paths are under the work dir; "{sets}" expands to the set files
    outputs: tuple[str, ...]  # files or folders it writes, relative to the work dir
    # Files rewritten as the stage goes (the download manifest after each source): after a kill they
    # are complete but may describe a state between old and new; checked by ``consistent`` instead.
    progressive: tuple[str, ...] = ()


@dataclass
class Timing:
    """Wall seconds of an uninterrupted run and when its temp outputs were first/last seen (from start)."""

    seconds: float
    first_temp: float | None
    last_temp: float | None


STAGES = (
    Stage("download (local mirror)", "script.download_all_datasets",
          ("--from-dir", str(SAMPLE_DATA_DIR), "--output", "dl", "--cache-dir", "hf_cache"), ("dl",),
          progressive=("dl/manifest.json",)),
    Stage("refine_4types", "refine_scripts.refine_4types", ("--input", "raw", "--output", "refined"),
          ("refined/type1_text", "refined/type2_text_reasoning", "refined/type3_word", "refined/type4_word_reasoning",
           "refined/refine_stats.json", "refined/rejects.jsonl")),
    Stage("refine_plain_text", "refine_scripts.refine_plain_text",
          ("--input", "raw", "--output", "refined/00_plain_text", "--shard-size", "500"),
          ("refined/00_plain_text", "refined/00_plain_text.rejects.ndjson")),
    Stage("refine_dictionaries", "refine_scripts.refine_dictionaries", ("--input", "raw", "--output", "refined"),
          ("refined/01_medical_dict.json", "refined/02_char_dict.json", "refined/dictionaries_stats.json")),
    Stage("refine_kor_med_test", "refine_scripts.refine_kor_med_test",
          ("--raw-dir", "raw/by_source/kormedmcqa", "--output", "refined/02_kor_med_test"), ("refined/02_kor_med_test",)),
    Stage("extract_kormedmcqa_test", "script.extract_kormedmcqa_test",
          ("--raw-dir", "raw/by_source/kormedmcqa", "--output-dir", "sets", "--set", "all"), ("sets",)),
    Stage("exclude_test_from_training", "script.exclude_test_from_training",
          ("--source", "refined", "--output", "clean", "--test", "{sets}"), ("clean",)),
)
STAGE_NAMES = [s.name for s in STAGES]


def build_input(work: Path) -> None:
    """work/raw: the sample mirror downloaded, training sources scaled, dictionaries copied as they are."""
    from script import download_all_datasets
    from script.bench.bench_data import build_scaled
    from script.sources import FEED_MCQ, FEED_PLAIN_TEXT, FEED_REASONING, FEED_TYPE1

    base = work / "base_raw"
    status = download_all_datasets.main(["--from-dir", str(SAMPLE_DATA_DIR), "--output", str(base),
                                         "--cache-dir", str(work / "hf_cache")])
    assert status == 0
    build_scaled(base, work / "raw", (FEED_TYPE1, FEED_REASONING, FEED_MCQ, FEED_PLAIN_TEXT), SCALE)
    # bench_data does not scale dictionaries: copies with a numbered term, so the dedup keeps them
    for source in ("medical_dict", "char_dict"):
        for path in sorted((base / "by_source" / source).rglob("*.jsonl")):
            rows = [row for _, row in data_io.iter_jsonl(path)]
            copies = ({**row, "term": f"{row['term']} {copy}" if copy else row["term"]}
                      for copy in range(SCALE) for row in rows)
            data_io.atomic_write_jsonl(work / "raw" / path.relative_to(base), copies)


def command(stage: Stage, work: Path) -> list[str]:
    args: list[str] = []
    for arg in stage.args:
        if arg == "{sets}":
            args += [str(p) for p in sorted((work / "sets").glob("*.jsonl"))]
        elif arg.startswith("-") or os.path.isabs(arg) or arg in ("all",) or arg.isdigit():
            args.append(arg)
        else:
            args.append(str(work / arg))
    return [sys.executable, "-m", stage.module, *args]


def environment(work: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MEDGEMMA_KOREAN_HOME": str(work / "home"),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


POLL = 0.002  # s between looks for temp outputs


def run(stage: Stage, work: Path) -> Timing:
    """Run a stage to the end, watching when it has temp outputs open (used only to place kills)."""
    started = time.perf_counter()
    first = last = None
    with open(work / f"{stage.module}.stderr", "w+") as errors:  # a log of the test, not a product output
        proc = subprocess.Popen(command(stage, work), cwd=REPO, env=environment(work), stdout=subprocess.DEVNULL,
                                stderr=errors)
        while proc.poll() is None:
            if temp_files(work, stage):
                last = time.perf_counter() - started
                first = last if first is None else first
            time.sleep(POLL)
        errors.seek(0)
        assert proc.returncode == 0, f"{stage.name} failed:\n{errors.read()[-3000:]}"
    return Timing(time.perf_counter() - started, first, last)


def temp_files(work: Path, stage: Stage) -> list[Path]:
    """data_io temp files/dirs (``.<name>.tmp-<host>-<pid>-...``) next to or inside the stage's outputs."""
    marker = f".tmp-{data_io._HOST_TAG}-"
    found: set[Path] = set()
    for parent in {(work / out).parent for out in stage.outputs} | {work / out for out in stage.outputs}:
        # os.walk skips folders that vanish while it looks (the stage renames and deletes its temp dirs)
        for folder, dirs, files in os.walk(parent):
            found.update(Path(folder, name) for name in dirs + files if marker in name)
    return sorted(found)


def sigkill(proc: subprocess.Popen) -> str:
    """SIGKILL a child and reap it: "killed", or "finished" when it had ended on its own first."""
    if proc.poll() is not None:
        return "finished"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return "killed" if proc.returncode == -signal.SIGKILL else "finished"


def run_killed(stage: Stage, work: Path, rng: random.Random, timing: Timing) -> str:
    """Start the stage and SIGKILL it at a seeded random point; returns "killed" or "finished".

    Three kills in four aim at the writes: once a temp output appears, the kill follows within the
    time the uninterrupted run kept temp outputs open. The others fall anywhere in the run.
    """
    proc = subprocess.Popen(command(stage, work), cwd=REPO, env=environment(work), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        if rng.random() < 0.25 or timing.first_temp is None:
            time.sleep(rng.uniform(0, timing.seconds))
        else:
            deadline = time.monotonic() + 300
            while proc.poll() is None and not temp_files(work, stage) and time.monotonic() < deadline:
                time.sleep(POLL / 20)  # a short write (a few small files) lasts milliseconds
            time.sleep(rng.uniform(0, timing.last_temp - timing.first_temp))
        return sigkill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _normalise(value):
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()
                if k not in VOLATILE_KEYS and not k.endswith("_at") and not k.endswith("_seconds")}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def read_output(path: Path):
    """What a file holds, parsed completely (a partial file raises): JSONL records, JSON, or bytes."""
    if path.suffix in (".jsonl", ".ndjson"):
        return [record for _, record in data_io.iter_jsonl(path)]
    if path.suffix == ".json":
        return _normalise(data_io.read_json(path))
    return path.read_bytes()


def snapshot(work: Path, stage: Stage) -> dict[str, object]:
    """Every output file of the stage (temp files excluded) -> its parsed content."""
    marker = f".tmp-{data_io._HOST_TAG}-"
    files: dict[str, object] = {}
    for out in stage.outputs:
        path = work / out
        paths = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
        for p in paths:
            rel = p.relative_to(work)
            if marker in str(rel) or any(part.startswith(".") for part in rel.parts):
                continue
            files[rel.as_posix()] = read_output(p)
    return files


def consistent(work: Path, stage: Stage, files: dict[str, object]) -> list[str]:
    """Problems of a progressive file after a kill: the download manifest must list only parts whose
    file is there with the recorded sha256 (the restart skips exactly those)."""
    problems = []
    for name in stage.progressive:
        manifest = files.get(name)
        if manifest is None:
            continue
        for key, entry in manifest.get("parts", {}).items():
            path = (work / name).parent / entry.get("path", "")
            if not path.is_file() or data_io.sha256_file(path) != entry.get("sha256"):
                problems.append(f"{name}: part {key} is listed but its file is missing or different")
    return problems


def remove_outputs(work: Path, stage: Stage) -> None:
    for out in stage.outputs:
        path = work / out
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def duplicate_ids(files: dict[str, object]) -> list[str]:
    """Ids that occur twice within one JSONL output (records with an "id")."""
    problems = []
    for name, content in files.items():
        if isinstance(content, list) and content and all(isinstance(r, dict) and "id" in r for r in content):
            ids = [str(r["id"]) for r in content]
            if len(ids) != len(set(ids)):
                problems.append(name)
    return problems
