"""GPU memory per visible device, and an estimate of what a LoRA training run of a model needs.

    python -m script.check_gpu_memory                          # MODEL (default tiny), registry settings
    python -m script.check_gpu_memory --model all
    python -m script.check_gpu_memory --model medgemma-4b --batch-size 2 --max-length 1024 --quantization 4bit
    python -m script.check_gpu_memory --model medgemma-27b --json

The estimate adds up, in bytes:
  weights       base weights: the language model's projection matrices at the quantization's width
                (bf16 2 bytes, 8-bit 1, nf4 ~0.52 with its scales); embeddings, norms and the vision
                tower stay in bf16 (they are not quantized, see model_loading)
  lora          LoRA A/B matrices on the 7 projections of every layer, kept in float32 by PEFT, with
                gradients and AdamW's two moments: 16 bytes per parameter
  embeddings    when embeddings are trained (MEMORY_CONFIGS train_embeddings): the trainable copy of
                embed_tokens (one matrix: lm_head is tied), its gradient and AdamW moments, 8 bytes
                per parameter in bf16
  activations   per layer, the tensors autograd keeps for each token (norm outputs, q/k/v, MLP
                intermediates, LoRA dropout copies) plus eager attention's scores and softmax;
                with gradient checkpointing only each layer's input plus one layer's worth
  logits        batch x length x vocabulary: bf16 logits, their float32 copy for the loss and its
                gradient (10 bytes per entry: with Gemma's 262k vocabulary this is often the largest
                part of the activation memory)
  overhead      CUDA context and allocator fragmentation: 1 GiB + 10%

It is an estimate for planning, not a measurement: the guide measured ~12 GB for medgemma-4b (8-bit,
batch 4) and ~28 GB for medgemma-27b (8-bit, batch 1); training_info.json records the real peak.
On a machine without CUDA the device part says so and the estimate is printed all the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from script.data_io import read_json
from script.training_config import (
    DEFAULT_MODEL,
    LORA_TARGET_MODULES,
    MODEL_CONFIGS,
    get_memory_config,
    get_model_config,
)

GIB = 1024**3
QUANTIZATIONS = ("none", "8bit", "4bit")
# Bytes per quantized weight. nf4: 4 bits + one float32 absmax per 64 weights, itself 8-bit
# quantized with double quantization (~0.13 bits); 8-bit: int8 + a float32 scale per row.
WEIGHT_BYTES = {"none": 2.0, "8bit": 1.0, "4bit": 0.52}
LORA_BYTES_PER_PARAM = 16  # float32 weight + gradient + AdamW m and v
EMBEDDING_BYTES_PER_PARAM = 8  # bf16 weight + gradient + AdamW m and v
LOGIT_BYTES = 10  # bf16 logits + float32 copy for the loss + float32 gradient
ACTIVATION_BYTES = 2  # bf16
OVERHEAD_FIXED = 1 * GIB
OVERHEAD_FRACTION = 0.10

# VRAM the guide reports ("GPU Requirements"), printed beside the estimate for comparison.
GUIDE_VRAM_GB = {"medgemma-4b": 12, "medgemma-27b": 28}


@dataclass(frozen=True)
class Architecture:
    """The dimensions the estimate needs; from a model dir's config.json or the published configs."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int  # embedding rows (padded), not the tokenizer length
    tie_word_embeddings: bool = True
    vision: dict | None = None  # SigLIP vision_config of multimodal checkpoints
    source: str = ""

    # -- parameter counts (Gemma 3 layout) --
    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each LoRA target in one decoder layer."""
        h, q, kv, i = self.hidden_size, self.num_attention_heads * self.head_dim, \
            self.num_key_value_heads * self.head_dim, self.intermediate_size
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def projection_params(self) -> int:
        """Weights of the language model's linear layers: the ones 8-/4-bit loading quantizes."""
        return self.num_hidden_layers * sum(a * b for a, b in self.projection_shapes().values())

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def other_params(self) -> int:
        """Norms (4 per layer + q/k norms + final), an untied lm_head, and the vision tower + projector."""
        norms = self.num_hidden_layers * (4 * self.hidden_size + 2 * self.head_dim) + self.hidden_size
        head = 0 if self.tie_word_embeddings else self.embedding_params()
        return norms + head + self.vision_params()

    def vision_params(self) -> int:
        if not self.vision:
            return 0
        v = self.vision
        h, i, c = v["hidden_size"], v["intermediate_size"], v.get("num_channels", 3)
        patches = (v["image_size"] // v["patch_size"]) ** 2
        embeddings = c * v["patch_size"] ** 2 * h + h + patches * h
        layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h  # attention, MLP, two layer norms
        projector = h * self.hidden_size + h  # mm_input_projection + soft-embedding norm
        return embeddings + v["num_hidden_layers"] * layer + 2 * h + projector

    def total_params(self) -> int:
        return self.projection_params() + self.embedding_params() + self.other_params()

    def lora_params(self, r: int, targets: list[str] = LORA_TARGET_MODULES) -> int:
        shapes = self.projection_shapes()
        return self.num_hidden_layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)


