"""Add a new, untrained LoRA adapter to a model (step 3/4 of the simplified pipeline).

Without --on: the base model (the registry's, or --base-model) + a fresh LoRA with the run's
settings: r/alpha from the registry (--lora-r/--lora-alpha override them), rsLoRA with --rslora,
the embeddings trained whole (modules_to_save) with --train-embeddings where the model's
MEMORY_CONFIGS allows it.                              -> model/raw_lora_added/<MODEL>/

With --on ADAPTER_DIR: a second adapter stacked on a trained one.
                                                       -> model/01_another_lora_added/<MODEL>/
The trained adapter (and the parents it has itself) is merged into the base weights and the new
LoRA is created on top, so copies of trained embeddings start from the trained values. The new
dir gets adapter_chain.json {"parents": [absolute dirs, in order]}: a trainer given it as
--base-model merges the parents and trains only the new adapter (its final/ keeps the chain), and
model_loading.load_model_for_eval applies the same chain.

The output dir holds adapter_config.json (base_model_name_or_path = the original base model),
adapter_model.safetensors, the tokenizer, adapter_chain.json (with --on) and adapter_info.json;
it is built in a temp dir and renamed into place.

    python -m script.add_lora_adapter --model tiny
    python -m script.add_lora_adapter --model medgemma-4b --on model/01_trained/medgemma-4b/final
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path

from script.data_io import atomic_write_dir, atomic_write_json
from script.model_loading import adapter_base_model, is_adapter_dir, resolve_adapter_chain, write_adapter_chain
from script.training_config import STAGE_01_ADAPTER, ConfigError
from script.training_utils import (
    attach_lora,
    build_arg_parser,
    git_sha,
    library_versions,
    load_merged_chain,
    load_model_and_tokenizer,
    start_run,
    trainable_parameters,
)

logger = logging.getLogger("add_lora_adapter")

RAW_STAGE = "raw_lora_added"
STACKED_STAGE = STAGE_01_ADAPTER


def main(argv: list[str] | None = None) -> dict:
    parser = build_arg_parser(__doc__)
    parser.add_argument("--on", type=Path, default=None,
                        help="trained adapter dir to stack the new adapter on (default: none, the base model)")
    parser.add_argument("--rslora", action="store_true", help="rank-stabilised LoRA scaling (alpha / sqrt(r))")
    parser.add_argument("--train-embeddings", action="store_true",
                        help="train embed_tokens/lm_head whole (modules_to_save); honoured only where "
                             "MEMORY_CONFIGS[model].train_embeddings is true (the adapter gets large)")
    args = parser.parse_args(argv)
    if args.on and args.base_model:
        parser.error("--on takes its base model from the adapter chain; drop --base-model")
    run = start_run(args, stage=STACKED_STAGE if args.on else RAW_STAGE, script="add_lora_adapter",
                    train_embeddings=args.train_embeddings, use_rslora=args.rslora)
    if args.train_embeddings and not run.train_embeddings:
        logger.warning("--train-embeddings ignored: MEMORY_CONFIGS[%r] does not allow training embeddings", run.model_name)

    # ---- base (+ merged parents) ----
    if args.on:
        if not is_adapter_dir(args.on):
            raise ConfigError(f"--on {args.on}: no adapter_config.json there")
        parents = [str(Path(p).resolve()) for p in resolve_adapter_chain(args.on)]
        if any(Path(p) == run.output_dir.resolve() for p in parents):
            raise ConfigError(f"--output {run.output_dir} is part of the chain it would stack on")
        base_path = adapter_base_model(parents[0], fallback=run.model_config.path)
        model, tokenizer = load_merged_chain(run, parents)
    else:
        if is_adapter_dir(run.base_model):
            raise ConfigError(f"--base-model {run.base_model} is an adapter dir; stack on it with --on instead")
        parents, base_path = [], run.base_model
        model, tokenizer = load_model_and_tokenizer(run)
    if run.output_dir.is_dir() and any(run.output_dir.iterdir()) and not is_adapter_dir(run.output_dir):
        raise ConfigError(f"{run.output_dir} exists and is not an adapter dir; refusing to replace it")

    # ---- the new adapter ----
    model = attach_lora(model, run)
    config = model.peft_config["default"]
    config.base_model_name_or_path = base_path  # the original base, whatever was merged in memory
    trainable, total = trainable_parameters(model)
    info = {
        "script": "add_lora_adapter",
        "model": run.model_name,
        "base_model": base_path,
        "on": str(Path(args.on).resolve()) if args.on else None,
        "parents": parents,
        "lora_r": run.lora_r,
        "lora_alpha": run.lora_alpha,
        "lora_dropout": run.model_config.lora_dropout,
        "use_rslora": run.use_rslora,
        "train_embeddings": run.train_embeddings,
        "target_modules": sorted(config.target_modules) if isinstance(config.target_modules, set)
        else config.target_modules,
        "modules_to_save": list(config.modules_to_save or []),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "versions": library_versions(),
    }

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_adapter_chain(tmp, parents)
        atomic_write_json(tmp / "adapter_info.json", info)

    atomic_write_dir(run.output_dir, save)
    logger.info("untrained adapter (r=%d, alpha=%d, rslora=%s, embeddings=%s) on %s%s -> %s", run.lora_r,
                run.lora_alpha, run.use_rslora, run.train_embeddings, base_path,
                f" + {len(parents)} merged adapter(s)" if parents else "", run.output_dir)
    return info


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
