"""Loading models: checkpoints (safetensors only by default), tokenizers, adapters and chains of them.

    from script.model_loading import load_model_for_eval
    loaded = load_model_for_eval("tiny", ["model/02_trained/tiny/final"], device="cpu")
    loaded.model, loaded.tokenizer, loaded.info

The primitives (``load_base_model``, ``load_tokenizer``, ``resolve_adapter_chain``, ``merge_adapters``,
the safe-weights checks) serve the trainers (script/training_utils.py builds a run's model from them)
and every script that scores or serves a trained model (validation_kor_med_test, chat,
merge_and_export, eval_crosscheck, the benchmarks, phase 5), which loads through
``load_model_for_eval``; so adapters, chains, extended vocabularies and the safe-weights rule mean the
same everywhere. The scorers (script/evaluation.py) take the loaded model and tokenizer and never load
anything themselves. transformers and peft are imported inside the functions (kept lazy).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from script.data_io import atomic_write_json, read_json
from script.hardware import resolve_device, resolve_dtype
from script.launch import fsdp_rank_holds_no_weights
from script.training_config import MODEL_CONFIGS, ConfigError

logger = logging.getLogger(__name__)


def is_adapter_dir(path: str | Path) -> bool:
    return Path(path, "adapter_config.json").is_file()



PICKLE_WEIGHTS_FLAG = "--allow-pickle-weights"



PICKLE_FILE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")



def add_pickle_weights_flag(parser) -> None:
    """``--allow-pickle-weights`` on a parser or argument group; every script that loads models has it."""
    parser.add_argument(PICKLE_WEIGHTS_FLAG, action="store_true",
                        help="also load model/adapter dirs that offer only pickle weights (*.bin); pickle can run "
                             "code when unpickled, so by default only safetensors are loaded")



def check_adapter_weights(adapter_dir: str | Path, allow_pickle_weights: bool = False) -> None:
    """Refuse an adapter dir whose only weights are pickle (``adapter_model.bin``) unless allowed.

    PEFT falls back to ``adapter_model.bin`` silently when the safetensors file is missing.
    """
    local = Path(adapter_dir)
    if not local.is_dir() or (local / "adapter_model.safetensors").is_file():
        return
    pickled = sorted(p.name for pattern in PICKLE_FILE_PATTERNS for p in local.glob(pattern))
    if not pickled:
        raise ConfigError(f"{local}: adapter dir without adapter_model.safetensors")
    if not allow_pickle_weights:
        raise ConfigError(f"{local}: the adapter offers only pickle weights ({', '.join(pickled)}), which are "
                          f"refused; convert them to safetensors, or pass {PICKLE_WEIGHTS_FLAG} if you trust them")
    logger.warning("%s: loading pickle adapter weights (%s) because %s was given",
                   local, ", ".join(pickled), PICKLE_WEIGHTS_FLAG)



def ensure_model_available(path: str, allow_pickle_weights: bool = False, build_command: str = "") -> str:
    """Check a local model dir is usable (safetensors weights); a hub id passes through.

    A dir offering only pickle weights (``*.bin``) is refused unless ``allow_pickle_weights``
    (``--allow-pickle-weights``). ``build_command``: how to build a missing embedded model, for the error.
    """
    build = build_command
    local = Path(path)
    if not local.exists():
        if build:
            raise ConfigError(f"model dir {local} does not exist; build it with: {build} (make does this)")
        if not _looks_like_hub_id(path):
            raise ConfigError(f"model dir {local} does not exist")
        return path  # a hub id: from_pretrained resolves it (offline: from the local cache)
    if is_adapter_dir(local):
        check_adapter_weights(local, allow_pickle_weights)
        return path
    weights = list(local.glob("*.safetensors"))
    pickled = sorted(p.name for pattern in PICKLE_FILE_PATTERNS for p in local.glob(pattern))
    if not weights:
        if pickled and allow_pickle_weights:
            logger.warning("%s: loading pickle weights (%s) because %s was given",
                           local, ", ".join(pickled), PICKLE_WEIGHTS_FLAG)
            return path
        hint = (f" (it offers only pickle weights, which are refused: convert them to safetensors, or pass "
                f"{PICKLE_WEIGHTS_FLAG} if you trust them)") if pickled else ""
        raise ConfigError(f"{local}: no *.safetensors weights{hint}")
    return path



def hub_model_access_problem(repo_id: str) -> str | None:
    """Why the weights of hub model ``repo_id`` cannot be had, or None when they can (or nobody can tell yet).

    Asked before a pipeline's first stage, so that a gated model whose terms were not accepted, a
    missing login or an offline machine without the weights stops the run before the data stages,
    not at the first stage that loads the model. In the hub cache: fine. Offline and not cached: a
    problem. Otherwise the hub's auth check says; when the hub cannot be reached the download stage
    will say so, and the check only warns.
    """
    from httpx2 import HTTPError  # huggingface_hub 2's HTTP client: a failed connection raises its errors
    from huggingface_hub import auth_check, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if not _looks_like_hub_id(repo_id) or Path(repo_id).expanduser().is_dir():
        return None  # a local model: ensure_model_available checks it where it is loaded
    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return None
    if constants.HF_HUB_OFFLINE:
        return (f"{repo_id} is not in the hub cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set: "
                f"download it once online (huggingface-cli download {repo_id}) or unset HF_HUB_OFFLINE")
    try:
        auth_check(repo_id)
    except GatedRepoError:
        return (f"{repo_id} is gated and this machine's hub token has no access to it: accept its terms at "
                f"https://huggingface.co/{repo_id}, then log in with that account (huggingface-cli login, "
                "or set HF_TOKEN)")
    except RepositoryNotFoundError:
        return (f"{repo_id}: no such model on the hub, or it is private to another account "
                "(huggingface-cli whoami says which account this machine uses)")
    except (HfHubHTTPError, HTTPError, OSError) as exc:  # network down or hub unavailable: not this check's verdict
        logger.warning("could not ask the hub about %s now (%s: %s); the stages that download it will",
                       repo_id, type(exc).__name__, exc)
    return None


def _looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "~"))



def load_tokenizer(path: str, padding_side: str = "right"):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tokenizer.pad_token is None:
        raise ConfigError(f"{path}: tokenizer has no pad token")
    tokenizer.padding_side = padding_side
    return tokenizer



def _quantization_config(quantization: str, dtype, multimodal: bool):
    if quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    # The vision tower and projector stay in full precision (and out of LoRA).
    skip = ["lm_head", r".*vision_tower", r".*multi_modal_projector"] if multimodal else ["lm_head"]
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype,
                              llm_int8_skip_modules=skip)



def is_multimodal(model_or_config) -> bool:
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", "") == "gemma3" or hasattr(config, "vision_config")



def load_base_model(path: str, device: str | None, dtype, quantization: str = "none",
                    gradient_checkpointing: bool = False, attn_implementation: str = "eager",
                    allow_pickle_weights: bool = False):
    """Load a Gemma-3 text or multimodal checkpoint for training, safetensors only
    (unless ``allow_pickle_weights``: then safetensors first, pickle as the fallback).

    Multimodal checkpoints (MedGemma-4B-it, tiny-mm) load as Gemma3ForConditionalGeneration
    through AutoModelForCausalLM; their vision tower is frozen.

    ``device=None`` (FSDP / ZeRO-3 launches, see ``model_load_plan``) passes no ``device_map``:
    transformers then loads the weights on rank 0's CPU only (FSDP's cpu_ram_efficient_loading; the
    other ranks hold meta tensors until FSDP broadcasts the shards) or partitioned (ZeRO-3's zero.Init).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    multimodal = is_multimodal(config)
    if device is None and fsdp_rank_holds_no_weights():
        # FSDP's cpu_ram_efficient_loading: rank 0 reads the checkpoint; accelerate broadcasts its
        # values into every rank's shards when the Trainer prepares the model, so the other ranks need
        # only the structure: uninitialised CPU placeholders (what accelerate expects there) and real
        # non-persistent buffers (rotary tables). transformers 5 no longer does this by itself: every
        # rank would read and hold a whole copy.
        from transformers.initialization import no_init_weights

        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation,
                                                     trust_remote_code=False)
        model.tie_weights()  # init_weights, which ties them, was skipped
        return _prepare_loaded_model(model, multimodal, quantization, gradient_checkpointing)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=dtype,
        device_map=None if device is None else {"": device},
        quantization_config=_quantization_config(quantization, dtype, multimodal),
        attn_implementation=attn_implementation,  # recommended for Gemma 3 training
        use_safetensors=None if allow_pickle_weights else True,
        trust_remote_code=False,
    )
    return _prepare_loaded_model(model, multimodal, quantization, gradient_checkpointing)



