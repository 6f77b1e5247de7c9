"""How long each stage of ``make pipeline MODEL=...`` should take on one GPU: an estimate, labelled as such.

    python -m script.stage_time_estimate --model medgemma-4b                 # one H100 SXM, the guide's volumes
    python -m script.stage_time_estimate --model medgemma-4b --quantization none
    python -m script.stage_time_estimate --model medgemma-4b --gpu-check logs/gpu_check.json
    python -m script.stage_time_estimate --model medgemma-27b-text --gpu h200 --json

Nothing is measured here. Each stage's work is counted from the registry (epochs, batch, max
length, evaluation budget), the model's published shape (check_gpu_memory.KNOWN_ARCHITECTURES)
and the guide's data volumes, then turned into seconds with the assumptions below, which the
output prints beside every figure:

  training     tokens x FLOPs per token / (the card's dense bf16 peak x TRAIN_MFU); a LoRA step
               costs the forward (2 x parameters per token), the input gradients through the
               frozen weights (2x) and, with gradient checkpointing, a second forward (2x), plus
               the tied head's weight gradient when embeddings are trained; the base in 8-bit is
               EIGHT_BIT_SLOWDOWN times slower (bitsandbytes' int8 matmuls, reported 2-5x slower
               than bf16 by users; not measured here)
  evaluation   the guide's 604 set (599 questions) twice, the model and its question-blind
               control: prompt forward passes at EVAL_MFU and, in letter mode with the train02
               prompt, up to the reasoning budget of decoding steps per batch (the registry's
               letter_eval_batch_size), each the larger of reading every weight once (memory bandwidth) and the per-layer launch
               overhead of eager generation (DECODE_OVERHEAD_PER_LAYER_S)
  data stages  CPU work measured with ``make bench-text-volume`` on the 2-core machine, scaled to
               the registry's text volume; the download itself depends on the network and is
               not estimated

``--gpu-check logs/gpu_check.json`` (what ``make gpu-check`` writes on a real card, for
medgemma-4b's shape) replaces the training assumption with the tokens/s it measured for the
toolkit's trainer at the same precision, and the decoding and prompt assumptions with its
decoding steps and letter-mode time; the basis column says which figure came from where.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from script.check_gpu_memory import WEIGHT_BYTES, Architecture, resolve_architecture
from script.data_io import read_json
from script.mcq_prompts import DEFAULT_MAX_NEW_TOKENS, PROMPT_TRAIN02
from script.pipeline_stages import CLOZE_EVAL_ARGS, letter_eval_args
from script.sources import SOURCES
from script.training_config import MODEL_CONFIGS, get_memory_config, get_model_config

# Published specifications (NVIDIA data sheets, SXM parts): dense bf16 tensor FLOP/s, HBM bytes/s.
GPUS = {
    "h100": {"name": "H100 SXM 80 GB", "bf16_flops": 989e12, "memory_bytes_per_s": 3.35e12},
    "h200": {"name": "H200 SXM 141 GB", "bf16_flops": 989e12, "memory_bytes_per_s": 4.8e12},
}

# ---- assumptions (not measured here; make gpu-check measures training and decoding) ----
TRAIN_MFU = 0.30  # LoRA through the HF Trainer, micro-batch x 512 tokens: large GEMMs, eager attention
EVAL_MFU = 0.35  # forward passes only (prompts, cloze options)
EIGHT_BIT_SLOWDOWN = 2.5  # bitsandbytes LLM.int8 base against bf16; users report 2-5x
DECODE_OVERHEAD_PER_LAYER_S = 0.6e-3  # eager HF generate: ~a dozen kernel launches per layer and step
LOAD_BYTES_PER_S = 1e9  # reading the checkpoint from local disk, per training/evaluation process
OPTIONS_PER_ITEM = 5  # KorMedMCQA
MONITOR_ITEMS = 10  # --eval-samples of train_01/train_02's periodic evaluation
MONITOR_EVERY_STEPS = 50  # --show-samples-every
PLAIN_TEXT_MONITOR_SAMPLES = 32  # train_01_with_00_monitor's --monitor-samples
PLAIN_TEXT_VALIDATION_SAMPLES = 64  # train_00's --validation-samples, its held-out perplexity

# ---- volumes: the guide's figures where it gives them; tokens per record are assumptions ----
GUIDE_DICTIONARY_ENTRIES = 4049 + 89  # 01_medical_dict (terms) + 02_char_dict (symbols)
GUIDE_KORMEDMCQA_TRAIN = 1890  # data/02_refined/02_kor_med_test train items
EVAL_QUESTIONS = 599  # guide604 once repeated questions are scored once (kormedmcqa.drop_repeated_questions)
TOKENS_PER_RECORD = {
    "train_00": None,  # encyclopaedia and web documents are longer than max_length: each fills it
    "train_01": 64,  # "Meaning of word {term}:" + a one- or two-sentence definition, chat markers included
    "train_02": 300,  # question, five options, per-choice reasoning
}
EVAL_PROMPT_TOKENS = 250  # a KorMedMCQA question with five options in the train02 prompt
CLOZE_OPTION_TOKENS = 200  # question + one option text

# CPU stages, measured with `make bench-text-volume` (2-core machine, one 500 MB capped corpus):
# refine_plain_text 41.9 s, test exclusion 123.6 s. Scaled linearly to the volume of text downloaded.
BENCH_MB = 500
BENCH_SECONDS = {"refine_plain_text": 41.9, "test_exclusion": 123.6}


REAL_MODELS = sorted(name for name, config in MODEL_CONFIGS.items() if not config.embedded)


@dataclass
class StageEstimate:
    stage: str
    work: str  # what was counted
    seconds: float | None  # None: not estimated (network)
    basis: str  # where the seconds come from


def forward_flops_per_token(arch: Architecture, context: int) -> float:
    """Multiply-adds x 2 of one token's forward: projections, the LM head, attention over ``context``."""
    dense = arch.projection_params() + arch.embedding_params()  # the head is the embedding matrix (tied)
    attention = 2 * arch.num_hidden_layers * arch.num_attention_heads * arch.head_dim * context
    return 2.0 * (dense + attention)