# Published config.json of the registry's hub checkpoints (text_config of the multimodal ones), so
# that an estimate needs no download. They give 4.30B parameters for google/medgemma-4b-it and
# 27.4B for google/medgemma-27b-it (27.0B text-only), the "4.3B" and "27B" of the Hugging Face
# model pages; tests check the arithmetic against those figures.
_SIGLIP_896 = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "image_size": 896,
               "patch_size": 14}
KNOWN_ARCHITECTURES: dict[str, Architecture] = {
    "google/medgemma-4b-it": Architecture(
        hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, vocab_size=262_208, vision=_SIGLIP_896,
        source="published config of google/medgemma-4b-it (Gemma 3 4B)"),
    "google/medgemma-27b-it": Architecture(
        hidden_size=5376, intermediate_size=21504, num_hidden_layers=62, num_attention_heads=32,
        num_key_value_heads=16, head_dim=128, vocab_size=262_208, vision=_SIGLIP_896,
        source="published config of google/medgemma-27b-it (Gemma 3 27B)"),
    "google/medgemma-27b-text-it": Architecture(
        hidden_size=5376, intermediate_size=21504, num_hidden_layers=62, num_attention_heads=32,
        num_key_value_heads=16, head_dim=128, vocab_size=262_208,
        source="published config of google/medgemma-27b-text-it (Gemma 3 27B, text only)"),
}
PUBLISHED_PARAMETERS = {"google/medgemma-4b-it": 4.3e9, "google/medgemma-27b-it": 27e9,
                        "google/medgemma-27b-text-it": 27e9}


class UnknownArchitectureError(ValueError):
    pass


_DIMENSIONS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def architecture_from_config(config: dict, source: str) -> Architecture:
    if not isinstance(config, dict):
        raise UnknownArchitectureError(f"{source}: expected a JSON object, found {type(config).__name__}")
    text = config.get("text_config") or config
    if not isinstance(text, dict):
        raise UnknownArchitectureError(f"{source}: 'text_config' should be an object, found {type(text).__name__}")
    for name in _DIMENSIONS + ("num_key_value_heads", "head_dim"):
        value = text.get(name)
        if name in text and value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise UnknownArchitectureError(f"{source}: {name!r} should be a positive integer, found {value!r}")
    try:
        return Architecture(
            hidden_size=text["hidden_size"],
            intermediate_size=text["intermediate_size"],
            num_hidden_layers=text["num_hidden_layers"],
            num_attention_heads=text["num_attention_heads"],
            num_key_value_heads=text.get("num_key_value_heads", text["num_attention_heads"]),
            head_dim=text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"],
            vocab_size=text["vocab_size"],
            tie_word_embeddings=config.get("tie_word_embeddings", text.get("tie_word_embeddings", True)),
            vision=config.get("vision_config"),
            source=source,
        )
    except KeyError as exc:
        raise UnknownArchitectureError(f"{source}: config has no {exc.args[0]!r}") from None


