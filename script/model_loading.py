"""A model ready for inference: a registry name, a model dir or an adapter dir, plus a chain of adapters.

    from script.model_loading import load_model_for_eval
    loaded = load_model_for_eval("tiny", ["model/02_trained/tiny/final"], device="cpu")
    loaded.model, loaded.tokenizer, loaded.info

Every script that scores or serves a trained model (validation_kor_med_test, chat, merge_and_export,
eval_crosscheck, the benchmarks, phase 5) loads it here, so adapters, chains, extended vocabularies
and the safe-weights rule mean the same everywhere. The scorers (script/evaluation.py) take the
loaded model and tokenizer and never load anything themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from script.training_config import MODEL_CONFIGS, ConfigError
from script.training_utils import (
    adapter_base_model,
    check_adapter_weights,
    ensure_model_available,
    is_adapter_dir,
    load_base_model,
    load_tokenizer,
    resolve_adapter_chain,
    resolve_device,
    resolve_dtype,
)

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    info: dict


def resolve_model_arg(model: str) -> tuple[str | None, str]:
    """(registry name or None, path) of ``--model``: a registry name, a model dir or an adapter dir."""
    if model in MODEL_CONFIGS:
        config = MODEL_CONFIGS[model]
        if config.build_command and not Path(config.path).exists():
            raise ConfigError(f"model {model!r}: {config.path} does not exist; build it with: {config.build_command}")
        return model, config.path
    if "/" not in model and not Path(model).exists():
        raise ConfigError(f"--model {model!r} is neither a registry name ({', '.join(MODEL_CONFIGS)}) nor a directory")
    return None, model


def load_model_for_eval(model: str, adapters: Sequence[str | Path] = (), device: str = "auto",
                        quantization: str = "none", attn_implementation: str = "eager",
                        allow_pickle_weights: bool = False) -> LoadedModel:
    """Base model + adapters, in eval mode, with a left-padding tokenizer.

    ``model`` is a registry name, a model dir/hub id, or an adapter dir (loaded on the base named
    in its adapter_config.json; it becomes the first adapter of the chain). ``adapters`` are
    applied in order: every adapter but the last is merged into the weights (``merge_and_unload``),
    the last stays a PEFT adapter -- the same function as stacking them, one adapter's overhead.
    Merging needs full-precision weights, so a chain of two or more is refused on a quantized base.
    An adapter dir with an ``adapter_chain.json`` (add_lora_adapter.py --on, and the final/ of a
    run trained on one) stands for its whole chain: its parents come first, each adapter once
    (``training_utils.resolve_adapter_chain``), and the base is the one the first adapter names.
    The tokenizer is the last adapter's when it saved one (a vocabulary extension travels with the
    adapter), else the base model's. Only safetensors weights load unless ``allow_pickle_weights``.
    """
    name, path = resolve_model_arg(model)
    requested = ([path] if is_adapter_dir(path) else []) + [str(a) for a in adapters]
    for adapter in requested:
        if not is_adapter_dir(adapter):
            raise ConfigError(f"--adapter {adapter}: no adapter_config.json there")
    chain: list[str] = []
    for adapter in requested:
        for link in resolve_adapter_chain(adapter):
            if all(Path(link).resolve() != Path(known).resolve() for known in chain):
                chain.append(link)
    if chain and is_adapter_dir(path):
        path = adapter_base_model(chain[0])
    if len(chain) > 1 and quantization != "none":
        raise ConfigError("merging a chain of adapters needs an unquantized base; use --quantization none")
    for adapter in chain:
        check_adapter_weights(adapter, allow_pickle_weights)
    ensure_model_available(path, allow_pickle_weights)
    device = resolve_device(device)
    dtype = resolve_dtype(device)
    tokenizer_dir = next((a for a in reversed(chain) if Path(a, "tokenizer_config.json").is_file()), path)
    tokenizer = load_tokenizer(tokenizer_dir, padding_side="left")
    model_obj = load_base_model(path, device, dtype, quantization, gradient_checkpointing=False,
                                attn_implementation=attn_implementation, allow_pickle_weights=allow_pickle_weights)
    rows = model_obj.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:  # an extended vocabulary: the adapter's saved embeddings expect the rows
        logger.info("resizing embeddings %d -> %d rows for the tokenizer of %s", rows, len(tokenizer), tokenizer_dir)
        model_obj.resize_token_embeddings(len(tokenizer))
    if chain:
        from peft import PeftModel  # lazy, like the rest of the model stack

        for adapter in chain[:-1]:
            model_obj = PeftModel.from_pretrained(model_obj, adapter, is_trainable=False).merge_and_unload()
        model_obj = PeftModel.from_pretrained(model_obj, chain[-1], is_trainable=False)
    model_obj.eval()
    info = {"name": name or Path(path).name, "base_model": path, "adapters": chain,
            "merged_adapters": chain[:-1], "device": device, "dtype": str(dtype).replace("torch.", ""),
            "quantization": quantization, "attn_implementation": attn_implementation,
            "tokenizer": str(tokenizer_dir)}
    return LoadedModel(model_obj, tokenizer, info)