def training_flops_per_token(arch: Architecture, length: int, checkpointing: bool, train_embeddings: bool) -> float:
    forward = forward_flops_per_token(arch, length // 2)  # causal: a token attends to half the row on average
    passes = 3 if checkpointing else 2  # forward, input gradients, (recomputed forward)
    head_grad = 2.0 * arch.embedding_params() if train_embeddings else 0.0
    return passes * forward + head_grad


def language_model_bytes(arch: Architecture, quantization: str) -> float:
    """What one decoding step reads: the projections at the base's width, embeddings and norms in bf16."""
    rest = arch.total_params() - arch.projection_params() - arch.vision_params()
    return arch.projection_params() * WEIGHT_BYTES[quantization] + rest * WEIGHT_BYTES["none"]


def decode_step_seconds(arch: Architecture, quantization: str, gpu: dict) -> tuple[float, str]:
    bandwidth = language_model_bytes(arch, quantization) / gpu["memory_bytes_per_s"]
    overhead = arch.num_hidden_layers * DECODE_OVERHEAD_PER_LAYER_S
    slow = EIGHT_BIT_SLOWDOWN if quantization == "8bit" else 1.0
    if overhead >= bandwidth:
        return overhead * slow, f"launch-bound: {arch.num_hidden_layers} layers x {DECODE_OVERHEAD_PER_LAYER_S * 1e3:g} ms"
    return bandwidth * slow, "bandwidth-bound: every weight read once per step"


def usable_gpu_check(gpu_check: dict | None, model: str) -> dict | None:
    """``make gpu-check``'s JSON when it measured this model's shape on a GPU (not a CPU dry run)."""
    if not gpu_check or gpu_check.get("dry_run") or gpu_check.get("registry_settings") != model:
        return None
    return gpu_check


def measured_tokens_per_s(gpu_check: dict | None, quantization: str) -> float | None:
    """The toolkit trainer's tokens/s from gpu-check at this precision (None: not measured)."""
    precision = "bf16" if quantization == "none" else quantization
    run = (gpu_check or {}).get("training", {}).get(precision, {}).get("configs", {}).get("b_toolkit")
    return float(run["real_tokens_per_s"]) if run and run.get("real_tokens_per_s") else None


def measured_decode_step_s(gpu_check: dict | None, batch: int) -> float | None:
    """Seconds per decoding step at the pipeline's letter-evaluation batch, measured in bf16 by gpu-check."""
    row = (gpu_check or {}).get("decode_train02", {}).get(str(batch))
    return row["ms_per_step"] / 1000 if row and row.get("ms_per_step") else None


def estimate(model: str, gpu: str = "h100", quantization: str | None = None, gpu_check: dict | None = None,
             text_mb: float | None = None) -> dict:
    config, memory = get_model_config(model), get_memory_config(model)
    arch = resolve_architecture(config.path)
    card = GPUS[gpu]
    quant = quantization or memory.quantization
    slow = EIGHT_BIT_SLOWDOWN if quant == "8bit" else 1.0
    gpu_check = usable_gpu_check(gpu_check, model)
    measured = measured_tokens_per_s(gpu_check, quant)
    load_s = arch.total_params() * 2.0 / LOAD_BYTES_PER_S  # the bf16 checkpoint, vision tower included
    decode_measured = measured_decode_step_s(gpu_check, config.letter_eval_batch_size)
    if decode_measured:
        eval_step = (decode_measured * slow, f"gpu-check: {decode_measured * 1e3:.1f} ms/step measured in bf16"
                     + (f", x{EIGHT_BIT_SLOWDOWN:g} assumed for the 8-bit base" if slow > 1 else ""))
    else:
        eval_step = decode_step_seconds(arch, quant, card)
        eval_step = (eval_step[0], f"assumed: decoding {eval_step[0] * 1e3:.0f} ms/step ({eval_step[1]})")
    stages: list[StageEstimate] = []

    corpora = [s for s in SOURCES if s.max_mb]
    mb = sum(text_mb if text_mb is not None else s.max_mb for s in corpora)
    stages.append(StageEstimate("download", f"{len(corpora)} text corpora capped at {mb:g} MB in all, the small "
                                "sets, the dictionaries", None, "network-bound: not estimated"))
    for name in ("refine_plain_text", "test_exclusion"):
        stages.append(StageEstimate(name, f"{mb:g} MB of text", BENCH_SECONDS[name] * mb / BENCH_MB,
                                    f"measured: make bench-text-volume, {BENCH_SECONDS[name]} s per {BENCH_MB} MB "
                                    "on 2 CPU cores"))

    def training(stage: str, records: int, epochs: int, tokens: int, embeddings: bool,
                 monitor_tokens: int = 0, monitor_steps: int = 0) -> None:
        """``monitor_tokens`` forward tokens and ``monitor_steps`` decoding steps per periodic evaluation."""
        batch, accum = config.batch, config.grad_accum
        if embeddings and memory.embedding_batch:
            batch, accum = memory.embedding_batch, memory.embedding_grad_accum
        total = records * epochs * tokens
        if measured:
            seconds, basis = total / measured, f"gpu-check: {measured:,.0f} tokens/s measured ({quant})"
        else:
            flops = training_flops_per_token(arch, config.max_length, memory.use_gradient_checkpointing, embeddings)
            seconds = total * flops / (card["bf16_flops"] * TRAIN_MFU) * slow
            basis = (f"assumed: {TRAIN_MFU:.0%} of {card['bf16_flops'] / 1e12:g} TFLOP/s"
                     + (f", x{EIGHT_BIT_SLOWDOWN:g} for the 8-bit base" if slow > 1 else ""))
        work = (f"{records:,} records x {epochs} epoch{'s' if epochs != 1 else ''} x {tokens} tokens = "
                f"{total / 1e6:.1f} M tokens")
        if monitor_tokens or monitor_steps:
            steps = math.ceil(records * epochs / (batch * accum))
            evals = steps // MONITOR_EVERY_STEPS + 1
            step_s, _ = eval_step
            forward = monitor_tokens * forward_flops_per_token(arch, EVAL_PROMPT_TOKENS // 2) / (
                card["bf16_flops"] * EVAL_MFU) * slow
            seconds += evals * (forward + monitor_steps * step_s)
            work += f"; {evals} periodic evaluations" + (f" ({monitor_steps} decoding steps each)" if monitor_steps else "")
        stages.append(StageEstimate(stage, work, seconds + load_s, basis + f"; + {load_s:.0f} s loading"))

    epochs = config.pipeline_epochs
    plain_records = config.pipeline_plain_text_samples or 0
    if plain_records:
        training("train_00", plain_records, epochs[0], TOKENS_PER_RECORD["train_00"] or config.max_length,
                 memory.train_embeddings, PLAIN_TEXT_VALIDATION_SAMPLES * config.max_length)
    budget = config.eval_max_new_tokens or DEFAULT_MAX_NEW_TOKENS[PROMPT_TRAIN02]
    # train_01 reads the steering questions' letters in one forward pass and the plain-text monitor's
    # perplexity; train_02 lets the model write its reasoning first (up to the budget).
    training("train_01", GUIDE_DICTIONARY_ENTRIES, epochs[1], TOKENS_PER_RECORD["train_01"], False,
             MONITOR_ITEMS * EVAL_PROMPT_TOKENS + PLAIN_TEXT_MONITOR_SAMPLES * config.max_length)
    twins = 2 if config.mcq_scoring == "cloze" else 1  # train_02 adds each item's cloze form for cloze-scored models
    training("train_02", twins * GUIDE_KORMEDMCQA_TRAIN, epochs[2], TOKENS_PER_RECORD["train_02"], False,
             MONITOR_ITEMS * EVAL_PROMPT_TOKENS, budget)

    # Evaluations: the model and its question-blind control, each over the whole set.
    step_s, step_basis = eval_step
    batches = math.ceil(EVAL_QUESTIONS / config.letter_eval_batch_size)
    letter_604 = (gpu_check or {}).get("letter_mode_604", {})
    if letter_604.get("seconds") and letter_604.get("items"):
        prefill = 2 * EVAL_QUESTIONS * letter_604["seconds"] / letter_604["items"] * slow
        prefill_basis = "prompts: gpu-check's letter-mode time"
    else:
        prefill = 2 * EVAL_QUESTIONS * EVAL_PROMPT_TOKENS * forward_flops_per_token(arch, EVAL_PROMPT_TOKENS // 2) / (
            card["bf16_flops"] * EVAL_MFU) * slow
        prefill_basis = f"prompts at {EVAL_MFU:.0%} of peak"
    letter = prefill + 2 * batches * budget * step_s
    for role in ("base", "final"):
        stages.append(StageEstimate(
            f"evaluate_{role}", f"{EVAL_QUESTIONS} questions x 2 (model, question-blind control): prompts and up "
            f"to {budget} reasoning tokens in {batches} batches ({letter_eval_args(config)})", letter + load_s,
            f"{step_basis}; {prefill_basis}; + {load_s:.0f} s loading"))
    if config.mcq_scoring == "cloze":
        cloze = 2 * EVAL_QUESTIONS * OPTIONS_PER_ITEM * CLOZE_OPTION_TOKENS * forward_flops_per_token(
            arch, CLOZE_OPTION_TOKENS // 2) / (card["bf16_flops"] * EVAL_MFU) * slow
        for role in ("base_cloze", "final_cloze"):
            stages.append(StageEstimate(f"evaluate_{role}", f"{EVAL_QUESTIONS} x {OPTIONS_PER_ITEM} options x 2 "
                                        f"({CLOZE_EVAL_ARGS})", cloze + load_s,
                                        f"assumed: {EVAL_MFU:.0%} of peak; + {load_s:.0f} s loading"))
    known = [s.seconds for s in stages if s.seconds is not None]
    return {"model": model, "gpu": card["name"], "quantization": quant, "estimate": True,
            "training_from": "gpu-check" if measured else "assumed MFU",
            "decoding_from": "gpu-check" if decode_measured else "assumed",
            "assumptions": {"train_mfu": TRAIN_MFU, "eval_mfu": EVAL_MFU, "eight_bit_slowdown": EIGHT_BIT_SLOWDOWN,
                            "decode_overhead_per_layer_s": DECODE_OVERHEAD_PER_LAYER_S,
                            "load_bytes_per_s": LOAD_BYTES_PER_S, "tokens_per_record": TOKENS_PER_RECORD,
                            "eval_prompt_tokens": EVAL_PROMPT_TOKENS},
            "stages": [asdict(s) for s in stages], "total_seconds": round(sum(known), 1)}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_table(report: dict) -> str:
    lines = [f"Estimate (not a measurement) for MODEL={report['model']} on one {report['gpu']}, base "
             f"{report['quantization']}, training from {report['training_from']}:", "",
             "| stage | work | estimate | basis |", "|---|---|---|---|"]
    for stage in report["stages"]:
        lines.append(f"| {stage['stage']} | {stage['work']} | {_duration(stage['seconds'])} | {stage['basis']} |")
    lines.append(f"| total (estimated stages) | | {_duration(report['total_seconds'])} | |")
    lines += ["", "Not listed: the small sets' refining, verify, the leakage probe, the proficiency check, the "
              "adapter steps and the summaries (CPU, seconds to minutes). make gpu-check measures the training "
              "throughput; pass its JSON with --gpu-check."]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="medgemma-4b", choices=REAL_MODELS,
                        help="registry name of a hub model (default %(default)s; the guide's volumes do not "
                             "describe the embedded sample)")
    parser.add_argument("--gpu", default="h100", choices=sorted(GPUS), help="the card (default %(default)s)")
    parser.add_argument("--quantization", choices=("none", "8bit", "4bit"), default=None,
                        help="the base's precision (default: the registry's, as the pipeline loads it on CUDA)")
    parser.add_argument("--gpu-check", type=Path, default=None,
                        help="make gpu-check's JSON (logs/gpu_check.json): use its measured training tokens/s")
    parser.add_argument("--text-mb", type=float, default=None, help="text corpus cap in MB (default: the registry's)")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    gpu_check = read_json(args.gpu_check) if args.gpu_check else None
    report = estimate(args.model, args.gpu, args.quantization, gpu_check, args.text_mb)
    print(json.dumps(report, ensure_ascii=False, indent=2) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
