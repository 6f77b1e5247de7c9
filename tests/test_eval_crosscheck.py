"""Cross-check with lm-evaluation-harness: the data and task yamls it reads, the item-by-item
comparisons (on hand-made harness outputs), letter mode's shared-prompt cache, and one real run on
the tiny model when lm_eval is installed (`make eval-crosscheck` installs it; skipped otherwise).

    python -m pytest tests/test_eval_crosscheck.py -q
"""

import importlib.util
import json
import math

import pytest
import yaml

from script import eval_crosscheck as cc
from script import eval_items, formats, mcq_prompts
from script import evaluation as ev
from script.data_io import DataError, atomic_write_jsonl, read_jsonl
from script.model_loading import load_model_for_eval
from script.training_config import SAMPLE_DATA_DIR

KORMEDMCQA_SAMPLE = SAMPLE_DATA_DIR / "sean0042" / "KorMedMCQA" / "data"
HAS_LM_EVAL = importlib.util.find_spec("lm_eval") is not None


def item(i=0, answer="B", letters="ABCDE"):
    options = dict(zip("ABCDE", ["협심증", "급성 심근경색", "폐렴", "기흉", "A형 간염"]))
    return {"id": f"t/{i}", "question": f" 질문 {i}: 다음 중 옳은 것은? ", "answer": answer,
            "options": {letter: options[letter] for letter in letters}}


@pytest.fixture(scope="module")
def sample_items():
    doctor = eval_items.read_items_file(KORMEDMCQA_SAMPLE / "doctor" / "test.jsonl")
    assert not doctor.rejects
    return doctor.items[:8]


# ---------------------------------------------------------------------------
# What the harness reads
# ---------------------------------------------------------------------------
def test_rows_have_upstream_columns_and_our_type3_turn():
    row = cc.lm_eval_row(item(answer="D"))
    assert row["answer"] == 4 and row["choices"] == list("ABCDE") and row["E"] == "A형 간염"
    assert row["user"] == mcq_prompts.mcq_prompt_messages(item(), "type3")[-1]["content"]
    assert row["user"].startswith("질문 0") and "\nA) 협심증\n" in row["user"]
    assert cc.type3_system_prompt([item(), item(1)]) == formats.SYSTEM_PROMPTS[formats.TYPE3_WORD]
    assert cc.lm_eval_row(item(letters="ABCD", answer="A"))["choices"] == list("ABCD")


def test_data_writer_refuses_what_the_harness_cannot_match_or_print(tmp_path):
    path = tmp_path / "items.jsonl"
    assert cc.write_lm_eval_data([item(0), item(1, answer="E")], path, need_five_options=True) == 2
    assert [r["answer"] for r in read_jsonl(path).records] == [2, 5]
    with pytest.raises(DataError, match="five options"):
        cc.write_lm_eval_data([item(0), item(1, letters="ABCD")], path, need_five_options=True)
    assert cc.write_lm_eval_data([item(1, letters="ABCD")], path, need_five_options=False) == 1
    with pytest.raises(DataError, match="not unique"):
        cc.write_lm_eval_data([item(0), item(0)], path, need_five_options=False)