def _prepare_loaded_model(model, multimodal: bool, quantization: str, gradient_checkpointing: bool):
    """Frozen vision tower, k-bit preparation and gradient checkpointing of a freshly loaded base."""
    if multimodal:
        for name, param in model.named_parameters():
            if "vision_tower" in name or "multi_modal_projector" in name:
                param.requires_grad_(False)
    if quantization != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if gradient_checkpointing:
        model.config.use_cache = False
    return model



def adapter_base_model(adapter_dir: str | Path, fallback: str | None = None) -> str:
    config = read_json(Path(adapter_dir, "adapter_config.json"))  # DataError path:line on a broken file
    base = (config.get("base_model_name_or_path") if isinstance(config, dict) else None) or fallback
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{adapter_dir}/adapter_config.json names no base model "
                          "(expected a JSON object with a string 'base_model_name_or_path')")
    return base



ADAPTER_CHAIN_FILE = "adapter_chain.json"



def resolve_adapter_chain(adapter_dir: str | Path) -> list[str]:
    """The adapters that make up ``adapter_dir`` in the order they apply: its parents, then itself.

    ``adapter_chain.json`` beside ``adapter_config.json`` lists the parents, ``{"parents": [dir, ...]}``
    with absolute paths (add_lora_adapter.py writes it already flattened). A parent with a chain of
    its own is expanded as well and every adapter appears once. Without the file: the adapter alone.
    """
    return _adapter_chain(Path(adapter_dir), frozenset())



