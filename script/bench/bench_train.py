"""Training throughput: the guide's setup and TRL's defaults against this toolkit's default, same model and data.

    python -m script.bench.bench_train                     # tiny on this machine, 12 optimizer steps each
    python -m script.bench.bench_train --model medgemma-4b --steps 30 --device cuda
    python -m script.bench.bench_train --random-shape google/medgemma-4b-it --steps 30   # CUDA, no download

Three configurations train the same LoRA (same initial weights, same records in the same order, the
guide's hyperparameters: micro-batch 4 x gradient accumulation 4, max length 512):

  a1_guide        every record padded to max length 512, as the guide's earlier implementation did
                  (TRL SFTTrainer, pad_to_multiple_of=512), TRL's default gradient checkpointing
  a2_trl_default  TRL SFTTrainer's defaults: rows padded to the longest record of the micro-batch,
                  no packing, gradient checkpointing on (TRL projects the LM head on every position
                  off CUDA)
  a2_padding_free, a2_padding_free_compact_head
                  a2 with the toolkit's speed-ups added one at a time (where the gain comes from)
  b_toolkit       what every trainer here uses (training_utils.build_trainer): padding-free
                  micro-batches, the LM head projected on completion tokens only, gradient
                  checkpointing only where the model's memory setting needs it

Precision and the optimisation settings (learning rate, schedule, clipping, optimizer) are the same
for all (bf16 on CUDA, fp32 on CPU), so the losses can be compared step by step: the fast path
trains the same thing when its per-step losses match a2's within noise.

Each configuration runs in its own process (clean peak memory). Real tokens are the non-padding
tokens the model saw; tokens/s is measured over steps 2..N (step 1 carries one-off set-up work).
Prints one JSON object and writes it to --output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from script.check_gpu_memory import KNOWN_ARCHITECTURES, Architecture
from script.data_io import atomic_write_json
from script.training_config import CLEAN_DIR, LOG_DIR
from script.training_data import load_split_records, to_sft_dataset
from script.training_utils import (
    add_compact_lm_head,
    attach_lora,
    batch_token_counts,
    build_arg_parser,
    build_sft_config,
    build_trainer,
    enable_padding_free,
    load_model_and_tokenizer,
    start_run,
    training_options,
)

CONFIGS = ("a1_guide", "a2_trl_default", "a2_padding_free", "a2_padding_free_compact_head", "b_toolkit")
REFINED_TYPES = ("type1_text", "type2_text_reasoning", "type3_word", "type4_word_reasoning")
# The guide's training hyperparameters (MedGemma-4B): micro-batch 4, accumulation 4, length 512.
GUIDE_BATCH, GUIDE_GRAD_ACCUM, GUIDE_MAX_LENGTH = 4, 4, 512
# Dense bf16 peak of known cards (TFLOP/s), for model-FLOPs utilisation on CUDA.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="tiny", help="registry name (script/training_config.py) (default: tiny)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per configuration (default: 12)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="comma-separated subset of %s (default: all)" % ", ".join(CONFIGS))
    parser.add_argument("--data-dir", type=Path, default=CLEAN_DIR,
                        help="refined data root; records of the four types are mixed (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON result (default: logs/bench_train_<MODEL>.json)")
    parser.add_argument("--random-shape", default=None, metavar="HUB_ID",
                        help="train a randomly initialised text model of this published shape instead of --model's "
                             "weights (no download; CUDA only): one of %s. Hyperparameters stay --model's"
                             % ", ".join(KNOWN_ARCHITECTURES))
    parser.add_argument("--base-model", default=None, metavar="DIR",
                        help="train this model dir instead of --model's registry path (hyperparameters stay "
                             "--model's), e.g. the real-shape model of script/embedded/make_real_shape_model.py")
    parser.add_argument("--quantization", choices=("auto", "none", "8bit", "4bit"), default="auto",
                        help="base weights as the trainers' flag: auto = the registry's setting on CUDA")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)  # one configuration, in-process
    args = parser.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configuration(s): {', '.join(unknown)}")
    if args.steps < 2:
        parser.error("--steps must be at least 2 (throughput is measured from step 2 on)")
    if args.random_shape and args.random_shape not in KNOWN_ARCHITECTURES:
        parser.error(f"--random-shape: unknown shape {args.random_shape!r}; known: {', '.join(KNOWN_ARCHITECTURES)}")
    return args


def bench_records(data_dir: Path, count: int, seed: int) -> list[dict]:
    """``count`` refined training records of all four types, shuffled with ``seed`` (repeated if short)."""
    import random


    records = []
    for type_name in REFINED_TYPES:
        path = data_dir / type_name / "train.jsonl"
        if not path.exists():
            raise SystemExit(f"{path}: missing; run `make data` first")
        records.extend(load_split_records(path))
    if not records:
        raise SystemExit(f"{data_dir}: no training records")
    random.Random(seed).shuffle(records)
    return [records[i % len(records)] for i in range(count)]


class TokenCounter:
    """Wraps a data collator and records (real tokens, positions computed) of every micro-batch."""

    def __init__(self, collator):
        self.collator = collator
        self.batches: list[tuple[int, int]] = []

    def __call__(self, features):
        batch = self.collator(features)
        self.batches.append(batch_token_counts(batch))
        return batch


def throughput(batch_counts: list[tuple[int, int]], step_ends: list[float], grad_accum: int) -> dict:
    """Real tokens/s and padding share over steps 2..N from per-micro-batch counts and step end times.

    Micro-batch i belongs to optimizer step i // grad_accum + 1 (the data loader may fetch one
    micro-batch ahead; it is not counted).
    """
    steps = len(step_ends)
    if steps < 2:
        raise ValueError("need at least two steps")
    timed = batch_counts[grad_accum: steps * grad_accum]
    real = sum(r for r, _ in timed)
    positions = sum(p for _, p in timed)
    seconds = step_ends[-1] - step_ends[0]
    all_real = sum(r for r, _ in batch_counts[: steps * grad_accum])
    all_positions = sum(p for _, p in batch_counts[: steps * grad_accum])
    return {
        "real_tokens_per_s": real / seconds if seconds > 0 else None,
        "positions_per_s": positions / seconds if seconds > 0 else None,
        "timed_seconds": seconds,
        "timed_real_tokens": real,
        "real_tokens": all_real,
        "positions": all_positions,
        "padding_share": 1 - all_real / all_positions if all_positions else 0.0,
    }


def peak_memory(device: str) -> dict:
    import resource

    import torch

    if device.startswith("cuda"):
        return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated()), "memory_kind": "cuda_max_allocated"}
    return {"peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "memory_kind": "process_peak_rss"}


def random_text_model(arch: Architecture, device: str, dtype):
    """A randomly initialised Gemma-3 text model of ``arch``'s dimensions (throughput only)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_hidden_layers, num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads, head_dim=arch.head_dim, vocab_size=arch.vocab_size,
        query_pre_attn_scalar=arch.head_dim, sliding_window=1024, tie_word_embeddings=arch.tie_word_embeddings,
        pad_token_id=0, bos_token_id=2, eos_token_id=1)
    with torch.device(device):
        model = Gemma3ForCausalLM(config).to(dtype)
    model.config.use_cache = False
    return model


