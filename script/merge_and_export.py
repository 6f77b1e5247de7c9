"""Merge a trained adapter (or a chain of them) into its base model and save a plain transformers model.

    python -m script.merge_and_export --model model/02_trained/tiny/final
    python -m script.merge_and_export --model model/02_trained/medgemma-4b/final --output model/merged/medgemma-4b
    python -m script.merge_and_export --model medgemma-4b --adapter A --adapter B

``--model`` is what validation_kor_med_test.py takes: a registry name or model dir plus
``--adapter`` dirs, or an adapter dir alone. An adapter dir with ``adapter_chain.json`` (the
``final/`` of train_02 in the pipeline) stands for its whole chain: 00 -> 01 -> second adapter
-> 02, each merged in order (model_loading.load_model_for_eval). The result is saved as safetensors
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

Adapter-only export (``--adapter-only``), for servers that apply LoRA adapters per request over one
base model (vLLM ``--enable-lora``, TGI ``--lora-adapters``). Such a server applies ONE plain LoRA
adapter to the weights it loaded, so:

* a single adapter on the registry base, with no fully trained modules, is exported as it is:
  ``<output>/adapter`` over the original base;
* a chain (00 -> 01 -> second adapter -> 02) cannot be one adapter: its parents are merged into a
  new base, ``<output>/base`` (a plain transformers checkpoint + tokenizer), and the top adapter's
  LoRA weights go to ``<output>/adapter``, to be served over that base;
* fully trained modules (``modules_to_save``: the embeddings of the 00 / tokenizer-extension
  stages) are weights, not low-rank updates, and vLLM refuses adapters that carry them: they are
  written into ``<output>/base`` as well, and the adapter keeps the LoRA matrices only. A vocabulary
  extension travels with the base the same way. DoRA adapters are refused (vLLM has no DoRA).

The export is checked like the merge: base (reloaded with plain transformers) + adapter (loaded
with PEFT) must give the adapter model's logits within --tolerance, else nothing is written.
Output (atomic): ``<output>/adapter/`` (adapter_config.json, adapter_model.safetensors, tokenizer),
``<output>/base/`` (when needed), ``export_info.json`` and ``SERVING.md`` with the serve commands
for this export. Default output: model/adapter_export/<name>.

    python -m script.merge_and_export --model model/02_trained/tiny/final --adapter-only
    vllm serve model/adapter_export/tiny/base --enable-lora \\
        --lora-modules medgemma-ko=model/adapter_export/tiny/adapter --max-lora-rank 16
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from script import formats
from script.cli import setup_logging
from script.data_io import atomic_write_dir
from script.eval_items import load_eval_items
from script.mcq_prompts import render_mcq_prompt
from script.model_card import render_card
from script.model_loading import add_pickle_weights_flag, load_base_model, load_model_for_eval
from script.training_config import DEFAULT_MODEL, KORMEDMCQA_TEST_DIR, MODEL_DIR, ConfigError
from script.training_utils import git_sha, library_versions

logger = logging.getLogger("merge_and_export")

SERVED_ADAPTER_NAME = "medgemma-ko"
FALLBACK_PROMPTS = (
    "고혈압 환자에게 가장 먼저 권하는 생활 습관 교정은 무엇인가?",
    "급성 심근경색의 대표적인 증상을 설명하세요.",
    "당뇨병 환자의 발 관리에서 중요한 점은?",
    "Meaning of word 폐렴:",
)


def check_prompts(tokenizer, n: int) -> list[str]:
    """Rendered prompts to compare logits on: steering-set questions when extracted, else fixed text."""
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


# ---------------------------------------------------------------------------
# Adapter-only export (vLLM / TGI LoRA serving)
# ---------------------------------------------------------------------------
def lora_only(adapter_dir: Path, base_ref: str) -> list[str]:
    """Keep only the LoRA matrices in a saved adapter and point it at ``base_ref``; returns what was
    dropped (the fully trained modules, which the exported base carries instead)."""
    from safetensors.torch import load_file, save_file

    weights = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(weights)
    kept = {name: tensor for name, tensor in tensors.items() if ".lora_" in name}
    save_file(kept, weights, metadata={"format": "pt"})
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(modules_to_save=None, base_model_name_or_path=base_ref)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return sorted(set(tensors) - set(kept))


def untie_diverged_embeddings(model) -> bool:
    """If unloading a trained input embedding (modules_to_save) left the output head on the original
    weights, record that they are no longer tied, so the saved checkpoint keeps both. (PEFT 0.21
    trains a tied head together with the embedding, and nothing changes; the logit check covers both.)"""
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if inputs is None or outputs is None or inputs.weight.data_ptr() == outputs.weight.data_ptr():
        return False
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        if getattr(config, "tie_word_embeddings", False):
            config.tie_word_embeddings = False
    return True


# vLLM accepts only these --max-lora-rank values (its LoRAConfig check; the default is 16).
VLLM_MAX_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def vllm_max_lora_rank(rank: int) -> int:
    return next((r for r in VLLM_MAX_LORA_RANKS if r >= rank), rank)


def serve_commands(base: str, adapter_dir: str, name: str, rank: int) -> dict:
    """Launch and request commands of vLLM and TGI for this export (flags as in their docs)."""
    import shlex

    return {
        "vllm": shlex.join(["vllm", "serve", base, "--enable-lora", "--lora-modules", f"{name}={adapter_dir}",
                            "--max-lora-rank", str(vllm_max_lora_rank(rank))]),
        "vllm_request": "curl http://localhost:8000/v1/chat/completions -H 'Content-Type: application/json' -d "
                        + shlex.quote(json.dumps({"model": name, "messages": [{"role": "user", "content": "..."}]})),
        "tgi": shlex.join(["text-generation-launcher", "--model-id", base, "--lora-adapters", f"{name}={adapter_dir}"]),
        "tgi_request": "curl http://127.0.0.1:3000/generate -X POST -H 'Content-Type: application/json' -d "
                       + shlex.quote(json.dumps({"inputs": "...",
                                                 "parameters": {"adapter_id": name, "max_new_tokens": 256}})),
    }


def serving_readme(info: dict) -> str:
    commands = info["serve"]
    base_note = (f"`base/` is `{info['original_base']}` with {'; '.join(info['base_reasons'])} "
                 "(a plain transformers checkpoint)" if info["base_exported"] else
                 f"the base is the one the adapter was trained on, `{info['served_base']}`")
    return "\n".join([
        f"# Serving {info['adapter_name']}",
        "",
        f"One LoRA adapter (`adapter/`, rank {info['lora_r']}) over one base: {base_note}. Exported from "
        f"{len(info['chain'])} adapter(s): " + " -> ".join(f"`{a}`" for a in info["chain"]) + ".",
        f"Checked: base + adapter reproduce the adapter model's logits within {info['tolerance']:g} "
        f"(max difference {info['max_abs_logit_difference']:.3g} on {info['check_prompts']} prompts).",
        "",
        "vLLM (OpenAI-compatible server; request the adapter as the model):",
        "```bash", commands["vllm"], commands["vllm_request"], "```",
        "",
        "Text Generation Inference (or `LORA_ADAPTERS=<name>=<dir>` in the environment):",
        "```bash", commands["tgi"], commands["tgi_request"], "```",
        "",
        "Send the prompts the adapter was trained on (system prompts and formats in script/formats.py; "
        "`python -m script.chat` uses them).",
        "",
    ])


def export_adapter_main(loaded, output: Path, prompts: Sequence[str], reference: Sequence, tolerance: float,
                        adapter_name: str, allow_pickle_weights: bool = False) -> int:
    """``--adapter-only``: <output>/adapter (+ <output>/base when the adapter cannot stand on the
    original base), checked against ``reference`` before anything is moved into place."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM


    info = loaded.info
    model = loaded.model
    config = model.peft_config[model.active_adapter]
    if getattr(config, "use_dora", False):
        print(f"error: {info['adapters'][-1]} is a DoRA adapter; vLLM cannot serve DoRA: export the merged model "
              "instead (without --adapter-only)", file=sys.stderr)
        return 2
    base_rows = AutoConfig.from_pretrained(info["base_model"]).get_text_config().vocab_size
    resized = model.get_input_embeddings().weight.shape[0] != base_rows
    reasons = [text for text, applies in (
        (f"{len(info['merged_adapters'])} parent adapter(s) merged", bool(info["merged_adapters"])),
        (f"fully trained modules {sorted(config.modules_to_save or [])} moved into the base",
         bool(config.modules_to_save)),
        ("extended vocabulary", resized)) if applies]
    final_base = (output / "base").resolve()  # where base/ will be once the temp dir is renamed
    served_base = str(final_base) if reasons else str(info["base_model"])
    result: dict = {}

    def write(tmp: Path) -> None:
        adapter_dir = tmp / "adapter"
        # Embedding rows belong to the base here: never copy them into the adapter.
        model.save_pretrained(adapter_dir, safe_serialization=True, save_embedding_layers=False)
        dropped = lora_only(adapter_dir, served_base)
        loaded.tokenizer.save_pretrained(adapter_dir)
        if reasons:
            base = model.unload()  # LoRA layers out, unmerged; the trained copies of modules_to_save stay in
            untie_diverged_embeddings(base)
            base.save_pretrained(tmp / "base", safe_serialization=True)
            loaded.tokenizer.save_pretrained(tmp / "base")
            # What a server loads: the saved base read back with transformers alone.
            reloaded = AutoModelForCausalLM.from_pretrained(tmp / "base", dtype=base.dtype, use_safetensors=True,
                                                            attn_implementation=info["attn_implementation"],
                                                            trust_remote_code=False).to(base.device)
        else:
            reloaded = load_base_model(str(info["base_model"]), info["device"], model.dtype,
                                       attn_implementation=info["attn_implementation"],
                                       allow_pickle_weights=allow_pickle_weights)
        served = PeftModel.from_pretrained(reloaded, adapter_dir, is_trainable=False)
        served.eval()
        difference = max_abs_difference(reference, prompt_logits(served, loaded.tokenizer, prompts))
        if difference > tolerance:
            raise RuntimeError(f"base + exported adapter differ from the adapter model by {difference:.3g} > "
                               f"{tolerance:g} in logits; nothing was written")
        result.update({
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "adapter_name": adapter_name, "chain": info["adapters"], "original_base": info["base_model"],
            "base_exported": bool(reasons), "base_reasons": reasons, "served_base": served_base,
            "adapter_dir": str((output / "adapter").resolve()), "lora_r": config.r,
            "use_rslora": bool(config.use_rslora), "dropped_from_adapter": dropped, "dtype": info["dtype"],
            "tokenizer": info["tokenizer"], "check_prompts": len(prompts), "max_abs_logit_difference": difference,
            "tolerance": tolerance, "git_sha": git_sha(), "versions": library_versions(),
        })
        result["serve"] = serve_commands(served_base, result["adapter_dir"], adapter_name, config.r)
        (tmp / "export_info.json").write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n",
                                              encoding="utf-8")
        (tmp / "SERVING.md").write_text(serving_readme(result), encoding="utf-8")

    try:
        atomic_write_dir(output, write)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    logger.info("adapter export in %s (%s)", output, "; ".join(reasons) or "adapter over the original base")
    print(json.dumps({"output": str(output), "base_exported": result["base_exported"], "served_base": served_base,
                      "max_abs_logit_difference": result["max_abs_logit_difference"], "tolerance": tolerance,
                      "serve": result["serve"]["vllm"]}, ensure_ascii=False))
    return 0


