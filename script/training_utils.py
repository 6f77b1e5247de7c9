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
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from script.cli import setup_logging
from script.data_io import atomic_write_dir, atomic_write_json, atomic_write_text
from script.evaluation import make_mcq_eval_fn, plain_text_perplexity
from script.hardware import (
    ATTN_IMPLEMENTATION_CHOICES,
    QUANTIZATION_CHOICES,
    peak_memory_bytes,
    resolve_attn_implementation,
    resolve_device,
    resolve_dtype,
    resolve_quantization,
)
from script.launch import (
    all_gather_objects,
    check_launch_environment,
    env_flag,
    init_distributed,
    launch_kind,
    load_report,
    sharded_launch_settings,
    sharded_parameter_count,
    shards_weights,
    world_size,
)
from script.model_card import write_run_cards
from script.model_loading import (
    adapter_base_model,
    add_pickle_weights_flag,
    check_adapter_weights,
    ensure_model_available,
    is_adapter_dir,
    is_multimodal,
    load_base_model,
    load_tokenizer,
    merge_adapters,
    resolve_adapter_chain,
    write_adapter_chain,
)
from script.steering import load_steering_set
from script.training_config import (
    DEFAULT_MODEL,
    EMBEDDING_MODULES,
    LOG_DIR,
    LORA_TARGET_MODULES,
    MODEL_CONFIGS,
    PROJECT_ROOT,
    TENSORBOARD_DIR,
    ConfigError,
    MemoryConfig,
    ModelConfig,
    get_memory_config,
    get_model_config,
    stage_output_dir,
)

logger = logging.getLogger(__name__)

BATCHING_CHOICES = ("padding-free", "padded")


# ---------------------------------------------------------------------------
# Command-line flags, defined once for every training script
# ---------------------------------------------------------------------------
def build_arg_parser(description: str | None, epochs: int = 3) -> argparse.ArgumentParser:
    """The guide's common options plus overrides of the registry defaults."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("common options")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"registry name: {', '.join(MODEL_CONFIGS)} (default: %(default)s)")
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
    add_pickle_weights_flag(g)

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
    o.add_argument("--attn-implementation", choices=ATTN_IMPLEMENTATION_CHOICES, default="eager",
                   help="attention kernel: eager (Gemma 3's recommendation for training), sdpa, or "
                        "flash_attention_2 (CUDA and the flash-attn package) (default: %(default)s)")
    o.add_argument("--batching", choices=BATCHING_CHOICES, default="padding-free",
                   help="padding-free: each micro-batch is one row of its records back to back, no pad token "
                        "computed (same records and loss as padded); padded: rows padded to the longest "
                        "(TRL's default) (default: %(default)s)")
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
    # Adapters merged under the trained one (adapter_chain.json of --base-model); final/ keeps the list.
    adapter_parents: list[str] = field(default_factory=list)
    # --allow-pickle-weights: accept model/adapter dirs that offer only pickle (.bin) weights.
    allow_pickle_weights: bool = False
    batching: str = "padding-free"  # see BATCHING_CHOICES
    # single, ddp, fsdp or deepspeed (see launch_kind); fsdp/ZeRO-3 load no full model per device
    launch: str = "single"
    # who checkpoints activations: "trainer" (gradient_checkpointing), "fsdp" (the launch config), or "off"
    activation_checkpointing_by: str = "off"
    # multi-process launches: what each rank held right after loading (load_report), gathered
    load_by_rank: list[dict] = field(default_factory=list)
    attn_implementation: str = "eager"  # see ATTN_IMPLEMENTATION_CHOICES

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("model_config", "memory_config")}
        out["model_config"] = self.model_config.to_dict()
        out["memory_config"] = self.memory_config.to_dict()
        out["output_dir"] = str(self.output_dir)
        return out


def set_seed(seed: int) -> None:
    """Python, numpy and torch (every device) seeded at once: transformers' own helper."""
    from transformers import set_seed as seed_everything

    seed_everything(seed)


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
    attn_implementation = resolve_attn_implementation(getattr(args, "attn_implementation", "eager"), device)
    launch = launch_kind()
    check_launch_environment(launch, device)
    quantization, gc, checkpointing_by = sharded_launch_settings(launch, args.quantization, quantization, gc)
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
        batching=getattr(args, "batching", "padding-free"),
        args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        started_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        allow_pickle_weights=getattr(args, "allow_pickle_weights", False),
        launch=launch,
        activation_checkpointing_by=checkpointing_by,
        attn_implementation=attn_implementation,
    )
    if shards_weights(launch) and run.show_samples_every > 0:
        logger.info("%s launch: periodic evaluations during training are off (a forward pass needs every "
                    "rank); the evaluation before and after training still runs", launch.upper())
        run.show_samples_every = 0
    set_seed(run.seed)
    logger.info("*** %s: %s on %s (%s, quantization=%s) -> %s", run.script, run.model_name, run.device,
                run.dtype, run.quantization, run.output_dir)
    logger.info("resolved config: %s", json.dumps(run.to_dict(), ensure_ascii=False, default=str))
    return run


