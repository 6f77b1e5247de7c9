"""Benchmark the data stages on a scaled copy of the sample data; prints one JSON object.

    python -m script.bench.bench_data                   # scale 85: ~184.8K training rows, the guide's 184,556
    python -m script.bench.bench_data --scale 2         # seconds, for a smoke test
    python -m script.bench.bench_data --raw-dir data/raw --workdir /tmp/bench --scale 20

What it does, all inside a temp folder (``--workdir`` to keep it), never in data/:

1. Raw sample data: ``--raw-dir`` (download_all_datasets.py output), else
   ``download_all_datasets --from-dir data/sample`` into the temp folder.
2. A scaled copy: every training source row ``--scale`` times. Copy 0 is the row itself; copy k
   gets a distinct prefix of 16 pseudo-random Hangul syllables on its question / user / text field,
   so refine_4types' exact dedup does not collapse the copies and two copies of one question stay
   under the exclusion step's near-duplicate threshold (a few-character tag would make every copy
   a near duplicate of the others, and the exclusion would then remove far more than real data
   loses). KorMedMCQA dev/test/fewshot (the evaluation items) are copied once: evaluation sets
   do not grow with the training data. KorMedMCQA train is scaled like any training source.
3. Timed stages, each run as ``python -m <module>`` in a subprocess, exactly as a user runs it
   (interpreter start and imports included; that is the honest cost of a pipeline step):
   refine_4types, verify_formats, extract_kormedmcqa_test (needed by the next step) and
   exclude_test_from_training. Peak RSS of each comes from ``os.wait4``'s rusage of that child.
4. refine_plain_text at 1x (the plain-text sources scaled like the rest) and at
   ``--plain-multiplier`` x (default 10x) that input: seconds and peak RSS.

Goals (documented, never asserted): refine + verify + exclusion <= 120 s at the default scale;
plain-text peak RSS flat between 1x and 10x apart from the exact-dedup set, which holds one 8-byte
digest per kept text (~75 bytes each in a CPython set; the JSON shows the estimate next to the
measured growth).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from script.data_io import count_lines, iter_jsonl, read_json
from script.sources import (
    FEED_MCQ,
    FEED_PLAIN_TEXT,
    FEED_REASONING,
    FEED_TYPE1,
    Source,
    raw_path,
    sources_feeding,
    spellings,
)
from script.training_config import PROJECT_ROOT, SAMPLE_DATA_DIR

DEFAULT_SCALE = 85  # (2,164 scaled sample rows x 85) + 889 evaluation rows = 184,829 ~ the guide's 184,556
DEFAULT_PLAIN_MULTIPLIER = 10
GOAL_SECONDS = 120
GOAL_STAGES = ("refine_4types", "verify_formats", "exclude_test_from_training")
SET_BYTES_PER_DIGEST = 75  # refine_plain_text's measured cost of one dedup digest
TAG_SYLLABLES = 16

# The field that carries the question of each MCQ source (type 1 / reasoning sources use their roles).
_MCQ_QUESTION = {"kormedmcqa": "question", "medqa": "question_ko", "medqa_evol_ko": "input", "kormedlawqa": "question",
                 "kormedconceptsqa": "question"}


# ---------------------------------------------------------------------------
# Building the scaled input
# ---------------------------------------------------------------------------
def copy_tag(copy: int) -> str:
    """Prefix of copy ``copy`` (>= 1): a fixed pseudo-random run of Hangul syllables, then a space."""
    rng = random.Random(copy)
    return "".join(chr(0xAC00 + rng.randrange(11172)) for _ in range(TAG_SYLLABLES)) + " "


def tag_column(source: Source) -> str:
    if source.feeds == FEED_MCQ:
        return _MCQ_QUESTION[source.name]
    if source.feeds == FEED_PLAIN_TEXT:
        return "text"
    return source.roles["user" if source.feeds == FEED_TYPE1 else "question"]


def tagged(row: dict, column: str, copy: int) -> dict:
    """The row with copy ``copy``'s tag in front of ``column`` (any accepted spelling); copy 0 unchanged."""
    if copy == 0:
        return row
    out = dict(row)
    for name in spellings(column):
        if isinstance(out.get(name), str):
            out[name] = copy_tag(copy) + out[name]
            break
    return out