def resolve_architecture(path: str) -> Architecture:
    """config.json of a local model dir, else the published dimensions of a known hub checkpoint."""
    config_file = Path(path) / "config.json"
    if config_file.is_file():
        return architecture_from_config(read_json(config_file), str(config_file))  # DataError path:line if broken
    if path in KNOWN_ARCHITECTURES:
        return KNOWN_ARCHITECTURES[path]
    raise UnknownArchitectureError(
        f"{path}: no config.json there and not one of the known checkpoints ({', '.join(KNOWN_ARCHITECTURES)}); "
        "build or download the model first (tiny: python -m script.embedded.make_tiny_model)")


# ---------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------
@dataclass
class MemoryEstimate:
    model: str
    architecture_source: str
    parameters: int
    trainable_parameters: int
    batch_size: int
    max_length: int
    quantization: str
    lora_r: int
    gradient_checkpointing: bool
    train_embeddings: bool
    components: dict[str, int]  # bytes

    @property
    def total(self) -> int:
        return sum(self.components.values())

    def to_dict(self) -> dict:
        out = asdict(self)
        out["total_bytes"] = self.total
        out["total_gib"] = round(self.total / GIB, 2)
        return out


def activation_bytes(arch: Architecture, batch: int, length: int, checkpointing: bool) -> int:
    h, i = arch.hidden_size, arch.intermediate_size
    q, kv = arch.num_attention_heads * arch.head_dim, arch.num_key_value_heads * arch.head_dim
    tokens = batch * length
    # Kept per token and layer: residuals and norm outputs (~8h), q/k/v and attention output, the MLP's
    # gate/up/activation/product (4i), LoRA dropout copies of the projection inputs (~5h + q + i).
    per_token = (13 * h + 3 * q + 2 * kv + 5 * i) * ACTIVATION_BYTES
    # Eager attention materialises scores (bf16) and softmax (float32, then cast) for every head.
    attention = batch * arch.num_attention_heads * length * length * (2 + 4 + 2)
    one_layer = tokens * per_token + attention
    if checkpointing:
        return arch.num_hidden_layers * tokens * h * ACTIVATION_BYTES + one_layer
    return arch.num_hidden_layers * one_layer


def estimate_training_memory(model: str = DEFAULT_MODEL, *, base_model: str | None = None,
                             batch_size: int | None = None, max_length: int | None = None,
                             quantization: str | None = None, lora_r: int | None = None,
                             gradient_checkpointing: bool | None = None,
                             train_embeddings: bool | None = None) -> MemoryEstimate:
    """Bytes a LoRA run of ``model`` needs on one GPU; ``None`` settings come from the registry.

    ``train_embeddings`` defaults to MEMORY_CONFIGS (the guide trains the extended embeddings on
    medgemma-4b, not on 27b); the batch then defaults to the memory profile's embedding batch.
    """
    config = get_model_config(model)
    memory = get_memory_config(model)
    arch = resolve_architecture(base_model or config.path)
    quantization = quantization or memory.quantization
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r}: expected one of {', '.join(QUANTIZATIONS)}")
    embeddings = memory.train_embeddings if train_embeddings is None else train_embeddings
    batch = batch_size or (memory.embedding_batch if embeddings and memory.embedding_batch else config.batch)
    length = max_length or config.max_length
    r = lora_r or config.lora_r
    checkpointing = memory.use_gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing

    lora = arch.lora_params(r)
    trainable_embeddings = arch.embedding_params() if embeddings else 0
    components = {
        "weights": int(arch.projection_params() * WEIGHT_BYTES[quantization]
                       + (arch.embedding_params() + arch.other_params()) * WEIGHT_BYTES["none"]),
        "lora": lora * LORA_BYTES_PER_PARAM,
        "embeddings": trainable_embeddings * EMBEDDING_BYTES_PER_PARAM,
        "activations": activation_bytes(arch, batch, length, checkpointing),
        "logits": batch * length * arch.vocab_size * LOGIT_BYTES,
    }
    components["overhead"] = int(OVERHEAD_FIXED + OVERHEAD_FRACTION * sum(components.values()))
    return MemoryEstimate(model=model, architecture_source=arch.source, parameters=arch.total_params(),
                          trainable_parameters=lora + trainable_embeddings, batch_size=batch, max_length=length,
                          quantization=quantization, lora_r=r, gradient_checkpointing=checkpointing,
                          train_embeddings=embeddings, components=components)


