"""Registry values from the guide, prompt formats and the Gemma-style chat template.

    python -m pytest tests/test_config_and_formats.py -q
"""

import pytest

from script import formats
from script.training_config import (
    LORA_TARGET_MODULES,
    MEMORY_CONFIGS,
    MODEL_CONFIGS,
    UnknownModelError,
    get_model_config,
)


def test_registry_matches_the_guide():
    m4, m27 = get_model_config("medgemma-4b"), get_model_config("medgemma-27b")
    assert (m4.path, m4.lora_r, m4.lora_alpha, m4.batch, m4.grad_accum, m4.lr, m4.max_length) == (
        "google/medgemma-4b-it", 64, 128, 4, 4, 2e-5, 512)
    assert (m27.path, m27.lora_r, m27.lora_alpha, m27.batch, m27.grad_accum, m27.lr, m27.max_length) == (
        "google/medgemma-27b-it", 32, 64, 1, 16, 1e-5, 512)
    assert LORA_TARGET_MODULES == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    mem4 = MEMORY_CONFIGS["medgemma-4b"]
    assert mem4.use_gradient_checkpointing and mem4.train_embeddings
    assert (mem4.embedding_batch, mem4.embedding_grad_accum) == (2, 16)
    assert not MEMORY_CONFIGS["medgemma-27b"].train_embeddings
    assert set(MEMORY_CONFIGS) == set(MODEL_CONFIGS)
    text27 = get_model_config("medgemma-27b-text")  # the text-only 27B beside the guide's multimodal one
    assert text27.path == "google/medgemma-27b-text-it"
    assert (text27.lora_r, text27.batch, text27.grad_accum, text27.lr) == (m27.lora_r, m27.batch, m27.grad_accum, m27.lr)
    assert MEMORY_CONFIGS["medgemma-27b-text"] == MEMORY_CONFIGS["medgemma-27b"]


def test_mcq_scoring_is_cloze_for_the_embedded_model_only():
    import dataclasses

    assert get_model_config("tiny").mcq_scoring == get_model_config("tiny-mm").mcq_scoring == "cloze"
    assert get_model_config("medgemma-4b").mcq_scoring == get_model_config("medgemma-27b").mcq_scoring == "letter"
    with pytest.raises(ValueError, match="mcq_scoring"):
        dataclasses.replace(get_model_config("tiny"), mcq_scoring="verdict")


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownModelError) as err:
        get_model_config("medgemma-7b")
    message = str(err.value)
    assert "medgemma-7b" in message
    for name in MODEL_CONFIGS:
        assert name in message


def test_every_type_has_a_system_prompt_and_reasoning_rule():
    assert set(formats.SYSTEM_PROMPTS) == set(formats.TRAINING_TYPES)
    for type_name in formats.REASONING_TYPES:
        assert "추론" in formats.SYSTEM_PROMPTS[type_name]
    for type_name in set(formats.TRAINING_TYPES) - formats.REASONING_TYPES:
        assert "추론" not in formats.SYSTEM_PROMPTS[type_name]


def test_reasoning_wrap_and_split_round_trip():
    text = formats.wrap_reasoning(" TSH↑ T4↓ = 일차성 갑상선기능저하 ", "갑상선기능저하증")
    assert text == "<R>TSH↑ T4↓ = 일차성 갑상선기능저하<R/>갑상선기능저하증"
    assert formats.split_reasoning(text) == ("TSH↑ T4↓ = 일차성 갑상선기능저하", "갑상선기능저하증")
    assert formats.split_reasoning("B") == (None, "B")


def test_mcq_rendering():
    text = formats.format_mcq("심전도 ST상승, 진단은?", {"B": "심근경색", "A": "협심증"})
    assert text == "심전도 ST상승, 진단은?\nA) 협심증\nB) 심근경색"
    user = formats.mcq_reasoning_user("질문", {"A": "가", "B": "나"})
    assert user.startswith("Reasoning 후 정답 알파벳 하나만 답하세요.\n\n질문\nA) 가\nB) 나")
    detailed = formats.mcq_reasoning_user("질문", {"A": "가"}, detailed=True, example="예시")
    assert "```format" in detailed and "```example\n예시\n```" in detailed
    assert formats.mcq_reasoning_completion("첫째: x", "A") == "<reasoning>\n첫째: x\n</reasoning>A"


def test_prompt_completion_split_puts_only_the_assistant_turn_in_the_completion():
    messages = formats.type_messages(formats.TYPE3_WORD, "질문", "B")
    pc = formats.to_prompt_completion(messages)
    assert [m["role"] for m in pc["prompt"]] == ["system", "user"]
    assert pc["completion"] == [{"role": "assistant", "content": "B"}]
    with pytest.raises(ValueError):
        formats.to_prompt_completion(messages[:-1])


def test_dictionary_format_matches_the_guide():
    assert formats.dictionary_messages("고혈압", "Hypertension.") == [
        {"role": "user", "content": "Meaning of word 고혈압:"},
        {"role": "assistant", "content": "Hypertension."},
    ]


def test_chat_template_renders_like_gemma(tiny_tokenizer):
    messages = formats.type_messages(formats.TYPE1_TEXT, "당뇨병 환자의 식이요법은?", "규칙적인 식사입니다.")
    rendered = formats.render_conversation(tiny_tokenizer, messages)
    assert rendered == (
        "<bos><start_of_turn>user\n"
        "당신은 한국어 의료 전문 AI입니다. 상세하게 답변하세요.\n\n당뇨병 환자의 식이요법은?<end_of_turn>\n"
        "<start_of_turn>model\n규칙적인 식사입니다.<end_of_turn>\n"
    )
    prompt = formats.render_prompt(tiny_tokenizer, messages[:-1])
    assert rendered.startswith(prompt) and prompt.endswith("<start_of_turn>model\n")
    no_system = formats.render_prompt(tiny_tokenizer, [{"role": "user", "content": "안녕"}])
    assert no_system == "<bos><start_of_turn>user\n안녕<end_of_turn>\n<start_of_turn>model\n"
    structured = [{"role": "user", "content": [{"type": "text", "text": "안녕"}]}]
    assert formats.render_prompt(tiny_tokenizer, structured) == no_system
    with pytest.raises(Exception, match="alternate"):
        formats.render_prompt(tiny_tokenizer, [{"role": "assistant", "content": "x"}])
