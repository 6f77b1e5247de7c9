"""Simplified-pipeline trainers (train_00 / train_01 / train_01_with_00_monitor / train_02 / the 01-02 loop)
and add_lora_adapter.py, each run through its main() on the tiny model for a few steps.

    OMP_NUM_THREADS=1 python -m pytest tests/test_simplified_trainers.py -q -x
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from script import formats
from script.data_io import atomic_write_jsonl, iter_jsonl
from script.evaluation import extract_answer, train02_format_checks, train02_score
from script.model_loading import ADAPTER_CHAIN_FILE, load_model_for_eval, resolve_adapter_chain
from script.training_config import KORMEDMCQA_TEST_DIR, SAMPLE_DATA_DIR, TINY_MODEL_DIR
from script.training_data import (
    load_dictionary_records,
    plain_text_files,
    plain_text_heldout,
    to_sft_dataset,
    train02_records,
)
from script.training_utils import (
    build_arg_parser,
    build_trainer,
    load_model_and_tokenizer,
    save_final,
    start_run,
    write_training_info,
)

OPTIONS = {"A": "폐렴", "B": "천식", "C": "위염", "D": "빈혈", "E": "통풍"}
RUN_KEYS = ("script", "model", "base_model", "epochs", "train_samples", "validation_samples",
            "validation_history", "metrics", "config", "training_options")
SHORT = ["--max-length", "128", "--batch-size", "4"]


# ---------------------------------------------------------------------------
# Fixtures: small data written into tmp dirs, never the checkout's data/
# ---------------------------------------------------------------------------
def assert_card_loads_what_it_describes(final: Path, parents, expected=None):
    """final/README.md parses with the hub's card parser, and its load snippet, run as written, gives
    the model the toolkit's own loader gives (or ``expected = (batch, logits)``)."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(final / "README.md")
    assert card.data.library_name == "peft" and "ko" in card.data.language and "lora" in card.data.tags
    assert not Path(card.data.base_model, "adapter_config.json").exists(), "base_model is an adapter dir"
    assert (final.parent / "README.md").read_text(encoding="utf-8") == (final / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"```python\n(.*?)```", card.content, re.S).group(1)
    for parent in parents:
        assert repr(parent) in snippet
    namespace: dict = {}
    exec(snippet, namespace)  # noqa: S102 -- the card's own code, as a user would paste it
    model, tokenizer = namespace["model"], namespace["tokenizer"]
    model.eval()
    if expected is None:
        reference = load_model_for_eval(str(final), device="cpu")
        batch = tokenizer(["발열과 기침이 3일째인 환자의 진단은?"], return_tensors="pt")
        with torch.no_grad():
            expected = (batch, reference.model(**batch).logits)
    batch, logits = expected
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, logits, atol=1e-4)
    return card


@pytest.fixture(scope="module")
def korean_texts() -> list[str]:
    source = SAMPLE_DATA_DIR / "ChuGyouk" / "Asan-AMC-Healthinfo" / "data" / "default" / "train.jsonl"
    return [row["output"] for _, row in iter_jsonl(source)][:40]