# ---------------------------------------------------------------------------
# Devices and verdicts
# ---------------------------------------------------------------------------
def visible_devices() -> list[dict]:
    """Name, total and free bytes of every visible CUDA device (empty without CUDA)."""
    import torch

    devices = []
    if not torch.cuda.is_available():
        return devices
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        devices.append({"device": f"cuda:{index}", "name": props.name, "total_bytes": int(total),
                        "free_bytes": int(free)})
    return devices


def advice(estimate: MemoryEstimate, budget: int, base_model: str | None = None) -> list[str]:
    """Changes that would bring ``estimate`` under ``budget`` bytes, each checked by re-estimating."""
    settings = dict(base_model=base_model, batch_size=estimate.batch_size, max_length=estimate.max_length,
                    quantization=estimate.quantization, lora_r=estimate.lora_r,
                    gradient_checkpointing=estimate.gradient_checkpointing,
                    train_embeddings=estimate.train_embeddings)

    def fits(**change) -> bool:
        return estimate_training_memory(estimate.model, **{**settings, **change}).total <= budget

    tips = []
    for batch in range(estimate.batch_size - 1, 0, -1):
        if fits(batch_size=batch):
            tips.append(f"lower --batch-size to {batch} (raise --grad-accum to keep the effective batch)")
            break
    if estimate.quantization != "4bit" and fits(quantization="4bit"):
        tips.append("load the base in 4-bit: --quantization 4bit")
    if not estimate.gradient_checkpointing and fits(gradient_checkpointing=True):
        tips.append("turn on gradient checkpointing: --gradient-checkpointing on")
    if estimate.train_embeddings and fits(train_embeddings=False):
        tips.append("do not train the embeddings (train_embeddings=False in MEMORY_CONFIGS)")
    r = estimate.lora_r // 2
    while r >= 4 and not fits(lora_r=r):
        r //= 2
    if r >= 4:
        tips.append(f"lower --lora-r to {r}")
    if not tips:
        combined = dict(batch_size=1, quantization="4bit", gradient_checkpointing=True, train_embeddings=False,
                        lora_r=8)
        tips.append("batch 1 + 4-bit + gradient checkpointing + LoRA r 8, without embeddings" if fits(**combined)
                    else "does not fit even at batch 1, 4-bit, gradient checkpointing, LoRA r 8: use a larger GPU "
                         "or several (configs/accelerate/)")
    return tips


def verdicts(estimate: MemoryEstimate, devices: list[dict], base_model: str | None = None) -> list[dict]:
    out = []
    for device in devices:
        fits = estimate.total <= device["free_bytes"]
        out.append({"device": device["device"], "fits": fits,
                    "advice": [] if fits else advice(estimate, device["free_bytes"], base_model)})
    return out


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"registry name or 'all' ({', '.join(MODEL_CONFIGS)}; default: %(default)s)")
    parser.add_argument("--base-model", default=None,
                        help="read the architecture from this model dir instead (e.g. model/extended_tokenizer/<MODEL>)")
    parser.add_argument("--batch-size", type=int, default=None, help="per-device micro-batch (default: registry)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per sequence (default: registry)")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default=None,
                        help="base weights (default: the MEMORY_CONFIGS setting used on CUDA)")
    parser.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default: registry)")
    parser.add_argument("--gradient-checkpointing", choices=("auto", "on", "off"), default="auto",
                        help="auto = MEMORY_CONFIGS")
    parser.add_argument("--train-embeddings", choices=("auto", "on", "off"), default="auto",
                        help="count trainable embeddings; auto = MEMORY_CONFIGS")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    return parser