# ---------------------------------------------------------------------------
# Multi-process launches (accelerate launch / torchrun); single-process no-ops
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Model and tokenizer loading
# ---------------------------------------------------------------------------


def ensure_run_model(run: RunConfig) -> str:
    """``ensure_model_available`` for the run's ``--base-model`` (or registry path), with the run's
    pickle-weights setting; a missing embedded model names its build command."""
    build = run.model_config.build_command if run.base_model == run.model_config.path else ""
    return ensure_model_available(run.base_model, run.allow_pickle_weights, build_command=build)


def load_model_and_tokenizer(run: RunConfig, adapter_trainable: bool = True):
    """Base model (+ an existing adapter when ``run.base_model`` is an adapter dir) and its tokenizer.

    An adapter dir (``adapter_config.json``) loads on top of its recorded base model, trainable
    (``is_trainable=True``: without it PEFT loads for inference and nothing trains). When it has
    parents (``adapter_chain.json``, see ``resolve_adapter_chain``) they are merged into the base
    first, in order, and recorded in ``run.adapter_parents`` so that ``final/`` keeps the chain.
    """
    path = ensure_run_model(run)
    import torch

    dtype = getattr(torch, run.dtype)
    plan = model_load_plan(run)
    if is_adapter_dir(path):
        chain = resolve_adapter_chain(path)
        model, tokenizer = load_merged_chain(run, chain[:-1], tokenizer_dirs=chain[-1:])
        model = load_adapter(model, path, is_trainable=adapter_trainable,
                             allow_pickle_weights=run.allow_pickle_weights)
        run.adapter_parents = chain[:-1]
    else:
        tokenizer = load_tokenizer(path)
        model = load_base_model(path, plan["device"], dtype, run.quantization, run.gradient_checkpointing,
                                attn_implementation=run.attn_implementation,
                                allow_pickle_weights=run.allow_pickle_weights)
    _SHARDED_LOADING_ARGS.clear()
    if world_size() > 1:
        init_distributed(run)
        run.load_by_rank = all_gather_objects(load_report(model))
        logger.info("loaded per rank: %s", run.load_by_rank)
    return model, tokenizer


# A ZeRO-3 launch loads partitioned only while a DeepSpeed config is registered with transformers
# (a weak reference held by TrainingArguments), so the arguments built for loading live until then.
_SHARDED_LOADING_ARGS: list = []