def build_bench_trainer(config: str, run, model, tokenizer, dataset, callbacks):
    """The trainer of one configuration. b is the toolkit's own build_trainer; a1/a2 are plain TRL
    SFTTrainers. All three share the optimisation settings (learning rate and schedule, warm-up,
    gradient clipping, optimizer, seeds), so that only batching, checkpointing and the LM head differ."""
    from trl import SFTTrainer


    common = dict(save_strategy="no", report_to=[], logging_steps=1, disable_tqdm=True)
    if config == "b_toolkit":
        return build_trainer(run, model, tokenizer, dataset, callbacks=callbacks, **common)
    args = build_sft_config(
        run, **common,
        activation_checkpointing=True, activation_checkpointing_kwargs=None,  # SFTConfig's default
        # a1 pads every record to max_length, as the guide's earlier implementation did.
        pad_to_multiple_of=run.max_length if config == "a1_guide" else None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=callbacks)
    if config.startswith("a2_padding_free"):
        enable_padding_free(trainer)
    if config == "a2_padding_free_compact_head":
        add_compact_lm_head(trainer.model)
    return trainer


def run_worker(args: argparse.Namespace) -> dict:
    """Train one configuration for --steps optimizer steps; return its figures."""
    from transformers import TrainerCallback


    config = args.worker
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        run_args = build_arg_parser("bench").parse_args([
            "--model", args.model, "--device", args.device, "--seed", str(args.seed),
            "--batch-size", str(GUIDE_BATCH), "--grad-accum", str(GUIDE_GRAD_ACCUM),
            "--max-length", str(GUIDE_MAX_LENGTH), "--max-steps", str(args.steps), "--output", tmp,
            "--quantization", args.quantization, *(["--base-model", args.base_model] if args.base_model else []),
        ])
        run = start_run(run_args, stage="bench_train", script="bench_train")
        records = bench_records(args.data_dir, args.steps * GUIDE_BATCH * GUIDE_GRAD_ACCUM + GUIDE_BATCH, args.seed)
        model, tokenizer = load_model_and_tokenizer(run)
        if args.random_shape:  # same tokenizer (its ids fit the larger vocabulary), other weights
            import torch

            if not run.device.startswith("cuda"):
                raise SystemExit("--random-shape needs CUDA: a model of that size does not train on this CPU")
            model = random_text_model(KNOWN_ARCHITECTURES[args.random_shape], run.device, getattr(torch, run.dtype))
        model = attach_lora(model, run)

        step_ends: list[float] = []

        class StepClock(TrainerCallback):
            def on_step_end(self, *_args, **_kwargs):
                step_ends.append(time.perf_counter())

        trainer = build_bench_trainer(config, run, model, tokenizer, to_sft_dataset(records), [StepClock()])
        counter = TokenCounter(trainer.data_collator)
        trainer.data_collator = counter
        trainer.train()
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        n_params = sum(p.numel() for p in trainer.model.parameters())
        result = {"config": config, "steps": len(step_ends), "losses": losses, "final_loss": losses[-1],
                  **throughput(counter.batches, step_ends, run.grad_accum), **peak_memory(run.device),
                  "parameters": n_params, "options": training_options(trainer)}
    flops_per_token = 6 * n_params  # forward + backward, the usual dense estimate
    result["achieved_tflops"] = flops_per_token * (result["real_tokens_per_s"] or 0) / 1e12
    if run.device.startswith("cuda"):
        import torch

        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        result["device_name"] = name
        result["model_flops_utilisation"] = result["achieved_tflops"] / peak if peak else None
    return result


