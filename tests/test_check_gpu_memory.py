"""script/check_gpu_memory.py: the memory estimate, its parameter arithmetic, the CLI on CPU and with a fake GPU.

    OMP_NUM_THREADS=1 python -m pytest tests/test_check_gpu_memory.py -q
"""

import json

import pytest
import torch

from script import check_gpu_memory as cgm
from script.check_gpu_memory import GIB, estimate_training_memory
from script.embedded import make_tiny_model


def test_estimate_grows_with_batch_and_length():
    for model in ("medgemma-4b", "medgemma-27b"):
        by_batch = [estimate_training_memory(model, batch_size=b).total for b in (1, 2, 4, 8)]
        by_length = [estimate_training_memory(model, max_length=n).total for n in (128, 256, 512, 1024)]
        assert by_batch == sorted(by_batch) and len(set(by_batch)) == 4
        assert by_length == sorted(by_length) and len(set(by_length)) == 4


def test_fewer_bits_need_less_memory():
    for model in ("medgemma-4b", "medgemma-27b"):
        weights = {q: estimate_training_memory(model, quantization=q).components["weights"] for q in cgm.QUANTIZATIONS}
        totals = {q: estimate_training_memory(model, quantization=q).total for q in cgm.QUANTIZATIONS}
        assert weights["4bit"] < weights["8bit"] < weights["none"]
        assert totals["4bit"] < totals["8bit"] < totals["none"]
    # medgemma-27b in bf16 alone is ~55 GB of weights; nf4 brings it near a quarter of that.
    assert 50 * GIB < estimate_training_memory("medgemma-27b", quantization="none").components["weights"] < 56 * GIB


def test_checkpointing_and_embeddings_follow_the_memory_profile():
    four = estimate_training_memory("medgemma-4b")  # MEMORY_CONFIGS: checkpointing on, embeddings trained
    assert four.gradient_checkpointing and four.train_embeddings and four.batch_size == 2
    assert four.components["embeddings"] == 262_208 * 2560 * 8
    assert estimate_training_memory("medgemma-4b", gradient_checkpointing=False).components["activations"] > \
        four.components["activations"]
    assert estimate_training_memory("medgemma-4b", train_embeddings=False).components["embeddings"] == 0
    assert not estimate_training_memory("medgemma-27b").train_embeddings  # the guide: OOM with embeddings


def test_published_architectures_give_the_published_parameter_counts():
    for hub_id, published in cgm.PUBLISHED_PARAMETERS.items():
        computed = cgm.KNOWN_ARCHITECTURES[hub_id].total_params()
        assert abs(computed - published) / published < 0.03, (hub_id, computed)


def test_config_arithmetic_matches_real_models_and_peft(tmp_path):
    """Parameter and LoRA counts from config.json equal what transformers and PEFT build from it."""
    from peft import get_peft_model
    from transformers import (
        Gemma3Config,
        Gemma3ForCausalLM,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    from script.training_utils import create_lora_config

    text = Gemma3TextConfig(vocab_size=8064, **make_tiny_model.TEXT_CONFIG)
    multimodal = Gemma3Config(text_config=text.to_dict(), vision_config=SiglipVisionConfig(
        **make_tiny_model.VISION_CONFIG).to_dict(), mm_tokens_per_image=4, tie_word_embeddings=True)
    for name, config, cls in (("text", text, Gemma3ForCausalLM), ("mm", multimodal, Gemma3ForConditionalGeneration)):
        config.save_pretrained(tmp_path / name)
        arch = cgm.resolve_architecture(str(tmp_path / name))
        model = cls(config)
        assert arch.total_params() == sum(p.numel() for p in model.parameters()), name
    model = get_peft_model(Gemma3ForCausalLM(text), create_lora_config(16, 32))
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert cgm.resolve_architecture(str(tmp_path / "text")).lora_params(16) == lora


def test_cpu_run_says_no_cuda_and_still_prints_the_estimate(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cgm.main(["--model", "medgemma-4b"]) == 0
    out = capsys.readouterr().out
    assert "no CUDA device visible" in out
    assert "medgemma-4b" in out and "total GiB" in out and "8bit" in out


def test_json_output_parses_and_all_lists_every_model(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cgm.main(["--model", "all", "--json", "--quantization", "4bit"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cuda_available"] is False and report["devices"] == []
    listed = {r["estimate"]["model"] for r in report["models"]} | set(report["skipped"])
    assert listed == set(cgm.MODEL_CONFIGS)
    for result in report["models"]:
        estimate = result["estimate"]
        assert estimate["quantization"] == "4bit"
        assert estimate["total_bytes"] == sum(estimate["components"].values())


def test_verdict_per_device_with_advice(monkeypatch, capsys):
    fake = [{"device": "cuda:0", "name": "32 GB card", "total_bytes": 32 * GIB, "free_bytes": 31 * GIB},
            {"device": "cuda:1", "name": "80 GB card", "total_bytes": 80 * GIB, "free_bytes": 79 * GIB}]
    monkeypatch.setattr(cgm, "visible_devices", lambda: fake)
    assert cgm.main(["--model", "medgemma-27b", "--json"]) == 0
    small, large = json.loads(capsys.readouterr().out)["models"][0]["verdicts"]
    assert small["fits"] is False and any("4bit" in tip for tip in small["advice"])
    assert large["fits"] is True and large["advice"] == []
    assert cgm.main(["--model", "medgemma-4b", "--quantization", "none", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "cuda:0: does not fit" in out and "lower --batch-size to" in out
    assert "no CUDA" not in out


def test_unknown_model_is_an_error(capsys):
    assert cgm.main(["--model", "gemma-99b"]) == 2
    assert "unknown model 'gemma-99b'" in capsys.readouterr().err
    with pytest.raises(cgm.UnknownArchitectureError, match="no config.json"):
        cgm.resolve_architecture("/nonexistent/model")