def model_load_plan(run: RunConfig) -> dict:
    """Where this rank's copy of the base goes, decided before anything loads.

    single / DDP: the whole model on this process's device. FSDP: no device map, after joining the
    process group, so that transformers' cpu_ram_efficient_loading keeps the weights on rank 0's CPU
    and meta tensors elsewhere. ZeRO-3: the training arguments are built first; they register the
    DeepSpeed config that makes ``from_pretrained`` partition the weights as they load."""
    if not shards_weights(run.launch):
        return {"launch": run.launch, "device": run.device, "device_map": {"": run.device}}
    init_distributed(run)
    if run.launch == "deepspeed":
        from transformers.integrations import is_deepspeed_zero3_enabled

        _SHARDED_LOADING_ARGS.append(build_sft_config(run))
        if not is_deepspeed_zero3_enabled():
            raise ConfigError("ZeRO-3 launch but transformers sees no ZeRO-3 config: launch with "
                              "accelerate launch --config_file configs/accelerate/zero3.yaml")
    elif not env_flag("FSDP_CPU_RAM_EFFICIENT_LOADING"):
        logger.warning("FSDP without fsdp_cpu_ram_efficient_loading: every rank loads the whole base on its CPU "
                       "before sharding (configs/accelerate/fsdp.yaml turns it on)")
    return {"launch": run.launch, "device": None, "device_map": None}


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


def load_adapter(model, adapter_dir: str | Path, is_trainable: bool = True, allow_pickle_weights: bool = False):
    from peft import PeftModel

    check_adapter_weights(adapter_dir, allow_pickle_weights)
    model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)
    if is_trainable:
        assert_trainable(model, f"adapter {adapter_dir}")
    return model


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Callbacks
# ---------------------------------------------------------------------------
def trainer_callback_base():
    """transformers.TrainerCallback, imported when a callback is built (keeps ``--help`` instant)."""
    from transformers import TrainerCallback

    return TrainerCallback


def make_progress_callback(progress_file: Path, stage: str, model_name: str):
    """A callback that rewrites ``logs/progress_<MODEL>.txt``: stage, step, loss, last eval, ETA."""
    base = trainer_callback_base()

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


FAULT_KILL_ENV = "MEDGEMMA_KOREAN_KILL_AT_STEP"


def fault_injection_callbacks() -> list:
    """Reliability tests only: with ``MEDGEMMA_KOREAN_KILL_AT_STEP=N`` in the environment the process
    SIGKILLs itself right after optimizer step N (a real ``kill -9``, at a known point, so a test can
    check that ``--resume`` loses nothing). Unset, nothing is added."""
    value = os.environ.get(FAULT_KILL_ENV)
    if not value:
        return []
    kill_at = int(value)
    base = trainer_callback_base()

    class KillAtStep(base):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == kill_at:
                import signal

                logger.warning("%s=%d: killing this process now (fault injection)", FAULT_KILL_ENV, kill_at)
                os.kill(os.getpid(), signal.SIGKILL)

    return [KillAtStep()]


EvalFn = Callable[[Any, int], dict]


