"""Shared training machinery: flags, model/tokenizer loading, LoRA, SFTTrainer, callbacks, outputs.

Plain functions, no trainer class hierarchy. A training script reads top to bottom as::

    args = build_arg_parser(__doc__).parse_args()
    run = start_run(args, stage="type1_text")             # logging, seed, device, output dir
    model, tokenizer = load_model_and_tokenizer(run)       # base (+ adapter) (+ 8/4-bit)
    model = attach_lora(model, run)                        # unless an adapter was loaded trainable
    train, val = load_training_records(...)               # refined JSONL -> prompt/completion
    trainer = build_trainer(run, model, tokenizer, train, val)
    metrics = train_and_save(run, trainer, tokenizer)      # checkpoints, final/, training_info.json

Heavy imports (torch, transformers, peft, trl) happen inside functions so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from script import formats
from script.data_io import atomic_write_dir, atomic_write_json, atomic_write_text, count_lines, sha256_file
from script.training_config import (
    DEFAULT_MODEL,
    EMBEDDING_MODULES,
    LOG_DIR,
    LORA_TARGET_MODULES,
    PROJECT_ROOT,
    TENSORBOARD_DIR,
    MemoryConfig,
    ModelConfig,
    get_memory_config,
    get_model_config,
    stage_output_dir,
)

logger = logging.getLogger(__name__)

QUANTIZATION_CHOICES = ("auto", "none", "8bit", "4bit")


class ConfigError(ValueError):
    """A setting that cannot work; the message says what to change."""


# ---------------------------------------------------------------------------
# Command-line flags, defined once for every training script
# ---------------------------------------------------------------------------
def build_arg_parser(description: str | None, epochs: int = 3) -> argparse.ArgumentParser:
    """The guide's common options plus overrides of the registry defaults."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("common options")
    g.add_argument("--model", default=os.environ.get("MODEL", DEFAULT_MODEL),
                   help="registry name: tiny, tiny-mm, medgemma-4b, medgemma-27b (default: $MODEL or %(default)s)")
    g.add_argument("--epochs", type=float, default=epochs, help="training epochs (default: %(default)s)")
    g.add_argument("--max-samples", type=int, default=None, help="use at most N training records (default: all)")
    g.add_argument("--base-model", default=None,
                   help="start from this model dir, hub id or trained adapter dir instead of the registry path")
    g.add_argument("--output", type=Path, default=None, help="output dir (default: model/<stage>/<MODEL>)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto = cuda:0 if present)")
    g.add_argument("--show-samples-every", type=int, default=50,
                   help="every N optimizer steps, score KorMedMCQA steering-set questions (letter mode); "
                        "0 = never (default: %(default)s)")
    g.add_argument("--eval-samples", type=int, default=10,
                   help="questions per periodic evaluation, and validation records for the type metric; "
                        "0 = all validation records (default: %(default)s)")
    g.add_argument("--seed", type=int, default=42, help="seed for shuffles, splits and init (default: %(default)s)")
    g.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint-N in the output dir (optimizer, scheduler, RNG, data)")

    o = parser.add_argument_group("overrides of the model registry (script/training_config.py)")
    o.add_argument("--lr", type=float, default=None, help="learning rate")
    o.add_argument("--batch-size", type=int, default=None, help="per-device micro-batch")
    o.add_argument("--grad-accum", type=int, default=None, help="gradient accumulation steps")
    o.add_argument("--max-length", type=int, default=None, help="max tokens per training sequence")
    o.add_argument("--lora-r", type=int, default=None, help="LoRA rank")
    o.add_argument("--lora-alpha", type=int, default=None, help="LoRA alpha")
    o.add_argument("--max-steps", type=int, default=-1, help="stop after N optimizer steps (default: by epochs)")
    o.add_argument("--save-steps", type=int, default=None,
                   help="checkpoint every N optimizer steps (default: once per epoch)")
    o.add_argument("--quantization", choices=QUANTIZATION_CHOICES, default="auto",
                   help="base weights: auto (registry setting on CUDA, none on CPU), none, 8bit, 4bit (nf4)")
    o.add_argument("--gradient-checkpointing", choices=("auto", "on", "off"), default="auto",
                   help="auto = the model's MEMORY_CONFIGS setting")
    return parser


