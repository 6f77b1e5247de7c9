"""One prepared GPU check: MedGemma-4B's real shape, trained and scored on one card, offline.

    make gpu-check                              # on a CUDA machine: ≤ ~8 minutes on one H100/H200
    python -m script.gpu_check --dry-run        # the same steps and JSON on this CPU, tiny shapes

On CUDA it builds the random-initialised model of google/medgemma-4b-it's full published shape
(``script/embedded/make_real_shape_model.py`` with all 34 decoder and 27 vision layers, on the GPU, bf16; no
download) and measures, with the registry's medgemma-4b settings and the guide's hyperparameters
(micro-batch 4 × accumulation 4, length 512; ``script/bench/bench_train.py``, one process per run):

- LoRA training tokens/s of the toolkit's default trainer (``b_toolkit``) against TRL's defaults
  (``a2_trl_default``), with the base in bf16 and in 8-bit (bitsandbytes), and their losses;
- the peak of allocated GPU memory of each run beside ``check_gpu_memory``'s estimate for it;
- letter-mode seconds for 604 KorMedMCQA items (the guide's set when the data stages made it,
  sample test items repeated to 604 otherwise: the time depends on lengths, not on answers);
- milliseconds per greedy decoding step after the train02 prompt at batch 32 (the pipeline's) and
  128: the pipeline's evaluations write up to 512 reasoning tokens per question, so this and the
  tokens/s above are what ``make stage-times GPU_CHECK=logs/gpu_check.json`` turns into stage times;
- those stage times for medgemma-4b with the base in bf16 and in 8-bit (``stage_times``).

``--dry-run`` runs every step with the embedded tiny model on the CPU (a few optimizer steps), so
the script is tested where no GPU is. Prints ONE JSON object and writes it to
``logs/gpu_check.json``; exit 0 when every run finished, 1 with the reason when one failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from script import stage_time_estimate
from script.bench import bench_train
from script.check_gpu_memory import estimate_training_memory
from script.cli import setup_logging
from script.data_io import atomic_write_json
from script.embedded import make_real_shape_model, make_tiny_model
from script.eval_items import read_items_file
from script.evaluation import generate_texts, score_mcq_letter_mode
from script.mcq_prompts import PROMPT_TRAIN02, encode_prompt, render_mcq_prompt
from script.model_loading import load_model_for_eval
from script.training_config import (
    CLEAN_DIR,
    EVAL_BATCH_SIZE,
    KORMEDMCQA_TEST_DIR,
    LOG_DIR,
    MODEL_DIR,
    SAMPLE_DATA_DIR,
    get_model_config,
)

logger = logging.getLogger("gpu_check")

REAL_LAYERS, REAL_VISION_LAYERS = 34, 27  # google/medgemma-4b-it
LETTER_ITEMS = 604
DECODE_BATCHES = (EVAL_BATCH_SIZE, 4 * EVAL_BATCH_SIZE)  # the pipeline's evaluation batch, and a larger one
DECODE_TOKENS = 64
CONFIGS = ("a2_trl_default", "b_toolkit")
PRECISIONS = {"bf16": "none", "8bit": "8bit"}  # --quantization of each run


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, the embedded tiny model, 2 steps per run")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 8; dry run 2)")
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR / "gpu_check" / "medgemma-4b-shape",
                        help="where the real-shape model is built (default %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=CLEAN_DIR,
                        help="refined training records the runs train on (make data writes them) (default %(default)s)")
    parser.add_argument("--output", type=Path, default=LOG_DIR / "gpu_check.json", help="JSON report")
    args = parser.parse_args(argv)
    args.steps = args.steps or (2 if args.dry_run else 8)
    if args.steps < 2:
        parser.error("--steps must be at least 2 (throughput is measured from step 2 on)")
    return args


def letter_items(n: int = LETTER_ITEMS) -> tuple[list[dict], str]:
    guide = KORMEDMCQA_TEST_DIR / "guide604.jsonl"
    if guide.is_file():
        return read_items_file(guide).items[:n], str(guide)
    sample = SAMPLE_DATA_DIR / "sean0042" / "KorMedMCQA" / "data" / "doctor" / "test.jsonl"
    base = read_items_file(sample).items
    return [dict(base[i % len(base)], id=f"{base[i % len(base)]['id']}#{i}") for i in range(n)], f"{sample} (repeated)"


def synced_seconds(device: str, work):
    """``work()``'s result and its wall time, with the GPU's queue drained before and after."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = work()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def letter_mode_seconds(loaded, device: str) -> dict:
    items, source = letter_items()
    score_mcq_letter_mode(loaded.model, loaded.tokenizer, items[:16])  # warm-up: kernels, allocator
    predictions, seconds = synced_seconds(
        device, lambda: score_mcq_letter_mode(loaded.model, loaded.tokenizer, items, batch_size=16))
    return {"items": len(predictions), "items_from": source, "seconds": round(seconds, 2),
            "items_per_second": round(len(predictions) / seconds, 1)}


