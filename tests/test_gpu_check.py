"""The prepared GPU check (make gpu-check) runs its every step on the CPU with tiny shapes
(--dry-run) and reports the fields a GPU run fills: tokens/s of the toolkit and of TRL's defaults
at bf16 and 8-bit, peak memory beside the estimate, letter-mode seconds for 604 items, and the
decoding step after the train02 prompt."""

import json

from script import gpu_check
from script.data_io import atomic_write_jsonl
from tests.sample_records import asan_type1_records


def test_dry_run_fills_every_field(tiny_models, tmp_path, capsys):
    data = tmp_path / "refined_clean"
    for type_name in ("type1_text", "type2_text_reasoning", "type3_word", "type4_word_reasoning"):
        atomic_write_jsonl(data / type_name / "train.jsonl", asan_type1_records())
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--dry-run", "--data-dir", str(data), "--output", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(out.read_text()) and report["dry_run"] and report["device"] == "cpu"
    assert set(report["training"]) == {"bf16", "8bit"}
    for precision in report["training"].values():
        assert precision["estimate_bytes"] > 0
        assert set(precision["configs"]) == {"a2_trl_default", "b_toolkit"}
        for run in precision["configs"].values():
            assert run["real_tokens_per_s"] > 0 and run["peak_memory_bytes"] > 0
            assert run["peak_over_estimate"] == round(run["peak_memory_bytes"] / precision["estimate_bytes"], 3)
        # the same records and initial weights: the fast path trains the same thing
        assert precision["comparison"]["max_loss_diff_b_vs_a2"] < 1e-3
    assert report["training"]["bf16"]["configs"]["a2_trl_default"]["gradient_checkpointing"]  # TRL's default
    assert report["letter_mode_604"]["items"] == 604 and report["letter_mode_604"]["seconds"] > 0
    assert set(report["decode_train02"]) == {"32", "128"}  # the pipeline's evaluation batch and 4x it
    for row in report["decode_train02"].values():
        assert row["ms_per_step"] > 0 and row["steps"] > 1 and row["prompt_seconds"] > 0
    assert {"build", "training", "letter_mode", "decode", "total"} <= set(report["seconds"])
    # the pipeline's stage times from these figures; a CPU dry run's are not used for them
    assert set(report["stage_times"]) == {"bf16", "8bit"}
    for times in report["stage_times"].values():
        assert times["training_from"] == "assumed MFU" and times["total_seconds"] > 0
        assert {"train_00", "train_02", "evaluate_final"} <= set(times["stages"])
