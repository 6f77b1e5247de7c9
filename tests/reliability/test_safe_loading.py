"""Safe loading: only safetensors and never remote code; pickle-only model or adapter dirs are refused
unless --allow-pickle-weights, and even then unpickling runs no code (weights_only=True); paths taken
from data files cannot point outside the output directory.

    python -m pytest tests/reliability/test_safe_loading.py -q
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from script.data_io import DataError, safe_child_path
from script.model_loading import PICKLE_WEIGHTS_FLAG, check_adapter_weights, ensure_model_available
from script.training_config import ConfigError

REPO = Path(__file__).resolve().parents[2]
MARK = pytest.mark.fault


class Trap:
    """Unpickling this creates ``path``: proof that a pickle ran code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def pickle_only_copy(model_dir: Path, out: Path) -> Path:
    """The tiny model with its weights as pytorch_model.bin (pickle) instead of safetensors."""
    shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(str(model_dir / "model.safetensors")), out / "pytorch_model.bin")
    return out


@pytest.fixture(scope="module")
def pickle_model(tiny_models, tmp_path_factory) -> Path:
    return pickle_only_copy(tiny_models["tiny"], tmp_path_factory.mktemp("pickle") / "model")


@pytest.fixture(scope="module")
def pickle_adapter(tiny_models, tmp_path_factory) -> Path:
    """A LoRA adapter of tiny saved as adapter_model.bin only."""
    from peft import get_peft_model

    from script.model_loading import load_base_model
    from script.training_utils import create_lora_config, lora_target_modules

    base = load_base_model(str(tiny_models["tiny"]), "cpu", torch.float32)
    model = get_peft_model(base, create_lora_config(4, 8, target_modules=lora_target_modules(base)))
    out = tmp_path_factory.mktemp("pickle_adapter") / "adapter"
    model.save_pretrained(out)
    weights = load_file(str(out / "adapter_model.safetensors"))
    torch.save({k: v + 0.01 for k, v in weights.items()}, out / "adapter_model.bin")
    (out / "adapter_model.safetensors").unlink()
    return out


@MARK("safe loading", "pickle-only model dir", "model_loading.ensure_model_available / load_model_for_eval")
def test_a_pickle_only_model_is_refused_with_the_flag_named(pickle_model, record_property):
    from script.model_loading import load_model_for_eval

    with pytest.raises(ConfigError, match=PICKLE_WEIGHTS_FLAG):
        ensure_model_available(str(pickle_model))
    with pytest.raises(ConfigError, match="only pickle weights"):
        load_model_for_eval(str(pickle_model), device="cpu")
    record_property("outcome", f"refused, message names {PICKLE_WEIGHTS_FLAG}")


@MARK("safe loading", "pickle-only model dir", "script/chat.py (CLI)")
def test_chat_refuses_a_pickle_only_model(pickle_model, capsys, record_property):
    from script import chat

    assert chat.main(["--model", str(pickle_model), "--json", "질문"]) == 2
    assert PICKLE_WEIGHTS_FLAG in capsys.readouterr().err
    record_property("outcome", "exit 2, message names the flag")


@MARK("safe loading", "pickle-only model dir", "--allow-pickle-weights")
def test_the_flag_loads_pickle_weights_as_plain_tensors(pickle_model, tiny_models, record_property):
    from script.model_loading import load_model_for_eval

    loaded = load_model_for_eval(str(pickle_model), device="cpu", allow_pickle_weights=True)
    expected = load_file(str(tiny_models["tiny"] / "model.safetensors"))
    name, tensor = next((n, t) for n, t in expected.items() if n.endswith("embed_tokens.weight"))
    got = dict(loaded.model.named_parameters())
    match = next(t for n, t in got.items() if n.endswith("embed_tokens.weight"))
    assert torch.equal(match.detach().cpu(), tensor)
    record_property("outcome", "loaded with the flag, weights equal")


@MARK("safe loading", "malicious pickle", "--allow-pickle-weights still unpickles weights_only")
def test_a_malicious_pickle_runs_no_code_even_with_the_flag(tiny_models, tmp_path, record_property):
    from script.model_loading import load_base_model

    model = tmp_path / "model"
    shutil.copytree(tiny_models["tiny"], model, ignore=shutil.ignore_patterns("*.safetensors"))
    marker = tmp_path / "code_ran"
    torch.save({"model.embed_tokens.weight": Trap(marker)}, model / "pytorch_model.bin")
    with pytest.raises(ConfigError):
        ensure_model_available(str(model))
    with pytest.raises(Exception) as raised:  # refused by torch's weights-only unpickler
        load_base_model(str(model), "cpu", torch.float32, allow_pickle_weights=True)
    assert not marker.exists(), "unpickling ran code"
    record_property("outcome", f"no code ran ({type(raised.value).__name__} from the weights-only unpickler)")


