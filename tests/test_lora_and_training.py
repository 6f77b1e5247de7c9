"""LoRA configuration, a few real training steps on tiny, adapter save/reload, 8-bit and multimodal paths.

    python -m pytest tests/test_lora_and_training.py -q
"""

import json

import pytest
import torch
from peft import PeftModel

from script import formats
from script.data_io import atomic_write_jsonl
from script.model_loading import load_base_model
from script.training_config import LORA_TARGET_MODULES, ConfigError
from script.training_data import to_sft_dataset
from script.training_utils import (
    attach_lora,
    build_trainer,
    create_lora_config,
    load_adapter,
    load_model_and_tokenizer,
    lora_target_modules,
    save_final,
    trainable_parameters,
)
from tests.sample_records import asan_type1_records, tiny_run


@pytest.fixture(scope="module")
def type1_records():
    return asan_type1_records()


def lora_module_names(model):
    return {name for name, _ in model.named_modules() if name.endswith(".lora_A")}


def test_lora_hits_all_seven_projections_and_embeddings_only_when_asked(tiny_models):
    base = load_base_model(str(tiny_models["tiny"]), "cpu", torch.float32)
    n_layers = base.config.num_hidden_layers
    model = PeftModel(base, create_lora_config(8, 16, target_modules=lora_target_modules(base)))
    names = lora_module_names(model)
    assert len(names) == 7 * n_layers
    assert {n.split(".")[-2] for n in names} == set(LORA_TARGET_MODULES)
    assert not any("embed_tokens" in n or "lm_head" in n for n, p in model.named_parameters() if p.requires_grad)

    base = load_base_model(str(tiny_models["tiny"]), "cpu", torch.float32)
    embed_rows, hidden = base.get_input_embeddings().weight.shape
    lora_only = trainable_parameters(model)[0]
    model = PeftModel(base, create_lora_config(8, 16, target_modules=lora_target_modules(base),
                                               include_embeddings=True))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("embed_tokens" in n for n in trainable)
    # Tied embeddings/lm_head are trained as one matrix, not two diverging copies.
    assert trainable_parameters(model)[0] == lora_only + embed_rows * hidden


def test_attention_kernel_is_a_flag_and_refused_where_it_cannot_run(tiny_models, tmp_path):
    run = tiny_run(tmp_path, "--attn-implementation", "sdpa")
    model, _ = load_model_and_tokenizer(run)
    assert run.attn_implementation == "sdpa" and model.config._attn_implementation == "sdpa"
    assert tiny_run(tmp_path).attn_implementation == "eager"  # Gemma 3's training default
    with pytest.raises(ConfigError, match="flash_attention_2 runs on CUDA only"):
        tiny_run(tmp_path, "--attn-implementation", "flash_attention_2")


def test_multimodal_lora_stays_out_of_the_vision_tower(tiny_models):
    base = load_base_model(str(tiny_models["tiny-mm"]), "cpu", torch.float32)
    model = PeftModel(base, create_lora_config(8, 16, target_modules=lora_target_modules(base)))
    names = lora_module_names(model)
    assert names and all("language_model" in n for n in names)
    assert len(names) == 7 * base.config.text_config.num_hidden_layers
    assert not any(p.requires_grad for n, p in model.named_parameters() if "vision_tower" in n)


def test_training_steps_lower_loss_change_only_lora_and_adapter_reloads(tiny_models, type1_records, tmp_path):
    run = tiny_run(tmp_path, "--max-steps", "8", "--batch-size", "8")
    model, tokenizer = load_model_and_tokenizer(run)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model = attach_lora(model, run)
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    trainer = build_trainer(run, model, tokenizer, to_sft_dataset(type1_records[:64]), save_strategy="no")
    trainer.train()

    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 8 and all(map(lambda x: x == x, losses))  # finite
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3

    params = dict(model.named_parameters())
    for name, before in base_before.items():
        peft_name = "base_model.model." + name.replace(".weight", ".base_layer.weight") \
            if any(name.endswith(f"{m}.weight") for m in LORA_TARGET_MODULES) else "base_model.model." + name
        assert torch.equal(params[peft_name].detach(), before), f"base weight changed: {name}"
    assert any(not torch.equal(params[n].detach(), b) for n, b in lora_before.items())

    final = save_final(model, tokenizer, run.output_dir)
    assert (final / "adapter_model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    batch = tokenizer(["당뇨병 환자의 식이요법은?"], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    reloaded = load_adapter(load_base_model(str(tiny_models["tiny"]), "cpu", torch.float32), final)
    assert trainable_parameters(reloaded)[0] > 0  # is_trainable=True
    reloaded.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, expected, atol=1e-5)