def test_task_yamls_point_at_the_data_and_the_stock_template(tmp_path, monkeypatch):
    stock = tmp_path / "installed_tasks"
    (stock / "kormedmcqa").mkdir(parents=True)
    (stock / "kormedmcqa" / "_template_yaml").write_text("output_type: generate_until\n")
    monkeypatch.setattr(cc, "stock_tasks_dir", lambda: stock)
    data = tmp_path / "items.jsonl"
    tasks = tmp_path / "tasks"
    assert cc.write_task_yaml(cc.LETTER_TASK_YAML, tasks, data, tmp_path / "cache") == "kormedmcqa_letter_mode"
    letter = yaml.safe_load((tasks / cc.LETTER_TASK_YAML.name).read_text())
    assert letter["output_type"] == "multiple_choice" and letter["doc_to_text"] == "{{user}}"
    assert letter["dataset_kwargs"] == {"data_files": {"test": str(data.resolve())},
                                        "cache_dir": str((tmp_path / "cache").resolve())}
    assert cc.write_task_yaml(cc.GENERATE_TASK_YAML, tasks, data, tmp_path / "cache") == "kormedmcqa_local"
    local = yaml.safe_load((tasks / cc.GENERATE_TASK_YAML.name).read_text())
    assert local["include"] == str(stock / "kormedmcqa" / "_template_yaml")
    assert set(local["dataset_kwargs"]["data_files"]) == {"test", "fewshot"} and local["num_fewshot"] == 0
    (stock / "kormedmcqa" / "_template_yaml").unlink()
    with pytest.raises(DataError, match="not found"):
        cc.write_task_yaml(cc.GENERATE_TASK_YAML, tasks, data, tmp_path / "cache")


def test_harness_loads_the_same_weights_or_refuses_what_it_cannot_load(tmp_path):
    from script.training_config import ConfigError

    info = {"base_model": "/m/base", "dtype": "float32", "device": "cpu", "adapters": [], "tokenizer": "/m/base"}
    assert cc.harness_model_args(info) == {"pretrained": "/m/base", "dtype": "float32", "device": "cpu"}
    lora, embeddings = tmp_path / "lora", tmp_path / "embeddings"
    for path, config in ((lora, {"r": 8}), (embeddings, {"modules_to_save": ["embed_tokens"]})):
        path.mkdir()
        (path / "adapter_config.json").write_text(json.dumps(config))
    args = cc.harness_model_args({**info, "adapters": [str(lora)], "tokenizer": str(lora)})
    assert args["peft"] == str(lora) and args["tokenizer"] == str(lora)
    with pytest.raises(ConfigError, match="modules_to_save"):
        cc.harness_model_args({**info, "adapters": [str(embeddings)]})
    with pytest.raises(ConfigError, match="one adapter"):
        cc.harness_model_args({**info, "adapters": [str(lora), str(lora)]})


def test_what_the_harness_cannot_load_it_gets_in_memory(tmp_path, monkeypatch):
    import sys
    import types

    made = []

    class FakeHFLM:  # stands in for lm_eval's HFLM: records what it was handed
        def __init__(self, pretrained, tokenizer, batch_size):
            made.append((pretrained, tokenizer, batch_size))

    huggingface = types.ModuleType("lm_eval.models.huggingface")
    huggingface.HFLM = FakeHFLM
    monkeypatch.setitem(sys.modules, "lm_eval.models.huggingface", huggingface)
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"r": 8}))
    info = {"base_model": "/m/base", "dtype": "float32", "device": "cpu", "adapters": [str(lora)],
            "tokenizer": "/m/base"}
    lone = types.SimpleNamespace(model="model", tokenizer="tok", info=info)
    assert cc.harness_model(lone, 4) == ("hf", {"loads": "harness (hf)",
                                                "model_args": cc.harness_model_args(info)})
    assert not made
    chained = types.SimpleNamespace(model="merged", tokenizer="tok", info={**info, "adapters": [str(lora)] * 2})
    lm, record = cc.harness_model(chained, 4)
    assert isinstance(lm, FakeHFLM) and made == [("merged", "tok", 4)]
    assert record["loads"].startswith("in-memory") and record["adapters"] == [str(lora)] * 2
    lm, record = cc.harness_model(lone, 2, in_memory=True)
    assert isinstance(lm, FakeHFLM) and record["loads"].startswith("in-memory")


# ---------------------------------------------------------------------------
# Comparisons, on hand-made harness samples (the shape simple_evaluate logs)
# ---------------------------------------------------------------------------
def letter_sample(item_id, logliks, letters="ABCDE"):
    return {"doc_id": 0, "doc": {"id": item_id, "choices": list(letters)},
            "filtered_resps": [(x, False) for x in logliks]}


