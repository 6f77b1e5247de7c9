"""The per-stage GPU time estimate: its arithmetic, its labels, and the gpu-check calibration."""

import json

import pytest

from script import stage_time_estimate as ste
from script.check_gpu_memory import KNOWN_ARCHITECTURES

ARCH_4B = KNOWN_ARCHITECTURES["google/medgemma-4b-it"]


def by_stage(report):
    return {s["stage"]: s for s in report["stages"]}


def test_forward_flops_are_twice_the_weights_plus_attention():
    dense = ARCH_4B.projection_params() + ARCH_4B.embedding_params()
    assert ste.forward_flops_per_token(ARCH_4B, 0) == 2.0 * dense
    per_context = ste.forward_flops_per_token(ARCH_4B, 101) - ste.forward_flops_per_token(ARCH_4B, 100)
    assert per_context == pytest.approx(4.0 * ARCH_4B.num_hidden_layers * ARCH_4B.num_attention_heads * ARCH_4B.head_dim)


def test_checkpointing_adds_one_forward_and_embeddings_the_head_gradient():
    forward = ste.forward_flops_per_token(ARCH_4B, 256)
    plain = ste.training_flops_per_token(ARCH_4B, 512, checkpointing=False, train_embeddings=False)
    assert plain == pytest.approx(2 * forward)
    assert ste.training_flops_per_token(ARCH_4B, 512, True, False) == pytest.approx(3 * forward)
    assert ste.training_flops_per_token(ARCH_4B, 512, False, True) - plain == pytest.approx(2.0 * ARCH_4B.embedding_params())


def test_decoding_is_launch_bound_for_4b_and_8bit_is_slower():
    seconds, basis = ste.decode_step_seconds(ARCH_4B, "none", ste.GPUS["h100"])
    assert basis.startswith("launch-bound")
    assert seconds == pytest.approx(ARCH_4B.num_hidden_layers * ste.DECODE_OVERHEAD_PER_LAYER_S)
    eight, _ = ste.decode_step_seconds(ARCH_4B, "8bit", ste.GPUS["h100"])
    assert eight == pytest.approx(seconds * ste.EIGHT_BIT_SLOWDOWN)
    # the bandwidth floor: the language model's bf16 weights once per step (vision tower not read)
    assert ste.language_model_bytes(ARCH_4B, "none") < ARCH_4B.total_params() * 2


def test_estimate_covers_the_pipeline_stages_and_labels_itself():
    report = ste.estimate("medgemma-4b")
    stages = by_stage(report)
    assert report["estimate"] is True and report["quantization"] == "8bit"  # the registry's CUDA default
    assert {"train_00", "train_01", "train_02", "evaluate_base", "evaluate_final"} <= set(stages)
    assert stages["download"]["seconds"] is None  # the network is not guessed
    assert all(s["seconds"] > 0 for name, s in stages.items() if name != "download")
    assert report["total_seconds"] == pytest.approx(sum(s["seconds"] for s in report["stages"] if s["seconds"]), abs=0.2)
    assert "assumed" in stages["train_00"]["basis"] and "8-bit" in stages["train_00"]["basis"]
    assert "measured: make bench-text-volume" in stages["test_exclusion"]["basis"]
    # MedGemma's train_02 has no cloze twins: the guide's 1,890 items once
    assert stages["train_02"]["work"].startswith("1,890 records x 5 epochs")


def test_bf16_base_is_faster_than_8bit_and_27b_slower_than_4b():
    eight = by_stage(ste.estimate("medgemma-4b"))["train_00"]["seconds"]
    bf16 = by_stage(ste.estimate("medgemma-4b", quantization="none"))["train_00"]["seconds"]
    load = ARCH_4B.total_params() * 2.0 / ste.LOAD_BYTES_PER_S
    assert eight - load == pytest.approx((bf16 - load) * ste.EIGHT_BIT_SLOWDOWN)
    assert ste.estimate("medgemma-27b-text")["total_seconds"] > 3 * ste.estimate("medgemma-4b")["total_seconds"]


def test_gpu_check_tokens_per_s_replace_the_assumption():
    check = {"dry_run": False, "registry_settings": "medgemma-4b",
             "training": {"8bit": {"configs": {"b_toolkit": {"real_tokens_per_s": 4000.0}}}}}
    report = ste.estimate("medgemma-4b", gpu_check=check)
    train_00 = by_stage(report)["train_00"]
    faster = json.loads(json.dumps(check))
    faster["training"]["8bit"]["configs"]["b_toolkit"]["real_tokens_per_s"] = 8000.0
    # the tokens/s term alone: 10,000 records of 512 tokens at 4,000 and at 8,000 tokens/s
    assert train_00["seconds"] - by_stage(ste.estimate("medgemma-4b", gpu_check=faster))["train_00"]["seconds"] == \
        pytest.approx(10_000 * 512 * (1 / 4000.0 - 1 / 8000.0))
    assert train_00["basis"].startswith("gpu-check: 4,000 tokens/s") and report["training_from"] == "gpu-check"
    # a dry run's CPU figures, or a precision it did not measure, leave the assumption in place
    assert ste.estimate("medgemma-4b", gpu_check=dict(check, dry_run=True))["training_from"] == "assumed MFU"
    assert ste.estimate("medgemma-4b", quantization="none", gpu_check=check)["training_from"] == "assumed MFU"
    # the check measured the 4B's shape: it says nothing of the 27B
    assert ste.estimate("medgemma-27b-text", gpu_check=check)["training_from"] == "assumed MFU"


def test_gpu_check_decoding_and_letter_time_replace_the_evaluation_assumptions():
    check = {"dry_run": False, "registry_settings": "medgemma-4b", "decode_train02": {"32": {"ms_per_step": 10.0}},
             "letter_mode_604": {"items": 604, "seconds": 30.2}}
    report = ste.estimate("medgemma-4b", quantization="none", gpu_check=check)
    base = by_stage(report)["evaluate_base"]
    load = ARCH_4B.total_params() * 2.0 / ste.LOAD_BYTES_PER_S
    batches = -(-ste.EVAL_QUESTIONS // 32)
    expected = 2 * ste.EVAL_QUESTIONS * 30.2 / 604 + 2 * batches * 512 * 0.010 + load
    assert base["seconds"] == pytest.approx(expected)
    assert "gpu-check: 10.0 ms/step" in base["basis"] and report["decoding_from"] == "gpu-check"
    eight = by_stage(ste.estimate("medgemma-4b", gpu_check=check))["evaluate_base"]
    assert eight["seconds"] - load == pytest.approx((expected - load) * ste.EIGHT_BIT_SLOWDOWN)
    assert "x2.5 assumed for the 8-bit base" in eight["basis"]


def test_cli_table_json_and_refusal_of_the_embedded_model(tmp_path, capsys):
    assert ste.main(["--model", "medgemma-4b"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("Estimate (not a measurement) for MODEL=medgemma-4b on one H100")
    assert "| train_02 |" in table and "| total (estimated stages) |" in table
    check = tmp_path / "gpu_check.json"
    check.write_text(json.dumps({"dry_run": False, "registry_settings": "medgemma-4b", "training": {
        "bf16": {"configs": {"b_toolkit": {"real_tokens_per_s": 9000}}}}}))
    assert ste.main(["--model", "medgemma-4b", "--quantization", "none", "--gpu-check", str(check), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["training_from"] == "gpu-check"
    with pytest.raises(SystemExit):
        ste.main(["--model", "tiny"])
    assert ste.main(["--model", "medgemma-4b", "--text-mb", "100"]) == 0
    assert "| test_exclusion | 300 MB of text |" in capsys.readouterr().out
