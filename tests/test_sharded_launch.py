"""What each rank loads under each shipped accelerate config, with the environment that
``accelerate launch --config_file configs/accelerate/<x>.yaml`` really exports (built by accelerate's
own launcher functions), and a real 2-process load under FSDP's environment.

accelerate enables FSDP and DeepSpeed only for GPU process groups, so a sharded *training* run cannot
happen on CPU; these tests pin everything up to the Trainer: flags, checkpointing, quantization, the
load plan, and that under FSDP only the first rank of a machine reads the checkpoint.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from script import training_utils
from script.launch import (
    check_launch_environment,
    fsdp_rank_holds_no_weights,
    launch_kind,
    sharded_launch_settings,
    shards_weights,
)
from script.training_config import ConfigError
from script.training_utils import check_trainer_launch, model_load_plan
from tests.test_distributed import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO_ROOT / "configs" / "accelerate").glob("*.yaml"))
LAUNCH_ENV_PREFIXES = ("ACCELERATE_", "FSDP_")


def launch_environment(config_file: Path, processes: int = 2) -> dict[str, str]:
    """The ACCELERATE_*/FSDP_* variables ``accelerate launch --config_file X`` gives each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import (
        prepare_deepspeed_cmd_env,
        prepare_multi_gpu_env,
        prepare_simple_launcher_cmd_env,
    )

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "--num_processes", str(processes),
                                               "-m", "script.train.train_02_kor_med_test"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # what launch_command does before deepspeed_launcher
        fields = list(defaults.deepspeed_config) if defaults else []
        args.deepspeed_fields_from_accelerate_config = ",".join(fields + (["mixed_precision"] if mp_from_config else []))
        _, env = prepare_deepspeed_cmd_env(args)
    elif args.multi_gpu or args.use_fsdp:
        env = prepare_multi_gpu_env(args)
    else:
        _, env = prepare_simple_launcher_cmd_env(args)
    return {k: v for k, v in env.items() if k.startswith(LAUNCH_ENV_PREFIXES)}


@pytest.fixture
def clean_launch_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith(LAUNCH_ENV_PREFIXES) or key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
            monkeypatch.delenv(key)
    return monkeypatch


EXPECTED = {  # config -> (launch kind, shards the base weights)
    "ddp.yaml": ("ddp", False),
    "multi_node.yaml": ("ddp", False),
    "single_gpu.yaml": ("single", False),
    "fsdp.yaml": ("fsdp", True),
    "zero2.yaml": ("deepspeed", False),
    "zero3.yaml": ("deepspeed", True),
}


def test_every_shipped_config_is_covered():
    assert {c.name for c in CONFIGS} == set(EXPECTED)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
@pytest.mark.parametrize("local_rank", [0, 1])
def test_each_config_decides_what_a_rank_loads(config, local_rank, clean_launch_env):
    env = launch_environment(config)
    kind, sharded = EXPECTED[config.name]
    world = 1 if kind == "single" else 2
    for key, value in {**env, "RANK": str(local_rank), "LOCAL_RANK": str(local_rank),
                       "WORLD_SIZE": str(world)}.items():
        clean_launch_env.setenv(key, value)
    if kind == "single" and local_rank:
        pytest.skip("one process")
    assert launch_kind() == kind
    assert shards_weights() is sharded

    device = f"cuda:{local_rank}"
    if sharded:
        # bitsandbytes weights cannot be sharded: explicit 8-/4-bit refused, auto becomes bf16
        for requested in ("8bit", "4bit"):
            with pytest.raises(ConfigError, match="cannot be sharded"):
                sharded_launch_settings(kind, requested, requested, True)
        quantization, trainer_gc, by = sharded_launch_settings(kind, "auto", "8bit", True)
        assert quantization == "none"
        if kind == "fsdp":  # fsdp.yaml checkpoints activations itself: the Trainer must not as well
            assert env["FSDP_ACTIVATION_CHECKPOINTING"] == "true"
            assert (trainer_gc, by) == (False, "fsdp")
            assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
            assert fsdp_rank_holds_no_weights() is (local_rank != 0)
        else:
            assert (trainer_gc, by) == (True, "trainer")
    else:
        assert sharded_launch_settings(kind, "auto", "8bit", True) == ("8bit", True, "trainer")
        assert not fsdp_rank_holds_no_weights()
        run = _run_stub(kind, device)
        plan = model_load_plan(run)
        # a whole copy, on this process's own GPU
        assert plan["device_map"] == {"": device}

    if kind == "deepspeed":
        with pytest.raises(ConfigError, match="CUDA"):
            check_launch_environment(kind, "cpu")
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            with pytest.raises(ConfigError, match=r"pip install -e '\.\[deepspeed\]'"):
                check_launch_environment(kind, device)
    else:
        check_launch_environment(kind, "cpu")


