"""The embedded tiny Gemma-3 models and their Korean tokenizer.

    python -m pytest tests/test_tiny_model.py -q
"""

import itertools

import pytest
import torch

from script import formats
from script.data_io import sha256_file
from script.embedded import make_tiny_model
from script.model_loading import ensure_model_available, load_base_model
from script.training_config import SAMPLE_DATA_DIR, ConfigError


def sample_texts(limit=300):
    return list(itertools.islice((t for t in make_tiny_model.sample_corpus(SAMPLE_DATA_DIR) if len(t) > 5), limit))


def test_tokenizer_round_trips_korean_text_without_unknowns(tiny_tokenizer):
    texts = sample_texts() + [
        "똠얌꿍과 뷁 같은 드문 글자도 바이트로 표현됩니다.",  # syllables unlikely in the sample text
        "체온 38.5℃, 혈압 ↑, SpO₂ 92%\n\t두 칸  띄어쓰기",
        "🙂 emoji and English text",
    ]
    for text in texts:
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tiny_tokenizer.unk_token_id not in ids, text
        assert tiny_tokenizer.decode(ids) == text


def test_tokenizer_is_korean_aware(tiny_tokenizer):
    """Learned pieces cover Korean words: far fewer tokens than UTF-8 bytes."""
    text = "당뇨병 환자의 치료와 진단에 필요한 검사"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) < len(text.encode("utf-8")) / 3


def test_special_tokens_are_single_ids_and_reasoning_markers_survive_decoding(tiny_tokenizer):
    for token in ["<bos>", "<eos>", "<pad>", *formats.CHAT_SPECIAL_TOKENS, *formats.REASONING_SPECIAL_TOKENS]:
        ids = tiny_tokenizer(token, add_special_tokens=False)["input_ids"]
        assert ids == [tiny_tokenizer.convert_tokens_to_ids(token)], token
    assert (tiny_tokenizer.pad_token_id, tiny_tokenizer.eos_token_id, tiny_tokenizer.bos_token_id) == (0, 1, 2)
    ids = tiny_tokenizer("<R>추론<R/>B", add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == "<R>추론<R/>B"
    assert tiny_tokenizer("안녕")["input_ids"][0] == tiny_tokenizer.bos_token_id


def test_models_load_through_auto_classes_with_gemma_layout(tiny_models, tiny_tokenizer):
    text = load_base_model(str(tiny_models["tiny"]), "cpu", torch.float32)
    mm = load_base_model(str(tiny_models["tiny-mm"]), "cpu", torch.float32)
    assert type(text).__name__ == "Gemma3ForCausalLM"
    assert type(mm).__name__ == "Gemma3ForConditionalGeneration"
    n_params = sum(p.numel() for p in text.parameters())
    assert 1e6 < n_params < 20e6
    rows = text.get_input_embeddings().weight.shape[0]
    assert rows > len(tiny_tokenizer) and rows % 64 == 0  # padded like MedGemma's 262,208 rows
    for name, module in text.named_modules():
        if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")):
            assert module.in_features % 32 == 0 and module.out_features % 32 == 0, name
    eos = text.generation_config.eos_token_id
    assert tiny_tokenizer.convert_tokens_to_ids(formats.END_OF_TURN) in eos
    # The multimodal model carries the same language model: identical logits on text.
    batch = tiny_tokenizer(["당뇨병 환자의 식이요법은?"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(text(**batch).logits, mm(**batch).logits)
    assert all(not p.requires_grad for n, p in mm.named_parameters() if "vision_tower" in n)


def test_build_is_deterministic(tiny_models, tmp_path):
    """Same tokenizer as the session's build; two short builds give identical weights."""
    for name in ("a", "b"):
        make_tiny_model.build(tmp_path / name, tmp_path / f"{name}-mm", SAMPLE_DATA_DIR, pretrain_steps=3)
    for name in ("tokenizer.json", "config.json"):
        assert sha256_file(tmp_path / "a" / name) == sha256_file(tiny_models["tiny"] / name), name
    for name in ("model.safetensors", "tokenizer.json"):
        assert sha256_file(tmp_path / "a" / name) == sha256_file(tmp_path / "b" / name), name
        assert sha256_file(tmp_path / "a-mm" / name) == sha256_file(tmp_path / "b-mm" / name), name


def test_evaluation_data_never_reaches_tokenizer_or_pretraining():
    files = make_tiny_model._sample_files(SAMPLE_DATA_DIR)
    assert files and not any("KorMedMCQA" in f.as_posix() or "KMMLU" in f.as_posix() for f in files)
    pretrain_files = make_tiny_model._sample_files(SAMPLE_DATA_DIR, only=make_tiny_model.PRETRAIN_DATASETS)
    assert pretrain_files and all(any(d in f.as_posix() for d in make_tiny_model.PRETRAIN_DATASETS)
                                  for f in pretrain_files)


def test_pickle_only_model_dir_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ConfigError, match="only pickle weights"):
        ensure_model_available(str(tmp_path))
    with pytest.raises(ConfigError, match="does not exist"):
        ensure_model_available(str(tmp_path / "missing"))