def _gib(n: int) -> str:
    return f"{n / GIB:.1f}"


def format_report(devices: list[dict], results: list[dict], cuda_note: str) -> str:
    lines = []
    if devices:
        for d in devices:
            lines.append(f"{d['device']}  {d['name']}: {_gib(d['total_bytes'])} GiB total, "
                         f"{_gib(d['free_bytes'])} GiB free")
    else:
        lines.append(cuda_note)
    lines.append("")
    header = ["model", "params", "quant", "batch x len", "weights", "lora", "embeds", "activ", "logits",
              "overhead", "total GiB", "guide GB"]
    rows = []
    for r in results:
        c = r["estimate"]["components"]
        e = r["estimate"]
        rows.append([e["model"], f"{e['parameters'] / 1e9:.2f}B" if e["parameters"] >= 1e8 else f"{e['parameters'] / 1e6:.1f}M",
                     e["quantization"], f"{e['batch_size']} x {e['max_length']}", _gib(c["weights"]), _gib(c["lora"]),
                     _gib(c["embeddings"]), _gib(c["activations"]), _gib(c["logits"]), _gib(c["overhead"]),
                     _gib(e["total_bytes"]), str(GUIDE_VRAM_GB.get(e["model"], "-"))])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
    for r in results:
        e = r["estimate"]
        lines.append("")
        lines.append(f"{e['model']}: LoRA r={e['lora_r']}, gradient checkpointing "
                     f"{'on' if e['gradient_checkpointing'] else 'off'}, embeddings "
                     f"{'trained' if e['train_embeddings'] else 'frozen'}, {e['trainable_parameters']:,} trainable "
                     f"parameters ({e['architecture_source']})")
        for v in r["verdicts"]:
            lines.append(f"  {v['device']}: {'fits' if v['fits'] else 'does not fit'}")
            lines.extend(f"    - {tip}" for tip in v["advice"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    args = build_parser().parse_args(argv)
    names = list(MODEL_CONFIGS) if args.model == "all" else [args.model]
    flag = {"auto": None, "on": True, "off": False}
    devices = visible_devices()
    cuda_note = f"no CUDA device visible (torch {torch.__version__}); the estimate below is for a CUDA GPU"
    results, skipped = [], {}
    for name in names:
        try:
            estimate = estimate_training_memory(
                name, base_model=args.base_model, batch_size=args.batch_size, max_length=args.max_length,
                quantization=args.quantization, lora_r=args.lora_r,
                gradient_checkpointing=flag[args.gradient_checkpointing], train_embeddings=flag[args.train_embeddings])
        except UnknownArchitectureError as exc:
            if args.model != "all":
                print(f"error: {exc}", file=sys.stderr)
                return 2
            skipped[name] = str(exc)  # e.g. tiny not built yet: the others are still worth a look
            continue
        except (KeyError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        results.append({"estimate": estimate.to_dict(), "verdicts": verdicts(estimate, devices, args.base_model)})
    if args.json:
        print(json.dumps({"cuda_available": bool(devices), "note": None if devices else cuda_note,
                          "devices": devices, "models": results, "skipped": skipped}, indent=2))
    else:
        print(format_report(devices, results, cuda_note))
        for name, reason in skipped.items():
            print(f"skipped {name}: {reason}")
    return 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