def make_periodic_eval_callback(eval_fn: EvalFn, every: int, history: list[dict]):
    """Every ``every`` optimizer steps call ``eval_fn(model, step) -> metrics`` and log the result.

    Results go to ``history`` (-> training_info.json ``validation_history``), to TensorBoard and
    to the progress file through ``trainer.log``. Set ``callback.trainer`` after building the trainer.
    """
    base = trainer_callback_base()

    class PeriodicEvalCallback(base):
        trainer = None

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if every <= 0 or state.global_step % every != 0 or not state.is_world_process_zero:
                return
            metrics = eval_fn(model, state.global_step)
            history.append({"step": state.global_step, **metrics})
            logger.info("step %d periodic eval: %s", state.global_step, metrics)
            if self.trainer is not None:
                log_from_step_end(self.trainer, control,
                                  {f"eval_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})

    return PeriodicEvalCallback()


def log_from_step_end(trainer, control, metrics: dict) -> None:
    """``trainer.log`` from inside ``on_step_end`` without losing the step's training loss: logging
    clears ``control.should_log``, which the Trainer reads right after the callbacks to log the loss."""
    should_log = control.should_log
    trainer.log(metrics)
    control.should_log = should_log


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
        ddp_find_unused_parameters=False,  # every LoRA weight takes part in each forward
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


def check_trainer_launch(run: RunConfig) -> None:
    """An FSDP launch on CPU would train, but unsharded: accelerate enables FSDP only for GPU process
    groups (a CPU group stays MULTI_CPU data parallel), so the launch would not be what it says."""
    if run.launch == "fsdp" and not run.device.startswith("cuda"):
        raise ConfigError("FSDP shards only on GPUs (accelerate turns an FSDP launch on CPU into plain data "
                          "parallel, every rank holding the whole model): on CPU launch with "
                          "configs/accelerate/ddp.yaml or torchrun")


def build_trainer(run: RunConfig, model, tokenizer, train_dataset, eval_dataset=None, callbacks=(),
                  **config_overrides):
    """An SFTTrainer for prompt/completion data (completion-only loss), logging to TensorBoard."""
    from trl import SFTTrainer

    # TensorBoard event files under logs/tensorboard/<stage>_<MODEL>/ (make tensorboard serves logs/tensorboard).
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(TENSORBOARD_DIR / f"{run.stage}_{run.model_name}")
    check_trainer_launch(run)
    config = build_sft_config(run, has_eval=eval_dataset is not None, **config_overrides)
    callbacks = [make_progress_callback(LOG_DIR / f"progress_{run.model_name}.txt", run.stage, run.model_name),
                 *callbacks, *fault_injection_callbacks()]
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
    if run.batching == "padding-free":
        enable_padding_free(trainer)
    add_compact_lm_head(trainer.model)
    for callback in callbacks:
        if hasattr(callback, "trainer"):
            callback.trainer = trainer
    return trainer


# ---- the fast path: padding-free micro-batches and an LM head on the scored positions only -----
def enable_padding_free(trainer) -> bool:
    """Collate each micro-batch as one row of its records back to back, with restarting position ids.

    The records, their order and the loss are those of padded batching; no pad position is computed.
    Attention stays inside each record: with no attention mask, transformers derives a block-diagonal
    causal mask from the position ids (any attention implementation), so padded and padding-free
    batches give the same logits (tested). TRL allows padding-free without packing only when it
    need not truncate; the datasets here are truncated to max_length when the trainer prepares
    them, so the collator is switched afterwards. Text datasets only (vision inputs stay padded),
    and not for packed datasets. Returns whether it was switched on.
    """
    collator = getattr(trainer, "data_collator", None)
    if getattr(trainer, "_is_vision_dataset", False) or not hasattr(collator, "padding_free"):
        return False
    if trainer.args.packing:
        # Packed rows are already full (wrapped) or padding-free (BFD); flattening full rows into
        # one would only make the attention mask quadratic in the whole micro-batch.
        return False
    collator.padding_free = True
    trainer.padding_free = True
    return True


def add_compact_lm_head(model) -> bool:
    """Score only the positions with a label when TRL's fused LM head would score every position.

    TRL (>= 1.x) gives the model a ``fused_lm_head=True`` forward that returns per-token log-probs.
    With its Triton kernel (CUDA/XPU) it projects only the labelled positions; elsewhere (CPU) it
    projects every position, prompt and padding included, through the vocabulary. Under
    completion-only loss most positions are prompt, so on those devices this forward projects the
    labelled ones alone: same log-probs, entropy and top-1 flags, a fraction of the LM-head work.
    Returns whether the compact forward was installed.
    """
    import types

    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    trl_forward = base.__dict__.get("forward")  # set by SFTTrainer's add_fused_lm_head
    text_config = base.config.get_text_config()
    if trl_forward is None or getattr(base, "_compact_lm_head", False):
        return False
    if any(getattr(text_config, name, None) not in (None, 1.0) for name in
           ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")):
        return False  # logit scalings of other families: leave them to TRL
    try:
        from trl.kernels.chunked_logprob import _use_triton
    except ImportError:  # a TRL without the kernel module: assume it projects every position
        def _use_triton(device):
            return False
    softcap = getattr(text_config, "final_logit_softcapping", None)

    def compact_forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None,
                        num_items_in_batch=None, **kwargs):
        device = self.get_output_embeddings().weight.device
        if not fused_lm_head or labels is None or shift_labels is not None or _use_triton(device):
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        from trl.trainer.utils import FusedCausalLMOutput

        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        targets = labels[:, 1:].to(device)
        mask = targets != -100
        logits = self.get_output_embeddings()(hidden.to(device)[mask]).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        log_probs = torch.log_softmax(logits, dim=-1)
        picked = log_probs.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            entropy = -(log_probs.exp() * log_probs).sum(-1)
            is_top1 = (logits.argmax(-1) == targets[mask]).to(picked.dtype)

        def spread(values):  # back to (batch, seq_len - 1), zero where the label is ignored
            return values.new_zeros(mask.shape).masked_scatter(mask, values)

        label_log_probs = spread(picked)
        denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-label_log_probs.sum() / denominator, log_probs=label_log_probs,
                                   entropy=spread(entropy), is_top1=spread(is_top1), label_mask=mask)

    base.forward = types.MethodType(compact_forward, base)
    base._compact_lm_head = True
    return True


def batch_token_counts(batch: dict) -> tuple[int, int]:
    """(real tokens, positions computed) of a collated micro-batch.

    Padded batches carry an attention mask (1 = real token); a padding-free batch has none and
    every position is a real token.
    """
    positions = int(batch["input_ids"].numel())
    mask = batch.get("attention_mask")
    return (int(mask.sum()) if mask is not None else positions), positions


def last_checkpoint(output_dir: Path, remove_incomplete: bool = False) -> str | None:
    """The newest *complete* ``checkpoint-N`` in ``output_dir`` (None when there is none).

    The Trainer writes a checkpoint in place and its ``trainer_state.json`` last, so a run killed
    while saving leaves a ``checkpoint-N`` without it; resuming from that would fail or lose the
    optimizer state. Such a directory is skipped, and removed when ``remove_incomplete`` (so the
    resumed run can write ``checkpoint-N`` again; it holds nothing that can be used).
    """
    import re
    import shutil

    if not Path(output_dir).is_dir():
        return None
    found = []
    for path in Path(output_dir).iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    for _, path in sorted(found, reverse=True):
        if (path / "trainer_state.json").is_file():
            return str(path)
        logger.warning("%s is incomplete (no trainer_state.json: the run was stopped while saving)%s", path,
                       "; removing it" if remove_incomplete else "")
        if remove_incomplete:
            shutil.rmtree(path)
    return None


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


def save_final(model, tokenizer, output_dir: Path, parents: Sequence[str] = (), state_dict: dict | None = None
               ) -> Path:
    """``final/`` = adapter + tokenizer (+ ``adapter_chain.json`` naming ``parents``, the adapters
    merged under it), written to a temp dir and renamed into place. ``state_dict``: the full
    (gathered) weights of a sharded model, from which PEFT keeps the adapter's."""

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        write_adapter_chain(tmp, parents)

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
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "config": run.to_dict(),
        "git_sha": git_sha(),
        "versions": library_versions(),
        "started_at": run.started_at,
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **info,
    }
    atomic_write_json(run.output_dir / "training_info.json", record)
    write_model_readme(run, record)
    return record