def _run_stub(launch, device):
    return SimpleNamespace(launch=launch, device=device)


def test_fsdp_plan_loads_without_a_device_map(clean_launch_env, monkeypatch):
    for key, value in launch_environment(REPO_ROOT / "configs/accelerate/fsdp.yaml").items():
        clean_launch_env.setenv(key, value)
    joined = []
    monkeypatch.setattr(training_utils, "init_distributed", lambda run: joined.append(run) or 2)
    plan = model_load_plan(_run_stub("fsdp", "cuda:1"))
    assert plan == {"launch": "fsdp", "device": None, "device_map": None}
    assert joined, "the process group must exist before loading (transformers checks it)"


def test_fsdp_training_on_cpu_is_refused():
    with pytest.raises(ConfigError, match="FSDP shards only on GPUs"):
        check_trainer_launch(_run_stub("fsdp", "cpu"))
    check_trainer_launch(_run_stub("fsdp", "cuda:0"))
    check_trainer_launch(_run_stub("ddp", "cpu"))


PROBE = REPO_ROOT / "tests" / "fsdp_load_probe.py"


def test_two_process_fsdp_load_reads_the_checkpoint_on_rank_0_only(tiny_models, tmp_path, clean_launch_env):
    env = {**os.environ, **launch_environment(REPO_ROOT / "configs/accelerate/fsdp.yaml"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ranks.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(PROBE), str(out)]
    result = subprocess.run(command, env=env, cwd=REPO_ROOT, text=True, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = json.loads(out.read_text())
    assert [r["rank"] for r in ranks] == [0, 1]
    assert [r["read_checkpoint"] for r in ranks] == [True, False]
    # same structure (names, shapes, tied embeddings) on both ranks, nothing on a GPU or left on meta
    assert ranks[0]["shapes"] == ranks[1]["shapes"]
    assert set(ranks[1]["by_device"]) == {"cpu"}
    # non-persistent buffers (rotary tables) are real on every rank: FSDP does not broadcast them
    assert ranks[0]["buffers"] == ranks[1]["buffers"]
    assert ranks[0]["buffers"], "the probe found no non-persistent buffer to compare"


def test_adapter_saved_from_a_gathered_full_state_dict_is_the_adapter(tiny_models, tmp_path):
    """Under FSDP rank 0 saves ``final/`` from the full state dict every rank gathered
    (accelerator.get_state_dict); PEFT must keep exactly the adapter's weights from it."""
    import torch
    from safetensors.torch import load_file

    from script.training_utils import attach_lora, load_model_and_tokenizer, save_final
    from tests.sample_records import tiny_run

    run = tiny_run(tmp_path)
    run.train_embeddings = True  # modules_to_save too (train_00/01)
    model, tokenizer = load_model_and_tokenizer(run)
    model = attach_lora(model, run)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param))  # as if trained
    full = {k: v.clone() for k, v in model.state_dict().items()}
    plain = save_final(model, tokenizer, tmp_path / "plain")
    gathered = save_final(model, tokenizer, tmp_path / "gathered", state_dict=full)
    expected = load_file(plain / "adapter_model.safetensors")
    saved = load_file(gathered / "adapter_model.safetensors")
    assert set(saved) == set(expected) and any("modules_to_save" in k or "embed" in k for k in saved)
    assert all(torch.equal(saved[k], expected[k]) for k in expected)
