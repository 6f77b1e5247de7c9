"""merge_and_export: an adapter chain merged into its base loads with plain transformers and gives the
adapter model's logits; a merge that does not match is refused and writes nothing.

    python -m pytest tests/test_merge_and_export.py -q
"""

import json
import re

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from script import merge_and_export
from script.model_loading import load_base_model, load_model_for_eval, load_tokenizer, write_adapter_chain
from script.training_utils import create_lora_config, lora_target_modules


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

    # the card parses with the hub's parser and its snippet loads the merged weights as written
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == str(reference.info["base_model"]) and "merged" in card.data.tags
    assert all(f"`{a}`" in card.content for a in info["adapters"])
    namespace: dict = {}
    exec(re.search(r"```python\n(.*?)```", card.content, re.S).group(1), namespace)  # noqa: S102
    assert merge_and_export.max_abs_difference(
        want, merge_and_export.prompt_logits(namespace["model"], namespace["tokenizer"], prompts)) < 1e-3


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


# ---------------------------------------------------------------------------
# --adapter-only: one plain LoRA adapter (+ a base when it cannot stand on the original one)
# ---------------------------------------------------------------------------
def served_base(export_dir):
    """The base the exported adapter names, loaded with plain transformers (a fresh copy each call:
    PEFT injects the adapter into the model object it is given)."""
    config = json.loads((export_dir / "adapter" / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"], dtype=torch.float32)
    assert not isinstance(base, PeftModel)
    return base


def export_logits(adapter_dir, export_dir, n=3):
    """Logits on ``n`` check prompts of: the adapter model, what a LoRA server loads (the base with
    transformers, the adapter with PEFT), and that base alone; plus the function that computes them."""
    reference = load_model_for_eval(str(adapter_dir), device="cpu")
    prompts = merge_and_export.check_prompts(reference.tokenizer, n)

    def logits(model):
        return merge_and_export.prompt_logits(model, reference.tokenizer, prompts)

    served = PeftModel.from_pretrained(served_base(export_dir), export_dir / "adapter")
    return logits(reference.model), logits(served), logits(served_base(export_dir)), logits


def assert_plain_lora(adapter_dir):
    from safetensors import safe_open

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["modules_to_save"] is None and not config.get("use_dora")  # what vLLM accepts
    with safe_open(adapter_dir / "adapter_model.safetensors", "pt") as weights:
        names = list(weights.keys())
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert (adapter_dir / "tokenizer_config.json").is_file()


def test_a_single_adapter_is_exported_over_the_original_base(tiny_models, tmp_path):
    top = random_adapter(tiny_models["tiny"], tmp_path / "single", seed=3)
    out = tmp_path / "export"
    assert merge_and_export.main(["--model", str(top), "--adapter-only", "--output", str(out), "--device", "cpu"]) == 0
    assert not (out / "base").exists()
    assert_plain_lora(out / "adapter")
    info = json.loads((out / "export_info.json").read_text())
    assert not info["base_exported"] and info["served_base"] == str(tiny_models["tiny"])
    assert f"--lora-modules medgemma-ko={out.resolve()}/adapter --max-lora-rank 8" in info["serve"]["vllm"]

    want, got, base_only, _ = export_logits(top, out)
    assert merge_and_export.max_abs_difference(want, got) < 1e-4
    assert merge_and_export.max_abs_difference(want, base_only) > 1e-2


def test_a_chain_is_exported_as_merged_parents_plus_the_top_adapter(chain, tiny_models, tmp_path):
    first, top = chain  # first: LoRA + fully trained embeddings; top: LoRA only
    out = tmp_path / "export"
    assert merge_and_export.main(["--model", str(top), "--adapter-only", "--output", str(out), "--device", "cpu",
                                  "--adapter-name", "ko-med"]) == 0
    assert_plain_lora(out / "adapter")
    info = json.loads((out / "export_info.json").read_text())
    assert info["base_exported"] and info["served_base"] == str((out / "base").resolve())
    assert info["chain"] == [str(first), str(top)] and info["max_abs_logit_difference"] <= 1e-3
    serving = (out / "SERVING.md").read_text()
    assert f"--enable-lora --lora-modules ko-med={out.resolve()}/adapter" in serving
    assert f"--lora-adapters ko-med={out.resolve()}/adapter" in serving and '"adapter_id": "ko-med"' in serving

    want, got, base_only, logits = export_logits(top, out)
    assert merge_and_export.max_abs_difference(want, got) < 1e-3
    # The top adapter still matters, and the base is not the original one (the parent is in it).
    original = load_base_model(str(tiny_models["tiny"]), "cpu", torch.float32)
    assert merge_and_export.max_abs_difference(want, base_only) > 1e-2
    assert merge_and_export.max_abs_difference(base_only, logits(original)) > 1e-2


def test_trained_embeddings_of_a_lone_adapter_move_into_the_base(chain, tmp_path, monkeypatch, capsys):
    first, _ = chain
    out = tmp_path / "export"
    assert merge_and_export.main(["--model", str(first), "--adapter-only", "--output", str(out), "--device", "cpu"]) == 0
    info = json.loads((out / "export_info.json").read_text())
    assert info["base_exported"] and any("fully trained modules" in r for r in info["base_reasons"])
    assert info["dropped_from_adapter"] and info["max_abs_logit_difference"] <= 1e-3
    assert_plain_lora(out / "adapter")

    want, got, _, _ = export_logits(first, out, n=2)
    assert merge_and_export.max_abs_difference(want, got) < 1e-3

    monkeypatch.setattr(merge_and_export, "max_abs_difference", lambda a, b: 1.0)
    again = tmp_path / "again"
    assert merge_and_export.main(["--model", str(first), "--adapter-only", "--output", str(again),
                                  "--device", "cpu"]) == 1
    assert "nothing was written" in capsys.readouterr().err and not again.exists()
