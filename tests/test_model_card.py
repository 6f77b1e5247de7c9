"""Model cards record every whole-set evaluation beside its controls, in model-index and the body."""

from huggingface_hub import ModelCard

from script import model_card


def report(accuracy, set_name="guide604", mode="cloze", blind=0.2):
    return {"accuracy": accuracy, "chance": 0.2, "total": 604, "accuracy_ci95": [accuracy - 0.03, accuracy + 0.03],
            "created_at": "2026-12-06T00:00:00+00:00", "git_sha": "abc", "mode": mode,
            "prompt": {"style": "type3"}, "set": {"name": set_name, "dataset": "kormedmcqa"},
            "controls": {"clusters": 500, "majority_letter": {"letter": "C", "accuracy": 0.23},
                         "question_blind": {"how": "swap", "accuracy": blind}}}


def test_evaluations_land_in_the_card_and_replace_their_own_earlier_row(tmp_path):
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    info = {"script": "train_02_kor_med_test", "model": "tiny", "stage": "02_trained",
            "config": {"dtype": "float32", "lr": 0.002}, "metrics": {"train_loss": 1.5}}
    model_card.write_run_cards(final.parent, info, "model/tiny-gemma3", [])
    model_info = {"adapters": [str(final)], "base_model": "model/tiny-gemma3"}

    assert model_card.record_evaluation_in_cards(model_info, report(0.31)) == [final / "README.md",
                                                                               final.parent / "README.md"]
    model_card.record_evaluation_in_cards(model_info, report(0.35))  # the same set and scoring: replaced
    model_card.record_evaluation_in_cards(model_info, report(0.25, mode="letter"))
    for path in (final / "README.md", final.parent / "README.md"):
        card = ModelCard.load(path)
        assert card.data.base_model == "model/tiny-gemma3" and card.data.library_name == "peft"
        by_config = {}
        for result in card.data.eval_results:
            by_config.setdefault(result.metric_config, {})[result.metric_name] = result.metric_value
        assert by_config == {"cloze/type3": {"accuracy": 0.35, "question-blind control": 0.2, "chance": 0.2,
                                             "majority letter": 0.23},
                             "letter/type3": {"accuracy": 0.25, "question-blind control": 0.2, "chance": 0.2,
                                              "majority letter": 0.23}}
        table = [line for line in card.text.splitlines() if line.startswith("| KorMedMCQA")]
        assert table == ["| KorMedMCQA (guide604) | cloze/type3 | 35.0 % (32.0–38.0) | 20.0 % | 20.0 % | 23.0 % | 604 |",
                         "| KorMedMCQA (guide604) | letter/type3 | 25.0 % (22.0–28.0) | 20.0 % | 20.0 % | 23.0 % | 604 |"]
        assert card.text.count("## Evaluations") == 1 and card.text.index("## Evaluations") < card.text.index("## Load it")
        assert "train_loss" in card.text  # the training numbers stay


def test_a_card_from_elsewhere_is_left_alone(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    foreign = "---\nlibrary_name: peft\ntags:\n- lora\n---\n# someone else's card\n"
    (adapter / "README.md").write_text(foreign)
    assert model_card.record_evaluation_in_cards({"adapters": [str(adapter)]}, report(0.4)) == []
    assert (adapter / "README.md").read_text() == foreign
    assert model_card.record_evaluation_in_cards({"adapters": [], "base_model": "google/medgemma-4b-it"},
                                                 report(0.4)) == []


def test_scoring_an_adapter_records_its_numbers_on_its_card(tiny_models, tmp_path, capsys):
    import torch
    from peft import LoraConfig, get_peft_model

    from script import validation_kor_med_test as cli
    from script.data_io import atomic_write_jsonl
    from script.eval_items import read_items_file
    from script.model_loading import load_base_model
    from script.training_config import SAMPLE_DATA_DIR

    final = tmp_path / "02_trained" / "tiny" / "final"
    torch.manual_seed(0)
    base = load_base_model(str(tiny_models["tiny"]), "cpu", torch.float32)
    get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])).save_pretrained(final)
    model_card.write_run_cards(final.parent, {"script": "train_02_kor_med_test", "model": "tiny",
                                              "config": {"dtype": "float32"}}, str(tiny_models["tiny"]), [])
    items = read_items_file(SAMPLE_DATA_DIR / "sean0042" / "KorMedMCQA" / "data" / "doctor" / "test.jsonl").items
    data = tmp_path / "items.jsonl"
    atomic_write_jsonl(data, items[:6])
    out = tmp_path / "report.json"
    assert cli.main(["--model", str(final), "--data", str(data), "--output", str(out)]) == 0
    assert f"card: {final / 'README.md'}" in capsys.readouterr().out
    card = ModelCard.load(final / "README.md")
    names = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert set(names) == set(model_card.EVALUATION_METRICS) and card.data.model_name == "02_trained-tiny"
    assert cli.main(["--model", str(final), "--data", str(data), "--output", str(out), "--mode", "cloze",
                     "--no-card"]) == 0
    assert len(ModelCard.load(final / "README.md").data.eval_results) == len(names)
