"""Model registry, memory profiles and project paths: the one place defaults come from.

Scripts look a model up once with ``get_model_config(name)``; command-line flags override the
returned values and ``training_utils.write_training_info`` records what actually ran.

    python -m script.training_config            # print the registry
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------------------
# Paths. The project root can be moved with MEDGEMMA_KOREAN_HOME (tests point it at a tmp dir).
# ---------------------------------------------------------------------------
PROJECT_ROOT = Path(__file__).resolve().parents[1]
HOME = Path(os.environ.get("MEDGEMMA_KOREAN_HOME", PROJECT_ROOT)).resolve()

DATA_DIR = HOME / "data"
SAMPLE_DATA_DIR = PROJECT_ROOT / "data" / "sample"  # tracked, always read from the checkout
RAW_DIR = DATA_DIR / "raw"  # download_all_datasets.py: raw/by_source/<name>/, raw/manifest.json
REFINED_DIR = DATA_DIR / "refined"  # refine_4types.py: refined/<type>/{train,validation}.jsonl
CLEAN_DIR = DATA_DIR / "refined_clean"  # exclude_test_from_training.py: refined minus evaluation items
KORMEDMCQA_TEST_DIR = DATA_DIR / "kormedmcqa_test"  # extract_kormedmcqa_test.py: all_test.jsonl
MODEL_DIR = HOME / "model"
DIVISIONS_MODEL_DIR = MODEL_DIR / "divisions"  # train_with_divisions.py: divisions/<set>/
LOG_DIR = HOME / "logs"
TENSORBOARD_DIR = LOG_DIR / "tensorboard"

TINY_MODEL_DIR = MODEL_DIR / "tiny-gemma3"
TINY_MM_MODEL_DIR = MODEL_DIR / "tiny-gemma3-mm"

DEFAULT_MODEL = "tiny"

# Gemma 3 attention/MLP projections. The vision tower of multimodal checkpoints uses some of the
# same names (q_proj, k_proj, ...), so training_utils restricts LoRA to the language model there.
LORA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Input embeddings and output head: trained fully (modules_to_save), never through LoRA, because
# LoRA on embeddings does not work with 8-bit bases (the guide's "LoRA Config Fix").
EMBEDDING_MODULES = ["embed_tokens", "lm_head"]


# Items per batch of the pipeline's KorMedMCQA evaluations (a registry entry may set its own letter batch).
EVAL_BATCH_SIZE = 32


@dataclass(frozen=True)
class ModelConfig:
    """One registry entry. Field names match the guide's MODEL_CONFIGS keys."""

    name: str
    path: str  # hub id or local directory
    lora_r: int
    lora_alpha: int
    batch: int  # per-device micro-batch
    grad_accum: int  # effective batch = batch * grad_accum * world size
    lr: float
    max_length: int  # tokens per training sequence
    lora_dropout: float = 0.05
    build_command: str = ""  # how to create `path` locally when it is missing (embedded models)
    # How the pipeline reads the model's KorMedMCQA accuracy besides letter mode: "letter" only, or
    # also "cloze" (option texts scored as answers; evaluation.score_mcq_cloze_mode). Models far
    # below a billion parameters stay at chance in letter form whatever they know, so the embedded
    # tiny model is judged in cloze form, and its train_02 adds cloze-form records (--answer-text).
    mcq_scoring: str = "letter"
    # What the pipeline does differently per model (script/pipeline_stages.py reads these):
    embedded: bool = False  # built here and trained offline on the shipped sample mirror; strict leakage probe
    pipeline_epochs: tuple[int, int, int] = (1, 3, 5)  # train_00 / 01 / 02 defaults: the guide's MedGemma run
    eval_max_new_tokens: int | None = None  # reasoning budget of the pipeline's KorMedMCQA evaluations (None: default)
    letter_eval_batch_size: int = EVAL_BATCH_SIZE  # prompts per generate call in those letter-mode evaluations
    # The untrained base's evaluations run beside add_lora_adapter_00, train_00 and train_01 (they need
    # nothing from each other), the cores shared out (script/stage_runner.py). For a CPU-sized model
    # only: on a GPU two stages would contend for one card's memory.
    pipeline_side_by_side: bool = False
    # Plain-text records train_00 reads in the pipeline (None: all): the guide's `--max-samples 10000`
    # for MedGemma, so a first real run is hours, not days; the embedded model reads its whole sample.
    pipeline_plain_text_samples: int | None = 10000

    def __post_init__(self) -> None:
        if self.lora_r <= 0 or self.lora_alpha <= 0:
            raise ValueError(f"{self.name}: lora_r and lora_alpha must be positive")
        if self.batch <= 0 or self.grad_accum <= 0 or self.max_length <= 0:
            raise ValueError(f"{self.name}: batch, grad_accum and max_length must be positive")
        if not 0 < self.lr < 1:
            raise ValueError(f"{self.name}: lr {self.lr} is not a learning rate")
        if self.mcq_scoring not in ("letter", "cloze"):
            raise ValueError(f"{self.name}: mcq_scoring {self.mcq_scoring!r}: expected letter or cloze")
        if self.letter_eval_batch_size <= 0:
            raise ValueError(f"{self.name}: letter_eval_batch_size must be positive")
        if len(self.pipeline_epochs) != 3 or min(self.pipeline_epochs) <= 0:
            raise ValueError(f"{self.name}: pipeline_epochs {self.pipeline_epochs!r}: three positive epoch counts")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MemoryConfig:
    """How a model is fitted into memory. ``quantization`` applies on CUDA only (see hardware.resolve_quantization)."""

    use_gradient_checkpointing: bool
    train_embeddings: bool  # put embed_tokens/lm_head in modules_to_save for embedding-training stages
    quantization: str = "none"  # "none" | "8bit" | "4bit"
    # Micro-batch and accumulation used when embeddings are trained (the guide: 4 -> 2, 8 -> 16).
    embedding_batch: int | None = None
    embedding_grad_accum: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