@pytest.fixture(scope="module")
def data(tmp_path_factory, korean_texts) -> dict[str, Path]:
    """Plain-text shards (one bad line), two dictionaries (three bad entries), MCQ items (one bad line)."""
    root = tmp_path_factory.mktemp("simplified")
    plain = root / "00_plain_text"
    atomic_write_jsonl(plain / "train-00000.jsonl",
                       [{"id": f"p{i}", "source": "c4_ko", "text": t} for i, t in enumerate(korean_texts[:20])])
    shard = [json.dumps({"id": f"q{i}", "source": "wikipedia_ko", "text": t}, ensure_ascii=False)
             for i, t in enumerate(korean_texts[20:])]
    (plain / "train-00001.jsonl").write_text("\n".join([*shard[:3], '{"id": "bad", "text": 7}', *shard[3:]]) + "\n",
                                             encoding="utf-8")
    terms = ["고혈압", "당뇨병", "폐렴", "천식", "위염", "빈혈", "통풍", "간염", "골절", "패혈증", "심부전", "뇌졸중"]
    medical = [{"term": t, "definition": f"{t}의 정의. {t}은(는) 의학 용어이다."} for t in terms]
    medical += [{"term": "", "definition": "빈 용어"}, 7, {"term": "결핵"}]
    (root / "01_medical_dict.json").write_text(json.dumps(medical, ensure_ascii=False), encoding="utf-8")
    chars = [{"term": "↑", "definition": "increased. 증가"}, {"term": "↓", "definition": "decreased. 감소"}]
    (root / "02_char_dict.json").write_text(json.dumps(chars, ensure_ascii=False), encoding="utf-8")
    items = [dict(id=f"kmq-{i}", subject="doctor", question=f"발열과 기침이 {i}일째인 환자의 진단은?", answer="A", **OPTIONS)
             for i in range(23)]
    items[0]["cot"] = "발열과 기침, 흉부 X선의 경화 소견은 폐렴을 시사한다."
    lines = [json.dumps(item, ensure_ascii=False) for item in items]
    (root / "train.jsonl").write_text("\n".join([*lines, '{"question": "답 없음", "A": "x", "B": "y"}']) + "\n",
                                      encoding="utf-8")
    return {"plain": plain, "medical": root / "01_medical_dict.json", "chars": root / "02_char_dict.json",
            "mcq": root / "train.jsonl"}


@pytest.fixture(scope="module")
def steer_set():
    """A steering set in the test home (periodic and final evaluations read it); removed afterwards."""
    path = KORMEDMCQA_TEST_DIR / "steer.jsonl"
    before = path.read_bytes() if path.exists() else None
    atomic_write_jsonl(path, [{"id": f"steer-{i}", "config": "doctor", "split": "train", "options": OPTIONS,
                               "question": f"기침이 {i}일째인 환자의 진단은?", "answer": "A", "meta": {}}
                              for i in range(6)])
    yield path
    if before is None:
        path.unlink()
    else:
        path.write_bytes(before)


@pytest.fixture(scope="module")
def train00(tiny_models, data, tmp_path_factory) -> dict:
    from script.train import train_00_plain_text

    out = tmp_path_factory.mktemp("t00") / "00_trained"
    info = train_00_plain_text.main(["--model", "tiny", "--data", str(data["plain"]), "--output", str(out),
                                     "--max-steps", "3", "--validation-samples", "4", "--show-samples-every", "2",
                                     *SHORT])
    return {"info": info, "out": out}