def decode_step_ms(loaded, device: str, batches: Sequence[int] = DECODE_BATCHES,
                   new_tokens: int = DECODE_TOKENS) -> dict:
    """Greedy decoding after the train02 prompt, per batch size: the time of ``new_tokens`` steps less
    the time of one (the prompt's forward pass), per step."""
    model, tokenizer = loaded.model, loaded.tokenizer
    items, _ = letter_items()
    ids = [encode_prompt(tokenizer, render_mcq_prompt(tokenizer, item, PROMPT_TRAIN02), PROMPT_TRAIN02)
           for item in items]
    generate_texts(model, tokenizer, ids[:2], 2, 2)  # warm-up: kernels, allocator
    results = {}
    for batch in batches:
        prompts = ids[:batch]
        _, prompt_only = synced_seconds(device, lambda: generate_texts(model, tokenizer, prompts, 1, batch))
        outputs, whole = synced_seconds(device, lambda: generate_texts(model, tokenizer, prompts, new_tokens, batch))
        steps = max(out["new_tokens"] for out in outputs)  # the batch runs until its longest row stops
        results[str(batch)] = {"ms_per_step": round(1000 * max(whole - prompt_only, 0.0) / max(steps - 1, 1), 2),
                               "steps": steps, "prompt_seconds": round(prompt_only, 3)}
    return results


def training_runs(registry: str, model_dir: str, device: str, steps: int, data_dir: Path, out_dir: Path) -> dict:
    """bench_train's a2 and b at bf16 and 8-bit, each beside the memory estimate of its settings."""
    runs = {}
    for precision, quantization in PRECISIONS.items():
        output = out_dir / f"bench_train_{precision}.json"
        with contextlib.redirect_stdout(sys.stderr):
            summary = bench_train.main(["--model", registry, "--base-model", model_dir, "--device", device,
                                        "--steps", str(steps), "--configs", ",".join(CONFIGS),
                                        "--quantization", quantization, "--data-dir", str(data_dir),
                                        "--output", str(output)])
        estimate = estimate_training_memory(
            registry, base_model=model_dir, batch_size=bench_train.GUIDE_BATCH,
            max_length=bench_train.GUIDE_MAX_LENGTH, quantization=quantization, train_embeddings=False)
        runs[precision] = {"estimate_bytes": estimate.total, "configs": {}}
        for config, result in summary["results"].items():
            runs[precision]["configs"][config] = {
                "real_tokens_per_s": result["real_tokens_per_s"], "peak_memory_bytes": result["peak_memory_bytes"],
                "memory_kind": result["memory_kind"], "final_loss": result["final_loss"],
                "peak_over_estimate": round(result["peak_memory_bytes"] / estimate.total, 3),
                "bf16": result["options"].get("bf16"),  # False on the CPU dry run: fp32 there
                "gradient_checkpointing": result["options"].get("gradient_checkpointing")}
        runs[precision]["comparison"] = summary["comparison"]
        runs[precision]["bench_json"] = str(output)
    return runs


def gpu_check(args: argparse.Namespace) -> dict:
    import torch

    started = time.perf_counter()
    if args.dry_run:
        registry, device = "tiny", "cpu"
        model_dir = get_model_config("tiny").path

        make_tiny_model.build(Path(model_dir), Path(get_model_config("tiny-mm").path), SAMPLE_DATA_DIR)
        model = {"dir": model_dir, "shape_of": "tiny (dry run)"}
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device visible; --dry-run runs the same steps on the CPU")
        registry, device = "medgemma-4b", "cuda"
        model = make_real_shape_model.build(args.model_dir, REAL_LAYERS, REAL_VISION_LAYERS, device="cuda")
        model_dir = str(args.model_dir)
    report = {"check": "gpu_check", "dry_run": args.dry_run, "device": device,
              "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "model": model, "registry_settings": registry, "steps": args.steps,
              "hyperparameters": {"batch": bench_train.GUIDE_BATCH, "grad_accum": bench_train.GUIDE_GRAD_ACCUM,
                                  "max_length": bench_train.GUIDE_MAX_LENGTH},
              "seconds": {"build": round(time.perf_counter() - started, 1)}}
    phase = time.perf_counter()
    report["training"] = training_runs(registry, model_dir, device, args.steps, args.data_dir,
                                       args.output.parent / "gpu_check")
    report["seconds"]["training"] = round(time.perf_counter() - phase, 1)
    phase = time.perf_counter()
    loaded = load_model_for_eval(model_dir, device=device)  # one load for both scoring measurements
    report["letter_mode_604"] = letter_mode_seconds(loaded, device)
    report["seconds"]["letter_mode"] = round(time.perf_counter() - phase, 1)
    phase = time.perf_counter()
    report["decode_train02"] = decode_step_ms(loaded, device)
    report["seconds"]["decode"] = round(time.perf_counter() - phase, 1)
    # What these figures mean for a whole pipeline run (a dry run's CPU figures are not used: the
    # estimate then rests on its assumptions alone, and says so).
    card = "h200" if "H200" in report["device_name"].upper() else "h100"
    report["stage_times"] = {
        precision: {"training_from": est["training_from"], "decoding_from": est["decoding_from"],
                    "total_seconds": est["total_seconds"],
                    "stages": {row["stage"]: row["seconds"] for row in est["stages"]}}
        for precision, quantization in PRECISIONS.items()
        for est in [stage_time_estimate.estimate("medgemma-4b", card, quantization, report)]}
    report["seconds"]["total"] = round(time.perf_counter() - started, 1)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    report = gpu_check(args)  # bench_train and the CUDA check stop with SystemExit(message): exit 1
    atomic_write_json(args.output, report)
    print(json.dumps(report, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