MODEL_CONFIGS: dict[str, ModelConfig] = {
    # Embedded default: a few-million-parameter Gemma-3 text model with a Korean tokenizer, built
    # locally by script/embedded/make_tiny_model.py. Larger lr because it starts from random weights.
    "tiny": ModelConfig(
        name="tiny",
        path=str(TINY_MODEL_DIR),
        lora_r=16,
        lora_alpha=32,
        batch=8,
        grad_accum=1,
        lr=2e-3,
        max_length=256,
        lora_dropout=0.0,
        build_command="python -m script.embedded.make_tiny_model",
        embedded=True,
        # More passes over the small sample than MedGemma's 1/3/5 need, still a few minutes on 2 cores. A
        # third train_02 epoch was once chosen on the 604 set; nothing on the steering set supports it.
        pipeline_epochs=(2, 2, 2),
        eval_max_new_tokens=96,  # tiny's simple reasoning over five options fits in ~80 tokens
        # On CPU the tiny model's decoding costs per step more than per row: 128 prompts per generate call
        # score the 604 set and its control in 27.3 s against 32.3 s at 32 (medians of three alternating
        # runs), with the same predictions.
        letter_eval_batch_size=128,
        # On 2 cores, one thread each: the base evaluations beside train_00/01 took 60 s against 72 and 91 s
        # one after the other (two runs).
        pipeline_side_by_side=True,
        pipeline_plain_text_samples=None,
        mcq_scoring="cloze",
    ),
    "medgemma-4b": ModelConfig(
        name="medgemma-4b",
        path="google/medgemma-4b-it",
        lora_r=64,
        lora_alpha=128,
        batch=4,
        grad_accum=4,
        lr=2e-5,
        max_length=512,
    ),
    "medgemma-27b": ModelConfig(
        name="medgemma-27b",
        path="google/medgemma-27b-it",
        lora_r=32,
        lora_alpha=64,
        batch=1,
        grad_accum=16,
        lr=1e-5,
        max_length=512,
    ),
}
# The text-only 27B (Gemma3ForCausalLM, no vision tower): the model the public KorMedMCQA/MedQA
# figures of MedGemma 27B were measured on. The guide's settings of the multimodal 27B.
MODEL_CONFIGS["medgemma-27b-text"] = dataclasses.replace(MODEL_CONFIGS["medgemma-27b"], name="medgemma-27b-text",
                                                         path="google/medgemma-27b-text-it")

# The same tiny language model wrapped as Gemma3ForConditionalGeneration with a tiny vision tower:
# exercises the code path of the multimodal MedGemma-4B-it without its weights.
MODEL_CONFIGS["tiny-mm"] = dataclasses.replace(MODEL_CONFIGS["tiny"], name="tiny-mm", path=str(TINY_MM_MODEL_DIR))

MEMORY_CONFIGS: dict[str, MemoryConfig] = {
    "tiny": MemoryConfig(use_gradient_checkpointing=False, train_embeddings=True),
    "tiny-mm": MemoryConfig(use_gradient_checkpointing=False, train_embeddings=True),
    # The guide: 8-bit base (~12 GB), checkpointing required with extended embeddings.
    "medgemma-4b": MemoryConfig(
        use_gradient_checkpointing=True,
        train_embeddings=True,
        quantization="8bit",
        embedding_batch=2,
        embedding_grad_accum=16,
    ),
    # The guide: 8-bit base (~28 GB); embeddings do not fit next to it (OOM).
    "medgemma-27b": MemoryConfig(use_gradient_checkpointing=True, train_embeddings=False, quantization="8bit"),
}
MEMORY_CONFIGS["medgemma-27b-text"] = MEMORY_CONFIGS["medgemma-27b"]


class ConfigError(ValueError):
    """A setting that cannot work; the message says what to change (training_utils and every script
    raise it; it lives here, beside the settings, so that light modules such as cli can catch it)."""


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; this one is meant to be read
        return str(self.args[0])


def get_model_config(name: str) -> ModelConfig:
    """Registry lookup; an unknown name lists the valid ones."""
    try:
        return MODEL_CONFIGS[name]
    except KeyError:
        valid = ", ".join(MODEL_CONFIGS)
        raise UnknownModelError(
            f"unknown model {name!r}; valid names: {valid} (or pass a model directory with --base-model)"
        ) from None


def get_memory_config(name: str) -> MemoryConfig:
    get_model_config(name)  # same error for unknown names
    return MEMORY_CONFIGS[name]


# The stage directories under model/ (model/<stage>/<MODEL>), named once: the trainers, the adapter
# step, the report and merge read them from here.
STAGE_00 = "00_trained"
STAGE_01 = "01_trained"
STAGE_01_ADAPTER = "01_another_lora_added"
STAGE_02 = "02_trained"


def stage_output_dir(stage: str, model_name: str) -> Path:
    """model/<stage>/<MODEL>, the guide's output layout (e.g. model/00_trained/medgemma-4b)."""
    return MODEL_DIR / stage / model_name


if __name__ == "__main__":
    print(
        json.dumps(
            {
                name: {"model": cfg.to_dict(), "memory": MEMORY_CONFIGS[name].to_dict()}
                for name, cfg in MODEL_CONFIGS.items()
            },
            indent=2,
        )
    )
