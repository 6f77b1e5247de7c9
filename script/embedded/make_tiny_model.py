"""Build the embedded default models: ``model/tiny-gemma3`` and ``model/tiny-gemma3-mm``.

    python -m script.embedded.make_tiny_model                 # build both if missing
    python -m script.embedded.make_tiny_model --force         # rebuild

``tiny`` is a Gemma-3-architecture causal LM (``Gemma3ForCausalLM``, ~2M parameters) with a Korean
BPE tokenizer trained offline on the shipped sample text, briefly pretrained on the sample's
plain-text corpora so that it is a usable base for LoRA. ``tiny-mm`` wraps the *same* language
model weights in ``Gemma3ForConditionalGeneration`` with a tiny vision tower, the class of the
multimodal MedGemma-4B-it, so the multimodal code path is tested without the real weights.

The tokenizer follows Gemma's design: SentencePiece-style "▁" word boundaries, BPE with byte
fallback (no text is ever unknown), <pad>=0 <eos>=1 <bos>=2 <unk>=3, turn markers, and an
embedding matrix padded to a multiple of 64 rows beyond the tokenizer's length (as MedGemma's
262,208 rows for 262,145 tokens). Projection sizes are multiples of 32, which bitsandbytes' CPU
4-bit kernels need. Everything is seeded, so a rebuild gives the same tokenizer and weights.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

from script import formats
from script.cli import setup_logging
from script.data_io import atomic_write_dir, iter_jsonl
from script.embedded.sample_knowledge import CONDITIONS
from script.training_config import SAMPLE_DATA_DIR, TINY_MM_MODEL_DIR, TINY_MODEL_DIR

logger = logging.getLogger(__name__)

SEED = 0
VOCAB_SIZE = 8000  # tokenizer entries, special and byte tokens included
EMBEDDING_ROW_MULTIPLE = 64

# Special tokens in id order: Gemma's first four, then turn, reasoning and image markers.
BASE_SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]
IMAGE_TOKENS = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
SPECIAL_TOKENS = BASE_SPECIAL_TOKENS + formats.CHAT_SPECIAL_TOKENS + formats.REASONING_SPECIAL_TOKENS + IMAGE_TOKENS
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]

TEXT_CONFIG = dict(
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    query_pre_attn_scalar=32,
    max_position_embeddings=2048,
    sliding_window=256,
    layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
VISION_CONFIG = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=28,
    patch_size=14,
    vision_use_head=False,
)
MM_TOKENS_PER_IMAGE = 4  # (28 / 14)^2 patches, pooled 1:1

# Neither the tokenizer nor the base model ever sees evaluation questions.
EVALUATION_DATASETS = ("sean0042/KorMedMCQA", "HAERAE-HUB/KMMLU")
# A real base model has read general text before anyone fine-tunes it; a randomly initialised one
# has no usable output distribution, and LoRA on top of it barely learns (its frozen embeddings and
# norms bound the logits). So the tiny base gets a short full-parameter pretraining on the sample's
# plain-text corpora (c4/namuwiki/wikipedia-like; none of the fine-tuning sources).
PRETRAIN_DATASETS = ("allenai/c4", "heegyu/namuwiki", "wikimedia/wikipedia")
PRETRAIN_STEPS = 150
PRETRAIN_BATCH = 16
PRETRAIN_SEQ_LEN = 128
PRETRAIN_LR = 3e-3


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------
def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        if value.strip():
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _sample_files(sample_dir: Path, only: Sequence[str] | None = None) -> list[Path]:
    files = sorted(sample_dir.rglob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no sample data under {sample_dir}; run: python -m script.embedded.make_sample_data")
    files = [f for f in files if not any(part in f.as_posix() for part in EVALUATION_DATASETS)]
    if only is not None:
        files = [f for f in files if any(part in f.as_posix() for part in only)]
    return files


def sample_corpus(sample_dir: Path = SAMPLE_DATA_DIR, only: Sequence[str] | None = None) -> Iterator[str]:
    """Text fields of the shipped sample data in a stable order (evaluation datasets left out)."""
    if only is None:
        # Role names of the chat template, so "user"/"model" are whole pieces like in Gemma's vocabulary.
        yield from ["user model"] * 50
        yield from formats.SYSTEM_PROMPTS.values()
        yield formats.MCQ_REASONING_INSTRUCTION
        yield formats.MCQ_DETAILED_FORMAT
    for path in _sample_files(sample_dir, only):
        for _, record in iter_jsonl(path):
            yield from _strings(record)


def train_tokenizer(corpus: Iterator[str], vocab_size: int = VOCAB_SIZE):
    """Train a byte-fallback BPE on ``corpus`` and return a ``tokenizers.Tokenizer``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    reserved = len(SPECIAL_TOKENS) + len(BYTE_TOKENS)
    # Newlines are pieces of their own, so a turn's first token never fuses with the "\n" that ends
    # "<start_of_turn>model\n": the prompt is then always a token prefix of prompt + answer.
    pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True),
    ])

    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - reserved, min_frequency=2, show_progress=False, limit_alphabet=2000
    )
    learner.train_from_iterator(corpus, trainer=trainer)
    learned = json.loads(learner.to_str())["model"]

    # Lay out the final vocabulary: specials, the 256 byte tokens, then the learned pieces.
    vocab: dict[str, int] = {}
    for token in SPECIAL_TOKENS + BYTE_TOKENS:
        vocab[token] = len(vocab)
    for token, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in learned["merges"]]

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    # Plain-text encoding starts with <bos>, like Gemma's tokenizer; chat rendering writes its own.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    # Markers are matched whole before BPE. Reasoning markers are not "special" so that decoding
    # with skip_special_tokens keeps them visible in generated text.
    specials = BASE_SPECIAL_TOKENS + formats.CHAT_SPECIAL_TOKENS + IMAGE_TOKENS
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in formats.REASONING_SPECIAL_TOKENS])
    return tokenizer