def test_completion_only_loss_masks_the_prompt(tiny_models, type1_records, tmp_path):
    run = tiny_run(tmp_path, "--max-steps", "1")
    model, tokenizer = load_model_and_tokenizer(run)
    trainer = build_trainer(run, attach_lora(model, run), tokenizer, to_sft_dataset(type1_records[:4]),
                            save_strategy="no")
    example = trainer.train_dataset[0]
    prompt = formats.render_prompt(tokenizer, type1_records[0]["messages"][:-1])
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    labels, input_ids = example["labels"], example["input_ids"]
    assert labels[:n_prompt] == [-100] * n_prompt  # no loss on system/user turns
    assert labels[n_prompt:] == input_ids[n_prompt:]
    completion = tokenizer.decode(input_ids[n_prompt:])
    assert completion.endswith(formats.END_OF_TURN + "\n")  # the model learns to stop


def test_eight_bit_path_trains_and_reloads_with_same_logits(tiny_models, type1_records, tmp_path):
    run = tiny_run(tmp_path, "--max-steps", "3", "--quantization", "8bit")
    run.train_embeddings = True  # embeddings in modules_to_save on a quantized base: the guide's fix
    model, tokenizer = load_model_and_tokenizer(run)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear8bitLt"
    model = attach_lora(model, run)
    trainer = build_trainer(run, model, tokenizer, to_sft_dataset(type1_records[:24]), save_strategy="no")
    trainer.train()
    final = save_final(model, tokenizer, run.output_dir)
    batch = tokenizer(["고혈압의 치료는?"], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    base = load_base_model(str(tiny_models["tiny"]), "cpu", torch.float32, quantization="8bit")
    reloaded = load_adapter(base, final)
    reloaded.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, expected, atol=1e-4)
    saved = json.loads((final / "adapter_config.json").read_text())
    # lm_head is tied to embed_tokens, so PEFT keeps one trainable matrix for both.
    assert {name.split(".")[-1] for name in saved["modules_to_save"]} == {"embed_tokens"}
    assert saved["ensure_weight_tying"] is True


def test_multimodal_model_trains_on_text_only_data(tiny_models, type1_records, tmp_path):
    run = tiny_run(tmp_path, "--max-steps", "3", model="tiny-mm")
    model, tokenizer = load_model_and_tokenizer(run)
    vision_before = {n: p.detach().clone() for n, p in model.named_parameters() if "vision_tower" in n}
    model = attach_lora(model, run)
    trainer = build_trainer(run, model, tokenizer, to_sft_dataset(type1_records[:24]), save_strategy="no")
    trainer.train()
    params = {n.replace("base_model.model.", ""): p for n, p in model.named_parameters()}
    assert all(torch.equal(params[n].detach(), b) for n, b in vision_before.items())
    assert trainer.state.global_step == 3