# ---------------------------------------------------------------------------
# Run setup: the resolved configuration every later step reads
# ---------------------------------------------------------------------------
@dataclass
class RunConfig:
    """Everything a run resolved from registry + flags; written to training_info.json."""

    script: str
    stage: str
    model_name: str
    model_config: ModelConfig
    memory_config: MemoryConfig
    base_model: str
    output_dir: Path
    device: str
    dtype: str
    quantization: str
    gradient_checkpointing: bool
    train_embeddings: bool
    use_rslora: bool
    lr: float
    batch: int
    grad_accum: int
    max_length: int
    lora_r: int
    lora_alpha: int
    epochs: float
    max_steps: int
    max_samples: int | None
    save_steps: int | None
    seed: int
    resume: bool
    show_samples_every: int
    eval_samples: int
    args: dict = field(default_factory=dict)
    started_at: str = ""

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("model_config", "memory_config")}
        out["model_config"] = self.model_config.to_dict()
        out["memory_config"] = self.memory_config.to_dict()
        out["output_dir"] = str(self.output_dir)
        return out


def setup_logging(log_file: Path | None = None, level: int = logging.INFO) -> None:
    """Timestamped logs to stderr and, optionally, a file. Only the main process logs at INFO."""
    rank = int(os.environ.get("RANK", "0"))
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None and rank == 0:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(level=level if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)


def set_seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(requested: str = "auto") -> str:
    import torch

    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {requested}: no CUDA device is visible (torch {torch.__version__}); "
                              "use --device cpu, or install a CUDA build of torch (see README)")
        index = int(requested.split(":", 1)[1]) if ":" in requested else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {requested}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return f"cuda:{index}"
    if requested != "cpu":
        raise ConfigError(f"--device {requested!r}: expected cpu, cuda, cuda:N or auto")
    return "cpu"