def _adapter_chain(adapter_dir: Path, visiting: frozenset) -> list[str]:
    chain_file = adapter_dir / ADAPTER_CHAIN_FILE
    if not chain_file.is_file():
        return [str(adapter_dir)]
    data = read_json(chain_file)
    parents = data.get("parents") if isinstance(data, dict) else None
    if not isinstance(parents, list) or not all(isinstance(p, str) and p.strip() for p in parents):
        raise ConfigError(f'{chain_file}: expected {{"parents": ["<adapter dir>", ...]}}')
    visiting = visiting | {adapter_dir.resolve()}
    chain: list[str] = []
    for parent in parents:
        if Path(parent).resolve() in visiting:
            raise ConfigError(f"{chain_file}: parent {parent} leads back to {adapter_dir} (a loop)")
        if not is_adapter_dir(parent):
            raise ConfigError(f"{chain_file}: parent {parent} is not an adapter dir (no adapter_config.json)")
        for link in _adapter_chain(Path(parent), visiting):
            if all(Path(link).resolve() != Path(known).resolve() for known in chain):
                chain.append(link)
    return [*chain, str(adapter_dir)]



def write_adapter_chain(adapter_dir: str | Path, parents: Sequence[str]) -> None:
    """``adapter_chain.json`` naming ``parents`` (absolute paths); nothing when there are none."""
    if parents:
        atomic_write_json(Path(adapter_dir) / ADAPTER_CHAIN_FILE,
                          {"parents": [str(Path(p).resolve()) for p in parents]})



def merge_adapters(model, adapters: Sequence[str], quantization: str = "none", allow_pickle_weights: bool = False):
    """Merge each adapter into the weights, in order (``PeftModel.from_pretrained(...).merge_and_unload()``)."""
    if not adapters:
        return model
    from peft import PeftModel

    if quantization != "none":
        logger.warning("merging %d adapter(s) into %s weights: the merged weights are rounded to that precision "
                       "(evaluation merges in full precision)", len(adapters), quantization)
    for adapter in adapters:
        logger.info("merging adapter %s into the base weights", adapter)
        check_adapter_weights(adapter, allow_pickle_weights)
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False).merge_and_unload()
    return model


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
    (``resolve_adapter_chain``), and the base is the one the first adapter names.
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