def test_train_type1_text_end_to_end(tiny_models, type1_records, tmp_path):
    from script.train import train_type1_text

    data_dir = tmp_path / "type1_text"
    atomic_write_jsonl(data_dir / "train.jsonl", type1_records[:48])
    atomic_write_jsonl(data_dir / "validation.jsonl", type1_records[48:56])
    out = tmp_path / "run"
    info = train_type1_text.main(["--data-dir", str(data_dir), "--output", str(out), "--epochs", "2",
                                  "--eval-samples", "8"])
    assert (out / "final" / "adapter_model.safetensors").is_file()
    assert (out / "README.md").is_file() and list(out.glob("checkpoint-*"))
    saved = json.loads((out / "training_info.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(info))
    for key in ("script", "model", "base_model", "epochs", "train_samples", "validation_samples", "config",
                "git_sha", "data_files", "metrics", "versions", "target"):
        assert key in saved, key
    assert saved["train_samples"] == 48 and saved["data_files"][0]["rows"] == 48
    assert len(saved["data_files"][0]["sha256"]) == 64
    metrics = saved["metrics"]
    assert metrics["validation_perplexity"] < metrics["validation_perplexity_before"]
    assert saved["target"]["metric"] == "validation_perplexity"
    # The final adapter reloads trainable on top of the registry's base model.
    reloaded = load_adapter(load_base_model(str(tiny_models["tiny"]), "cpu", torch.float32), out / "final")
    assert trainable_parameters(reloaded)[0] > 0


def test_resume_continues_from_the_last_checkpoint(tiny_models, type1_records, tmp_path):
    from script.train import train_type1_text

    data_dir = tmp_path / "type1_text"
    atomic_write_jsonl(data_dir / "train.jsonl", type1_records[:32])
    atomic_write_jsonl(data_dir / "validation.jsonl", type1_records[32:36])
    out = tmp_path / "run"
    common = ["--data-dir", str(data_dir), "--output", str(out), "--save-steps", "2", "--eval-samples", "4"]
    first = train_type1_text.main([*common, "--max-steps", "4"])
    assert first["metrics"]["global_step"] == 4 and first["resumed_from"] is None
    second = train_type1_text.main([*common, "--max-steps", "6", "--resume"])
    assert second["resumed_from"].endswith("checkpoint-4")
    assert second["metrics"]["global_step"] == 6


def test_type2_type3_type4_trainers_report_their_guide_metric(tiny_models, tmp_path):
    """Each type trainer runs on hand-made records of its type and records its target metric."""
    from script.train import train_type2_text_reasoning, train_type3_word, train_type4_word_reasoning

    options = {"A": "폐렴", "B": "천식", "C": "위염", "D": "빈혈", "E": "통풍"}
    reasoning = "발열과 기침, 흉부 X선의 경화 소견은 세균성 폐렴을 시사한다"
    records = {
        formats.TYPE2_TEXT_REASONING: lambda i: {"messages": formats.type_messages(
            formats.TYPE2_TEXT_REASONING, f"발열과 기침이 {i}일째입니다. 진단과 치료는?",
            formats.wrap_reasoning(reasoning, "폐렴으로 진단되며 항생제로 치료합니다."))},
        formats.TYPE3_WORD: lambda i: {"question": f"발열과 기침이 {i}일째인 환자의 진단은?", "options": options,
                                       "answer": "A", "messages": formats.type_messages(
            formats.TYPE3_WORD, formats.format_mcq(f"발열과 기침이 {i}일째인 환자의 진단은?", options), "A")},
        formats.TYPE4_WORD_REASONING: lambda i: {"answer": "폐렴", "messages": formats.type_messages(
            formats.TYPE4_WORD_REASONING, f"발열, 기침 {i}일", formats.wrap_reasoning(reasoning, "폐렴"))},
    }
    trainers = {formats.TYPE2_TEXT_REASONING: (train_type2_text_reasoning, "validation_perplexity"),
                formats.TYPE3_WORD: (train_type3_word, "validation_accuracy"),
                formats.TYPE4_WORD_REASONING: (train_type4_word_reasoning, "validation_type4_score")}
    for type_name, (module, metric) in trainers.items():
        data_dir = tmp_path / type_name
        atomic_write_jsonl(data_dir / "train.jsonl", [records[type_name](i) for i in range(16)])
        atomic_write_jsonl(data_dir / "validation.jsonl", [records[type_name](i) for i in range(16, 20)])
        info = module.main(["--data-dir", str(data_dir), "--output", str(tmp_path / f"out-{type_name}"),
                            "--max-steps", "2", "--max-length", "96", "--eval-samples", "4"])
        assert info["type"] == type_name
        assert info["target"]["metric"] == metric and metric in info["metrics"]
        assert f"{metric}_before" in info["metrics"]
        assert (tmp_path / f"out-{type_name}" / "final" / "adapter_model.safetensors").is_file()


def test_periodic_eval_on_the_steering_set_fills_validation_history(tiny_models, type1_records, tmp_path):
    from script.train import train_type1_text
    from script.training_config import KORMEDMCQA_TEST_DIR

    options = {"A": "폐렴", "B": "천식", "C": "위염", "D": "빈혈", "E": "통풍"}
    steer = KORMEDMCQA_TEST_DIR / "steer.jsonl"
    atomic_write_jsonl(steer, [{"id": f"steer-{i}", "config": "doctor", "split": "train", "options": options,
                                "question": f"기침이 {i}일째인 환자의 진단은?", "answer": "A", "meta": {}}
                               for i in range(6)])
    try:
        data_dir = tmp_path / "type1_text"
        atomic_write_jsonl(data_dir / "train.jsonl", type1_records[:24])
        atomic_write_jsonl(data_dir / "validation.jsonl", type1_records[24:28])
        info = train_type1_text.main(["--data-dir", str(data_dir), "--output", str(tmp_path / "run"),
                                      "--max-steps", "2", "--show-samples-every", "1", "--eval-samples", "4"])
    finally:
        steer.unlink()
    history = info["validation_history"]
    assert [h["step"] for h in history] == [1, 2]
    assert all(h["total"] == 4 and 0 <= h["accuracy"] <= 100 for h in history)
