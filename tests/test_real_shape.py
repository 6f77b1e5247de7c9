"""MedGemma-4B's real shape on CPU: a random-initialised Gemma3ForConditionalGeneration with the
published width, heads and 262,208-row vocabulary (two layers) through train_02, letter and cloze
scoring, merge and reload (script/smoke_real_shape.py, `make smoke-real-shape`). Run as its own
process: the model and its merge take several GB, returned when it exits."""

import json
import os
import subprocess
import sys

import pytest

from script.embedded import make_real_shape_model
from script.training_config import PROJECT_ROOT


def test_layer_pattern_keeps_both_attention_kinds():
    assert make_real_shape_model.layer_types(2) == ["sliding_attention", "full_attention"]
    assert make_real_shape_model.layer_types(7) == ["sliding_attention"] * 5 + ["full_attention"] * 2
    assert make_real_shape_model.layer_types(34).count("full_attention") == 6  # MedGemma-4B: every sixth + last


@pytest.mark.slow
def test_real_shape_trains_scores_merges_and_reloads(tmp_path):
    env = {**os.environ, "MEDGEMMA_KOREAN_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "script.smoke_real_shape", "--items", "4",
                           "--work-dir", str(tmp_path / "work"), "--output", str(tmp_path / "smoke.json")],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)  # stdout is the one JSON object, nothing else
    assert report == json.loads((tmp_path / "smoke.json").read_text())
    assert report["ok"] and all(report["checks"].values())
    assert report["model"]["class"] == report["loaded"]["class"] == "Gemma3ForConditionalGeneration"
    assert report["model"]["vocab_size"] == report["loaded"]["embedding_rows"] == 262_208
    assert report["loaded"]["tokenizer_length"] == 262_145
    assert report["adapter"]["r"] == 64 and report["adapter"]["lora_in_vision_tower"] == 0
    assert report["adapter"]["lora_tensors"] == 2 * 7 * 2  # A and B of 7 projections in 2 layers
    assert [s["step"] for s in report["steps"]] == ["build", "train_02", "letter", "letter_after_reasoning", "cloze",
                                                "merge", "reload"]
    assert all(s["peak_rss_bytes"] > 0 and s["seconds"] >= 0 for s in report["steps"])
    assert report["merge"]["max_abs_logit_difference"] <= report["merge"]["tolerance"]
