"""MedGemma-4B's real shape through the toolkit, on a CPU: build, train_02, score, merge, reload.

    python -m script.smoke_real_shape              # make smoke-real-shape
    python -m script.smoke_real_shape --layers 2 --items 8 --device cuda

Tiny is small in every direction; MedGemma is not. This runs the random-initialised model of
``script/embedded/make_real_shape_model.py`` (google/medgemma-4b-it's class, width, heads and 262,208-row
vocabulary, few layers) through the toolkit's own entry points, with the registry's medgemma-4b
settings (LoRA r64/α128 on the seven projections, gradient checkpointing):

1. build    the model dir (kept between runs when its shape is unchanged)
2. train_02 ``train_02_kor_med_test.main`` for ``--steps`` steps on sample KorMedMCQA train items
3. letter   letter-mode scoring of ``--items`` sample test items on the trained adapter, in the type-3
            prompt and in train_02's format (reasoning generated up to ``</reasoning>``, then the letter)
4. cloze    cloze-mode scoring of the same items (option texts scored over the 262K vocabulary)
5. merge    ``merge_and_export.main``: merged weights, reloaded with transformers, logits checked
6. reload   the merged dir loaded as a plain checkpoint, its class and vocabulary read back

and checks along the way: the vision tower frozen and outside the LoRA targets, the system text
inside the first user turn of the chat template, ``<R>``/``<R/>`` as plain text. Prints ONE JSON
object (also written to ``logs/smoke_real_shape.json``): the model class, vocabulary size,
tokenizer length, and per step its seconds and peak memory: the process's resident memory at its
highest during the step (the kernel's high-water mark, reset before each step; what earlier steps
left resident counts too) and, on a GPU, the peak of allocated CUDA memory. Exit 0 when every
check passed, 1 when one failed, 2 on a configuration error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from script import formats, merge_and_export
from script.check_gpu_memory import KNOWN_ARCHITECTURES
from script.cli import setup_logging
from script.data_io import atomic_write_json, atomic_write_jsonl
from script.embedded import make_real_shape_model
from script.eval_items import read_items_file
from script.evaluation import score_mcq_cloze_mode, score_mcq_letter_mode
from script.hardware import resolve_device
from script.mcq_prompts import PROMPT_TRAIN02
from script.model_loading import load_model_for_eval
from script.train import train_02_kor_med_test
from script.training_config import LOG_DIR, MODEL_DIR, SAMPLE_DATA_DIR

logger = logging.getLogger("smoke_real_shape")

KORMEDMCQA_SAMPLE = SAMPLE_DATA_DIR / "sean0042" / "KorMedMCQA" / "data" / "doctor"
REGISTRY_SETTINGS = "medgemma-4b"  # the registry entry whose hyperparameters the run uses


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of the model (default %(default)s)")
    parser.add_argument("--vision-layers", type=int, default=1, help="SigLIP layers (default %(default)s)")
    parser.add_argument("--steps", type=int, default=2, help="train_02 optimizer steps (default %(default)s)")
    parser.add_argument("--items", type=int, default=6, help="test items scored per mode (default %(default)s)")
    parser.add_argument("--max-length", type=int, default=192, help="training tokens per record (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default %(default)s)")
    parser.add_argument("--work-dir", type=Path, default=MODEL_DIR / "smoke_real_shape",
                        help="model, adapter and merged dirs (default %(default)s)")
    parser.add_argument("--output", type=Path, default=LOG_DIR / "smoke_real_shape.json",
                        help="the JSON report (default %(default)s)")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------
# Peak memory of one step
# ---------------------------------------------------------------------------
def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    try:  # "5" resets the process's RSS high-water mark (VmHWM), so each step reads its own peak
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def read_peak(device: str) -> dict:
    import torch

    peak: dict = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak["peak_rss_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        import resource

        peak["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device.startswith("cuda"):
        peak["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated())
    return peak


def run_step(steps: list[dict], name: str, device: str, work: Callable[[], dict | None]) -> dict:
    reset_peak(device)
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer's and merge's own prints; stdout is the report's
        result = work() or {}
    entry = {"step": name, "seconds": round(time.perf_counter() - started, 2), **read_peak(device), **result}
    steps.append(entry)
    logger.info("%s: %s", name, json.dumps(entry, ensure_ascii=False))
    return result


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------
def sample_items(split: str, n: int | None) -> list[dict]:
    items = read_items_file(KORMEDMCQA_SAMPLE / f"{split}.jsonl").items
    return items[:n] if n else items


def chat_template_checks(tokenizer) -> dict:
    prompt = formats.render_prompt(tokenizer, [{"role": "system", "content": "SYSTEM"},
                                               {"role": "user", "content": "USER"}])
    return {"system_in_first_user_turn": prompt == "<bos><start_of_turn>user\nSYSTEM\n\nUSER<end_of_turn>\n"
                                                  "<start_of_turn>model\n",
            "marker_tokens": {m: len(tokenizer.tokenize(m)) for m in
                              (formats.REASONING_START, formats.REASONING_END, formats.MCQ_REASONING_START)}}


def adapter_checks(final: Path) -> dict:
    from safetensors import safe_open

    config = json.loads((final / "adapter_config.json").read_text(encoding="utf-8"))
    with safe_open(str(final / "adapter_model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    return {"lora_tensors": len(keys), "lora_in_vision_tower": sum("vision" in k or "multi_modal" in k for k in keys),
            "target_modules": sorted(config["target_modules"]) if isinstance(config["target_modules"], list)
            else config["target_modules"], "r": config["r"]}


def smoke(args: argparse.Namespace) -> dict:
    import torch


    device = resolve_device(args.device)
    work = args.work_dir
    model_dir, run_dir, merged_dir = work / "model", work / "02_trained", work / "merged"
    steps: list[dict] = []
    report: dict = {"smoke": "MedGemma-4B real shape", "device": device, "settings_of": REGISTRY_SETTINGS,
                    "steps": steps}

    report["model"] = run_step(steps, "build", device, lambda: make_real_shape_model.build(
        model_dir, args.layers, args.vision_layers))

    train_file = work / "train_items.jsonl"
    atomic_write_jsonl(train_file, sample_items("train", 16))
    run_step(steps, "train_02", device, lambda: {"train_loss": train_02_kor_med_test.main([
        "--model", REGISTRY_SETTINGS, "--base-model", str(model_dir), "--data", str(train_file),
        "--output", str(run_dir), "--max-steps", str(args.steps), "--batch-size", "1", "--grad-accum", "1",
        "--max-length", str(args.max_length), "--show-samples-every", "0", "--eval-samples", "4",
        "--device", device])["metrics"]["train_loss"]})
    final = run_dir / "final"
    report["adapter"] = adapter_checks(final)

    items = sample_items("test", args.items)
    loaded = load_model_for_eval(str(final), device=device)
    report["loaded"] = {"class": type(loaded.model.get_base_model()).__name__,
                        "embedding_rows": int(loaded.model.get_input_embeddings().weight.shape[0]),
                        "tokenizer_length": len(loaded.tokenizer),
                        "vision_tower_trainable": sum(p.requires_grad for n, p in loaded.model.named_parameters()
                                                      if "vision_tower" in n),
                        **chat_template_checks(loaded.tokenizer)}

    def accuracy(scorer, **options) -> dict:
        predictions = scorer(loaded.model, loaded.tokenizer, items, batch_size=2, **options)
        return {"items": len(predictions), "correct": sum(bool(p["correct"]) for p in predictions)}

    run_step(steps, "letter", device, lambda: accuracy(score_mcq_letter_mode))
    # train_02's own format: the model reasons, generation stops at "</reasoning>" (plain text, several
    # tokens here, as with MedGemma's tokenizer), then the letter is read
    run_step(steps, "letter_after_reasoning", device,
             lambda: accuracy(score_mcq_letter_mode, style=PROMPT_TRAIN02, max_new_tokens=16))
    run_step(steps, "cloze", device, lambda: accuracy(score_mcq_cloze_mode))
    loaded = None  # free the eval model before the merge loads its own copy
    rc = run_step(steps, "merge", device, lambda: {"rc": merge_and_export.main([
        "--model", str(final), "--output", str(merged_dir), "--device", device, "--force"])})
    merge_info = json.loads((merged_dir / "merge_info.json").read_text(encoding="utf-8")) if rc["rc"] == 0 else {}
    report["merge"] = {k: merge_info.get(k) for k in ("max_abs_logit_difference", "tolerance", "adapters")}

    def reload() -> dict:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32, use_safetensors=True)
        return {"class": type(model).__name__, "embedding_rows": int(model.get_input_embeddings().weight.shape[0])}

    report["reloaded"] = run_step(steps, "reload", device, reload)
    vocab = KNOWN_ARCHITECTURES[make_real_shape_model.REAL_MODEL].vocab_size
    report["checks"] = {
        "model_class": report["model"]["class"] == "Gemma3ForConditionalGeneration",
        "vocabulary": report["loaded"]["embedding_rows"] == vocab == report["reloaded"]["embedding_rows"],
        "tokenizer_length": report["loaded"]["tokenizer_length"] == make_real_shape_model.TOKENIZER_LENGTH,
        "vision_frozen_and_not_lora": report["loaded"]["vision_tower_trainable"] == 0
        and report["adapter"]["lora_in_vision_tower"] == 0 and report["adapter"]["lora_tensors"] > 0,
        "system_in_first_user_turn": report["loaded"]["system_in_first_user_turn"],
        "markers_are_plain_text": all(n > 1 for n in report["loaded"]["marker_tokens"].values()),
        "trained": isinstance(steps[1].get("train_loss"), float),
        "scored": all(s["items"] == len(items) for s in steps
                      if s["step"] in ("letter", "letter_after_reasoning", "cloze")),
        "merged_within_tolerance": rc["rc"] == 0,
        "reloaded_class": report["reloaded"]["class"] == "Gemma3ForConditionalGeneration",
    }
    report["ok"] = all(report["checks"].values())
    return report


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    report = smoke(args)  # a bad setting is ConfigError: run_main prints it, exit 2
    atomic_write_json(args.output, report)
    print(json.dumps(report, ensure_ascii=False))
    failed = [name for name, ok in report["checks"].items() if not ok]
    if failed:
        print(f"failed checks: {', '.join(failed)}", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
