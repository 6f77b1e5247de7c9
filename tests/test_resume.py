"""Resume after ``kill -9``: a trainer killed mid-run and restarted with --resume ends with the same
step count and the same adapter as a run that was never interrupted.

The kill is real (SIGKILL) and lands at a known step through the fault-injection hook
(training_utils.FAULT_KILL_ENV), after one checkpoint was saved and before the next.

    python -m pytest tests/test_resume.py -q
"""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from script.training_utils import FAULT_KILL_ENV
from tests.sample_records import write_type1_data


def train(data_dir, output, *extra, kill_at=None):
    env = {k: v for k, v in os.environ.items() if k != FAULT_KILL_ENV}
    env["OMP_NUM_THREADS"] = "1"
    if kill_at is not None:
        env[FAULT_KILL_ENV] = str(kill_at)
    command = [sys.executable, "-m", "script.train.train_type1_text", "--model", "tiny", "--data-dir", str(data_dir),
               "--output", str(output), "--max-steps", "12", "--save-steps", "5", "--batch-size", "4",
               "--show-samples-every", "0", "--eval-samples", "4", *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def adapter_weights(output):
    return load_file(str(output / "final" / "adapter_model.safetensors"))


def test_kill_9_then_resume_matches_an_uninterrupted_run(tiny_models, tmp_path):
    data_dir = tmp_path / "data"
    write_type1_data(data_dir)

    straight = train(data_dir, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = train(data_dir, tmp_path / "killed", kill_at=7)
    assert killed.returncode == -9, f"expected SIGKILL, got {killed.returncode}: {killed.stderr[-2000:]}"
    assert (tmp_path / "killed" / "checkpoint-5" / "trainer_state.json").is_file()
    assert not (tmp_path / "killed" / "final").exists()
    # A checkpoint the kill interrupted while saving: no trainer_state.json. It must be skipped.
    (tmp_path / "killed" / "checkpoint-10").mkdir()

    resumed = train(data_dir, tmp_path / "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    info = json.loads((tmp_path / "killed" / "training_info.json").read_text())
    reference = json.loads((tmp_path / "straight" / "training_info.json").read_text())
    assert info["resumed_from"].endswith("checkpoint-5")
    assert info["metrics"]["global_step"] == reference["metrics"]["global_step"] == 12
    # Steps 6..12 were trained once each after the resume: the loss log continues from step 6.
    resumed_steps = [entry["step"] for entry in info["loss_history"]]
    assert resumed_steps == sorted(set(resumed_steps)) and resumed_steps[-1] == 12

    a, b = adapter_weights(tmp_path / "straight"), adapter_weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name