def write_model_readme(run: RunConfig, info: dict) -> None:
    """The run's Hub-style card (script/model_card.py): ``base_model`` is the model the adapter chain
    starts from, not the parent adapter dir a chained stage was given."""
    final = run.output_dir / "final"
    root = adapter_base_model(final, fallback=run.base_model) if is_adapter_dir(final) else run.base_model
    write_run_cards(run.output_dir, info, root, run.adapter_parents)


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
        resume_from = last_checkpoint(run.output_dir, remove_incomplete=True)
        if resume_from:
            logger.info("resuming from %s", resume_from)
        else:
            logger.info("--resume: no checkpoint in %s, starting fresh", run.output_dir)
    elif last_checkpoint(run.output_dir):
        logger.warning("%s holds checkpoints of an earlier run; training from scratch (pass --resume to continue)",
                       run.output_dir)
    # Under a multi-process launch every rank trains; only rank 0 evaluates and writes the outputs
    # (the Trainer already saves checkpoints from rank 0 only).
    # Under FSDP / ZeRO-3 a forward pass needs every rank, so every rank runs the evaluations (same
    # inputs, in step) and joins the gathering of the full adapter; rank 0 alone keeps and writes them.
    main_process = trainer.is_world_process_zero()
    sharded = shards_weights(run.launch)
    before = evaluate(trainer.model) if evaluate and not resume_from and (main_process or sharded) else {}
    logger.info("*** Train ***")
    result = trainer.train(resume_from_checkpoint=resume_from)
    full_state = trainer.accelerator.get_state_dict(trainer.model) if sharded else None
    if not main_process:
        if sharded and evaluate:
            evaluate(trainer.model)
        return {"metrics": {"global_step": int(trainer.state.global_step)}, "rank": int(os.environ.get("RANK", "0"))}
    final = save_final(trainer.accelerator.unwrap_model(trainer.model) if sharded else trainer.model, tokenizer,
                       run.output_dir, parents=run.adapter_parents, state_dict=full_state)
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
    info.setdefault("training_options", training_options(trainer))
    return write_training_info(run, info)


