"""Extend a model's vocabulary with Korean sub-word pieces learned from the refined corpus.

    python -m script.extend_tokenizer --model tiny
    python -m script.extend_tokenizer --model tiny --train-embeddings-steps 50
    python -m script.extend_tokenizer --model medgemma-4b --max-corpus-chars 200000000 \\
        --train-embeddings-steps 2000
    python -m script.train.train_type1_text --model tiny --base-model model/extended_tokenizer/tiny

The guide extended MedGemma's 262,208-entry vocabulary by 23,699 Korean tokens (-> 285,844).
This script does the same at any scale; by default it adds the guide's share (23,699 / 262,208,
about 9%) of the model's tokenizer length, so ~720 tokens for the embedded tiny model.

How the pieces are chosen. Byte-pair merges are learned *on top of* the existing tokenizer: the
refined text is first cut exactly as the old tokenizer cuts it, then the most frequent adjacent
pair whose joined text is a Korean piece (an optional word-start "▁" followed by Hangul only) is
merged, again and again. The merges are appended after all existing ones, so

  * every old token keeps its id, and text with none of the new pieces tokenizes exactly as before;
  * a new piece appears only where the old tokenizer produced its parts side by side; nothing is
    matched ahead of the normal segmentation (as ``add_tokens`` would do, cutting words apart);
  * decoding is unchanged: a new piece is the concatenation of old pieces.

Hangul syllables that the old tokenizer could only spell as UTF-8 byte tokens are added first.

How the rows are initialised. New ids start at ``len(tokenizer)`` (not at the embedding matrix's
padded row count). The embedding matrix is resized to a multiple of 64 rows, like the original
(262,145 tokens in 262,208 rows): matrix shapes that are multiples of 64 keep the output head on
the fast GPU kernel paths. A new token's row is the mean of the rows of the old tokenizer's pieces
of its text, in the input embeddings and, when the model does not tie them, the output head too;
Gemma ties the two, so there is one matrix and it stays tied. Rows past the tokenizer's length
(padding, never produced) copy the mean of the old padding rows so they stay as unlikely as before.

Checks (all recorded in extension_report.json; a failed check exits non-zero):
  * decode(encode(text)) gives the text back on the held-out corpus slice, a sample of the training
    corpus and KorMedMCQA items (question + options), wherever the old tokenizer managed it;
  * tokens per character before/after on the held-out slice;
  * the causal-LM loss of one batch of held-out text before and after the extension (the loss a
    first training step sees), per token and per character;
  * logits of the old vocabulary are unchanged on text that contains no new piece.

Embedding phase (``--train-embeddings-steps N``): N optimizer steps of causal-LM training on the
corpus in which only ``embed_tokens`` is trainable (plus ``lm_head`` when untied); everything else,
including the vision tower of multimodal checkpoints, is frozen and no LoRA is attached.

Output: model/extended_tokenizer/<MODEL>/ = full model (safetensors), tokenizer, chat template,
extension_report.json and README.md. It loads like any base model (``--base-model`` of every
trainer, ``model_loading.load_base_model`` / ``load_tokenizer``). Note that adapters trained on it
with embeddings in ``modules_to_save`` carry the whole resized matrix (GBs for MedGemma).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import heapq
import json
import logging
import os
import re
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from script import formats
from script.cli import setup_logging
from script.data_io import DataError, Reject, atomic_write_dir, iter_jsonl, write_rejects
from script.hardware import resolve_device, resolve_dtype
from script.model_loading import (
    add_pickle_weights_flag,
    ensure_model_available,
    is_adapter_dir,
    load_base_model,
    load_tokenizer,
)
from script.training_config import (
    CLEAN_DIR,
    DEFAULT_MODEL,
    KORMEDMCQA_TEST_DIR,
    LOG_DIR,
    MODEL_CONFIGS,
    TENSORBOARD_DIR,
    ConfigError,
    UnknownModelError,
    get_memory_config,
    get_model_config,
    stage_output_dir,
)
from script.training_utils import git_sha, last_checkpoint, library_versions, set_seed

logger = logging.getLogger(__name__)

STAGE = "extended_tokenizer"

# The guide's extension: 23,699 new Korean tokens for MedGemma's 262,208-entry vocabulary.
GUIDE_NEW_TOKENS = 23_699
GUIDE_OLD_VOCAB = 262_208
EMBEDDING_ROW_MULTIPLE = 64

DEFAULT_CORPUS = (CLEAN_DIR / "00_plain_text", CLEAN_DIR / "type1_text" / "train.jsonl")
# Only read for the round-trip check (never learned from): question + options of each item.
DEFAULT_ROUNDTRIP_ITEMS = (KORMEDMCQA_TEST_DIR / "guide604.jsonl", CLEAN_DIR / "02_kor_med_test" / "train.jsonl")

DEFAULT_MAX_CORPUS_CHARS = 50_000_000  # ~100 MB of Korean text: minutes of counting, plenty of statistics
DEFAULT_HELD_OUT_FRACTION = 0.05
# Mean-initialised rows cost a few percent of loss per character until they are trained (measured
# on tiny: +3%); more than this means the extension damaged the model.
DEFAULT_MAX_LOSS_INCREASE = 0.05
MAX_REJECT_FRACTION = 0.05  # more bad corpus lines than this and the run stops
PROBE_TEXTS = 16  # held-out texts in the before/after loss batch
ROUNDTRIP_TRAIN_SAMPLE = 2000  # training texts decoded back in the round-trip check

HANGUL = "\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f"  # syllables, conjoining and compatibility jamo
KOREAN_PIECE = re.compile(f"\u2581?[{HANGUL}]+")  # what a new piece may look like (whole string)
HANGUL_CHAR = re.compile(f"[{HANGUL}]")


class ExtensionError(RuntimeError):
    """The extended tokenizer or model failed a check; the message says which."""


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("model and data")
    add_pickle_weights_flag(g)
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"registry name: {', '.join(MODEL_CONFIGS)} (default: %(default)s)")
    g.add_argument("--base-model", default=None,
                   help="full model dir or hub id to extend instead of the registry path (not a LoRA adapter)")
    g.add_argument("--corpus", type=Path, nargs="+", default=list(DEFAULT_CORPUS),
                   help="JSONL files or dirs of them (records with 'text' or 'messages'); system turns are "
                        f"skipped (default: {' '.join(map(str, DEFAULT_CORPUS))})")
    g.add_argument("--output", type=Path, default=None, help="output dir (default: model/extended_tokenizer/<MODEL>)")
    g.add_argument("--roundtrip-items", type=Path, nargs="*", default=list(DEFAULT_ROUNDTRIP_ITEMS),
                   help="KorMedMCQA item files whose question + options must decode back unchanged; missing "
                        f"files are skipped (default: {' '.join(map(str, DEFAULT_ROUNDTRIP_ITEMS))})")

    t = parser.add_argument_group("tokenizer extension")
    t.add_argument("--num-new-tokens", type=int, default=None,
                   help=f"pieces to add (default: the guide's {GUIDE_NEW_TOKENS:,}/{GUIDE_OLD_VOCAB:,} share of the "
                        "tokenizer length, ~9%%)")
    t.add_argument("--min-frequency", type=int, default=2,
                   help="a pair must occur at least this often in the corpus to be merged (default: %(default)s)")
    t.add_argument("--max-corpus-chars", type=int, default=DEFAULT_MAX_CORPUS_CHARS,
                   help="read at most this many characters, split evenly between the --corpus entries "
                        "(default: %(default)s)")
    t.add_argument("--max-loss-increase", type=float, default=DEFAULT_MAX_LOSS_INCREASE,
                   help="fail (and save nothing) if the loss per character on the same held-out text rises by more "
                        "than this fraction; measured after the embedding phase when one runs (default: %(default)s)")
    t.add_argument("--held-out-fraction", type=float, default=DEFAULT_HELD_OUT_FRACTION,
                   help="share of corpus texts kept out of learning and training, for the before/after "
                        "measurements; chosen by a hash of the text (default: %(default)s)")

    e = parser.add_argument_group("embedding phase (only embed_tokens, + lm_head when untied)")
    e.add_argument("--train-embeddings-steps", type=int, default=0,
                   help="optimizer steps of embedding-only training after the extension; 0 = just extend "
                        "(default: %(default)s)")
    e.add_argument("--lr", type=float, default=None, help="learning rate (default: the registry's)")
    e.add_argument("--batch-size", type=int, default=None,
                   help="sequences per step (default: MEMORY_CONFIGS embedding_batch, else the registry's batch)")
    e.add_argument("--grad-accum", type=int, default=None,
                   help="gradient accumulation (default: MEMORY_CONFIGS embedding_grad_accum, else the registry's)")
    e.add_argument("--max-length", type=int, default=None,
                   help="tokens per packed training sequence and per loss-probe text (default: the registry's)")
    e.add_argument("--save-steps", type=int, default=500,
                   help="checkpoint the embedding phase every N steps (default: %(default)s)")
    e.add_argument("--resume", action="store_true",
                   help="continue the embedding phase from the last checkpoint-N in the output dir (the "
                        "extension itself is recomputed: it is deterministic for the same corpus and flags)")
    e.add_argument("--seed", type=int, default=42, help="seed of the embedding phase (default: %(default)s)")
    e.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    return parser


# ---------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------
def record_text(record: dict) -> str | None:
    """The text of a corpus record: ``text``, or the non-system turns of ``messages``."""
    if isinstance(record.get("text"), str):
        return record["text"]
    messages = record.get("messages")
    if isinstance(messages, list):
        parts = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") != "system"]
        if parts and all(isinstance(p, str) for p in parts):
            return "\n".join(parts)
    return None


def _validate_corpus_record(record: dict) -> str | None:
    text = record_text(record)
    if text is None:
        return "expected a string field 'text' or a list 'messages' of {role, content: string}"
    return None if text.strip() else "empty text"


def corpus_files(entry: Path) -> list[Path]:
    if entry.is_dir():
        files = sorted(entry.rglob("*.jsonl"))
        if not files:
            raise DataError(f"{entry}: no *.jsonl files")
        return files
    if not entry.is_file():
        raise DataError(f"{entry}: no such file or directory (build the data first: make data)")
    return [entry]


def is_held_out(text: str, fraction: float) -> bool:
    """Stable across runs and corpus order: decided by a hash of the text alone."""
    digest = int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")
    return digest % 1_000_000 < fraction * 1_000_000


@dataclass
class Corpus:
    train: list[str] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    @property
    def chars(self) -> int:
        return sum(map(len, self.train)) + sum(map(len, self.held_out))


def read_corpus(entries: Sequence[Path], max_chars: int, held_out_fraction: float,
                rejects_path: Path | None = None) -> Corpus:
    """Texts of the corpus entries, each entry capped at ``max_chars / len(entries)`` characters.

    Bad lines are reported as ``path:line: reason`` and written to ``rejects_path``; more than
    MAX_REJECT_FRACTION of them stops the run.
    """
    corpus = Corpus()
    share = max_chars // max(1, len(entries))
    lines = 0

    def reject(r: Reject) -> None:
        logger.warning("%s", r)
        corpus.rejects.append(r)

    for entry in entries:
        used = 0
        for path in corpus_files(Path(entry)):
            if used >= share:
                break
            taken = 0
            for _, record in iter_jsonl(path, _validate_corpus_record, on_reject=reject):
                lines += 1
                text = record_text(record)
                (corpus.held_out if is_held_out(text, held_out_fraction) else corpus.train).append(text)
                taken += 1
                used += len(text)
                if used >= share:
                    break
            corpus.files.append({"path": str(path), "texts": taken})
    if rejects_path is not None and corpus.rejects:
        write_rejects(rejects_path, corpus.rejects)
    total = lines + len(corpus.rejects)
    if total and len(corpus.rejects) / total > MAX_REJECT_FRACTION:
        raise DataError(f"{len(corpus.rejects)} of {total} corpus lines rejected (first: {corpus.rejects[0]}); "
                        f"see {rejects_path}")
    if not corpus.train:
        raise DataError(f"no usable text in {', '.join(map(str, entries))}")
    return corpus


def mcq_texts(paths: Iterable[Path]) -> list[str]:
    """Question + options of KorMedMCQA items (normalised ``options`` or upstream A-E columns)."""
    texts = []
    for path in paths:
        if not Path(path).is_file():
            logger.info("round-trip items: %s not found, skipped", path)
            continue
        for _, item in iter_jsonl(path, on_reject=lambda r: logger.warning("%s", r)):
            options = item.get("options") or {k: item[k] for k in formats.OPTION_LETTERS if item.get(k)}
            if isinstance(item.get("question"), str) and isinstance(options, dict):
                texts.append(formats.format_mcq(item["question"], {k: str(v) for k, v in options.items()}))
    return texts


# ---------------------------------------------------------------------------
# Learning the pieces: byte-pair merges continued on top of the old tokenizer
# ---------------------------------------------------------------------------
def backend_json(tokenizer) -> dict:
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    if data.get("model", {}).get("type") != "BPE":
        raise ExtensionError(f"only BPE tokenizers (Gemma's kind) can be extended; this one is "
                             f"{data.get('model', {}).get('type')!r}")
    return data


def model_words(tokenizer, texts: Iterable[str]) -> Counter:
    """Count the pre-tokenized words of ``texts`` as the BPE model sees them.

    The tokenizer's own normalizer and pre-tokenizer run first (Gemma: spaces -> "▁", no split;
    tiny: Metaspace split). Words are then cut before each "▁", because a new piece never spans
    one; special-token strings are cut out, as the tokenizer does before BPE.
    """
    backend = tokenizer.backend_tokenizer
    specials = sorted((t.content for t in backend.get_added_tokens_decoder().values()), key=len, reverse=True)
    special_re = re.compile("|".join(map(re.escape, specials))) if specials else None
    words: Counter = Counter()
    for text in tqdm(texts, desc="counting words", unit="text", mininterval=5):
        for chunk in special_re.split(text) if special_re else [text]:
            if not HANGUL_CHAR.search(chunk):
                continue  # nothing to learn from: pieces are Korean
            normalized = backend.normalizer.normalize_str(chunk) if backend.normalizer else chunk
            pieces = (backend.pre_tokenizer.pre_tokenize_str(normalized) if backend.pre_tokenizer
                      else [(normalized, None)])
            for piece, _ in pieces:
                for word in re.split("(?=\u2581)", piece):
                    if word and HANGUL_CHAR.search(word):
                        words[word] += 1
    return words


@dataclass
class LearnedPieces:
    pieces: list[str]  # new vocabulary entries in id order
    merges: list[tuple[str, str]]  # appended after the old merges, in rank order
    new_chars: list[str]  # the subset of ``pieces`` that are single characters (formerly byte tokens)
    frequencies: dict[str, int]  # corpus count of each piece when it was added


def _bpe_model(vocab: dict[str, int], merges: list[tuple[str, str]], unk_token: str | None):
    from tokenizers.models import BPE

    return BPE(vocab=vocab, merges=merges, unk_token=unk_token, byte_fallback=True, fuse_unk=False)


def learn_pieces(tokenizer, words: Counter, num_new: int, min_frequency: int = 2) -> LearnedPieces:
    """Up to ``num_new`` Korean pieces, chosen by continuing BPE over the old segmentation.

    The standard BPE trainer (``tokenizers.trainers.BpeTrainer``) starts from characters and cannot
    continue an existing merge list, so this is the textbook merge loop with incremental pair
    counts: each round merges the most frequent adjacent pair (ties broken by the pair's text,
    so runs are reproducible) whose joined text matches KOREAN_PIECE and is not an old token.
    """
    data = backend_json(tokenizer)
    vocab: dict[str, int] = data["model"]["vocab"]
    old_merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in data["model"]["merges"]]
    unk = data["model"].get("unk_token")
    frequencies: dict[str, int] = {}

    # 1. Hangul characters the old vocabulary lacks (spelled as 3 byte tokens): whole-character pieces.
    missing: Counter = Counter()
    for word, count in words.items():
        for ch in word:
            if ch not in vocab and HANGUL_CHAR.match(ch):
                missing[ch] += count
    new_chars = [ch for ch, c in sorted(missing.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_frequency]
    new_chars = new_chars[:num_new]
    frequencies.update({ch: missing[ch] for ch in new_chars})

    # 2. The old segmentation of every word (with the new characters as symbols of their own).
    segmenter = tokenizer.backend_tokenizer.model
    if new_chars:
        top = max(vocab.values())
        seg_vocab = {**vocab, **{ch: top + 1 + k for k, ch in enumerate(new_chars)}}
        segmenter = _bpe_model(seg_vocab, old_merges, unk)
    symbols: list[list[str]] = []
    counts: list[int] = []
    for word, count in tqdm(words.items(), desc="segmenting words", unit="word", mininterval=5):
        seq = [sys.intern(t.value) for t in segmenter.tokenize(word)]
        if len(seq) > 1:  # a single token has nothing to merge
            symbols.append(seq)
            counts.append(count)

    # 3. Merge loop. Only pairs that may become a piece are counted at all.
    pair_counts: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)

    def candidate(a: str, b: str) -> bool:
        return KOREAN_PIECE.fullmatch(a + b) is not None

    def add_pairs(i: int, sign: int) -> set:
        touched = set()
        seq = symbols[i]
        for a, b in zip(seq, seq[1:]):
            if candidate(a, b):
                pair_counts[(a, b)] += sign * counts[i]
                if sign > 0:
                    where[(a, b)].add(i)
                touched.add((a, b))
        return touched

    for i in range(len(symbols)):
        add_pairs(i, +1)
    heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    pieces = list(new_chars)
    known = set(pieces)
    merges: list[tuple[str, str]] = []
    banned: set[tuple[str, str]] = set()
    progress = tqdm(total=num_new, initial=len(pieces), desc="learning pieces", unit="piece", mininterval=5)
    while len(pieces) < num_new and heap:
        neg, a, b = heapq.heappop(heap)
        if -neg != pair_counts.get((a, b), 0) or (a, b) in banned:
            continue  # stale heap entry
        if -neg < min_frequency:
            break
        merged = a + b
        if merged in vocab:  # an old token its parts never reach: joining them would re-cut old text
            banned.add((a, b))
            continue
        merges.append((a, b))
        if merged not in known:  # the same text can come from two different splits: one piece
            pieces.append(merged)
            known.add(merged)
            frequencies[merged] = -neg
            progress.update()
        touched = set()
        for i in list(where.pop((a, b), ())):
            touched |= add_pairs(i, -1)
            seq, out, j = symbols[i], [], 0
            while j < len(seq):
                if j + 1 < len(seq) and seq[j] == a and seq[j + 1] == b:
                    out.append(merged)
                    j += 2
                else:
                    out.append(seq[j])
                    j += 1
            symbols[i] = out
            touched |= add_pairs(i, +1)
        for pair in touched:
            if pair_counts.get(pair, 0) > 0 and pair not in banned and pair != (a, b):
                heapq.heappush(heap, (-pair_counts[pair], *pair))
        pair_counts.pop((a, b), None)
    progress.close()
    if len(pieces) < num_new:
        logger.warning("only %d pieces occur at least %d times (asked for %d); add corpus text or lower "
                       "--min-frequency", len(pieces), min_frequency, num_new)
    return LearnedPieces(pieces=pieces, merges=merges, new_chars=new_chars, frequencies=frequencies)


# ---------------------------------------------------------------------------
# The extended tokenizer
# ---------------------------------------------------------------------------
def first_new_id(tokenizer) -> int:
    """``len(tokenizer)`` (Gemma: 262,145 = every id below it is taken), or past the highest id if the
    vocabulary has holes, so a new id never collides with an old one."""
    return max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)


def build_extended_tokenizer(tokenizer, learned: LearnedPieces, staging_dir: Path):
    """The old tokenizer with ``learned`` appended to its BPE model, saved to and loaded from ``staging_dir``.

    New ids start at ``len(tokenizer)``. The reasoning markers of formats.py become whole tokens
    where the vocabulary lacks them (MedGemma's does; the embedded tokenizer has them). Saving and
    reloading through the tokenizer's own class keeps its special tokens, chat template and
    byte fallback, and is exactly how every later script will load it.
    """
    data = backend_json(tokenizer)
    model = data["model"]
    first = next_id = first_new_id(tokenizer)
    # Added tokens outside the BPE vocabulary (Gemma's <image_soft_token>, 262144) are given ids
    # in load order when the tokenizer is rebuilt from vocab + merges, which would shift them past
    # the new pieces. Entered in the vocabulary at their own ids they keep them (as in tiny's layout).
    by_id = {i: t for t, i in model["vocab"].items()}
    for added in data["added_tokens"]:
        if added["content"] not in model["vocab"]:
            if added["id"] in by_id:
                raise ExtensionError(f"added token {added['content']!r} shares id {added['id']} with "
                                     f"{by_id[added['id']]!r}")
            model["vocab"][added["content"]] = added["id"]
    for piece in learned.pieces:
        model["vocab"][piece] = next_id
        next_id += 1
    as_strings = bool(model["merges"]) and isinstance(model["merges"][0], str)
    model["merges"].extend(f"{a} {b}" if as_strings else [a, b] for a, b in learned.merges)
    old_vocab = tokenizer.get_vocab()
    markers = [t for t in formats.REASONING_SPECIAL_TOKENS if t not in old_vocab]
    for marker in markers:
        # In the BPE vocabulary and in the added tokens with the same id: matched whole, before BPE,
        # and not "special", so decoding with skip_special_tokens keeps it visible (as in tiny).
        model["vocab"][marker] = next_id
        data["added_tokens"].append({"id": next_id, "content": marker, "single_word": False, "lstrip": False,
                                     "rstrip": False, "normalized": False, "special": False})
        next_id += 1

    tokenizer.save_pretrained(staging_dir)
    (staging_dir / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    extended = load_tokenizer(str(staging_dir), padding_side=tokenizer.padding_side)

    new_vocab = extended.get_vocab()
    moved = [t for t, i in old_vocab.items() if new_vocab.get(t) != i]
    if moved:
        raise ExtensionError(f"{len(moved)} old tokens changed id after the extension, e.g. {moved[:5]}")
    if len(extended) != len(tokenizer) + next_id - first or first_new_id(extended) != next_id:
        raise ExtensionError(f"extended tokenizer has length {len(extended)}, expected {len(tokenizer) + next_id - first}")
    for marker in markers:
        if extended.encode(marker, add_special_tokens=False) != [new_vocab[marker]]:
            raise ExtensionError(f"{marker} is not a single token after the extension")
    if extended.chat_template != tokenizer.chat_template:
        raise ExtensionError("the chat template was lost in the extension")
    return extended, markers


def old_piece_ids(old_tokenizer, text: str, model_space: bool) -> list[int]:
    """Ids of the old tokenizer's pieces of ``text``: the rows a new row is the mean of.

    Learned pieces are BPE-model strings ("▁" for a space) and go straight to the old BPE model;
    markers are raw text and go through the whole old tokenizer.
    """
    if model_space:
        return [t.id for t in old_tokenizer.backend_tokenizer.model.tokenize(text)]
    return old_tokenizer.encode(text, add_special_tokens=False)


def new_token_sources(old_tokenizer, new_tokenizer, learned: LearnedPieces, markers: Sequence[str]) -> dict[int, list[int]]:
    """new id -> old piece ids, for every new id (``len(old_tokenizer)`` up to ``len(new_tokenizer)`` for Gemma)."""
    vocab = new_tokenizer.get_vocab()
    sources = {vocab[p]: old_piece_ids(old_tokenizer, p, model_space=True) for p in learned.pieces}
    sources.update({vocab[m]: old_piece_ids(old_tokenizer, m, model_space=False) for m in markers})
    expected = set(range(first_new_id(old_tokenizer), first_new_id(new_tokenizer)))
    if set(sources) != expected or any(not ids for ids in sources.values()):
        raise ExtensionError("the new ids do not directly follow the old ones, or a piece has no old parts")
    return sources


def embeddings_tied(model) -> bool:
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


def extend_embeddings(model, first_id: int, end_id: int, sources: dict[int, list[int]]) -> dict:
    """Resize to ``end_id`` token ids padded to a multiple of 64 rows and initialise rows ``first_id``...

    ``first_id`` is the old tokenizer's length, not the old row count: rows from there on were
    padding and are reused for new tokens.

    Row ``i`` of a new token = mean of rows ``sources[i]`` (old piece ids), in the input embeddings
    and, when untied, in the output head. Padding rows copy the mean of the old padding rows
    (they are never a target, so training pushed their logits down), or the mean row if there were none.
    """
    import torch

    tied = embeddings_tied(model)
    old_rows = model.get_input_embeddings().weight.shape[0]
    order = sorted(sources)

    def planned(weight) -> tuple:
        w = weight.detach()
        rows = torch.stack([w[sources[i]].float().mean(0) for i in order])
        padding = (w[first_id:old_rows] if old_rows > first_id else w).float().mean(0)
        return rows, padding

    plans = {"input": planned(model.get_input_embeddings().weight)}
    if not tied and model.get_output_embeddings() is not None:
        plans["output"] = planned(model.get_output_embeddings().weight)

    # Never shrink below the old row count: those rows exist in the checkpoint either way.
    model.resize_token_embeddings(max(end_id, old_rows), pad_to_multiple_of=EMBEDDING_ROW_MULTIPLE,
                                  mean_resizing=False)
    with torch.no_grad():
        for name, (rows, padding) in plans.items():
            layer = model.get_input_embeddings() if name == "input" else model.get_output_embeddings()
            weight = layer.weight
            weight[torch.tensor(order, device=weight.device)] = rows.to(weight.device, weight.dtype)
            weight[end_id:] = padding.to(weight.device, weight.dtype)
    if tied and not embeddings_tied(model):
        raise ExtensionError("the resize untied lm_head from embed_tokens")
    new_rows = model.get_input_embeddings().weight.shape[0]
    logger.info("embeddings: %d ids in %d rows -> %d ids in %d rows (%s)", first_id, old_rows, end_id,
                new_rows, "tied lm_head" if tied else "untied lm_head initialised too")
    return {"old_embedding_rows": old_rows, "new_embedding_rows": new_rows, "tied_embeddings": tied}


# ---------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------
def tokens_per_char(tokenizer, texts: Sequence[str]) -> float:
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return sum(map(len, ids)) / max(1, sum(map(len, texts)))


def roundtrip(old_tokenizer, new_tokenizer, texts: Sequence[str]) -> dict:
    """decode(encode(text)) == text under the new tokenizer, wherever it held under the old one."""

    def intact(tokenizer) -> list[bool]:
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [d == t for d, t in zip(tokenizer.batch_decode(ids), texts)]

    old_ok, new_ok = intact(old_tokenizer), intact(new_tokenizer)
    broken = [t for t, o, n in zip(texts, old_ok, new_ok) if o and not n]
    return {"checked": len(texts), "failures": len(broken), "failed_before_too": old_ok.count(False),
            "examples": [t[:200] for t in broken[:3]]}


def probe_texts(old_tokenizer, texts: Sequence[str], max_length: int, n: int = PROBE_TEXTS) -> list[str]:
    """``n`` texts cut so that the old tokenization (with <bos>) fits ``max_length``.

    Cut by characters, so before and after the extension the loss is over the same text; the new
    tokenization is never longer than the old one.
    """
    out = []
    for text in texts[:n]:
        enc = old_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) > max_length - 1:
            text = text[: enc["offset_mapping"][max_length - 2][1]]
        out.append(text)
    return out


def causal_lm_loss(model, tokenizer, texts: Sequence[str], batch_size: int = 8) -> dict:
    """Next-token loss on ``texts`` (each starting with <bos>, padding masked): per token and per character.

    Per token is what a training step reports; per character compares tokenizers fairly (a longer
    token carries more text, so its loss is naturally higher).
    """
    import torch

    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for begin in range(0, len(texts), batch_size):
            ids = tokenizer(list(texts[begin : begin + batch_size]))["input_ids"]
            width = max(map(len, ids))
            input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            for row, seq in enumerate(ids):
                input_ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            labels = input_ids.masked_fill(mask == 0, -100)
            with torch.no_grad():
                logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                               use_cache=False).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                    labels[:, 1:].reshape(-1).to(device), ignore_index=-100,
                                                    reduction="sum")
            total += float(nll)
            tokens += int((labels[:, 1:] != -100).sum())
    finally:
        model.train(was_training)
    chars = sum(map(len, texts))
    return {"loss_per_token": total / tokens, "nats_per_char": total / chars, "tokens": tokens, "chars": chars}


def old_token_state(model, ids: list[int], first_new: int) -> dict:
    """What the extension must not change for old tokens: their rows and the network's outputs on them."""
    import torch

    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], device=device), use_cache=False, output_hidden_states=True)
    head = model.get_output_embeddings()
    return {
        "rows": model.get_input_embeddings().weight.detach()[:first_new].float().sum(1).cpu(),
        "head_rows": None if head is None else head.weight.detach()[:first_new].float().sum(1).cpu(),
        "hidden": out.hidden_states[-1].float().cpu(),
        "logits": out.logits[..., :first_new].float().cpu(),
    }


