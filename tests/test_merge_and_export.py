"""merge_and_export: an adapter chain merged into its base loads with plain transformers and gives the
adapter model's logits; a merge that does not match is refused and writes nothing.

    python -m pytest tests/test_merge_and_export.py -q
"""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from script import merge_and_export
from script.evaluation import load_model_for_eval
from script.training_utils import create_lora_config, load_base_model, load_tokenizer, lora_target_modules, write_adapter_chain


def random_adapter(base_dir, out_dir, seed, include_embeddings=False):
    """A LoRA adapter whose B matrices are non-zero, so merging it changes the logits."""
    torch.manual_seed(seed)
    base = load_base_model(str(base_dir), "cpu", torch.float32)
    model = PeftModel(base, create_lora_config(8, 16, target_modules=lora_target_modules(base),
                                               include_embeddings=include_embeddings))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
            elif include_embeddings and "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.01)
    model.save_pretrained(out_dir)
    load_tokenizer(str(base_dir)).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def chain(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    first = random_adapter(tiny_models["tiny"], root / "first", seed=1, include_embeddings=True)
    second = random_adapter(tiny_models["tiny"], root / "second", seed=2)
    write_adapter_chain(second, [str(first)])
    return first, second


def test_merged_chain_loads_without_peft_and_matches_the_adapter_model(chain, tmp_path):
    _, top = chain
    out = tmp_path / "merged"
    assert merge_and_export.main(["--model", str(top), "--output", str(out), "--device", "cpu"]) == 0
    assert not (out / "adapter_config.json").exists()
    info = json.loads((out / "merge_info.json").read_text())
    assert len(info["adapters"]) == 2 and info["max_abs_logit_difference"] <= 1e-3

    reference = load_model_for_eval(str(top), device="cpu")
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not isinstance(merged, PeftModel)
    base = load_base_model(str(reference.info["base_model"]), "cpu", torch.float32)
    prompts = merge_and_export.check_prompts(reference.tokenizer, 3)
    want = merge_and_export.prompt_logits(reference.model, reference.tokenizer, prompts)
    got = merge_and_export.prompt_logits(merged, reference.tokenizer, prompts)
    untouched = merge_and_export.prompt_logits(base, reference.tokenizer, prompts)
    assert merge_and_export.max_abs_difference(want, got) < 1e-3
    assert merge_and_export.max_abs_difference(want, untouched) > 1e-2  # the adapters did change the model


def test_a_mismatching_merge_writes_nothing(chain, tmp_path, monkeypatch, capsys):
    _, top = chain
    out = tmp_path / "merged"
    monkeypatch.setattr(merge_and_export, "max_abs_difference", lambda a, b: 1.0)
    assert merge_and_export.main(["--model", str(top), "--output", str(out), "--device", "cpu"]) == 1
    assert "nothing was written" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".merged.*"))


def test_a_model_without_adapter_is_refused(tiny_models, tmp_path, capsys):
    assert merge_and_export.main(["--model", "tiny", "--output", str(tmp_path / "m")]) == 2
    assert "no adapter to merge" in capsys.readouterr().err