def resolve_dtype(device: str):
    """bf16 on CUDA cards that support it, fp32 otherwise. Never fp16: Gemma 3 overflows in fp16."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_quantization(requested: str, memory: MemoryConfig, device: str) -> str:
    """``auto`` takes the registry's setting on CUDA and full precision on CPU.

    An explicit 8bit/4bit request is honoured on CPU too (bitsandbytes >= 0.48 has CPU kernels),
    which is how the quantized path is tested without a GPU.
    """
    if requested == "auto":
        return memory.quantization if device.startswith("cuda") else "none"
    if requested in ("8bit", "4bit"):
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"--quantization {requested} needs bitsandbytes ({exc}); pip install -r requirements.txt"
                              ) from None
    return requested


def start_run(args: argparse.Namespace, stage: str, script: str | None = None,
              train_embeddings: bool = False, use_rslora: bool = False) -> RunConfig:
    """Resolve registry defaults + flags into a RunConfig; set up logging and the seed."""
    model_config = get_model_config(args.model)
    memory = get_memory_config(args.model)
    output_dir = Path(args.output) if args.output else stage_output_dir(stage, args.model)
    setup_logging(LOG_DIR / f"{stage}_{args.model}.log")
    device = resolve_device(args.device)
    dtype = resolve_dtype(device)
    quantization = resolve_quantization(args.quantization, memory, device)
    train_embeddings = train_embeddings and memory.train_embeddings
    batch = args.batch_size or (memory.embedding_batch if train_embeddings and memory.embedding_batch
                                else model_config.batch)
    grad_accum = args.grad_accum or (memory.embedding_grad_accum if train_embeddings and memory.embedding_grad_accum
                                     else model_config.grad_accum)
    gc = {"on": True, "off": False}.get(args.gradient_checkpointing, memory.use_gradient_checkpointing)
    run = RunConfig(
        script=script or Path(sys.argv[0]).stem,
        stage=stage,
        model_name=args.model,
        model_config=model_config,
        memory_config=memory,
        base_model=args.base_model or model_config.path,
        output_dir=output_dir,
        device=device,
        dtype=str(dtype).replace("torch.", ""),
        quantization=quantization,
        gradient_checkpointing=gc,
        train_embeddings=train_embeddings,
        use_rslora=use_rslora,
        lr=args.lr or model_config.lr,
        batch=batch,
        grad_accum=grad_accum,
        max_length=args.max_length or model_config.max_length,
        lora_r=args.lora_r or model_config.lora_r,
        lora_alpha=args.lora_alpha or model_config.lora_alpha,
        epochs=args.epochs,
        max_steps=args.max_steps,
        max_samples=args.max_samples,
        save_steps=args.save_steps,
        seed=args.seed,
        resume=args.resume,
        show_samples_every=args.show_samples_every,
        eval_samples=args.eval_samples,
        args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        started_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    set_seed(run.seed)
    logger.info("*** %s: %s on %s (%s, quantization=%s) -> %s", run.script, run.model_name, run.device,
                run.dtype, run.quantization, run.output_dir)
    logger.info("resolved config: %s", json.dumps(run.to_dict(), ensure_ascii=False, default=str))
    return run


# ---------------------------------------------------------------------------
# Model and tokenizer loading
# ---------------------------------------------------------------------------
def is_adapter_dir(path: str | Path) -> bool:
    return Path(path, "adapter_config.json").is_file()


def ensure_model_available(run_or_path: RunConfig | str) -> str:
    """Check a local model dir is usable (safetensors weights); build the embedded model if missing."""
    if isinstance(run_or_path, RunConfig):
        path, build = run_or_path.base_model, run_or_path.model_config.build_command
        if path != run_or_path.model_config.path:
            build = ""
    else:
        path, build = run_or_path, ""
    local = Path(path)
    if not local.exists():
        if build:
            raise ConfigError(f"model dir {local} does not exist; build it with: {build} (make does this)")
        if not _looks_like_hub_id(path):
            raise ConfigError(f"model dir {local} does not exist")
        return path  # a hub id: from_pretrained resolves it (offline: from the local cache)
    if is_adapter_dir(local):
        return path
    weights = list(local.glob("*.safetensors"))
    pickled = list(local.glob("*.bin")) + list(local.glob("*.pt"))
    if not weights:
        hint = " (it offers only pickle weights, which are refused: convert them to safetensors)" if pickled else ""
        raise ConfigError(f"{local}: no *.safetensors weights{hint}")
    return path


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


def load_base_model(path: str, device: str, dtype, quantization: str = "none",
                    gradient_checkpointing: bool = False, attn_implementation: str = "eager"):
    """Load a Gemma-3 text or multimodal checkpoint for training, safetensors only.

    Multimodal checkpoints (MedGemma-4B-it, tiny-mm) load as Gemma3ForConditionalGeneration
    through AutoModelForCausalLM; their vision tower is frozen.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    multimodal = is_multimodal(config)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=dtype,
        device_map={"": device},
        quantization_config=_quantization_config(quantization, dtype, multimodal),
        attn_implementation=attn_implementation,  # recommended for Gemma 3 training
        use_safetensors=True,
        trust_remote_code=False,
    )
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


def load_model_and_tokenizer(run: RunConfig, adapter_trainable: bool = True):
    """Base model (+ an existing adapter when ``run.base_model`` is an adapter dir) and its tokenizer.

    An adapter dir (``adapter_config.json``) loads on top of its recorded base model, trainable
    (``is_trainable=True``: without it PEFT loads for inference and nothing trains).
    """
    path = ensure_model_available(run)
    import torch

    dtype = getattr(torch, run.dtype)
    if is_adapter_dir(path):
        base_path = adapter_base_model(path, fallback=run.model_config.path)
        ensure_model_available(base_path)
        tokenizer = load_tokenizer(path if Path(path, "tokenizer_config.json").exists() else base_path)
        model = load_base_model(base_path, run.device, dtype, run.quantization, run.gradient_checkpointing)
        model = load_adapter(model, path, is_trainable=adapter_trainable)
    else:
        tokenizer = load_tokenizer(path)
        model = load_base_model(path, run.device, dtype, run.quantization, run.gradient_checkpointing)
    return model, tokenizer