def scale_file(src: Path, dst: Path, column: str, copies: int) -> int:
    """Write ``copies`` tagged copies of every row of ``src`` to ``dst``; returns rows written.

    ``src`` is read again for each copy rather than held in memory, so a full-size --raw-dir works too.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(dst, "w", encoding="utf-8") as handle:
        for copy in range(copies):
            for _, row in iter_jsonl(src):
                handle.write(json.dumps(tagged(row, column, copy), ensure_ascii=False) + "\n")
                written += 1
    return written


def build_scaled(base_raw: Path, out_raw: Path, feeds: Sequence[str], scale: int) -> dict[str, int]:
    """Scaled copy of the sources feeding ``feeds``; returns rows written per kind."""
    counts = {"scaled_rows": 0, "evaluation_rows": 0}
    for source in sources_feeding(*feeds):
        for config, split in source.parts():
            src = raw_path(base_raw, source.name, config, split)
            if not src.is_file():
                continue
            evaluation = source.is_evaluation_split(split)
            copies = 1 if evaluation else scale
            written = scale_file(src, raw_path(out_raw, source.name, config, split), tag_column(source), copies)
            counts["evaluation_rows" if evaluation else "scaled_rows"] += written
    return counts


# ---------------------------------------------------------------------------
# Measured subprocesses
# ---------------------------------------------------------------------------
class StageFailed(RuntimeError):
    pass


def run_module(module: str, args: Sequence[str], home: Path, logs: Path) -> dict:
    """``python -m module args`` from the project root: wall seconds and the child's own peak RSS."""
    env = dict(os.environ, MEDGEMMA_KOREAN_HOME=str(home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    name = module.rsplit(".", 1)[-1]
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.out", "w") as out, open(logs / f"{name}.err", "w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=PROJECT_ROOT, env=env,
                                stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child alone (RUSAGE_CHILDREN is a max over all)
        seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = (logs / f"{name}.err").read_text(encoding="utf-8", errors="replace")[-2000:]
        raise StageFailed(f"{module} exited {proc.returncode}:\n{tail}")
    # Linux reports ru_maxrss in KiB, macOS in bytes
    rss_mb = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(rss_mb, 1)}


def type_file_records(folder: Path) -> int:
    return sum(count_lines(path) for path in folder.glob("type*/*.jsonl"))


def raw_rows(raw: Path) -> int:
    return sum(count_lines(path) for path in (raw / "by_source").rglob("*.jsonl"))


# ---------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------
def bench_pipeline(work: Path, base_raw: Path, scale: int) -> dict:
    raw, home, logs = work / "raw", work / "home", work / "logs"
    started = time.perf_counter()
    built = build_scaled(base_raw, raw, (FEED_TYPE1, FEED_REASONING, FEED_MCQ), scale)
    stages: dict[str, dict] = {"build_scaled_input": {"seconds": round(time.perf_counter() - started, 2),
                                                      "records": built["scaled_rows"] + built["evaluation_rows"],
                                                      **built}}
    refined, tests, clean = work / "refined", work / "kormedmcqa_test", work / "refined_clean"

    stage = run_module("refine_scripts.refine_4types", ["--input", str(raw), "--output", str(refined)], home, logs)
    totals = read_json(refined / "refine_stats.json")["totals"]
    stages["refine_4types"] = stage | {"records_in": totals["read"], "records_out": totals["kept"]}

    stage = run_module("refine_scripts.verify_formats", ["--input", str(refined)], home, logs)
    stages["verify_formats"] = stage | {"records": type_file_records(refined)}

    stage = run_module("script.extract_kormedmcqa_test",
                       ["--raw-dir", str(raw / "by_source" / "kormedmcqa"), "--output-dir", str(tests)], home, logs)
    sets = read_json(tests / "sets.json")["sets"]
    stages["extract_kormedmcqa_test"] = stage | {"records": {name: s["items"] for name, s in sets.items()}}

    test_files = [str(p) for p in sorted(tests.glob("*.jsonl"))]
    stage = run_module("script.exclude_test_from_training",
                       ["--source", str(refined), "--output", str(clean), "--test", *test_files], home, logs)
    summary = read_json(clean / "test_exclusion_stats.json")["summary"]
    stages["exclude_test_from_training"] = stage | {"records_in": summary["total"], "removed": summary["removed"],
                                                    "records_out": summary["kept"]}
    for folder in (raw, refined, clean):  # free the disk before the plain-text runs
        shutil.rmtree(folder, ignore_errors=True)
    return stages


def bench_plain_text(work: Path, base_raw: Path, scale: int, multiplier: int) -> dict:
    home, logs = work / "home", work / "logs"
    runs: dict[str, dict] = {}
    for label, copies in (("1x", scale), (f"{multiplier}x", scale * multiplier)):
        raw, out = work / f"plain_raw_{label}", work / f"plain_out_{label}"
        rows = build_scaled(base_raw, raw, (FEED_PLAIN_TEXT,), copies)["scaled_rows"]
        stage = run_module("refine_scripts.refine_plain_text",
                           ["--input", str(raw), "--output", str(out)], home, logs / label)
        stats = read_json(out / "stats.json")
        runs[label] = stage | {"records_in": rows, "records_out": stats["totals"]["kept"],
                               "shards": len(stats["shards"]), "input_mb": round(folder_mb(raw), 1),
                               "dedup_digests": stats["dedup"]["digests"]}
        shutil.rmtree(raw, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    small, large = runs["1x"], runs[f"{multiplier}x"]
    growth = large["peak_rss_mb"] - small["peak_rss_mb"]
    dedup_growth = (large["dedup_digests"] - small["dedup_digests"]) * SET_BYTES_PER_DIGEST / 1e6
    return {
        "runs": runs,
        "peak_rss_mb_1x": small["peak_rss_mb"],
        f"peak_rss_mb_{multiplier}x": large["peak_rss_mb"],
        "rss_growth_mb": round(growth, 1),
        "dedup_set_growth_mb_estimate": round(dedup_growth, 1),
        "rss_growth_besides_dedup_mb": round(growth - dedup_growth, 1),
        "note": "streaming keeps memory flat; what grows is the exact-dedup set (one 8-byte digest per kept text)",
    }


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def machine() -> dict:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"cpu_count": os.cpu_count(), "usable_cpus": affinity, "python": platform.python_version(),
            "implementation": platform.python_implementation(), "platform": platform.platform()}


def prepare_base_raw(raw_dir: Path | None, work: Path) -> tuple[Path, dict | None]:
    if raw_dir is not None:
        return raw_dir, None
    base = work / "base_raw"
    stage = run_module("script.download_all_datasets",
                       ["--from-dir", str(SAMPLE_DATA_DIR), "--output", str(base)], work / "home", work / "logs")
    return base, stage | {"records": raw_rows(base)}


def run(scale: int, multiplier: int, raw_dir: Path | None, work: Path) -> dict:
    base, download = prepare_base_raw(raw_dir, work)
    stages = bench_pipeline(work, base, scale)
    if download is not None:
        stages = {"download_sample": download, **stages}
    measured = sum(stages[name]["seconds"] for name in GOAL_STAGES)
    return {
        "scale": scale,
        "training_records": stages["build_scaled_input"]["scaled_rows"],  # evaluation splits are not refined
        "machine": machine(),
        "timing": "wall clock of `python -m <module>` subprocesses (interpreter start and imports included); "
                  "peak_rss_mb is each child's own ru_maxrss",
        "stages": stages,
        "refine_verify_exclusion_seconds": round(measured, 2),
        "goal": {"refine_verify_exclusion_seconds": GOAL_SECONDS, "met": measured <= GOAL_SECONDS,
                 "plain_text": "peak RSS flat between 1x and 10x apart from the dedup set",
                 "note": "documented, not asserted; the extract step is timed but outside the goal"},
        "plain_text": bench_plain_text(work, base, scale, multiplier),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=DEFAULT_SCALE, metavar="N",
                        help=f"copies of every training row (default {DEFAULT_SCALE}: ~184.8K training rows)")
    parser.add_argument("--plain-multiplier", type=int, default=DEFAULT_PLAIN_MULTIPLIER, metavar="M",
                        help="the plain-text refiner runs at 1x (--scale copies) and at M times that "
                             f"(default {DEFAULT_PLAIN_MULTIPLIER})")
    parser.add_argument("--raw-dir", type=Path, default=None,
                        help="existing download_all_datasets.py output to scale (default: download data/sample "
                             "into the work folder first)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep everything (logs of each stage) in this folder instead of a temp folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.scale < 1 or args.plain_multiplier < 1:
        parser.error("--scale and --plain-multiplier must be at least 1")
    return print_run(args.workdir, "bench-data-",
                     lambda work: run(args.scale, args.plain_multiplier, args.raw_dir, work))


def print_run(workdir: Path | None, prefix: str, bench: Callable[[Path], dict]) -> int:
    """``bench(work folder)`` in ``workdir`` (kept) or a temp folder; print its JSON. Exit 1 when a
    stage failed (its stderr tail is printed)."""
    try:
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
            result = bench(workdir)
        else:
            with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
                result = bench(Path(tmp))
    except StageFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