def merged_model_card(info: dict, output: Path, difference: float, tolerance: float) -> str:
    """The Hub card of a merged export: the base it was merged into, the adapters, the logit check."""
    record = {"script": "merge_and_export", "model": info["name"], "git_sha": git_sha(),
              "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "stage": "merged", "config": {"dtype": info["dtype"]},
              "metrics": {"adapters merged": len(info["adapters"]), "max abs logit difference": difference,
                          "tolerance": tolerance}}
    return render_card(record, info["base_model"], str(output), parents=info["adapters"], merged=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="registry name, model dir or adapter dir (default: %(default)s)")
    parser.add_argument("--adapter", action="append", default=[], metavar="DIR",
                        help="adapter to merge; repeat for a chain, applied in order")
    parser.add_argument("--output", type=Path, default=None, help="output dir (default: model/merged/<name>)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.add_argument("--check-prompts", type=int, default=4, help="prompts the logits are compared on (default 4)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="largest allowed |logit difference| (default: 1e-3 in fp32, 0.25 in bf16)")
    parser.add_argument("--force", action="store_true", help="replace an existing output dir")
    parser.add_argument("--adapter-only", action="store_true",
                        help="export the top adapter for vLLM/TGI LoRA serving (parents and fully trained "
                             "modules merged into <output>/base) instead of one merged model")
    parser.add_argument("--adapter-name", default=SERVED_ADAPTER_NAME,
                        help="the name clients request the adapter by, in the serve commands (default: %(default)s)")
    add_pickle_weights_flag(parser)
    args = parser.parse_args(argv)
    if args.check_prompts < 1:
        parser.error("--check-prompts must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM


    try:
        loaded = load_model_for_eval(args.model, args.adapter, args.device, quantization="none",
                                     allow_pickle_weights=args.allow_pickle_weights)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    info = loaded.info
    if not info["adapters"]:
        print(f"error: {args.model} has no adapter to merge (pass an adapter dir or --adapter)", file=sys.stderr)
        return 2
    output = args.output or MODEL_DIR / ("adapter_export" if args.adapter_only else "merged") / info["name"]
    if output.exists() and not args.force:
        print(f"error: {output} exists; pass --force to replace it", file=sys.stderr)
        return 2
    tolerance = args.tolerance if args.tolerance is not None else default_tolerance(info["dtype"])

    tokenizer = loaded.tokenizer
    prompts = check_prompts(tokenizer, args.check_prompts)
    reference = prompt_logits(loaded.model, tokenizer, prompts)
    if args.adapter_only:
        return export_adapter_main(loaded, output, prompts, reference, tolerance, args.adapter_name,
                                   args.allow_pickle_weights)
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
        (tmp / "README.md").write_text(merged_model_card(info, output, difference, tolerance), encoding="utf-8")

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
    from script.cli import run_main

    run_main(main)