def steering_eval_callbacks(run: RunConfig, tokenizer, history: list[dict]) -> list:
    """Every ``--show-samples-every`` steps: KorMedMCQA letter accuracy on ``--eval-samples``
    questions of the steering set (a held-out slice of KorMedMCQA train, never a test set).

    Results go to ``history`` (training_info.json ``validation_history``), TensorBoard and the
    progress file. Without an extracted steering set the periodic evaluation is skipped, loudly.
    """
    if run.show_samples_every <= 0 or run.eval_samples <= 0:
        return []
    items, _ = load_steering_set("steer", run.eval_samples, run.seed, required=False)
    if not items:
        return []
    logger.info("periodic eval: %d steering-set questions every %d steps", len(items), run.show_samples_every)
    return [make_periodic_eval_callback(make_mcq_eval_fn(tokenizer, items, run.batch), run.show_samples_every,
                                        history)]


# ---------------------------------------------------------------------------
# Adapter chains (train_00/01/02, the 01-02 loop, add_lora_adapter.py)
# ---------------------------------------------------------------------------
def load_merged_chain(run: RunConfig, parents: Sequence[str], tokenizer_dirs: Sequence[str] = ()):
    """(model, tokenizer): the base model of a chain with ``parents`` merged into it, and the tokenizer
    of the last of ``parents`` + ``tokenizer_dirs`` that saved one (a vocabulary extension travels
    with its adapter), else the base model's. The base is the one the first adapter names."""
    import torch

    adapters = [*parents, *tokenizer_dirs]
    base_path = adapter_base_model(adapters[0], fallback=run.model_config.path) if adapters else run.base_model
    ensure_model_available(base_path, run.allow_pickle_weights)
    tokenizer_dir = next((a for a in reversed(adapters) if Path(a, "tokenizer_config.json").is_file()), base_path)
    tokenizer = load_tokenizer(tokenizer_dir)
    model = load_base_model(base_path, model_load_plan(run)["device"], getattr(torch, run.dtype), run.quantization,
                            run.gradient_checkpointing, attn_implementation=run.attn_implementation,
                            allow_pickle_weights=run.allow_pickle_weights)
    return merge_adapters(model, list(parents), run.quantization, run.allow_pickle_weights), tokenizer


def adapter_chain_callbacks(run: RunConfig) -> list:
    """Every ``checkpoint-N/`` of a run on merged parents gets ``adapter_chain.json`` too, so a
    checkpoint is evaluated on the same weights it was trained on, like ``final/``."""
    if not run.adapter_parents:
        return []
    parents = list(run.adapter_parents)
    base = trainer_callback_base()

    class AdapterChainCallback(base):
        def on_save(self, args, state, control, **kwargs):
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and checkpoint.is_dir():
                write_adapter_chain(checkpoint, parents)

    return [AdapterChainCallback()]