def adapter_base_model(adapter_dir: str | Path, fallback: str | None = None) -> str:
    config = json.loads(Path(adapter_dir, "adapter_config.json").read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path") or fallback
    if not base:
        raise ConfigError(f"{adapter_dir}/adapter_config.json names no base model")
    return base


# ---------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------
def lora_target_modules(model) -> list[str] | str:
    """The 7 projection names; on multimodal models a regex that keeps the vision tower out."""
    if is_multimodal(model):
        return r".*language_model.*\.(" + "|".join(LORA_TARGET_MODULES) + r")"
    return list(LORA_TARGET_MODULES)


def create_lora_config(r: int, alpha: int, dropout: float = 0.05, target_modules: list[str] | str | None = None,
                       use_rslora: bool = False, include_embeddings: bool = False):
    """LoRA on the 7 projections; embeddings (embed_tokens, lm_head) trained whole when asked.

    Embeddings go in ``modules_to_save``, never ``target_modules``: LoRA on embeddings breaks on
    8-bit bases. Gemma ties lm_head to embed_tokens; ``ensure_weight_tying`` keeps the trained
    copies tied instead of training two diverging matrices.
    """
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules if target_modules is not None else list(LORA_TARGET_MODULES),
        modules_to_save=list(EMBEDDING_MODULES) if include_embeddings else None,
        ensure_weight_tying=include_embeddings,
        use_rslora=use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def trainable_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def assert_trainable(model, what: str) -> None:
    trainable, total = trainable_parameters(model)
    if trainable == 0:
        raise RuntimeError(f"{what}: 0 trainable parameters (an adapter loaded without is_trainable=True?)")
    logger.info("%s: %s trainable of %s parameters (%.2f%%)", what, f"{trainable:,}", f"{total:,}",
                100 * trainable / total)


def attach_lora(model, run: RunConfig):
    """Wrap a base model with a new LoRA adapter per the run's settings."""
    from peft import PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        return model  # an adapter was loaded trainable from --base-model
    config = create_lora_config(run.lora_r, run.lora_alpha, run.model_config.lora_dropout,
                                lora_target_modules(model), run.use_rslora, run.train_embeddings)
    if run.train_embeddings:
        logger.warning("training embeddings (modules_to_save): the saved adapter holds full embedding matrices "
                       "and is large (GBs for MedGemma)")
    model = get_peft_model(model, config)
    assert_trainable(model, "LoRA model")
    return model


def load_adapter(model, adapter_dir: str | Path, is_trainable: bool = True):
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)
    if is_trainable:
        assert_trainable(model, f"adapter {adapter_dir}")
    return model


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------
def select_samples(records: list[dict], max_samples: int | None, seed: int) -> list[dict]:
    """A seeded, order-independent subset: the same records for the same seed and limit."""
    if max_samples is None or max_samples >= len(records):
        return records
    rng = random.Random(seed)
    return rng.sample(records, max_samples)


def validate_messages_record(record: dict) -> str | None:
    """Contract of a refined record: ``messages`` = [system?, user, assistant] with non-empty text."""
    messages = record.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        return "field 'messages' should be a list of at least user and assistant turns"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            return f"messages[{i}] should be an object with a string 'content'"
        if not message["content"].strip():
            return f"messages[{i}] ({message.get('role')}) is empty"
    roles = [m.get("role") for m in messages]
    expected = ["system", "user", "assistant"] if roles[0] == "system" else ["user", "assistant"]
    if roles != expected:
        return f"roles {roles}, expected {expected}"
    return None