def old_tokens_unchanged(before: dict, after: dict) -> dict:
    """Rows must be bit-identical and hidden states equal (up to 1e-3 of their scale, for GPU kernels).

    Old-vocabulary logits are reported, not required equal: the output matmul has a new shape, so
    in bf16 its rounding may differ slightly.
    """
    hidden_change = float((after["hidden"] - before["hidden"]).abs().max())
    rows_equal = torch_equal(before["rows"], after["rows"]) and (
        before["head_rows"] is None or torch_equal(before["head_rows"], after["head_rows"]))
    return {"rows_equal": rows_equal, "hidden_max_change": hidden_change,
            "logits_max_change": float((after["logits"] - before["logits"]).abs().max()),
            "ok": rows_equal and hidden_change <= 1e-3 * float(before["hidden"].abs().max())}


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


# ---------------------------------------------------------------------------
# Embedding phase
# ---------------------------------------------------------------------------
def freeze_all_but_embeddings(model) -> int:
    """requires_grad only on embed_tokens (and lm_head when untied); returns the trainable count."""
    for param in model.parameters():
        param.requires_grad_(False)
    model.get_input_embeddings().weight.requires_grad_(True)
    head = model.get_output_embeddings()
    if head is not None:
        head.weight.requires_grad_(True)  # the same tensor when tied
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def packed_blocks(tokenizer, texts: Sequence[str], length: int, needed: int) -> list[list[int]]:
    """Texts as one <bos> text <eos> stream cut into ``length``-token blocks (no padding, no loss mask).

    Stops tokenizing once ``needed`` blocks exist; fewer are fine (the trainer repeats them).
    """
    stream: list[int] = []
    chunk = 256
    for begin in range(0, len(texts), chunk):
        for ids in tokenizer(list(texts[begin : begin + chunk]))["input_ids"]:
            stream += ids + [tokenizer.eos_token_id]
        if len(stream) >= needed * length:
            break
    blocks = [stream[i : i + length] for i in range(0, len(stream) - length + 1, length)]
    if not blocks:
        raise DataError(f"the corpus gives fewer than {length} tokens: nothing to train the embeddings on")
    return blocks