def prefixed(prefix: str, metrics: dict) -> dict:
    return {f"{prefix}{k}": v for k, v in metrics.items()}


# ---- plain text (train_00, the forgetting monitor) ---------------------------------------------


def make_plain_text_monitor(tokenizer, texts: Sequence[str], every: int, history: list[dict], batch_size: int,
                            max_length: int, rise_threshold: float | None = None, at_start: bool = False,
                            name: str = "plain_text"):
    """Every ``every`` optimizer steps (and at the start with ``at_start``), the perplexity of
    ``texts`` -> ``history``, TensorBoard (``<name>_perplexity``) and the progress file.

    With ``rise_threshold`` (a fraction), a value more than that much above the first one is
    flagged ``"forgetting": true`` and warned about: training on something else is erasing what
    the model knew of plain text.
    """
    texts = list(texts)
    base = trainer_callback_base()

    class PlainTextMonitor(base):
        trainer = None
        reference: dict | None = None

        def measure(self, model, step: int, control=None) -> None:
            result = plain_text_perplexity(model, tokenizer, texts, batch_size, max_length)
            entry = {"step": step, "perplexity": round(result["perplexity"], 4), "tokens": result["tokens"]}
            if self.reference is None:
                self.reference = entry
            elif rise_threshold is not None and entry["perplexity"] > self.reference["perplexity"] * (1 + rise_threshold):
                entry["forgetting"] = True
                logger.warning("step %d: plain-text perplexity %.4g is more than %.0f%% above its value at step %d "
                               "(%.4g): the model is forgetting plain Korean", step, entry["perplexity"],
                               100 * rise_threshold, self.reference["step"], self.reference["perplexity"])
            history.append(entry)
            logger.info("step %d %s perplexity: %.4g", step, name, entry["perplexity"])
            if self.trainer is not None and control is not None:
                log_from_step_end(self.trainer, control, {f"{name}_perplexity": entry["perplexity"]})

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if at_start and state.is_world_process_zero and texts:
                self.measure(model, state.global_step, control)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if every > 0 and texts and state.global_step % every == 0 and state.is_world_process_zero:
                self.measure(model, state.global_step, control)

    return PlainTextMonitor()


# ---- run records -------------------------------------------------------------------------------
def training_options(trainer, **extra) -> dict:
    """The speed/memory options a run used, for training_info.json."""
    args = trainer.args
    model = getattr(trainer.model, "base_model", trainer.model)
    return {
        "packing": bool(args.packing),
        "packing_strategy": args.packing_strategy if args.packing else None,
        "padding_free": bool(getattr(trainer, "padding_free", False)),
        "compact_lm_head": bool(getattr(getattr(trainer.model, "get_base_model", lambda: trainer.model)(),
                                        "_compact_lm_head", False)),
        "completion_only_loss": getattr(trainer, "completion_only_loss", None),
        "gradient_checkpointing": bool(getattr(args, "gradient_checkpointing", False)
                                       or getattr(args, "activation_checkpointing", False)),
        "attn_implementation": getattr(getattr(model, "config", None), "_attn_implementation", None),
        "bf16": bool(args.bf16),
        "optim": str(getattr(args.optim, "value", args.optim)),
        "sharded_parameters": sharded_parameter_count(trainer.model),
        **extra,
    }


def update_training_info(run: RunConfig, info: dict, **fields) -> dict:
    """Add fields known only after ``train_and_save`` (final accuracy, reject counts) to the record."""
    info.update(fields)
    atomic_write_json(run.output_dir / "training_info.json", info)
    return info


# Why train_01 and train_02 do not pack, for their training_info.json.
NO_PACKING_WHY = ("prompt/completion records: padding-free batching instead, which computes no padding and keeps "
                  "the records of each step (packing would change how many records make a step)")
