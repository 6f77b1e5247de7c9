"""A trainer under a 2-process launch (torch.distributed.run, gloo on CPU): the global step count
and batch are right, and only rank 0 evaluates and writes the outputs.

    python -m pytest tests/test_distributed.py -q
"""

import json
import os
import socket
import subprocess
import sys

from tests.sample_records import write_type1_data


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_run_trains_once_and_rank_0_writes(tiny_models, tmp_path):
    data_dir = tmp_path / "data"
    write_type1_data(data_dir)
    output = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               "-m", "script.train.train_type1_text", "--model", "tiny", "--data-dir", str(data_dir),
               "--output", str(output), "--max-steps", "4", "--batch-size", "4", "--save-steps", "2",
               "--show-samples-every", "0", "--eval-samples", "4"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((output / "training_info.json").read_text())
    assert info["world_size"] == 2
    assert info["effective_batch"] == 4 * 1 * 2  # batch x grad_accum x processes
    assert info["metrics"]["global_step"] == 4
    assert "validation_perplexity" in info["metrics"]
    assert sorted(p.name for p in output.iterdir()) == ["README.md", "checkpoint-2", "checkpoint-4", "final",
                                                        "training_info.json"]  # no second writer's leftovers
    assert result.stderr.count("saved adapter and tokenizer") == 1
