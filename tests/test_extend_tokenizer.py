"""script/extend_tokenizer.py on tiny: learned Korean pieces, row initialisation, checks, embedding phase, reuse.

    OMP_NUM_THREADS=1 python -m pytest tests/test_extend_tokenizer.py -q
"""

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from script import extend_tokenizer as et
from script import formats
from script.data_io import atomic_write_jsonl
from script.embedded import make_tiny_model
from script.model_loading import load_base_model, load_tokenizer
from script.training_config import LORA_TARGET_MODULES, SAMPLE_DATA_DIR
from tests.sample_records import asan_type1_records

KORMEDMCQA_SAMPLE = sorted((SAMPLE_DATA_DIR / "sean0042" / "KorMedMCQA").rglob("dev.jsonl"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    """The shipped sample's text as a plain-text file ({"text"}) and Asan rows as type-1 records ({"messages"})."""
    root = tmp_path_factory.mktemp("corpus")
    texts = [t for t in make_tiny_model.sample_corpus(SAMPLE_DATA_DIR) if len(t) > 20]
    plain = root / "00_plain_text" / "train-00000.jsonl"
    atomic_write_jsonl(plain, ({"id": str(i), "source": "sample", "text": t} for i, t in enumerate(texts)))
    type1 = root / "type1_text" / "train.jsonl"
    atomic_write_jsonl(type1, asan_type1_records())
    return [plain.parent, type1]


def run_extension(corpus, out: Path, *flags: str) -> dict:
    argv = ["--model", "tiny", "--corpus", *map(str, corpus), "--output", str(out),
            "--roundtrip-items", *map(str, KORMEDMCQA_SAMPLE), *flags]
    assert et.main(argv) == 0
    return json.loads((out / "extension_report.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def extended(tiny_models, corpus, tmp_path_factory):
    """Extension only (no embedding phase), default number of tokens."""
    out = tmp_path_factory.mktemp("ext") / "tiny"
    return run_extension(corpus, out), out


@pytest.fixture(scope="module")
def old_tokenizer(tiny_models):
    return load_tokenizer(str(tiny_models["tiny"]))


def test_vocabulary_grows_by_the_guide_share_in_rows_padded_to_64(extended, old_tokenizer):
    report, out = extended
    new_tokenizer = load_tokenizer(str(out))
    assert report["old_vocab_size"] == len(old_tokenizer) == 8000  # the tokenizer, not the 8064 rows
    assert report["num_new_tokens_requested"] == round(8000 * 23_699 / 262_208) == 723
    assert report["tokens_added"] == report["pieces_added"] == 723 and report["markers_added"] == []
    assert len(new_tokenizer) == report["new_vocab_size"] == 8000 + 723
    assert report["old_embedding_rows"] == 8064
    assert report["new_embedding_rows"] == 8768  # ceil(8723 / 64) * 64
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 8768 and config["tie_word_embeddings"] is True
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()


def test_added_pieces_are_korean_subwords_the_old_tokenizer_splits(extended, old_tokenizer):
    report, out = extended
    new_vocab = load_tokenizer(str(out)).get_vocab()
    pieces = [t for t, i in new_vocab.items() if i >= 8000]
    assert len(pieces) == 723
    for piece in pieces:
        assert et.KOREAN_PIECE.fullmatch(piece), piece  # optional word start + Hangul only
        assert len(old_tokenizer.backend_tokenizer.model.tokenize(piece)) >= 2, piece
    sample = report["sample_added_pieces"][0]
    assert new_vocab[sample["piece"]] == sample["id"] and len(sample["old_pieces"]) >= 2


def test_old_ids_and_old_text_are_unchanged(extended, old_tokenizer):
    _, out = extended
    new_tokenizer = load_tokenizer(str(out))
    new_vocab = new_tokenizer.get_vocab()
    assert all(new_vocab[token] == i for token, i in old_tokenizer.get_vocab().items())
    # Text without Korean cannot contain a new piece: it tokenizes exactly as before.
    for text in ["Blood pressure 140/90 mmHg, HbA1c 7.2%", "<start_of_turn>user\nWhy?<end_of_turn>\n"]:
        assert new_tokenizer.encode(text) == old_tokenizer.encode(text)
    messages = formats.type_messages(formats.TYPE3_WORD, "Q?", "A")
    assert formats.render_conversation(new_tokenizer, messages) == formats.render_conversation(old_tokenizer, messages)
    assert new_tokenizer.convert_tokens_to_ids(formats.END_OF_TURN) == old_tokenizer.convert_tokens_to_ids(
        formats.END_OF_TURN)


def test_round_trip_and_fewer_tokens_per_character(extended, old_tokenizer):
    report, out = extended
    new_tokenizer = load_tokenizer(str(out))
    assert {"held_out", "train_sample", "kormedmcqa_items"} <= set(report["roundtrip"])
    assert all(r["failures"] == 0 and r["checked"] > 0 for r in report["roundtrip"].values())
    texts = [t for t in make_tiny_model.sample_corpus(SAMPLE_DATA_DIR) if len(t) > 20][:300]
    texts += et.mcq_texts(KORMEDMCQA_SAMPLE)[:50] + ["똠얌꿍 🙂 체온 38.5℃\n\t두 칸  띄어쓰기 <R>추론<R/>답"]
    for text in texts:
        assert new_tokenizer.decode(new_tokenizer.encode(text, add_special_tokens=False)) == text
    assert et.tokens_per_char(new_tokenizer, texts) < et.tokens_per_char(old_tokenizer, texts)
    tpc = report["tokens_per_char"]["held_out"]
    assert tpc["after"] < tpc["before"]


def test_new_rows_are_the_mean_of_their_old_pieces_and_the_head_stays_tied(extended, tiny_models, old_tokenizer):
    _, out = extended
    base = load_base_model(str(tiny_models["tiny"]), "cpu", torch.float32)
    model = load_base_model(str(out), "cpu", torch.float32)
    old_w = base.get_input_embeddings().weight.detach()
    new_w = model.get_input_embeddings().weight.detach()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert torch.equal(new_w[:8000], old_w[:8000])
    vocab = load_tokenizer(str(out)).get_vocab()
    for token_id in (8000, 8001, 8100, 8500, 8722):
        piece = next(t for t, i in vocab.items() if i == token_id)
        parts = [t.id for t in old_tokenizer.backend_tokenizer.model.tokenize(piece)]
        assert torch.allclose(new_w[token_id], old_w[parts].mean(0), atol=1e-6), piece
    # Padding rows past the tokenizer copy the old padding rows' mean.
    assert torch.allclose(new_w[8723:], old_w[8000:8064].mean(0).expand(8768 - 8723, -1), atol=1e-6)


def test_first_step_loss_is_not_worse_than_before(extended, tiny_models, old_tokenizer):
    """Same held-out text, before any update: loss per character within 5% (mean-initialised rows)."""
    report, out = extended
    loss = report["first_step_loss"]
    assert loss["after_extension"]["chars"] == loss["before"]["chars"]
    assert loss["after_extension"]["tokens"] < loss["before"]["tokens"]
    assert loss["after_extension"]["nats_per_char"] <= loss["before"]["nats_per_char"] * 1.05
    assert loss["ok"]
    unchanged = report["old_tokens_unchanged"]
    assert unchanged["ok"] and unchanged["rows_equal"] and unchanged["hidden_max_change"] == 0
    assert unchanged["logits_max_change"] < 1e-4  # float32 on CPU: the same up to rounding
    # Independently, on other text: the sample's KorMedMCQA questions.
    texts = et.probe_texts(old_tokenizer, et.mcq_texts(KORMEDMCQA_SAMPLE), 256, n=16)
    before = et.causal_lm_loss(load_base_model(str(tiny_models["tiny"]), "cpu", torch.float32), old_tokenizer, texts)
    after = et.causal_lm_loss(load_base_model(str(out), "cpu", torch.float32), load_tokenizer(str(out)), texts)
    assert after["nats_per_char"] <= before["nats_per_char"] * 1.05


def test_embedding_phase_trains_only_the_embeddings_then_lora_trains_on_the_result(
        extended, tiny_models, corpus, tmp_path):
    from script.training_data import to_sft_dataset
    from script.training_utils import attach_lora, build_arg_parser, build_trainer, load_model_and_tokenizer, start_run

    out = tmp_path / "phase"
    report = run_extension(corpus, out, "--train-embeddings-steps", "3", "--batch-size", "4", "--max-length", "64")
    phase = report["embedding_phase"]
    assert phase["steps"] == 3 and [e["step"] for e in phase["loss_history"]] == [1, 2, 3]
    assert report["first_step_loss"]["after_embedding_phase"] is not None
    assert not list(out.glob("checkpoint-*"))  # the final model replaced the phase's checkpoints

    base = dict(load_base_model(str(tiny_models["tiny"]), "cpu", torch.float32).named_parameters())
    only_extended = dict(load_base_model(str(extended[1]), "cpu", torch.float32).named_parameters())
    trained = dict(load_base_model(str(out), "cpu", torch.float32).named_parameters())
    assert set(trained) == set(base)
    for name, param in trained.items():
        if "embed_tokens" in name:
            assert not torch.equal(param, only_extended[name]), name
        else:
            assert torch.equal(param, base[name]), f"{name} changed in the embedding phase"

    # The result is a base model like any other: a LoRA step through the shared trainer machinery.
    args = build_arg_parser(None).parse_args(["--model", "tiny", "--base-model", str(out), "--output",
                                              str(tmp_path / "lora"), "--max-steps", "2", "--batch-size", "4"])
    run = start_run(args, stage="test", script="test")
    model, tokenizer = load_model_and_tokenizer(run)
    assert len(tokenizer) == 8723 and model.get_input_embeddings().weight.shape[0] == 8768
    model = attach_lora(model, run)
    records = [{"messages": formats.type_messages(formats.TYPE1_TEXT, f"고혈압 {i}단계의 치료는?",
                                                   "생활습관 교정과 항고혈압제 투여가 기본이다.")} for i in range(8)]
    trainer = build_trainer(run, model, tokenizer, to_sft_dataset(records), save_strategy="no")
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(loss == loss for loss in losses)  # finite
    assert any(m in n for n, p in model.named_parameters() if p.requires_grad for m in LORA_TARGET_MODULES)


def test_interrupted_embedding_phase_resumes_from_its_checkpoint(tiny_models, corpus, tmp_path, monkeypatch):
    out = tmp_path / "resume"
    small = ["--batch-size", "2", "--max-length", "32", "--save-steps", "2", "--num-new-tokens", "200"]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(et, "save_extended_model", killed)  # stop after training, before the final save
        with pytest.raises(KeyboardInterrupt):
            et.main(["--model", "tiny", "--corpus", *map(str, corpus), "--output", str(out),
                     "--train-embeddings-steps", "2", *small])
    assert (out / "checkpoint-2").is_dir() and not (out / "config.json").exists()
    report = run_extension(corpus, out, "--train-embeddings-steps", "4", "--resume", *small)
    assert report["embedding_phase"]["resumed_from"].endswith("checkpoint-2")
    assert report["embedding_phase"]["steps"] == 4
    assert [e["step"] for e in report["embedding_phase"]["loss_history"]] == [1, 2, 3, 4]


def test_missing_characters_become_whole_pieces(old_tokenizer):
    """Syllables the old vocabulary spells as 3 byte tokens are added as single pieces first."""
    rare = "똠얌꿍"
    assert all(ch not in old_tokenizer.get_vocab() for ch in rare)
    words = Counter({"▁" + rare: 5, "▁" + rare + "을": 3, "▁고혈압": 50})
    learned = et.learn_pieces(old_tokenizer, words, num_new=6, min_frequency=2)
    assert learned.new_chars == sorted(rare)  # equal counts: ordered by the character
    assert learned.pieces[:3] == learned.new_chars and "▁" + rare in learned.pieces
    parts = [t.value for t in old_tokenizer.backend_tokenizer.model.tokenize("똠")]
    assert len(parts) == 3 and all(p.startswith("<0x") for p in parts)


def test_gemma_tokenizer_class_keeps_added_token_ids_and_gains_the_reasoning_markers(old_tokenizer, tmp_path):
    """MedGemma's tokenizer class rebuilds from vocab + merges; its out-of-vocabulary image token keeps its id."""
    from tokenizers import AddedToken
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer

    data = json.loads(old_tokenizer.backend_tokenizer.to_str())
    kept = sorted((i, t) for t, i in data["model"]["vocab"].items() if t not in formats.REASONING_SPECIAL_TOKENS)
    vocab = {t: n for n, (_, t) in enumerate(kept)}
    gemma = GemmaTokenizer(vocab=vocab, merges=[tuple(m) for m in data["model"]["merges"]])
    gemma.add_tokens([AddedToken("<image_soft_token_x>", special=True, normalized=False)])
    gemma.chat_template = old_tokenizer.chat_template
    gemma.save_pretrained(tmp_path / "gemma")
    gemma = load_tokenizer(str(tmp_path / "gemma"))
    image_id = gemma.convert_tokens_to_ids("<image_soft_token_x>")

    texts = [t for t in make_tiny_model.sample_corpus(SAMPLE_DATA_DIR) if len(t) > 20][:2000]
    learned = et.learn_pieces(gemma, et.model_words(gemma, texts), num_new=100)
    extended, markers = et.build_extended_tokenizer(gemma, learned, tmp_path / "staged")
    assert type(extended).__name__ == "GemmaTokenizer"
    assert markers == formats.REASONING_SPECIAL_TOKENS
    assert extended.convert_tokens_to_ids("<image_soft_token_x>") == image_id
    assert len(extended) == len(gemma) + 100 + len(markers)
    ids = extended.encode("<reasoning>고혈압</reasoning>A", add_special_tokens=False)
    assert ids[0] == extended.convert_tokens_to_ids("<reasoning>") >= len(gemma) + 100
    assert et.roundtrip(gemma, extended, texts[:300])["failures"] == 0


def test_bad_corpus_lines_fail_with_path_and_line(tiny_models, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "정상 문장입니다."}\n{"title": "no text"}\nnot json\n', encoding="utf-8")
    assert et.main(["--model", "tiny", "--corpus", str(bad), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2:" in err and "rejected" in err
    assert not (tmp_path / "out").exists()