def load_split_records(path: Path, max_samples: int | None = None, seed: int = 42,
                       rejects_dir: Path | None = None) -> list[dict]:
    """Read one refined JSONL split; bad lines are reported (path:line) and kept in a rejects file."""
    from script.data_io import read_jsonl

    if not path.is_file():
        raise ConfigError(f"{path} does not exist; build the data first (make data)")
    rejects = (rejects_dir or LOG_DIR) / f"rejects_{path.parent.name}_{path.stem}.jsonl"
    report = read_jsonl(path, validate_messages_record, rejects_path=rejects, max_reject_fraction=0.05)
    if report.rejects:
        logger.warning("%s: %d bad lines skipped (written to %s)", path, len(report.rejects), rejects)
    if not report.records:
        raise ConfigError(f"{path}: no usable records")
    return select_samples(report.records, max_samples, seed)


def to_sft_dataset(records: Sequence[dict]):
    """Refined records (``messages``) -> datasets.Dataset of TRL prompt/completion conversations."""
    from datasets import Dataset

    return Dataset.from_list([formats.to_prompt_completion(r["messages"]) for r in records])


def describe_data_file(path: str | Path) -> dict:
    path = Path(path)
    return {"path": str(path), "rows": count_lines(path), "sha256": sha256_file(path)}


# ---------------------------------------------------------------------------
# Callbacks
# ---------------------------------------------------------------------------
def _transformers_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


def make_progress_callback(progress_file: Path, stage: str, model_name: str):
    """A callback that rewrites ``logs/progress_<MODEL>.txt``: stage, step, loss, last eval, ETA."""
    base = _transformers_callback_base()

    class ProgressFileCallback(base):
        def __init__(self):
            self.started = None
            self.last_loss = None
            self.last_eval = None

        def _write(self, state, note: str = "") -> None:
            elapsed = time.time() - self.started if self.started else 0.0
            done = state.global_step
            total = state.max_steps or 0
            eta = elapsed / done * (total - done) if done and total else None
            pipeline_stage = os.environ.get("PIPELINE_STAGE")  # set by run_full_pipeline.sh
            lines = [
                f"pipeline_stage: {pipeline_stage}" if pipeline_stage else f"stage: {stage}",
                f"model: {model_name}",
                f"step: {done}/{total}" + (f" ({100 * done / total:.1f}%)" if total else ""),
                f"epoch: {state.epoch:.2f}" if state.epoch is not None else "epoch: -",
                f"loss: {self.last_loss:.4f}" if self.last_loss is not None else "loss: -",
                f"last_eval: {json.dumps(self.last_eval, ensure_ascii=False)}" if self.last_eval else "last_eval: -",
                f"elapsed: {_format_seconds(elapsed)}",
                f"eta: {_format_seconds(eta)}" if eta is not None else "eta: -",
                f"updated: {_dt.datetime.now().isoformat(timespec='seconds')}",
            ]
            if note:
                lines.append(f"status: {note}")
            atomic_write_text(progress_file, "\n".join(lines) + "\n")

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.started = time.time()
                self._write(state, "training")

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            if "loss" in logs:
                self.last_loss = float(logs["loss"])
            evals = {k: v for k, v in logs.items() if "eval" in k}
            if evals:
                self.last_eval = evals
            self._write(state, "training")

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self._write(state, "finished")

    return ProgressFileCallback()


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return str(_dt.timedelta(seconds=int(seconds)))


EvalFn = Callable[[Any, int], dict]


