"""Merge a trained adapter (or a chain of them) into its base model and save a plain transformers model.

    python -m script.merge_and_export --model model/02_trained/tiny/final
    python -m script.merge_and_export --model model/02_trained/medgemma-4b/final --output model/merged/medgemma-4b
    python -m script.merge_and_export --model medgemma-4b --adapter A --adapter B

``--model`` is what validation_kor_med_test.py takes: a registry name or model dir plus
``--adapter`` dirs, or an adapter dir alone. An adapter dir with ``adapter_chain.json`` (the
``final/`` of train_02 in the pipeline) stands for its whole chain: 00 -> 01 -> second adapter
-> 02, each merged in order (evaluation.load_model_for_eval). The result is saved as safetensors
with the tokenizer of the last adapter that saved one (an extended vocabulary travels with it), and
loads with ``AutoModelForCausalLM.from_pretrained(dir)`` -- no PEFT needed.

Before anything is moved into place the saved copy is checked: it is reloaded with plain
transformers and its logits on --check-prompts KorMedMCQA prompts (the steering set, else fixed
sentences) are compared with those of the adapter model; a difference above --tolerance stops the
run (exit 1) and nothing is written. Merging happens in the base's full precision (fp32 on CPU,
bf16 on a GPU that has it); an 8-/4-bit base cannot be merged exactly and is refused.

Output (atomic: a temp dir renamed into place): ``<output>/`` = config.json, model safetensors,
tokenizer files, ``merge_info.json`` (chain, base, dtype, max logit difference, versions).
Default output: model/merged/<name>, where <name> is the registry name or the base dir's name.

Serving the result: it is an ordinary checkpoint, e.g. ``vllm serve model/merged/<name>`` or
``text-generation-launcher --model-id model/merged/<name>``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from script.data_io import atomic_write_dir
from script.training_config import DEFAULT_MODEL, KORMEDMCQA_TEST_DIR, MODEL_DIR

logger = logging.getLogger("merge_and_export")

FALLBACK_PROMPTS = (
    "고혈압 환자에게 가장 먼저 권하는 생활 습관 교정은 무엇인가?",
    "급성 심근경색의 대표적인 증상을 설명하세요.",
    "당뇨병 환자의 발 관리에서 중요한 점은?",
    "Meaning of word 폐렴:",
)


def check_prompts(tokenizer, n: int) -> list[str]:
    """Rendered prompts to compare logits on: steering-set questions when extracted, else fixed text."""
    from script import formats
    from script.evaluation import load_eval_items, render_mcq_prompt

    steer = KORMEDMCQA_TEST_DIR / "steer.jsonl"
    if steer.is_file():
        return [render_mcq_prompt(tokenizer, item, "type3") for item in load_eval_items(steer, n=n)]
    return [formats.render_prompt(tokenizer, formats.build_messages(None, text)) for text in FALLBACK_PROMPTS[:n]]


def prompt_logits(model, tokenizer, prompts: Sequence[str]) -> list:
    """Full logits of each prompt, one unpadded forward each (exact, no padding effects)."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
            out.append(model(input_ids=ids).logits[0].float().cpu())
    return out


def max_abs_difference(a: Sequence, b: Sequence) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def default_tolerance(dtype: str) -> float:
    # fp32 merges differ from the unmerged sum by rounding only; bf16 weights carry ~3 significant digits.
    return 1e-3 if dtype == "float32" else 0.25


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("MODEL", DEFAULT_MODEL),
                        help="registry name, model dir or adapter dir (default: $MODEL or %(default)s)")
    parser.add_argument("--adapter", action="append", default=[], metavar="DIR",
                        help="adapter to merge; repeat for a chain, applied in order")
    parser.add_argument("--output", type=Path, default=None, help="output dir (default: model/merged/<name>)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.add_argument("--check-prompts", type=int, default=4, help="prompts the logits are compared on (default 4)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="largest allowed |logit difference| (default: 1e-3 in fp32, 0.25 in bf16)")
    parser.add_argument("--force", action="store_true", help="replace an existing output dir")
    args = parser.parse_args(argv)
    if args.check_prompts < 1:
        parser.error("--check-prompts must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    args = parse_args(argv)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from script.evaluation import load_model_for_eval
    from script.training_utils import ConfigError, git_sha, library_versions

    try:
        loaded = load_model_for_eval(args.model, args.adapter, args.device, quantization="none")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    info = loaded.info
    if not info["adapters"]:
        print(f"error: {args.model} has no adapter to merge (pass an adapter dir or --adapter)", file=sys.stderr)
        return 2
    output = args.output or MODEL_DIR / "merged" / info["name"]
    if output.exists() and not args.force:
        print(f"error: {output} exists; pass --force to replace it", file=sys.stderr)
        return 2
    tolerance = args.tolerance if args.tolerance is not None else default_tolerance(info["dtype"])

    tokenizer = loaded.tokenizer
    prompts = check_prompts(tokenizer, args.check_prompts)
    reference = prompt_logits(loaded.model, tokenizer, prompts)
    merged = loaded.model.merge_and_unload() if isinstance(loaded.model, PeftModel) else loaded.model
    logger.info("merged %d adapter(s) into %s (%s)", len(info["adapters"]), info["base_model"], info["dtype"])
    result: dict = {}

    def write(tmp: Path) -> None:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        # The check reloads what was written, with transformers alone: what a user will load.
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=merged.dtype, use_safetensors=True,
                                                        trust_remote_code=False).to(merged.device)
        reloaded.eval()
        difference = max_abs_difference(reference, prompt_logits(reloaded, tokenizer, prompts))
        result["max_abs_logit_difference"] = difference
        if difference > tolerance:
            raise RuntimeError(f"merged model differs from the adapter model by {difference:.3g} > {tolerance:g} "
                               "in logits; nothing was written")
        (tmp / "merge_info.json").write_text(json.dumps({
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "base_model": info["base_model"], "adapters": info["adapters"], "dtype": info["dtype"],
            "tokenizer": info["tokenizer"], "check_prompts": len(prompts),
            "max_abs_logit_difference": difference, "tolerance": tolerance,
            "git_sha": git_sha(), "versions": library_versions(),
        }, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    try:
        atomic_write_dir(output, write)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"output": str(output), "adapters": info["adapters"], "base_model": info["base_model"],
                      "dtype": info["dtype"], "max_abs_logit_difference": result["max_abs_logit_difference"],
                      "tolerance": tolerance}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
