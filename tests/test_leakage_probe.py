"""The leakage probe (script/leakage_probe.py): copying the nearest training question must not beat a
question-blind scorer on the embedded world's evaluation sets, and it does catch reworded twins."""

import json

import pytest

from script import leakage_probe
from script.data_io import atomic_write_jsonl
from script.eval_items import EvalSet
from script.training_config import SAMPLE_DATA_DIR

OPTIONS = {"A": "폐렴", "B": "천식", "C": "결핵", "D": "기흉", "E": "폐색전증"}


def eval_item(i, question, answer):
    return {"id": f"e{i}", "config": "doctor", "split": "test", "question": question, "options": OPTIONS,
            "answer": answer, "meta": {}}


def mcq(i, question, gold_text, options=None):
    options = options or {"A": "간염", "B": gold_text, "C": "위염", "D": "장염", "E": "담낭염"}
    return {"id": f"r{i}", "question": question, "options": options, "answer": "B"}


def test_stem_key_masks_age_sex_and_numbers():
    key = leakage_probe.stem_key
    assert key("65세 남자가 3일 전부터 발열 38.5도") == key("72세 여자가 5일 전부터 발열 39.1도")
    assert key("65세 남자가 발열") != key("65세 남자가 기침")


def test_a_reworded_twin_is_copied_and_option_frequency_is_question_blind(tmp_path):
    train = tmp_path / "train.jsonl"
    twin = "45세 남자가 갑자기 시작된 흉통과 호흡곤란으로 왔다. 우측 호흡음이 감소되어 있다. 가장 가능성 높은 진단은?"
    atomic_write_jsonl(train, [
        mcq(0, twin, "기흉"),
        mcq(1, "당뇨병 환자의 혈당 조절 목표로 옳은 것은?", "천식"),
        mcq(2, "소아 예방접종 일정으로 옳은 것은?", "천식"),  # 천식 is the most frequent right answer
        {"id": "t4", "messages": [{"role": "user", "content": "결핵의 1차 치료 약제는?"}], "answer": "이소니아지드"},
        {"id": "p", "text": "평문 기록은 질문이 아니다."},
    ])
    training = leakage_probe.read_training([train], leakage_probe.COMMON_GRAM_SHARE)
    assert len(training.stems) == 4 and training.skipped == 1
    reworded = twin.replace("45세 남자", "71세 여자").replace("우측", "우측 ")
    result = leakage_probe.probe_set(EvalSet("t", [eval_item(0, reworded, "D"), eval_item(1, "전혀 다른 질문", "B")]),
                                     training, seed=1)
    assert result["most_similar"][0]["id"] == "e0" and result["most_similar"][0]["record"].endswith("train.jsonl:1")
    assert result["most_similar"][0]["nn_correct"]  # the twin's answer, 기흉 = D
    assert result["question_blind"]["correct"] == 1  # 천식 (B) on both items: right on e1 only


def test_cli_strict_exits_1_over_the_limit_and_2_on_missing_input(tmp_path, capsys):
    sets, train = tmp_path / "sets", tmp_path / "train"
    questions = [f"{k}번 환자의 증상 {'가나다라마바사아자차'[k]}{'카타파하'[k % 4]}에 대해 가장 알맞은 진단명은?" for k in range(10)]
    items = [eval_item(k, q, "ABCDE"[k % 5]) for k, q in enumerate(questions)]
    atomic_write_jsonl(sets / "guide604.jsonl", items)
    atomic_write_jsonl(train / "type3_word" / "train.jsonl",  # every item's twin, with its right answer
                       [mcq(k, q, OPTIONS[item["answer"]]) for k, (q, item) in enumerate(zip(questions, items))])
    flags = ["--sets-dir", str(sets), "--set", "guide604", "--train", str(train)]
    assert leakage_probe.main(flags) == 0  # report-only without --strict
    assert "measure recall of training twins" in capsys.readouterr().err
    assert leakage_probe.main([*flags, "--strict"]) == 1
    report = json.loads((train / "leakage_probe.json").read_text(encoding="utf-8"))
    assert report["over_limit"] == ["guide604"] and report["sets"][0]["nearest_neighbour"]["accuracy"] == 1.0
    assert leakage_probe.main(["--sets-dir", str(sets), "--train", str(tmp_path / "missing")]) == 2


@pytest.fixture(scope="module")
def sample_world(tmp_path_factory):
    """The embedded world's data stages (download, refine, KorMedMCQA sets, exclusion) in a temp dir."""
    from refine_scripts import refine_4types, refine_kor_med_test
    from script import download_all_datasets, exclude_test_from_training, extract_kormedmcqa_test

    root = tmp_path_factory.mktemp("leakage")
    raw, refined, sets, clean = root / "raw", root / "refined", root / "sets", root / "clean"
    assert download_all_datasets.main(["--from-dir", str(SAMPLE_DATA_DIR), "--output", str(raw),
                                       "--cache-dir", str(root / "cache")]) == 0
    assert refine_4types.main(["--input", str(raw), "--output", str(refined)]) == 0
    assert refine_kor_med_test.main(["--from-dir", str(SAMPLE_DATA_DIR),
                                     "--output", str(refined / "02_kor_med_test")]) == 0
    assert extract_kormedmcqa_test.main(["--from-dir", str(SAMPLE_DATA_DIR), "--output-dir", str(sets)]) == 0
    assert exclude_test_from_training.main(["--source", str(refined), "--output", str(clean),
                                            "--test", *map(str, sorted(sets.glob("*.jsonl")))]) == 0
    return {"sets": sets, "clean": clean}


def test_the_sample_worlds_evaluation_sets_cannot_be_answered_by_copying(sample_world):
    output = sample_world["clean"] / "probe.json"
    rc = leakage_probe.main(["--sets-dir", str(sample_world["sets"]), "--train", str(sample_world["clean"]),
                             "--set", "guide604", "--set", "official", "--set", "steer", "--strict",
                             "--output", str(output)])
    report = json.loads(output.read_text(encoding="utf-8"))
    assert report["training"]["mcqs"] > 1000  # type 3, type 4 and the train_02 records were all read
    for result in report["sets"]:
        excess = 100 * (result["nearest_neighbour"]["accuracy"] - result["question_blind"]["accuracy"])
        assert excess <= leakage_probe.DEFAULT_MAX_EXCESS, result["set"]
    assert rc == 0 and report["over_limit"] == []