def our_letter(item_id, logliks, gold, letters="ABCDE"):
    top = max(logliks)
    total = top + math.log(sum(math.exp(x - top) for x in logliks))
    logprobs = {letter: round(x - total, 5) for letter, x in zip(letters, logliks)}
    return {"id": item_id, "prediction": max(logprobs, key=logprobs.get), "gold": gold, "letter_logprobs": logprobs}


def test_letter_comparison_matches_items_by_id_and_counts_disagreements():
    a = [-3.0, -1.0, -2.0, -4.0, -5.0]
    b = [-1.0, -2.0, -3.0]
    ours = [our_letter("x", a, "B"), our_letter("y", b, "C", "ABC")]
    # the harness returns its samples in its own order; y's scores lean to C there, not A
    theirs = [letter_sample("y", [-2.0, -2.5, -1.5], "ABC"), letter_sample("x", [x - 7.0 for x in a])]
    result = cc.compare_letter_mode(ours, theirs)
    summary = result["summary"]
    assert summary["items"] == 2 and summary["agree"] == 1 and summary["agreement"] == 0.5
    assert summary["accuracy_ours"] == 0.5 and summary["accuracy_lm_eval"] == 1.0
    (row,) = summary["disagreements"]
    assert row["id"] == "y" and row["ours"] == "A" and row["lm_eval"] == "C"
    x_row = next(r for r in result["rows"] if r["id"] == "x")
    assert x_row["agree"] and x_row["max_logprob_diff"] < 1e-4  # a constant shift normalises away
    assert summary["max_abs_logprob_diff"] > 0.5  # y's scores differ
    with pytest.raises(ValueError, match="scored 1 items"):
        cc.compare_letter_mode(ours, theirs[:1])


def gen_sample(item_id, text, answer):
    return {"doc": {"id": item_id}, "resps": [[text]], "filtered_resps": [answer]}


def test_generate_comparison_classes_each_disagreement():
    ours = [{"id": "same", "prediction": None, "gold": "A", "raw_output": "라고 한다. 그리고"},
            {"id": "rule", "prediction": None, "gold": "B", "raw_output": "비타민 A 투여"},
            {"id": "text", "prediction": "B", "gold": "B", "raw_output": "B"},
            {"id": "both", "prediction": "C", "gold": "D", "raw_output": "정답은 C"}]
    theirs = [gen_sample("same", "라고 한다", ""), gen_sample("rule", "비타민 A 투여", "A"),
              gen_sample("text", "E", "E"), gen_sample("both", "정답은 C", "C")]
    result = cc.compare_generate(ours, theirs, their_extraction=lambda text: "A" if " A " in text else "")
    summary = result["summary"]
    assert summary["agree"] == 2 and summary["agreement"] == 0.5 and summary["same_text"] == 3
    assert summary["disagreements_by_reason"] == {"extraction": 1, "text": 1}
    rows = {r["id"]: r for r in result["rows"]}
    assert rows["same"]["our_text"] == "라고 한다" and rows["same"]["agree"]  # cut at the harness's "."
    assert rows["rule"]["reason"] == "extraction" and rows["rule"]["harness_rule_on_our_text"] == "A"
    assert rows["text"]["reason"] == "text" and rows["text"]["lm_eval"] == "E"
    assert summary["accuracy_ours"] == 0.25 and summary["accuracy_lm_eval"] == 0.0


def test_stop_strings_cut_like_the_harness():
    assert cc.cut_at_stop_strings("B\n\n다음") == "B"
    assert cc.cut_at_stop_strings("정답은 B. 왜냐하면") == "정답은 B"
    assert cc.cut_at_stop_strings("Q: 또") == ""


