"""Benchmark the data stages on a large plain-text corpus: peak RSS and disk; prints one JSON object.

    python -m script.bench.bench_text_volume              # a generated 2 GB corpus (make bench-text-volume)
    python -m script.bench.bench_text_volume --gb 0.2     # a quick run
    python -m script.bench.bench_text_volume --no-whole   # skip the uncapped download

A corpus of ``--gb`` GB in heegyu/namuwiki's schema (title, text, contributors, namespace; ~3 KB
of Hangul words per document, every document distinct) is written as a local hub mirror, then:

1. ``download_all_datasets --only namuwiki`` with the registry's cap (streamed; ``Source.max_mb``);
2. ``refine_plain_text`` on what it wrote (data/refined/00_plain_text);
3. ``exclude_test_from_training`` on the refined text (data/refined_clean/00_plain_text), against
   the sample's KorMedMCQA sets;
4. with ``--whole`` (default): the same download with ``--max-mb 0``, the whole corpus through
   ``datasets.load_dataset`` without streaming, to show what the cap and streaming save.

Each stage runs as ``python -m <module>`` in a subprocess (bench_data.run_module): seconds and the
child's own peak RSS. Disk: each stage's output folder, and the datasets cache, in MB; ``disk_peak_mb``
adds up what a capped run keeps at once (cache + raw + refined + clean). The mirror stands in for
the hub and is not counted.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from collections.abc import Sequence
from pathlib import Path

from script.bench.bench_data import folder_mb, machine, print_run, run_module
from script.data_io import atomic_open, atomic_write_text, read_json
from script.sources import get_source
from script.training_config import SAMPLE_DATA_DIR

DEFAULT_GB = 2.0
WORDS = 20_000  # vocabulary of pseudo-random Hangul words the documents are drawn from
WORDS_PER_DOC = 330  # ~3 KB of UTF-8 per document


def write_corpus(mirror: Path, gb: float, seed: int = 0) -> dict:
    """``mirror/heegyu/namuwiki``: README with the config, data/train.jsonl of ~``gb`` GB."""
    rng = random.Random(seed)
    vocabulary = ["".join(chr(0xAC00 + rng.randrange(11172)) for _ in range(rng.randint(1, 4))) for _ in range(WORDS)]
    dataset = mirror / "heegyu" / "namuwiki"
    atomic_write_text(dataset / "README.md",
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train.jsonl\n---\n"
        "Generated benchmark corpus (random Hangul words), not NamuWiki.\n")
    target, rows, written = dataset / "data" / "train.jsonl", 0, 0
    with atomic_open(target) as out:
        while written < gb * 1e9:
            text = f"문서 {rows}. " + " ".join(rng.choices(vocabulary, k=WORDS_PER_DOC))
            line = json.dumps({"title": f"문서 {rows}", "text": text, "contributors": "bench", "namespace": ""},
                              ensure_ascii=False) + "\n"
            out.write(line)
            written += len(line.encode("utf-8"))
            rows += 1
    return {"rows": rows, "mb": round(target.stat().st_size / 1e6, 3)}


def download(work: Path, label: str, mirror: Path, extra: Sequence[str]) -> dict:
    raw, cache = work / f"raw_{label}", work / f"cache_{label}"
    stage = run_module("script.download_all_datasets",
                       ["--from-dir", str(mirror), "--only", "namuwiki", "--output", str(raw), "--cache-dir",
                        str(cache), "--local-dir", str(SAMPLE_DATA_DIR / "local"), *extra], work / "home",
                       work / "logs" / f"download_{label}")
    entry = read_json(raw / "manifest.json")["parts"]["namuwiki/default/train"]
    return stage | {"rows": entry["rows"], "capped": entry["capped"], "raw_mb": round(folder_mb(raw), 3),
                    "cache_mb": round(folder_mb(cache), 3) if cache.exists() else 0.0}


def run(gb: float, whole: bool, work: Path, cap_mb: float | None = None) -> dict:
    mirror = work / "mirror"
    corpus = write_corpus(mirror, gb)
    capped = download(work, "capped", mirror, [] if cap_mb is None else ["--max-mb", f"{cap_mb:g}"])
    refined = work / "refined"
    refine = run_module("refine_scripts.refine_plain_text",
                        ["--input", str(work / "raw_capped"), "--output", str(refined / "00_plain_text")],
                        work / "home", work / "logs" / "refine")
    sets = work / "sets"
    run_module("script.extract_kormedmcqa_test", ["--from-dir", str(SAMPLE_DATA_DIR), "--output-dir", str(sets)],
               work / "home", work / "logs" / "extract")
    clean = work / "refined_clean"
    exclude = run_module("script.exclude_test_from_training",
                         ["--source", str(refined), "--output", str(clean), "--test", *map(str, sets.glob("*.jsonl"))],
                         work / "home", work / "logs" / "exclude")
    stages = {
        "download_capped": capped,
        "refine_plain_text": refine | {"refined_mb": round(folder_mb(refined), 3)},
        "exclude_test_from_training": exclude | {"clean_mb": round(folder_mb(clean), 3)},
    }
    peak = capped["cache_mb"] + capped["raw_mb"] + stages["refine_plain_text"]["refined_mb"] + \
        stages["exclude_test_from_training"]["clean_mb"]
    shutil.rmtree(work / "raw_capped", ignore_errors=True)
    shutil.rmtree(work / "cache_capped", ignore_errors=True)
    shutil.rmtree(refined, ignore_errors=True)
    shutil.rmtree(clean, ignore_errors=True)
    if whole:
        stages["download_whole"] = download(work, "whole", mirror, ["--max-mb", "0"])
        shutil.rmtree(work / "raw_whole", ignore_errors=True)
        shutil.rmtree(work / "cache_whole", ignore_errors=True)
    return {
        "input": {"generated_gb": gb, **corpus, "schema": "heegyu/namuwiki"},
        "cap_mb": get_source("namuwiki").max_mb if cap_mb is None else cap_mb,
        "machine": machine(),
        "timing": "wall clock of `python -m <module>` subprocesses; peak_rss_mb is each child's own ru_maxrss",
        "stages": stages,
        "disk_peak_mb": round(peak, 3),
        "disk_note": "a capped run keeps cache + raw + refined + clean at once; raw is the upstream schema (the "
                     "download's resume point), refined the normalised shards, clean the copy train_00 reads with "
                     "evaluation matches removed",
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=DEFAULT_GB, help=f"corpus size (default {DEFAULT_GB:g})")
    parser.add_argument("--whole", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the uncapped, non-streamed download (default: yes)")
    parser.add_argument("--cap-mb", type=float, default=None,
                        help="cap of the capped download (default: the registry's, 500 MB)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the work folder here (default: a temp one)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.gb <= 0:
        parser.error("--gb must be positive")
    return print_run(args.workdir, "bench-text-volume-", lambda work: run(args.gb, args.whole, work, args.cap_mb))

if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