def wrap_tokenizer(tokenizer):
    """A transformers tokenizer with Gemma's special-token roles and chat template."""
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="right",  # training; batched scoring/generation switch to left
        model_max_length=TEXT_CONFIG["max_position_embeddings"],
    )
    wrapped.chat_template = formats.GEMMA_CHAT_TEMPLATE
    return wrapped


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
def padded_vocab_size(tokenizer_len: int) -> int:
    rows = -(-tokenizer_len // EMBEDDING_ROW_MULTIPLE) * EMBEDDING_ROW_MULTIPLE
    return rows if rows > tokenizer_len else rows + EMBEDDING_ROW_MULTIPLE


def text_config(tokenizer):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=padded_vocab_size(len(tokenizer)),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **TEXT_CONFIG,
    )


def generation_config(tokenizer):
    from transformers import GenerationConfig

    # Generation stops at <eos> or <end_of_turn>, as MedGemma's generation config does.
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(formats.END_OF_TURN)],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )


def build_text_model(tokenizer):
    import torch
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(SEED)
    model = Gemma3ForCausalLM(text_config(tokenizer))
    model.generation_config = generation_config(tokenizer)
    return model


def pretraining_texts(tokenizer, sample_dir: Path = SAMPLE_DATA_DIR) -> list[str]:
    """The tiny base's pretraining mix, built from the plain-text corpora only.

    MedGemma-it arrives knowing its chat markers and how to answer a multiple-choice question with
    a letter; a base that has never seen ``<end_of_turn>`` or an answer letter cannot learn to emit
    them through LoRA alone (its embeddings are frozen). So besides the raw documents the mix has
    each document as a chat turn and, for the everyday (non-medical) documents with titles, a
    "which title fits" question answered with a letter. No medical question is asked here: what
    the medical MCQs test is learnt only from the fine-tuning sources.
    """
    import random


    rng = random.Random(SEED)
    medical_titles = {c.ko for c in CONDITIONS}
    docs = [record for path in _sample_files(sample_dir, PRETRAIN_DATASETS) for _, record in iter_jsonl(path)]
    titled = [d for d in docs if d.get("title") and d["title"] not in medical_titles]
    all_titles = sorted({d["title"] for d in titled})
    texts = []
    for doc in docs:
        text = doc["text"].strip()
        texts.append(text)
        head, _, rest = text.partition(". ")
        if rest:
            texts.append(formats.render_conversation(tokenizer, formats.build_messages(
                None, f"다음 글을 이어서 쓰세요: {head}.", rest)))
    for doc in titled:
        distractors = rng.sample([t for t in all_titles if t != doc["title"]], k=min(4, len(all_titles) - 1))
        choices = distractors + [doc["title"]]
        rng.shuffle(choices)
        options = dict(zip(formats.OPTION_LETTERS, choices))
        answer = formats.OPTION_LETTERS[choices.index(doc["title"])]
        question = f"다음 글의 제목으로 알맞은 것은?\n{doc['text'].strip()[:150]}"
        texts.append(formats.render_conversation(tokenizer, formats.type_messages(
            formats.TYPE3_WORD, formats.format_mcq(question, options), answer)))
    rng.shuffle(texts)
    return texts


