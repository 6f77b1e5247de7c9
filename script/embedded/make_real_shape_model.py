"""A randomly initialised model of MedGemma-4B-it's exact shape, but few layers, built offline.

    python -m script.embedded.make_real_shape_model                    # -> model/medgemma-4b-shape
    python -m script.embedded.make_real_shape_model --layers 2 --vision-layers 1 --output /tmp/shape

The real checkpoint needs the hub; its shape does not. This builds ``Gemma3ForConditionalGeneration``
with google/medgemma-4b-it's published text config (hidden 2560, MLP 10240, 8 query / 4 key-value
heads of 256, 262,208 embedding rows tied to the LM head, Gemma 3's sliding/full attention pattern
and rope settings) and its SigLIP-896 vision config, with ``--layers`` decoder layers and
``--vision-layers`` vision layers instead of 34 and 27, so every path that depends on width or
vocabulary (LoRA shapes, the 262K-row LM head in scoring and training, the vision tower kept frozen
and out of LoRA, merging, reloading) runs as it will on the real weights, on a CPU, in minutes.

The tokenizer has Gemma's length (262,145 entries: the embedded Korean BPE, padded with
``<unusedN>`` entries no text produces) and the Gemma 3 chat template (formats.GEMMA_CHAT_TEMPLATE:
the system text opens the first user turn). Like MedGemma's, it has no reasoning markers: ``<R>``,
``<R/>``, ``<reasoning>`` are plain text, several tokens each (see README, "MedGemma's real shape").
Weights are saved in bfloat16, as the hub's are.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from script import formats
from script.check_gpu_memory import KNOWN_ARCHITECTURES
from script.cli import setup_logging
from script.data_io import atomic_write_dir
from script.embedded.make_tiny_model import (
    SEED,
    generation_config,
    sample_corpus,
    train_tokenizer,
    wrap_tokenizer,
)
from script.training_config import MODEL_DIR, SAMPLE_DATA_DIR

logger = logging.getLogger(__name__)

REAL_MODEL = "google/medgemma-4b-it"
REAL_SHAPE_DIR = MODEL_DIR / "medgemma-4b-shape"
TOKENIZER_LENGTH = 262_145  # google/medgemma-4b-it's tokenizer; its embedding has 262,208 rows
# Published config of google/medgemma-4b-it beyond the dimensions check_gpu_memory keeps.
TEXT_EXTRAS = dict(
    query_pre_attn_scalar=256,
    sliding_window=1024,
    max_position_embeddings=131_072,
    rms_norm_eps=1e-6,
    rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
                     "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
)
SLIDING_PER_FULL = 5  # Gemma 3: five sliding-window layers, then one global layer
VISION_EXTRAS = dict(num_attention_heads=16, vision_use_head=False, layer_norm_eps=1e-6)
MM_TOKENS_PER_IMAGE = 256


def layer_types(layers: int) -> list[str]:
    """Gemma 3's pattern cut to ``layers``; the last layer is always global so that a short model
    still has both kinds."""
    kinds = ["full_attention" if (i + 1) % (SLIDING_PER_FULL + 1) == 0 else "sliding_attention" for i in range(layers)]
    kinds[-1] = "full_attention"
    return kinds


def real_shape_tokenizer(sample_dir: Path = SAMPLE_DATA_DIR):
    """The embedded Korean BPE at Gemma's length, without the reasoning markers."""
    from tokenizers import Tokenizer

    data = json.loads(train_tokenizer(sample_corpus(sample_dir)).to_str())
    reasoning = set(formats.REASONING_SPECIAL_TOKENS)
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in reasoning]
    vocab: dict[str, int] = data["model"]["vocab"]
    for i, token in enumerate(sorted(reasoning & set(vocab), key=vocab.get)):
        vocab[f"<unused_marker{i}>"] = vocab.pop(token)  # the id stays, no text reaches it
    for i in range(TOKENIZER_LENGTH - len(vocab)):
        vocab[f"<unused{i}>"] = len(vocab)
    tokenizer = wrap_tokenizer(Tokenizer.from_str(json.dumps(data)))
    assert len(tokenizer) == TOKENIZER_LENGTH, len(tokenizer)
    return tokenizer


def real_shape_config(tokenizer, layers: int = 2, vision_layers: int = 1):
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    arch = KNOWN_ARCHITECTURES[REAL_MODEL]
    text = Gemma3TextConfig(
        vocab_size=arch.vocab_size, hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
        num_hidden_layers=layers, num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads, head_dim=arch.head_dim, layer_types=layer_types(layers),
        tie_word_embeddings=arch.tie_word_embeddings, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **TEXT_EXTRAS)
    vision = {**arch.vision, "num_hidden_layers": vision_layers, **VISION_EXTRAS}
    return Gemma3Config(
        text_config=text.to_dict(), vision_config=SiglipVisionConfig(**vision).to_dict(),
        mm_tokens_per_image=MM_TOKENS_PER_IMAGE,
        boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
        tie_word_embeddings=True)


def build(out: Path = REAL_SHAPE_DIR, layers: int = 2, vision_layers: int = 1, force: bool = False,
          sample_dir: Path = SAMPLE_DATA_DIR, device: str = "cpu") -> dict:
    """Build (or keep) the model dir; returns what it holds. ``device`` is where the weights are
    initialised (the full 4.3B shape initialises in seconds on a GPU, minutes on a CPU)."""
    import torch
    from transformers import Gemma3ForConditionalGeneration

    if not force and (out / "config.json").is_file():
        config = json.loads((out / "config.json").read_text(encoding="utf-8"))
        if config["text_config"]["num_hidden_layers"] == layers and \
                config["vision_config"]["num_hidden_layers"] == vision_layers:
            logger.info("real-shape model already built: %s (use --force to rebuild)", out)
            return describe(out)
    tokenizer = real_shape_tokenizer(sample_dir)
    torch.manual_seed(SEED)
    # Built on the meta device and initialised once, in bf16, by the model's own _init_weights.
    # Building it directly draws every weight twice in fp32 (torch's layer defaults, then
    # _init_weights), and on a CPU drawing the 262K x 2560 embedding alone takes about 12 s.
    with torch.device("meta"):
        model = Gemma3ForConditionalGeneration(real_shape_config(tokenizer, layers, vision_layers))
    model = model.to(torch.bfloat16).to_empty(device=device)
    model.init_weights()
    model.generation_config = generation_config(tokenizer)

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    atomic_write_dir(out, save)
    summary = describe(out)
    logger.info("saved %s: %s", out, json.dumps(summary))
    return summary


def describe(out: Path) -> dict:
    config = json.loads((Path(out) / "config.json").read_text(encoding="utf-8"))
    text = config["text_config"]
    weights = sum(p.stat().st_size for p in Path(out).glob("*.safetensors"))
    return {"dir": str(out), "class": config["architectures"][0], "shape_of": REAL_MODEL,
            "vocab_size": text["vocab_size"], "tokenizer_length": TOKENIZER_LENGTH,
            "hidden_size": text["hidden_size"], "layers": text["num_hidden_layers"],
            "vision_layers": config["vision_config"]["num_hidden_layers"], "weights_bytes": weights}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=REAL_SHAPE_DIR, help="model dir (default: %(default)s)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (the real model: 34)")
    parser.add_argument("--vision-layers", type=int, default=1, help="SigLIP layers (the real model: 27)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the dir holds this shape")
    args = parser.parse_args(argv)
    setup_logging()
    print(json.dumps(build(args.output, args.layers, args.vision_layers, args.force)))


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