def machine() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def compare(results: dict) -> dict:
    """Speed ratios of b over a1/a2 and how far b's per-step losses are from the others'."""
    out = {}
    b = results.get("b_toolkit")
    for name in ("a1_guide", "a2_trl_default"):
        a = results.get(name)
        if not (a and b):
            continue
        short = name.split("_")[0]
        if a["real_tokens_per_s"] and b["real_tokens_per_s"]:
            out[f"b_over_{short}"] = b["real_tokens_per_s"] / a["real_tokens_per_s"]
        out[f"max_loss_diff_b_vs_{short}"] = max(abs(x - y) for x, y in zip(a["losses"], b["losses"]))
        out[f"peak_memory_b_over_{short}"] = b["peak_memory_bytes"] / a["peak_memory_bytes"]
    return out


def table(results: dict) -> str:
    """Markdown table of the results (the README's Performance section uses it)."""
    base = (results.get("a2_trl_default") or {}).get("real_tokens_per_s")
    rows = ["| configuration | real tokens/s | vs a2 | padding share | peak memory (MiB) | loss after N steps |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        ratio = f"{r['real_tokens_per_s'] / base:.2f}x" if base and r["real_tokens_per_s"] else "-"
        rows.append(f"| {name} | {r['real_tokens_per_s']:.0f} | {ratio} | {100 * r['padding_share']:.1f}% | "
                    f"{r['peak_memory_bytes'] / 2**20:.0f} | {r['final_loss']:.4f} |")
    return "\n".join(rows)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        result = run_worker(args)
        print("BENCH_RESULT " + json.dumps(result))
        return result
    results = {}
    for config in args.configs:
        cmd = [sys.executable, "-m", "script.bench.bench_train", "--worker", config, "--model", args.model,
               "--steps", str(args.steps), "--device", args.device, "--data-dir", str(args.data_dir),
               "--seed", str(args.seed), "--quantization", args.quantization] \
            + (["--random-shape", args.random_shape] if args.random_shape else []) \
            + (["--base-model", args.base_model] if args.base_model else [])
        print(f"[bench_train] {config}: {args.steps} steps ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"bench_train: configuration {config} failed (exit {proc.returncode})")
        results[config] = json.loads(line[len("BENCH_RESULT "):])
    summary = {"benchmark": "train", "model": args.model, "random_shape": args.random_shape, "steps": args.steps,
               "base_model": args.base_model, "quantization": args.quantization,
               "hyperparameters": {"batch": GUIDE_BATCH, "grad_accum": GUIDE_GRAD_ACCUM,
                                   "max_length": GUIDE_MAX_LENGTH},
               "machine": machine(), "results": results, "comparison": compare(results)}
    output = args.output or LOG_DIR / f"bench_train_{args.model}.json"
    atomic_write_json(output, summary)
    print(table(results), file=sys.stderr)
    print(json.dumps(summary, ensure_ascii=False))
    return summary


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