@MARK("safe loading", "pickle-only adapter dir", "check_adapter_weights / load_model_for_eval / trainers")
def test_a_pickle_only_adapter_is_refused_unless_allowed(pickle_adapter, tiny_models, record_property):
    from script.model_loading import load_model_for_eval
    from script.training_utils import build_arg_parser, ensure_run_model, start_run

    with pytest.raises(ConfigError, match=PICKLE_WEIGHTS_FLAG):
        check_adapter_weights(pickle_adapter)
    with pytest.raises(ConfigError, match="only pickle weights"):
        load_model_for_eval(str(pickle_adapter), device="cpu")
    args = build_arg_parser(None).parse_args(["--model", "tiny", "--base-model", str(pickle_adapter)])
    with pytest.raises(ConfigError, match=PICKLE_WEIGHTS_FLAG):
        ensure_run_model(start_run(args, stage="reliability", script="test"))
    allowed = build_arg_parser(None).parse_args(["--model", "tiny", "--base-model", str(pickle_adapter),
                                                 PICKLE_WEIGHTS_FLAG])
    assert ensure_run_model(start_run(allowed, stage="reliability", script="test")) == str(pickle_adapter)
    loaded = load_model_for_eval(str(pickle_adapter), device="cpu", allow_pickle_weights=True)
    lora = [t for n, t in loaded.model.named_parameters() if "lora_A" in n]
    assert lora and loaded.info["adapters"] == [str(pickle_adapter)]
    record_property("outcome", "refused without the flag; loaded with it")


@MARK("safe loading", "flag offered by every loading CLI", "--help")
@pytest.mark.parametrize("module", ["script.train.train_type1_text", "script.chat", "script.merge_and_export",
                                    "script.add_lora_adapter", "script.validation_kor_med_test",
                                    "script.extend_tokenizer", "script.eval_crosscheck"])
def test_every_loading_cli_documents_the_flag(module, record_property):
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0 and PICKLE_WEIGHTS_FLAG in result.stdout, result.stderr[-1000:]
    record_property("outcome", "flag in --help")


# ---------------------------------------------------------------------------
# Paths taken from data files
# ---------------------------------------------------------------------------
@MARK("safe loading", "path from a data file leaving the output dir", "data_io.safe_child_path")
@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a/../../b", "", ".", "a//b", "a\\b", "a\0b", 7, None,
                                  "link/x"])
def test_unsafe_names_are_refused(tmp_path, name, record_property):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)  # a link inside the root that points out of it
    with pytest.raises(DataError, match="out"):
        safe_child_path(tmp_path / "out", name)
    record_property("outcome", "DataError, nothing written")


def test_plain_names_are_accepted(tmp_path):
    assert safe_child_path(tmp_path, "kormedmcqa/doctor/train.jsonl") == tmp_path / "kormedmcqa" / "doctor" / "train.jsonl"
    assert safe_child_path(tmp_path, "1.4") == tmp_path / "1.4"


@MARK("safe loading", "path from a data file leaving the output dir", "download manifest part paths")
def test_a_manifest_path_outside_the_output_is_not_followed(tmp_path, record_property):
    from script.download_all_datasets import entry_is_current

    outside = tmp_path / "outside.jsonl"
    outside.write_text('{"a": 1}\n')
    output = tmp_path / "raw"
    output.mkdir()
    entry = {"source": "x", "path": "../outside.jsonl", "sha256": hashlib.sha256(outside.read_bytes()).hexdigest()}
    assert not entry_is_current(entry, {"source": "x"}, output)  # stale: downloaded again, never trusted
    assert not entry_is_current({**entry, "path": str(outside)}, {"source": "x"}, output)
    record_property("outcome", "entry treated as stale, the outside file is not used")


@MARK("safe loading", "path from a data file leaving the output dir", "organize_by_division folder names")
def test_division_ids_from_records_cannot_name_folders_outside(tmp_path, record_property):
    script = REPO / "phase5_subject_training" / "scripts" / "organize_by_division.py"
    if not script.is_file():
        pytest.skip("phase5_subject_training/scripts/organize_by_division.py is not in this checkout")
    source = tmp_path / "source" / "type1_text"
    source.mkdir(parents=True)
    record = {"id": "x", "type": "type1_text", "messages": [], "divisions": ["../../escaped"],
              "primary_division": "../../escaped"}
    (source / "train.jsonl").write_text(json.dumps(record) + "\n")
    (source / "validation.jsonl").write_text("")
    result = subprocess.run([sys.executable, "-m", "phase5_subject_training.scripts.organize_by_division", "--source",
                             str(tmp_path / "source"), "--output", str(tmp_path / "out" / "inner"), "--min-samples", "1",
                             "--types", "type1_text"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "division" in result.stderr
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "out" / "escaped").exists()
    record_property("outcome", "record refused (invalid division), nothing written outside")