def pretrain(model, tokenizer, texts: Sequence[str], steps: int = PRETRAIN_STEPS) -> list[float]:
    """Full-parameter causal-LM training on packed ``texts``; returns the loss per step.

    Seeded and single-process, so a rebuild on the same machine reproduces the weights.
    """
    import torch
    from tqdm.auto import tqdm

    if steps <= 0:
        return []
    ids: list[int] = []
    for text in texts:  # rendered conversations carry their own <bos>
        ids += tokenizer(text, add_special_tokens=not text.startswith(tokenizer.bos_token))["input_ids"]
        ids.append(tokenizer.eos_token_id)
    chunks = [ids[i : i + PRETRAIN_SEQ_LEN] for i in range(0, len(ids) - PRETRAIN_SEQ_LEN + 1, PRETRAIN_SEQ_LEN)]
    if not chunks:
        raise ValueError("pretraining corpus is empty")
    order = torch.randperm(len(chunks), generator=torch.Generator().manual_seed(SEED)).tolist()
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, weight_decay=0.0)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.1, 1 - s / steps))
    model.train()
    losses = []
    for step in tqdm(range(steps), desc="pretraining tiny base", unit="step"):
        rows = [chunks[order[(step * PRETRAIN_BATCH + i) % len(order)]] for i in range(PRETRAIN_BATCH)]
        batch = torch.tensor(rows)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach().item())
    model.eval()
    logger.info("pretrained %d steps on %d tokens: loss %.2f -> %.2f", steps, len(ids), losses[0], losses[-1])
    return losses


def build_multimodal_model(tokenizer, text_model):
    """Gemma3ForConditionalGeneration whose language model carries ``text_model``'s weights."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    config = Gemma3Config(
        text_config=text_config(tokenizer).to_dict(),
        vision_config=SiglipVisionConfig(**VISION_CONFIG).to_dict(),
        mm_tokens_per_image=MM_TOKENS_PER_IMAGE,
        boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
        tie_word_embeddings=True,
    )
    torch.manual_seed(SEED)
    model = Gemma3ForConditionalGeneration(config)
    missing, unexpected = model.model.language_model.load_state_dict(text_model.model.state_dict(), strict=True)
    assert not missing and not unexpected
    model.tie_weights()
    model.generation_config = generation_config(tokenizer)
    return model


def build(out_text: Path, out_mm: Path, sample_dir: Path, force: bool = False,
          pretrain_steps: int = PRETRAIN_STEPS) -> None:
    if not force and (out_text / "config.json").exists() and (out_mm / "config.json").exists():
        logger.info("tiny models already built: %s, %s (use --force to rebuild)", out_text, out_mm)
        return
    logger.info("training the Korean tokenizer on %s", sample_dir)
    tokenizer = wrap_tokenizer(train_tokenizer(sample_corpus(sample_dir)))
    text_model = build_text_model(tokenizer)
    pretrain(text_model, tokenizer, pretraining_texts(tokenizer, sample_dir), pretrain_steps)
    mm_model = build_multimodal_model(tokenizer, text_model)
    for out, model in ((out_text, text_model), (out_mm, mm_model)):
        def save(tmp: Path, model=model) -> None:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

        atomic_write_dir(out, save)
        n_params = sum(p.numel() for p in model.parameters())
        logger.info("saved %s: %s, %.2fM parameters, %d tokens, %d embedding rows",
                    out, type(model).__name__, n_params / 1e6, len(tokenizer),
                    model.get_input_embeddings().weight.shape[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=TINY_MODEL_DIR, help="text model dir (default: %(default)s)")
    parser.add_argument("--output-mm", type=Path, default=TINY_MM_MODEL_DIR,
                        help="multimodal model dir (default: %(default)s)")
    parser.add_argument("--sample-dir", type=Path, default=SAMPLE_DATA_DIR,
                        help="Korean text the tokenizer learns from (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the models exist")
    parser.add_argument("--pretrain-steps", type=int, default=PRETRAIN_STEPS,
                        help="full-parameter steps on the plain-text sample corpora; 0 = random weights "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    setup_logging()
    build(args.output, args.output_mm, args.sample_dir, force=args.force, pretrain_steps=args.pretrain_steps)


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