def make_periodic_eval_callback(eval_fn: EvalFn, every: int, history: list[dict]):
    """Every ``every`` optimizer steps call ``eval_fn(model, step) -> metrics`` and log the result.

    Results go to ``history`` (-> training_info.json ``validation_history``), to TensorBoard and
    to the progress file through ``trainer.log``. Set ``callback.trainer`` after building the trainer.
    """
    base = _transformers_callback_base()

    class PeriodicEvalCallback(base):
        trainer = None

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if every <= 0 or state.global_step % every != 0 or not state.is_world_process_zero:
                return
            metrics = eval_fn(model, state.global_step)
            history.append({"step": state.global_step, **metrics})
            logger.info("step %d periodic eval: %s", state.global_step, metrics)
            if self.trainer is not None:
                self.trainer.log({f"eval_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})

    return PeriodicEvalCallback()


# ---------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------
def build_sft_config(run: RunConfig, has_eval: bool = False, **overrides):
    """TRL SFTConfig from the run, with the settings Gemma 3 needs on this hardware."""
    from trl import SFTConfig

    on_cuda = run.device.startswith("cuda")
    kwargs = dict(
        output_dir=str(run.output_dir),
        num_train_epochs=run.epochs,
        max_steps=run.max_steps,
        per_device_train_batch_size=run.batch,
        per_device_eval_batch_size=run.batch,
        gradient_accumulation_steps=run.grad_accum,
        learning_rate=run.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,  # a fraction of total steps
        max_grad_norm=0.3,  # MedGemma's published fine-tuning recipe
        weight_decay=0.0,
        max_length=run.max_length,
        packing=False,
        completion_only_loss=True,  # loss on the assistant turn only
        bf16=run.dtype == "bfloat16",  # SFTConfig defaults to bf16 even on CPU
        fp16=False,  # never for Gemma 3
        use_cpu=not on_cuda,
        optim="adamw_torch_fused" if on_cuda else "adamw_torch",
        activation_checkpointing=run.gradient_checkpointing,  # SFTConfig turns it on by default
        activation_checkpointing_kwargs={"use_reentrant": False} if run.gradient_checkpointing else None,
        logging_steps=1 if run.max_steps and 0 < run.max_steps <= 50 else 10,
        logging_first_step=True,
        save_strategy="steps" if run.save_steps else "epoch",
        save_steps=run.save_steps or 500,
        save_total_limit=2,
        eval_strategy="epoch" if has_eval else "no",
        report_to=["tensorboard"],
        include_num_input_tokens_seen="non_padding",
        seed=run.seed,
        data_seed=run.seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


def build_trainer(run: RunConfig, model, tokenizer, train_dataset, eval_dataset=None, callbacks=(),
                  **config_overrides):
    """An SFTTrainer for prompt/completion data (completion-only loss), logging to TensorBoard."""
    from trl import SFTTrainer

    # TensorBoard event files under logs/tensorboard/<stage>_<MODEL>/ (make tensorboard serves logs/tensorboard).
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(TENSORBOARD_DIR / f"{run.stage}_{run.model_name}")
    config = build_sft_config(run, has_eval=eval_dataset is not None, **config_overrides)
    callbacks = [make_progress_callback(LOG_DIR / f"progress_{run.model_name}.txt", run.stage, run.model_name),
                 *callbacks]
    trainer = SFTTrainer(model=model, args=config, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=tokenizer, callbacks=callbacks)
    if run.quantization != "none":
        # TRL casts the trainable weights of a quantized model to bf16 (the QLoRA recipe). With fp32
        # compute (CPU) that mixes dtypes and the saved adapter no longer matches its base on reload,
        # so trainable weights follow the run's compute dtype (a no-op for bf16 on CUDA).
        import torch

        dtype = getattr(torch, run.dtype)
        for param in trainer.model.parameters():
            if param.requires_grad and param.dtype != dtype:
                param.data = param.data.to(dtype)
    for callback in callbacks:
        if hasattr(callback, "trainer"):
            callback.trainer = trainer
    return trainer


def last_checkpoint(output_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None


# ---------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------
def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {}
    for name in ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes", "tokenizers"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def peak_memory_bytes(device: str) -> int | None:
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(torch.device(device)))
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB
    except (ImportError, OSError):
        return None


def save_final(model, tokenizer, output_dir: Path) -> Path:
    """``final/`` = adapter + tokenizer, written to a temp dir and renamed into place."""

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return atomic_write_dir(output_dir / "final", save)


def write_training_info(run: RunConfig, info: dict) -> dict:
    """``training_info.json``: the resolved config, provenance, data and metrics of the run."""
    record = {
        "script": run.script,
        "stage": run.stage,
        "model": run.model_name,
        "base_model": run.base_model,
        "epochs": run.epochs,
        "effective_batch": run.batch * run.grad_accum * int(os.environ.get("WORLD_SIZE", "1")),
        "config": run.to_dict(),
        "git_sha": git_sha(),
        "versions": library_versions(),
        "started_at": run.started_at,
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **info,
    }
    atomic_write_json(run.output_dir / "training_info.json", record)
    write_model_readme(run.output_dir, record)
    return record


def write_model_readme(output_dir: Path, info: dict) -> None:
    metrics = info.get("metrics", {})
    lines = [
        f"# {info['script']} — {info['model']}",
        "",
        f"LoRA adapter trained from `{info['base_model']}` by `{info['script']}`"
        f" (git {info.get('git_sha') or 'unknown'}), finished {info['finished_at']}.",
        "",
        "| what | value |",
        "|---|---|",
        f"| training samples | {info.get('train_samples', '-')} |",
        f"| validation samples | {info.get('validation_samples', '-')} |",
        f"| epochs | {info['epochs']} |",
        f"| effective batch | {info['effective_batch']} |",
        f"| learning rate | {info['config']['lr']} |",
        f"| LoRA r / alpha | {info['config']['lora_r']} / {info['config']['lora_alpha']} |",
        f"| device / dtype | {info['config']['device']} / {info['config']['dtype']} |",
        f"| quantization | {info['config']['quantization']} |",
    ]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    lines += [
        "",
        "Load it:",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "from peft import PeftModel",
        f"base = AutoModelForCausalLM.from_pretrained({info['base_model']!r})",
        f"model = PeftModel.from_pretrained(base, {str(output_dir / 'final')!r})",
        f"tokenizer = AutoTokenizer.from_pretrained({str(output_dir / 'final')!r})",
        "```",
        "",
        "`training_info.json` beside this file has the full configuration, data hashes and metrics.",
        "",
    ]
    atomic_write_text(output_dir / "README.md", "\n".join(lines))


def target_met(value: float, op: str, target: float) -> bool:
    return value < target if op == "<" else value >= target


def train_and_save(run: RunConfig, trainer, tokenizer, extra_info: dict | None = None,
                   evaluate: Callable[[Any], dict] | None = None,
                   target: tuple[str, str, float] | None = None) -> dict:
    """Train (resuming from the last checkpoint with --resume), save ``final/`` and the run record.

    ``evaluate(model) -> metrics`` runs before and after training (e.g. validation perplexity);
    its results land in ``metrics`` with a ``_before`` suffix for the untrained state, and
    ``target = (metric_key, op, value)`` records whether the guide's target was met.
    """
    resume_from = None
    if run.resume:
        resume_from = last_checkpoint(run.output_dir)
        if resume_from:
            logger.info("resuming from %s", resume_from)
        else:
            logger.info("--resume: no checkpoint in %s, starting fresh", run.output_dir)
    elif last_checkpoint(run.output_dir):
        logger.warning("%s holds checkpoints of an earlier run; training from scratch (pass --resume to continue)",
                       run.output_dir)
    before = evaluate(trainer.model) if evaluate and not resume_from else {}
    logger.info("*** Train ***")
    result = trainer.train(resume_from_checkpoint=resume_from)
    final = save_final(trainer.model, tokenizer, run.output_dir)
    logger.info("saved adapter and tokenizer to %s", final)
    metrics = dict(result.metrics)
    metrics["train_loss"] = float(result.training_loss)
    metrics["global_step"] = int(trainer.state.global_step)
    metrics["num_input_tokens_seen"] = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
    metrics["peak_memory_bytes"] = peak_memory_bytes(run.device)
    if evaluate:
        logger.info("*** Evaluate ***")
        metrics.update({f"{k}_before": v for k, v in before.items()})
        metrics.update(evaluate(trainer.model))
    info = {"metrics": metrics, "final_dir": str(final), "resumed_from": resume_from,
            "loss_history": [{"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e]}
    if target:
        key, op, value = target
        info["target"] = {"metric": key, "op": op, "value": value, "met": target_met(metrics[key], op, value)}
        logger.info("%s = %.4g (target %s %g: %s)", key, metrics[key], op, value,
                    "met" if info["target"]["met"] else "not met")
    info.update(extra_info or {})
    return write_training_info(run, info)


def steering_eval_callbacks(run: RunConfig, tokenizer, history: list[dict]) -> list:
    """Every ``--show-samples-every`` steps: KorMedMCQA letter accuracy on ``--eval-samples``
    questions of the steering set (a held-out slice of KorMedMCQA train, never a test set).

    Results go to ``history`` (training_info.json ``validation_history``), TensorBoard and the
    progress file. Without an extracted steering set the periodic evaluation is skipped, loudly.
    """
    if run.show_samples_every <= 0 or run.eval_samples <= 0:
        return []
    from script.evaluation import load_eval_items, make_mcq_eval_fn
    from script.training_config import KORMEDMCQA_TEST_DIR

    steer_file = KORMEDMCQA_TEST_DIR / "steer.jsonl"
    if not steer_file.is_file():
        logger.warning("no steering set at %s (python -m script.extract_kormedmcqa_test --set all): "
                       "periodic KorMedMCQA evaluation is off for this run", steer_file)
        return []
    items = load_eval_items(steer_file, n=run.eval_samples, seed=run.seed)
    logger.info("periodic eval: %d steering-set questions every %d steps", len(items), run.show_samples_every)
    return [make_periodic_eval_callback(make_mcq_eval_fn(tokenizer, items, run.batch), run.show_samples_every,
                                        history)]


# ---------------------------------------------------------------------------
# One refined type, end to end: the body of train_type{1,2,3,4}_*.py
# ---------------------------------------------------------------------------
TypeMetric = Callable[[Any, Any, list[dict], RunConfig], dict]


def train_refined_type(type_name: str, description: str, metric: TypeMetric, argv: list[str] | None = None,
                       script: str | None = None) -> dict:
    """Train a LoRA adapter on ``<data-dir>/{train,validation}.jsonl`` of one refined type.

    ``metric(model, tokenizer, validation_records, run) -> {"validation_<name>": value, ...}`` is
    the guide's target metric of the type (formats.TYPE_TARGETS); it runs before and after
    training, and whether the target was met is recorded in training_info.json.
    """
    from script.training_config import CLEAN_DIR

    parser = build_arg_parser(description, epochs=3)
    parser.add_argument("--data-dir", type=Path, default=CLEAN_DIR / type_name,
                        help="dir with train.jsonl and validation.jsonl (default: %(default)s)")
    args = parser.parse_args(argv)
    run = start_run(args, stage=type_name, script=script or f"train_{type_name}")

    train_file, val_file = args.data_dir / "train.jsonl", args.data_dir / "validation.jsonl"
    train_records = load_split_records(train_file, run.max_samples, run.seed)
    val_records = load_split_records(val_file, run.eval_samples if run.eval_samples > 0 else None, run.seed)
    logger.info("train: %d records, validation: %d records", len(train_records), len(val_records))

    model, tokenizer = load_model_and_tokenizer(run)
    model = attach_lora(model, run)
    history: list[dict] = []
    callbacks = steering_eval_callbacks(run, tokenizer, history)
    trainer = build_trainer(run, model, tokenizer, to_sft_dataset(train_records), callbacks=callbacks)
    name, op, value = formats.TYPE_TARGETS[type_name]
    return train_and_save(
        run, trainer, tokenizer,
        extra_info={
            "type": type_name,
            "train_samples": len(train_records),
            "validation_samples": len(val_records),
            "data_files": [describe_data_file(train_file), describe_data_file(val_file)],
            "validation_history": history,
        },
        evaluate=lambda trained: metric(trained, tokenizer, val_records, run),
        target=(f"validation_{name}", op, value),
    )