def train_embeddings(model, tokenizer, texts: Sequence[str], output_dir: Path, *, steps: int, lr: float,
                     batch: int, grad_accum: int, max_length: int, save_steps: int, seed: int, device: str,
                     gradient_checkpointing: bool, resume: bool, model_name: str) -> dict:
    """``steps`` optimizer steps of causal-LM training with only the embeddings trainable.

    transformers.Trainer gives the progress bar, TensorBoard, checkpoints and ``--resume``.
    """
    import random

    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator


    trainable = freeze_all_but_embeddings(model)
    total = sum(p.numel() for p in model.parameters())
    logger.info("embedding phase: %s of %s parameters trainable (%.2f%%), %d steps", f"{trainable:,}",
                f"{total:,}", 100 * trainable / total, steps)
    texts = list(texts)
    random.Random(seed).shuffle(texts)
    blocks = packed_blocks(tokenizer, texts, max_length, steps * batch * grad_accum)
    dataset = Dataset.from_dict({"input_ids": blocks, "labels": blocks})
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(TENSORBOARD_DIR / f"{STAGE}_{model_name}")
    on_cuda = device.startswith("cuda")
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=grad_accum,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,  # a fraction of the steps
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=on_cuda and model.dtype == torch.bfloat16,
        fp16=False,  # never for Gemma 3
        use_cpu=not on_cuda,
        optim="adamw_torch_fused" if on_cuda else "adamw_torch",
        activation_checkpointing=gradient_checkpointing,  # MEMORY_CONFIGS: needed for MedGemma's matrices
        activation_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
        logging_steps=1,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=1,
        report_to=["tensorboard"],
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator)
    checkpoint = last_checkpoint(output_dir) if resume else None
    if resume:
        logger.info("resuming the embedding phase from %s", checkpoint or "scratch (no checkpoint found)")
    result = trainer.train(resume_from_checkpoint=checkpoint)
    for param in model.parameters():
        param.requires_grad_(False)
    model.config.use_cache = True
    curve = [{"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e]
    return {"steps": int(trainer.state.global_step), "lr": lr, "batch": batch, "grad_accum": grad_accum,
            "max_length": max_length, "blocks": len(blocks), "trainable_parameters": trainable,
            "total_parameters": total, "train_loss": float(result.training_loss), "resumed_from": checkpoint,
            "loss_history": curve}


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------
def summary_rows(report: dict) -> list[tuple[str, str]]:
    """The before/after figures, for the README table and the console."""
    tpc = report["tokens_per_char"]["held_out"]
    loss = report["first_step_loss"]

    def figures(key: str) -> str:
        stages = [loss["before"], loss["after_extension"], loss["after_embedding_phase"]]
        return " -> ".join(f"{stage[key]:.4f}" for stage in stages if stage)

    phase = report["embedding_phase"]
    return [
        ("tokens per character, held out", f"{tpc['before']:.4f} -> {tpc['after']:.4f}"),
        ("loss per character, same held-out text (before -> extended [-> embedding phase])", figures("nats_per_char")),
        ("loss per token, same held-out text (not comparable: tokens got longer)", figures("loss_per_token")),
        ("embedding-phase steps", str(phase["steps"] if phase else 0)),
    ]


def readme_text(report: dict) -> str:
    lines = [
        f"# Extended tokenizer — {report['model']}",
        "",
        f"`{report['base_model']}` with {report['tokens_added']:,} Korean tokens added by `script/extend_tokenizer.py`"
        f" (git {report.get('git_sha') or 'unknown'}), finished {report['finished_at']}.",
        "",
        "| what | value |",
        "|---|---|",
        f"| vocabulary (tokenizer length) | {report['old_vocab_size']:,} -> {report['new_vocab_size']:,} |",
        f"| embedding rows | {report['old_embedding_rows']:,} -> {report['new_embedding_rows']:,} |",
        f"| tied lm_head | {report['tied_embeddings']} |",
        *(f"| {what} | {value} |" for what, value in summary_rows(report)),
        "",
        "Use it as the base model of any trainer:",
        "",
        "```bash",
        f"python -m script.train.train_type1_text --model {report['model']} --base-model {report['output']}",
        "```",
        "",
        "`extension_report.json` beside this file lists the added pieces, the checks and the loss curve.",
        "",
    ]
    return "\n".join(lines)


def save_extended_model(output_dir: Path, model, tokenizer, report: dict) -> Path:
    """Model (safetensors), tokenizer, report and README, written beside ``output_dir`` and renamed into place.

    Replacing the directory also drops the embedding phase's checkpoints, which are done with.
    """
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "extension_report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n",
                                                    encoding="utf-8")
        (tmp / "README.md").write_text(readme_text(report), encoding="utf-8")

    return atomic_write_dir(output_dir, write)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
def default_num_new_tokens(tokenizer_len: int) -> int:
    return max(1, round(tokenizer_len * GUIDE_NEW_TOKENS / GUIDE_OLD_VOCAB))


def run(args: argparse.Namespace) -> dict:
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    model_config = get_model_config(args.model)
    memory = get_memory_config(args.model)
    output_dir = Path(args.output) if args.output else stage_output_dir(STAGE, args.model)
    setup_logging(LOG_DIR / f"{STAGE}_{args.model}.log")
    base = args.base_model or model_config.path
    if base == model_config.path and model_config.build_command and not Path(base).exists():
        raise ConfigError(f"model dir {base} does not exist; build it with: {model_config.build_command}")
    ensure_model_available(base, args.allow_pickle_weights)
    if is_adapter_dir(base):
        raise ConfigError(f"{base} is a LoRA adapter; extend a full model (merge the adapter first)")
    device = resolve_device(args.device)
    dtype = resolve_dtype(device)
    set_seed(args.seed)
    lr = args.lr or model_config.lr
    batch = args.batch_size or memory.embedding_batch or model_config.batch
    grad_accum = args.grad_accum or memory.embedding_grad_accum or model_config.grad_accum
    max_length = args.max_length or model_config.max_length
    logger.info("*** extend_tokenizer: %s (%s) on %s -> %s", args.model, base, device, output_dir)

    # ---- corpus and pieces
    corpus = read_corpus(args.corpus, args.max_corpus_chars, args.held_out_fraction,
                         LOG_DIR / f"rejects_{STAGE}_{args.model}.jsonl")
    if not corpus.held_out:
        raise DataError(f"the held-out slice is empty ({len(corpus.train)} texts); raise --held-out-fraction")
    logger.info("corpus: %d texts to learn from, %d held out, %s characters", len(corpus.train),
                len(corpus.held_out), f"{corpus.chars:,}")
    old_tokenizer = load_tokenizer(base)
    old_len = len(old_tokenizer)
    num_new = args.num_new_tokens or default_num_new_tokens(old_len)
    words = model_words(old_tokenizer, corpus.train)
    logger.info("learning up to %d pieces from %s distinct words", num_new, f"{len(words):,}")
    learned = learn_pieces(old_tokenizer, words, num_new, args.min_frequency)
    with tempfile.TemporaryDirectory(prefix="extended-tokenizer-") as staging:
        tokenizer, markers = build_extended_tokenizer(old_tokenizer, learned, Path(staging))
    new_len = len(tokenizer)
    logger.info("tokenizer: %d -> %d (%d pieces, %d of them characters, %d markers)", old_len, new_len,
                len(learned.pieces), len(learned.new_chars), len(markers))

    # ---- tokenizer checks
    tpc_before = tokens_per_char(old_tokenizer, corpus.held_out)
    tpc_after = tokens_per_char(tokenizer, corpus.held_out)
    train_sample = corpus.train[:: max(1, len(corpus.train) // ROUNDTRIP_TRAIN_SAMPLE)]
    round_trips = {"held_out": roundtrip(old_tokenizer, tokenizer, corpus.held_out),
                   "train_sample": roundtrip(old_tokenizer, tokenizer, train_sample)}
    items = mcq_texts(args.roundtrip_items)
    if items:
        round_trips["kormedmcqa_items"] = roundtrip(old_tokenizer, tokenizer, items)
    broken = {name: r for name, r in round_trips.items() if r["failures"]}
    if broken:
        raise ExtensionError(f"decode(encode(text)) no longer gives the text back: {json.dumps(broken, ensure_ascii=False)}")
    logger.info("tokens per character on held-out text: %.4f -> %.4f; round trip intact on %s", tpc_before,
                tpc_after, ", ".join(f"{k} ({v['checked']})" for k, v in round_trips.items()))

    # ---- model
    model = load_base_model(base, device, dtype, allow_pickle_weights=args.allow_pickle_weights)
    probe = probe_texts(old_tokenizer, corpus.held_out, max_length)
    loss_before = causal_lm_loss(model, old_tokenizer, probe, batch)
    reference_ids = old_tokenizer(probe[0])["input_ids"]
    first_id, end_id = first_new_id(old_tokenizer), first_new_id(tokenizer)
    reference = old_token_state(model, reference_ids, first_id)
    sources = new_token_sources(old_tokenizer, tokenizer, learned, markers)
    shapes = extend_embeddings(model, first_id, end_id, sources)
    unchanged = old_tokens_unchanged(reference, old_token_state(model, reference_ids, first_id))
    if not unchanged["ok"]:
        raise ExtensionError(f"the extension changed what the model computes for old tokens: {unchanged}")
    loss_after = causal_lm_loss(model, tokenizer, probe, batch)
    logger.info("loss on the same %d held-out texts: per token %.4f -> %.4f, per character %.4f -> %.4f",
                len(probe), loss_before["loss_per_token"], loss_after["loss_per_token"],
                loss_before["nats_per_char"], loss_after["nats_per_char"])
    phase, loss_phase = None, None
    if args.train_embeddings_steps > 0 and not memory.train_embeddings:
        logger.warning("MEMORY_CONFIGS[%r] does not train embeddings (the guide ran out of memory with them); "
                       "the embedding phase may not fit: python -m script.check_gpu_memory --model %s",
                       args.model, args.model)
    if args.train_embeddings_steps > 0:
        phase = train_embeddings(model, tokenizer, corpus.train, output_dir, steps=args.train_embeddings_steps,
                                 lr=lr, batch=batch, grad_accum=grad_accum, max_length=max_length,
                                 save_steps=args.save_steps, seed=args.seed, device=device,
                                 gradient_checkpointing=memory.use_gradient_checkpointing, resume=args.resume,
                                 model_name=args.model)
        loss_phase = causal_lm_loss(model, tokenizer, probe, batch)
        logger.info("after the embedding phase: per token %.4f, per character %.4f", loss_phase["loss_per_token"],
                    loss_phase["nats_per_char"])
    # Per character, because the same text is cut into fewer, longer tokens after the extension: the
    # easy continuation pieces disappear, so the loss per token rises even for a perfect extension.
    final = loss_phase or loss_after
    increase = final["nats_per_char"] / loss_before["nats_per_char"] - 1
    first_step_loss = {
        "texts": len(probe), "before": loss_before, "after_extension": loss_after,
        "after_embedding_phase": loss_phase,
        "increase_per_char": loss_after["nats_per_char"] / loss_before["nats_per_char"] - 1,
        "final_increase_per_char": increase, "max_increase": args.max_loss_increase,
        "ok": increase <= args.max_loss_increase,
    }
    if not first_step_loss["ok"]:
        raise ExtensionError(
            f"the loss per character on held-out text rose {increase:.1%} ({loss_before['nats_per_char']:.4f} -> "
            f"{final['nats_per_char']:.4f}), more than --max-loss-increase {args.max_loss_increase}: nothing saved. "
            "Run an embedding phase (--train-embeddings-steps N), add fewer tokens, or raise the limit.")

    vocab = tokenizer.get_vocab()
    old_pieces = {i: old_tokenizer.convert_ids_to_tokens(ids) for i, ids in sources.items()}
    report = {
        "script": "extend_tokenizer",
        "model": args.model,
        "base_model": base,
        "output": str(output_dir),
        "old_vocab_size": old_len,
        "new_vocab_size": new_len,
        "tokens_added": new_len - old_len,
        "num_new_tokens_requested": num_new,
        "pieces_added": len(learned.pieces),
        "characters_added": learned.new_chars,
        "markers_added": markers,
        "merges_added": len(learned.merges),
        "min_frequency": args.min_frequency,
        **shapes,
        "sample_added_pieces": [
            {"id": vocab[p], "piece": p, "frequency": learned.frequencies[p], "old_pieces": old_pieces[vocab[p]]}
            for p in learned.pieces[:50]],
        "corpus": {"files": corpus.files, "texts_learned_from": len(corpus.train),
                   "texts_held_out": len(corpus.held_out), "chars": corpus.chars, "distinct_words": len(words),
                   "rejected_lines": len(corpus.rejects), "held_out_fraction": args.held_out_fraction},
        "tokens_per_char": {"held_out": {"before": tpc_before, "after": tpc_after,
                                         "reduction": 1 - tpc_after / tpc_before}},
        "roundtrip": round_trips,
        "old_tokens_unchanged": unchanged,
        "first_step_loss": first_step_loss,
        "embedding_phase": phase,
        "device": device,
        "dtype": str(dtype).replace("torch.", ""),
        "config": {k: [str(p) for p in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v
                   for k, v in vars(args).items()},
        "git_sha": git_sha(),
        "versions": library_versions(),
        "started_at": started,
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    save_extended_model(output_dir, model, tokenizer, report)
    logger.info("saved the extended model, tokenizer and extension_report.json to %s", output_dir)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    checks = {
        "--num-new-tokens": args.num_new_tokens is None or args.num_new_tokens > 0,
        "--min-frequency": args.min_frequency >= 1,
        "--max-corpus-chars": args.max_corpus_chars > 0,
        "--held-out-fraction": 0 < args.held_out_fraction < 1,
        "--max-loss-increase": args.max_loss_increase >= 0,
        "--train-embeddings-steps": args.train_embeddings_steps >= 0,
        "--save-steps": args.save_steps > 0,
    }
    for flag, ok in checks.items():
        if not ok:
            parser.error(f"{flag} {getattr(args, flag[2:].replace('-', '_'))} is out of range")
    try:
        report = run(args)
    except (ConfigError, UnknownModelError, DataError, ExtensionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, DataError) else 1
    print(f"{report['base_model']} -> {report['output']}: vocabulary {report['old_vocab_size']:,} -> "
          f"{report['new_vocab_size']:,} (+{report['tokens_added']:,}), rows {report['old_embedding_rows']:,} -> "
          f"{report['new_embedding_rows']:,}")
    for row in summary_rows(report):
        print(f"  {row[0]}: {row[1]}")
    return 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
