"""Trainers under a 2-process launch (torch.distributed.run, gloo on CPU): the global step count
and batch are right, both ranks take the same decisions, and only rank 0 writes the outputs.

    python -m pytest tests/test_distributed.py -q
"""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from script import round_training
from script.data_io import atomic_write_jsonl
from script.round_training import check_launch, sync_ranks
from script.train.train_loop_until_90 import LoopPolicy
from script.training_config import ConfigError
from script.training_utils import FAULT_KILL_ENV
from tests.sample_records import write_type1_data
from tests.test_round_training import T1, T3, mcq_question, set_item, type1_record, type3_record

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT_S = 300  # a rank waiting for a diverged rank would hang until the collective timeout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two(module: str, *flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``module --model tiny flags`` on 2 CPU processes; the whole process group is killed on timeout."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(free_port()), "-m", module, "--model", "tiny", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(command, env=env, cwd=REPO_ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{module} did not finish in {LAUNCH_TIMEOUT_S} s (ranks waiting on each other?):\n"
                    f"{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def test_two_process_run_trains_once_and_rank_0_writes(tiny_models, tmp_path):
    data_dir = tmp_path / "data"
    write_type1_data(data_dir)
    output = tmp_path / "out"
    result = launch_two("script.train.train_type1_text", "--data-dir", str(data_dir), "--output", str(output),
                        "--max-steps", "4", "--batch-size", "4", "--save-steps", "2", "--show-samples-every", "0",
                        "--eval-samples", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((output / "training_info.json").read_text())
    assert info["world_size"] == 2
    assert info["effective_batch"] == 4 * 1 * 2  # batch x grad_accum x processes
    assert info["metrics"]["global_step"] == 4
    assert "validation_perplexity" in info["metrics"]
    assert sorted(p.name for p in output.iterdir()) == ["README.md", "checkpoint-2", "checkpoint-4", "final",
                                                        "training_info.json"]  # no second writer's leftovers
    assert result.stderr.count("saved adapter and tokenizer") == 1


# ---------------------------------------------------------------------------
# The multi-round trainers
# ---------------------------------------------------------------------------
STEER = "응급실"


@pytest.fixture(scope="module")
def round_dirs(tmp_path_factory) -> dict[str, Path]:
    """8 records of type 1, 12 of type 3; 5 steering and 3 guide604 questions: odd counts, so the
    two ranks score shards of different sizes."""
    root = tmp_path_factory.mktemp("ddp_rounds")
    atomic_write_jsonl(root / "data" / T1 / "train.jsonl", [type1_record(i) for i in range(8)])
    atomic_write_jsonl(root / "data" / T3 / "train.jsonl", [type3_record(i, "D") for i in range(12)])
    atomic_write_jsonl(root / "sets" / "steer.jsonl", [set_item(i, STEER, "D") for i in range(5)])
    atomic_write_jsonl(root / "sets" / "guide604.jsonl", [set_item(i, "병동", "B") for i in range(3)])
    return {"data": root / "data", "sets": root / "sets"}


def round_flags(dirs: dict[str, Path], output: Path, *extra: str) -> list[str]:
    # batch 2 x grad-accum 1 x 2 processes: a global batch of 4, so an epoch of type 1 is 2 steps, of type 3 is 3
    return ["--data-dir", str(dirs["data"]), "--sets-dir", str(dirs["sets"]), "--output", str(output),
            "--max-length", "96", "--max-samples", "12", "--batch-size", "2", "--grad-accum", "1",
            "--eval-samples", "0", *extra]


def assert_failures_match_questions(failures: list[dict]) -> None:
    """The gathered predictions are in item order: each failure's id goes with its own question."""
    assert failures
    for failure in failures:
        i = int(str(failure["question_id"]).rsplit("-", 1)[1])
        assert mcq_question(i, STEER).startswith(failure["question_preview"].removesuffix("...")), failure


def test_loop_under_two_processes_and_resume_after_kill_9(tiny_models, round_dirs, tmp_path):
    """Both ranks SIGKILL themselves in the second round (type 3), then a 2-process --resume finishes."""
    output = tmp_path / "loop"
    flags = round_flags(round_dirs, output, "--target", "101", "--max-loops", "2", "--report-sets", "guide604")
    killed = launch_two("script.train.train_loop_until_90", *flags, env={FAULT_KILL_ENV: "3"})
    assert killed.returncode != 0 and "killing this process now" in killed.stderr, killed.stderr[-3000:]
    state = json.loads((output / "round_state" / "state.json").read_text(encoding="utf-8"))
    assert state["engine"]["global_step"] == 2 and state["engine"]["records_per_step"] == 4

    result = launch_two("script.train.train_loop_until_90", *flags, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("resumed from") == 1
    history = json.loads((output / "loop_history.json").read_text(encoding="utf-8"))
    assert history["world_size"] == 2 and history["global_batch"] == 4
    assert history["steps_per_type_per_loop"] == {T1: 2, T3: 3}  # epochs of 8 and 12 records in global batches
    # every rank trained the same rounds, each once, and stopped together: 2 loops x (2 + 3) steps
    assert [(r["type"], r["start_step"], r["end_step"], r["records"]) for r in history["rounds"]] == [
        (T1, 0, 2, 8), (T3, 2, 5, 12), (T1, 5, 7, 8), (T3, 7, 10, 12)]
    assert history["global_step"] == 10 and history["stopped_at_loop"] == 2
    assert [h["loop"] for h in history["history"]] == [0, 1, 2]
    assert all(h["total"] == 5 for h in history["history"])  # both shards of the steering set were counted
    assert_failures_match_questions(history["persistent_failures"])
    assert history["test_sets"]["guide604"]["total"] == 3
    info = json.loads((output / "training_info.json").read_text(encoding="utf-8"))
    assert info["world_size"] == 2 and info["effective_batch"] == 4 and info["metrics"]["global_step"] == 10
    assert info["resumed"]
    # one writer: no temp or aside dirs left by a second one, one log line per save
    assert sorted(p.name for p in output.iterdir()) == [
        "README.md", "best_checkpoint", "final", "loop_1", "loop_2", "loop_history.json", "loop_history.png",
        "round_state", "training_info.json"]
    assert sorted(p.name for p in (output / "loop_2").iterdir()) == ["after_type1", "after_type3"]
    assert result.stderr.count("final adapter (best steering accuracy") == 1
    assert "weights differ" not in result.stderr  # DDP kept the replicas equal, round after round
    assert result.stderr.count("guide604 (report only)") == 1
    state = json.loads((output / "round_state" / "state.json").read_text(encoding="utf-8"))
    assert state["engine"]["global_step"] == 10


def test_probe_and_focus_under_two_processes(tiny_models, round_dirs, tmp_path):
    output = tmp_path / "probe"
    result = launch_two("script.train.train_probe_and_focus",
                        *round_flags(round_dirs, output, "--probe-steps", "1", "--focus-steps", "1",
                                     "--max-focus-rounds", "1", "--target-accuracy", "101", "--report-sets"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((output / "final_report.json").read_text(encoding="utf-8"))
    assert report["world_size"] == 2 and report["global_batch"] == 4
    # probe each type, then focus on each once (one focus round exhausts a type): the same on both ranks
    assert report["stop_reason"] == "all types exhausted" and report["total_steps"] == 4
    assert [h["phase"] for h in report["history"]] == ["initial", "probe", "probe", "focus", "focus"]
    assert [r["records"] for r in report["rounds"]] == [4] * 4
    assert all(r["is_exhausted"] and r["total_steps"] == 2 for r in report["type_results"].values())
    assert json.loads((output / "failed_questions.json").read_text(encoding="utf-8")) == report["persistent_failures"]
    assert_failures_match_questions(report["persistent_failures"])
    info = json.loads((output / "training_info.json").read_text(encoding="utf-8"))
    assert info["world_size"] == 2 and info["metrics"]["global_step"] == 4
    assert sorted(p.name for p in output.iterdir()) == [
        "README.md", "accuracy_curve.png", "best_checkpoint", "failed_questions.json", "final", "final_report.json",
        "round_state", "training_info.json"]
    assert result.stderr.count("final adapter (best steering accuracy") == 1
    assert "weights differ" not in result.stderr  # DDP kept the replicas equal, round after round


# ---------------------------------------------------------------------------
# Rank agreement and refused launches (in process, no launch)
# ---------------------------------------------------------------------------
class Trained:
    def __init__(self, global_step: int, cursors: dict):
        self.global_step, self.cursors = global_step, cursors

    def weights_checksum(self) -> float:
        return 1.5


def as_rank_1(monkeypatch, gathered_from_rank_0: dict, rank_0_policy_state: dict) -> None:
    """Make round_training believe it is rank 1 of 2, with what rank 0 sent."""
    monkeypatch.setattr(round_training, "world_size", lambda: 2)
    monkeypatch.setattr(round_training, "is_main_process", lambda: False)
    monkeypatch.setattr(round_training, "all_gather_objects", lambda mine: [gathered_from_rank_0, mine])
    monkeypatch.setattr(round_training, "broadcast_from_main", lambda mine: rank_0_policy_state)


def test_every_rank_takes_rank_0_decisions_and_diverged_training_stops(monkeypatch, tmp_path):
    rank_0 = LoopPolicy({T1: 2, T3: 2}, 3, round_training.Scoreboard(90.0, None), tmp_path)
    rank_0.loop, rank_0.type_index = 2, 1
    rank_0.board.history = [{"loop": 0, "step": 0, "accuracy": 20.0}]
    mine = LoopPolicy({T1: 2, T3: 2}, 3, round_training.Scoreboard(90.0, None), tmp_path)
    trained = Trained(6, {T1: [1, 0], T3: [0, 4]})

    as_rank_1(monkeypatch, {"global_step": 6, "cursors": {T1: [1, 0], T3: [0, 4]}, "weights": 1.5},
              rank_0.state_dict())
    sync_ranks(trained, mine)
    assert (mine.loop, mine.type_index, mine.board.history) == (2, 1, rank_0.board.history)

    as_rank_1(monkeypatch, {"global_step": 6, "cursors": {T1: [0, 4], T3: [1, 0]}, "weights": 1.5},
              rank_0.state_dict())
    with pytest.raises(RuntimeError, match="ranks trained different rounds"):
        sync_ranks(trained, mine)


@pytest.mark.parametrize("env", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_sharded_launches_are_refused(monkeypatch, env):
    check_launch()  # plain processes and DDP are fine
    monkeypatch.setenv(env, "true")
    with pytest.raises(ConfigError, match="ddp.yaml"):
        check_launch()