def saved_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def assert_run_record(out: Path, info: dict, script: str) -> None:
    assert (out / "final" / "adapter_model.safetensors").is_file() and (out / "final" / "tokenizer.json").is_file()
    assert (out / "README.md").is_file() and list(out.glob("checkpoint-*"))
    saved = json.loads((out / "training_info.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(info))
    for key in RUN_KEYS:
        assert key in saved, key
    assert saved["script"] == script and saved["model"] == "tiny"
    losses = [e["loss"] for e in saved["loss_history"]]
    assert losses and all(math.isfinite(x) for x in losses)
    lora_b = [t for name, t in saved_tensors(out / "final").items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: training moved it


# ---------------------------------------------------------------------------
# Record builders (no model)
# ---------------------------------------------------------------------------
def test_train02_simple_and_detailed_records():
    item = {"id": "x", "question": "37세 여자가 양극성 장애로 진단받았다. 일차 치료로 가장 적절한 것은?",
            "answer": "B", **OPTIONS}
    simple = formats.train02_messages(item, detailed=False)
    assert simple[0]["content"].startswith(formats.MCQ_REASONING_INSTRUCTION)
    assert "```format" not in simple[0]["content"] and "A) 폐렴" in simple[0]["content"]
    reasoning = simple[1]["content"]
    assert reasoning.startswith(formats.MCQ_REASONING_START) and reasoning.endswith(f"{formats.MCQ_REASONING_END}B")
    assert reasoning.splitlines()[1:6] == ["A) 폐렴: 오답", "B) 천식: 정답", "C) 위염: 오답", "D) 빈혈: 오답", "E) 통풍: 오답"]
    assert extract_answer(reasoning, OPTIONS, "train02") == "B"
    assert train02_score(reasoning, "B", OPTIONS).score == pytest.approx(2 / 3)  # correct, simple format

    detailed = formats.train02_messages(item, detailed=True)
    assert "```format" in detailed[0]["content"]
    text = detailed[1]["content"]
    assert train02_format_checks(text, list(OPTIONS))["ok"]
    assert train02_score(text, "B", OPTIONS).score == pytest.approx(1.0)
    percents = [int(p) for p in re.findall(r"(\d+)%", text.splitlines()[4])]
    assert sum(percents) == 100 and max(percents) == percents[1]  # B holds the highest share

    with_cot = formats.train02_messages(dict(item, cot="양극성 장애의 일차 치료는 기분조절제이다."), detailed=False)
    assert "기분조절제이다" in with_cot[1]["content"] and "오답" not in with_cot[1]["content"]
    assert formats.mcq_item_options({"options": OPTIONS}) == formats.mcq_item_options(item) == OPTIONS


def test_detailed_share_is_seeded_and_per_item():
    ids = [f"kormedmcqa/doctor/train/{i}" for i in range(2000)]
    chosen = {i for i in ids if formats.train02_is_detailed(i, seed=42)}
    assert 0.03 < len(chosen) / len(ids) < 0.07
    assert chosen == {i for i in reversed(ids) if formats.train02_is_detailed(i, seed=42)}  # order-free
    assert chosen != {i for i in ids if formats.train02_is_detailed(i, seed=7)}
    items = [{"id": i, "question": "진단은?", "answer": "A", **OPTIONS} for i in ids[:200]]
    records = train02_records(items, seed=42)
    assert [r["detailed"] for r in records] == [i in chosen for i in ids[:200]]
    assert [r["id"] for r in train02_records(items[::-1], seed=42) if r["detailed"]] == \
        [r["id"] for r in records if r["detailed"]][::-1]


def test_answer_text_records_pair_each_item_with_its_cloze_form():
    items = [{"id": f"q{i}", "question": f" 질문 {i}의 진단은? ", "answer": "C", **OPTIONS} for i in range(5)]
    plain = train02_records(items, seed=42)
    both = train02_records(items, seed=42, answer_text=True)
    assert [r for r in both if not r.get("answer_text")] == plain  # the MCQ records are unchanged
    cloze = [r for r in both if r.get("answer_text")]
    assert [r["id"] for r in cloze] == [f"q{i}#answer_text" for i in range(5)]
    for item, record in zip(items, cloze):
        assert record["messages"] == [{"role": "user", "content": item["question"].strip()},
                                      {"role": "assistant", "content": OPTIONS["C"]}]
        assert not record["detailed"]


def test_dictionary_records_guide_format_and_rejects(data, tiny_tokenizer):
    records, stats = load_dictionary_records([data["medical"], data["chars"]])
    assert stats[str(data["medical"])] == {"entries": 15, "kept": 12, "rejected": 3}
    assert len(records) == 14
    example = to_sft_dataset(records[:1])[0]
    prompt = formats.render_prompt(tiny_tokenizer, example["prompt"])
    assert prompt.endswith("<start_of_turn>user\nMeaning of word 고혈압:<end_of_turn>\n<start_of_turn>model\n")
    whole = formats.render_conversation(tiny_tokenizer, [*example["prompt"], *example["completion"]])
    assert whole.endswith("고혈압의 정의. 고혈압은(는) 의학 용어이다.<end_of_turn>\n")


def test_plain_text_heldout_is_seeded_and_nested(data):
    files = plain_text_files(data["plain"])
    eight = plain_text_heldout(files, 8, seed=42)
    four = plain_text_heldout(files, 4, seed=42)
    assert len(eight) == 8 and four == eight[:4]  # the monitor's slice lies inside train_00's
    assert {r["id"] for r in eight} != {r["id"] for r in plain_text_heldout(files, 8, seed=1)}
    assert {r["id"][0] for r in plain_text_heldout(files, 40, seed=42)} == {"p", "q"}  # every shard


# ---------------------------------------------------------------------------
# Trainers, end to end
# ---------------------------------------------------------------------------
def test_train_00_streams_packs_and_trains_embeddings(train00, tiny_models):
    info, out = train00["info"], train00["out"]
    assert_run_record(out, info, "train_00_plain_text")
    assert info["train_samples"] == 41 - 4  # lines of both shards minus the held-out texts
    assert info["validation_samples"] == 4 and info["data_rejects"] == 1
    assert info["training_options"]["packing"] and info["training_options"]["packing_strategy"] == "wrapped"
    assert info["training_options"]["streaming"] and info["training_options"]["completion_only_loss"] is False
    plan = info["step_plan"]
    assert plan["steps_per_epoch"] == math.ceil(plan["packed_rows_per_epoch"] / plan["effective_batch"])
    assert [h["step"] for h in info["validation_history"]] == [2]
    metrics = info["metrics"]
    assert metrics["global_step"] == 3 and math.isfinite(metrics["validation_perplexity"])
    assert "validation_perplexity_before" in metrics
    config = json.loads((out / "final" / "adapter_config.json").read_text())
    assert config["use_rslora"] is True and {m.split(".")[-1] for m in config["modules_to_save"]} == {"embed_tokens"}
    base = load_file(str(TINY_MODEL_DIR / "model.safetensors"))
    base_embed = next(t for n, t in base.items() if n.endswith("embed_tokens.weight"))
    trained = next(t for n, t in saved_tensors(out / "final").items() if "embed_tokens" in n)
    assert trained.shape == base_embed.shape and not torch.equal(trained, base_embed)


def test_train_00_resumes_the_stream_from_its_checkpoint(tiny_models, data, tmp_path):
    from script.train import train_00_plain_text

    common = ["--model", "tiny", "--data", str(data["plain"]), "--output", str(tmp_path / "run"),
              "--validation-samples", "2", "--show-samples-every", "0", "--save-steps", "2", *SHORT]
    first = train_00_plain_text.main([*common, "--max-steps", "2"])
    assert first["resumed_from"] is None and first["metrics"]["global_step"] == 2
    second = train_00_plain_text.main([*common, "--max-steps", "3", "--resume"])
    assert second["resumed_from"].endswith("checkpoint-2") and second["metrics"]["global_step"] == 3
    assert [e["step"] for e in second["loss_history"]] == [1, 2, 3]


def test_train_01_with_monitor_tracks_plain_text_and_steering(train00, data, steer_set, tmp_path):
    from script.train import train_01_with_00_monitor

    out = tmp_path / "01_trained"
    info = train_01_with_00_monitor.main([
        "--model", "tiny", "--base-model", str(train00["out"] / "final"), "--output", str(out),
        "--dictionaries", str(data["medical"]), str(data["chars"]), "--monitor-data", str(data["plain"]),
        "--monitor-samples", "4", "--max-steps", "2", "--show-samples-every", "1", "--eval-samples", "4",
        "--forgetting-threshold", "-1", *SHORT])  # threshold -1: every later value is flagged
    assert_run_record(out, info, "train_01_with_00_monitor")
    assert info["base_model"] == str(train00["out"] / "final") and info["train_samples"] == 14
    assert info["dictionary_entries"][str(data["medical"])]["rejected"] == 3
    assert [h["step"] for h in info["validation_history"]] == [1, 2]
    assert all(h["total"] == 4 and 0 <= h["accuracy"] <= 100 for h in info["validation_history"])
    assert info["final_accuracy"] == info["metrics"]["steer_accuracy"] and info["validation_samples"] == 4
    history = info["plain_text_history"]
    assert [h["step"] for h in history] == [0, 1, 2] and "forgetting" not in history[0]
    assert all(h.get("forgetting") for h in history[1:]) and info["forgetting_detected"] is True
    assert not info["training_options"]["packing"]
    # train_00's adapter was continued, not replaced: its embedding copy is still in the adapter
    assert any("embed_tokens" in name for name in saved_tensors(out / "final"))
    # its card names the model the weights apply to, not the adapter dir it continued
    card = assert_card_loads_what_it_describes(out / "final", parents=[])
    assert card.data.base_model == str(TINY_MODEL_DIR)


def test_add_lora_adapter_raw_and_stacked(train00, tmp_path):
    from script import add_lora_adapter

    raw = tmp_path / "raw"
    info = add_lora_adapter.main(["--model", "tiny", "--output", str(raw), "--rslora", "--train-embeddings"])
    config = json.loads((raw / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(TINY_MODEL_DIR) and config["use_rslora"] is True
    assert info["train_embeddings"] and (raw / "tokenizer.json").is_file() and (raw / "adapter_info.json").is_file()
    assert not (raw / ADAPTER_CHAIN_FILE).exists()
    assert all(t.abs().sum() == 0 for n, t in saved_tensors(raw).items() if "lora_B" in n)  # untrained

    parent = train00["out"] / "final"
    first = tmp_path / "another"
    add_lora_adapter.main(["--model", "tiny", "--on", str(parent), "--output", str(first)])
    assert json.loads((first / ADAPTER_CHAIN_FILE).read_text()) == {"parents": [str(parent.resolve())]}
    assert json.loads((first / "adapter_config.json").read_text())["base_model_name_or_path"] == str(TINY_MODEL_DIR)
    second = tmp_path / "third"
    add_lora_adapter.main(["--model", "tiny", "--on", str(first), "--output", str(second)])
    assert json.loads((second / ADAPTER_CHAIN_FILE).read_text())["parents"] == [str(parent.resolve()),
                                                                                str(first.resolve())]
    assert resolve_adapter_chain(second) == [str(parent.resolve()), str(first.resolve()), str(second)]
    with pytest.raises(SystemExit):
        add_lora_adapter.main(["--model", "tiny", "--on", str(first), "--base-model", str(TINY_MODEL_DIR)])


def test_train_02_on_a_stacked_adapter_keeps_the_chain(train00, data, steer_set, tmp_path):
    from script import add_lora_adapter
    from script.train import train_02_kor_med_test

    stacked = tmp_path / "01_another_lora_added"
    add_lora_adapter.main(["--model", "tiny", "--on", str(train00["out"] / "final"), "--output", str(stacked)])
    out = tmp_path / "02_trained"
    info = train_02_kor_med_test.main([
        "--model", "tiny", "--base-model", str(stacked), "--data", str(data["mcq"]), "--output", str(out),
        "--max-steps", "2", "--show-samples-every", "2", "--eval-samples", "3", "--max-new-tokens", "12",
        "--detailed-fraction", "0.3", *SHORT])
    assert_run_record(out, info, "train_02_kor_med_test")
    assert info["items"] == 23  # the line without an answer is rejected
    assert info["answer_text_records"] is True  # tiny is scored in cloze form: each item also as a cloze record
    assert info["train_samples"] == 46
    expected = sum(formats.train02_is_detailed(f"kmq-{i}", 42, 0.3) for i in range(23))
    assert info["detailed_samples"] == expected > 0
    assert [h["step"] for h in info["validation_history"]] == [2]
    assert {"accuracy", "train02_score", "total"} <= set(info["validation_history"][0])
    assert info["final_accuracy"] == info["metrics"]["steer_accuracy"] and info["steer_on"] == "steer"
    assert 0 <= info["final_train02_score"] <= 1 and info["target"]["metric"] == "steer_accuracy"
    chain = json.loads((out / "final" / ADAPTER_CHAIN_FILE).read_text())
    assert chain == {"parents": [str((train00["out"] / "final").resolve())]}
    assert all((c / ADAPTER_CHAIN_FILE).is_file() for c in out.glob("checkpoint-*"))
    assert info["config"]["adapter_parents"] == chain["parents"]


def test_chain_reload_gives_the_trained_model(train00, data, tmp_path):
    """base + merged parent + trained top adapter, loaded from final/, equals the model in memory."""
    from script import add_lora_adapter

    stacked = tmp_path / "stacked"
    add_lora_adapter.main(["--model", "tiny", "--on", str(train00["out"] / "final"), "--output", str(stacked)])
    args = build_arg_parser(None).parse_args(["--model", "tiny", "--base-model", str(stacked), "--output",
                                              str(tmp_path / "run"), "--max-steps", "2", *SHORT])
    run = start_run(args, stage="test", script="test")
    model, tokenizer = load_model_and_tokenizer(run)
    assert run.adapter_parents == [str((train00["out"] / "final").resolve())]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    from script.training_data import load_mcq_items

    records = train02_records(load_mcq_items(data["mcq"])[:8], seed=42)
    trainer = build_trainer(run, model, tokenizer, to_sft_dataset(records), save_strategy="no")
    trainer.train()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n].detach(), before) for n, before in frozen.items())  # base (+parent) fixed
    assert any(not torch.equal(params[n].detach(), before) for n, before in lora.items())
    final = save_final(model, tokenizer, run.output_dir, parents=run.adapter_parents)

    batch = tokenizer(["발열과 기침이 3일째인 환자의 진단은?"], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    loaded = load_model_for_eval(str(final), device="cpu")
    assert loaded.info["adapters"] == [str((train00["out"] / "final").resolve()), str(final)]
    with torch.no_grad():
        assert torch.allclose(loaded.model(**batch).logits, expected, atol=1e-4)
    via_flag = load_model_for_eval(str(TINY_MODEL_DIR), [final], device="cpu")  # --adapter expands too
    assert via_flag.info["merged_adapters"] == [str((train00["out"] / "final").resolve())]
    with torch.no_grad():
        assert torch.allclose(via_flag.model(**batch).logits, expected, atol=1e-4)
    write_training_info(run, {"metrics": {"train_loss": 1.0}})
    assert_card_loads_what_it_describes(final, parents=run.adapter_parents, expected=(batch, expected))


def test_loop_two_loops_then_resume_the_interrupted_one(data, steer_set, tmp_path, monkeypatch):
    from script.train import train_01_02_loop as loop

    out = tmp_path / "loop"

    def loop_argv(max_loops: int, *extra: str) -> list[str]:
        return ["--model", "tiny", "--output", str(out), "--max-loops", str(max_loops), "--max-steps", "2",
                "--max-samples", "8", "--eval-samples", "2", "--show-samples-every", "0", "--max-new-tokens", "8",
                "--dictionaries", str(data["medical"]), "--mcq-data", str(data["mcq"]), *SHORT, *extra]

    real_02 = loop.train_02_kor_med_test.main
    calls = {"01": 0, "02": 0}

    def interrupted_02(stage_argv):
        calls["02"] += 1
        if calls["02"] == 2:
            raise RuntimeError("killed during loop 2's train_02")
        return real_02(stage_argv)

    monkeypatch.setattr(loop.train_02_kor_med_test, "main", interrupted_02)
    with pytest.raises(RuntimeError):
        loop.main(loop_argv(2))
    history = json.loads((out / "loop_history.json").read_text())
    assert [e["loop"] for e in history["loops"]] == [1]
    assert (out / "loop_2" / "01" / "training_info.json").is_file()
    loop_2_01 = json.loads((out / "loop_2" / "01" / "training_info.json").read_text())
    assert loop_2_01["base_model"] == str(out / "loop_1" / "02" / "final")  # chained from loop 1's train_02

    real_01 = loop.train_01_medical_dict.main

    def counted_01(stage_argv):
        calls["01"] += 1
        return real_01(stage_argv)

    monkeypatch.setattr(loop.train_02_kor_med_test, "main", real_02)
    monkeypatch.setattr(loop.train_01_medical_dict, "main", counted_01)
    history = loop.main(loop_argv(2, "--resume"))
    assert calls["01"] == 0  # loop 2's finished train_01 was kept, only its train_02 ran
    assert [e["loop"] for e in history["loops"]] == [1, 2] and history["stopped"].startswith("--max-loops")
    assert history["best_loop"] in (1, 2) and Path(history["best_final_dir"]).is_dir()
    assert all(e["accuracy"] is not None and e["train02_score"] is not None for e in history["loops"])
    saved = json.loads((out / "loop_history.json").read_text())
    assert saved == json.loads(json.dumps(history))
    assert json.loads((out / "loop_2" / "02" / "training_info.json").read_text())["base_model"] == \
        str(out / "loop_2" / "01" / "final")

    again = loop.main(loop_argv(5, "--target-accuracy", "0", "--resume"))  # already met: nothing runs
    assert [e["loop"] for e in again["loops"]] == [1, 2] and again["stopped"].startswith("target reached")
    assert calls["01"] == 0