# ---------------------------------------------------------------------------
# Letter mode's shared-prompt cache (the speed-up the benchmark measures) changes no answer
# ---------------------------------------------------------------------------
def test_letter_mode_with_and_without_the_shared_prompt_cache_agree(tiny_models, sample_items, monkeypatch):
    loaded = load_model_for_eval(str(tiny_models["tiny"]), device="cpu")
    encoded = [mcq_prompts.encode_prompt(loaded.tokenizer, mcq_prompts.render_mcq_prompt(loaded.tokenizer, i, "type3"), "type3")
               for i in sample_items]
    assert ev._shared_prefix_length(encoded) >= ev.MIN_SHARED_PREFIX  # so the cache is really used below
    cached = ev.score_mcq_letter_mode(loaded.model, loaded.tokenizer, sample_items, batch_size=3)
    monkeypatch.setattr(ev, "MIN_SHARED_PREFIX", 10**9)
    full = ev.score_mcq_letter_mode(loaded.model, loaded.tokenizer, sample_items, batch_size=3)
    assert [p["prediction"] for p in cached] == [p["prediction"] for p in full]
    for a, b in zip(cached, full):
        for letter, value in a["letter_logprobs"].items():
            assert value == pytest.approx(b["letter_logprobs"][letter], abs=2e-4)
    assert ev._shared_prefix_length([[5, 6, 7], [5, 6, 7]]) == 2  # each keeps a token of its own


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def test_missing_lm_eval_is_a_message_not_a_traceback(monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "lm_eval", None)  # import lm_eval -> ImportError
    assert cc.main(["--model", "tiny", "--n", "2"]) == 2
    assert "requirements-crosscheck.txt" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_LM_EVAL, reason="lm_eval not installed (make eval-crosscheck installs it)")
def test_real_harness_agrees_with_letter_mode_on_the_tiny_model(tiny_models, sample_items, tmp_path, capsys):
    items_file = tmp_path / "items.jsonl"
    atomic_write_jsonl(items_file, sample_items[:6])
    rc = cc.main(["--model", str(tiny_models["tiny"]), "--set", str(items_file), "--batch-size", "4",
                  "--max-new-tokens", "8", "--out-dir", str(tmp_path / "out")])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and result["items"] == 6
    assert result["letter_mode"]["agreement"] >= 0.99 and result["letter_mode"]["max_abs_logprob_diff"] < 1e-3
    assert result["generate"]["items"] == 6 and result["generate"]["agreement"] is not None
    assert len(read_jsonl(tmp_path / "out" / "items_letter.jsonl").records) == 6
    assert json.loads((tmp_path / "out" / "crosscheck.json").read_text())["letter_mode"]["goal_met"]


@pytest.mark.skipif(not HAS_LM_EVAL, reason="lm_eval not installed (make eval-crosscheck installs it)")
def test_real_harness_scores_an_adapter_chain_in_memory(tiny_models, sample_items, tmp_path, capsys):
    import torch
    from peft import LoraConfig, get_peft_model

    from script.model_loading import ADAPTER_CHAIN_FILE, load_base_model

    parent, child = tmp_path / "parent", tmp_path / "child"
    for seed, path in ((1, parent), (2, child)):
        torch.manual_seed(seed)
        base = load_base_model(str(tiny_models["tiny"]), "cpu", torch.float32)
        get_peft_model(base, LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                        init_lora_weights=False)).save_pretrained(path)
    (child / ADAPTER_CHAIN_FILE).write_text(json.dumps({"parents": [str(parent)]}))
    items_file = tmp_path / "items.jsonl"
    atomic_write_jsonl(items_file, sample_items[:4])
    rc = cc.main(["--model", str(child), "--set", str(items_file), "--batch-size", "4", "--only", "letter",
                  "--out-dir", str(tmp_path / "out")])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and result["lm_eval_model"]["loads"].startswith("in-memory")
    assert result["lm_eval_model"]["adapters"] == [str(parent), str(child)]
    assert result["letter_mode"]["agreement"] == 1.0 and result["letter_mode"]["max_abs_logprob_diff"] < 1e-3
