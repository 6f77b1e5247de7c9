"""KorMedMCQA evaluation sets and their exclusion from training data (offline, no model, fast).

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/test_exclusion.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from script import exclude_test_from_training as exclude_cli
from script import extract_kormedmcqa_test as extract_cli
from script.data_io import DataError, read_jsonl, sha256_file
from script.kormedmcqa import (
    AGE_MASK,
    MIN_NEAR_CHARS,
    NEAR_THRESHOLD,
    SEX_MASK,
    EvaluationIndex,
    ItemSource,
    answer_to_letter,
    build_sets,
    char_ngrams,
    jaccard,
    load_hub_split,
    mask_demographics,
    normalise_item,
    normalise_text,
    record_question,
    split_stem_options,
    strip_punctuation,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("doctor", "nurse", "pharm", "dentist")


# ---------------------------------------------------------------------------
# A hand-made KorMedMCQA in download_all_datasets.py's layout
# ---------------------------------------------------------------------------
def upstream_row(config: str, split: str, i: int, question: str | None = None, answer: int = 1) -> dict:
    # Every generated question carries its own numbers, so no two of them are near-duplicates
    # (near matching requires equal numbers; "train 문항 1" vs "test 문항 1" alone would be one).
    serial = 1000 * (CONFIGS.index(config) * 4 + ("train", "dev", "test", "fewshot").index(split)) + i
    return {
        "subject": config, "year": {"train": 2019, "dev": 2021, "test": 2022, "fewshot": 2021}[split],
        "period": 1, "q_number": i + 1,
        "question": question or f"{config} {split} 문항 {serial}: 환자 {i + 11}명의 자료를 보고 가장 적절한 것을 고르시오.",
        # Options of their own too: the same option set with the same right answer is one question.
        **{letter: f"선택 {serial}-{k}" for k, letter in enumerate("ABCDE", 1)},
        "answer": answer, "cot": "",
    }


SIZES = {  # config -> split -> rows
    "doctor": {"train": 20, "dev": 3, "test": 4, "fewshot": 1},
    "nurse": {"train": 10, "dev": 1, "test": 2, "fewshot": 1},
    "pharm": {"train": 10, "dev": 1, "test": 2, "fewshot": 1},
    "dentist": {"train": 10, "dev": 1, "test": 2, "fewshot": 1},
}


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def make_raw(root: Path, overrides: dict[tuple[str, str], list] | None = None) -> Path:
    overrides = overrides or {}
    for config, splits in SIZES.items():
        for split, n in splits.items():
            rows = overrides.get((config, split)) or [upstream_row(config, split, i) for i in range(n)]
            write_jsonl(root / config / f"{split}.jsonl", rows)
    return root


@pytest.fixture()
def raw_dir(tmp_path: Path) -> Path:
    return make_raw(tmp_path / "raw")


# ---------------------------------------------------------------------------
# Answers and items
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("value,letter", [(1, "A"), (2, "B"), (3, "C"), (4, "D"), (5, "E"), ("3", "C"), (2.0, "B")])
def test_answer_integer_to_letter(value, letter):
    assert answer_to_letter(value) == letter


@pytest.mark.parametrize("value", [0, 6, -1, 10, True, "A", "", None, 2.5])
def test_answer_out_of_range_or_not_integer_raises(value):
    with pytest.raises(ValueError):
        answer_to_letter(value)


def test_normalise_item_shape_and_id():
    item = normalise_item(upstream_row("doctor", "test", 2, answer=5), "doctor", "test", row=2)
    assert item["id"] == "kormedmcqa/doctor/test/2022-1-3"
    assert item["answer"] == "E" and set(item["options"]) == set("ABCDE")
    assert item["meta"]["row"] == 2 and item["meta"]["subject"] == "doctor"
    assert set(item) == {"id", "config", "split", "question", "options", "answer", "meta"}


def test_missing_column_names_expected_and_found():
    row = upstream_row("doctor", "test", 0)
    del row["E"]
    with pytest.raises(ValueError, match="missing column 'E'.*expected columns.*found"):
        normalise_item(row, "doctor", "test", 0)


def test_out_of_range_answer_is_rejected_with_path_and_line(tmp_path, capsys):
    rows = [upstream_row("doctor", "test", i) for i in range(4)]
    rows[1]["answer"] = 6
    raw = make_raw(tmp_path / "raw", {("doctor", "test"): rows})
    out = tmp_path / "sets"
    assert extract_cli.main(["--raw-dir", str(raw), "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{raw / 'doctor' / 'test.jsonl'}:2: answer 6 is out of range" in err
    assert not (out / "all_test.jsonl").exists()  # nothing half-right is written
    rejects = read_jsonl(out / extract_cli.REJECTS_FILE).records
    assert [(r["line"], r["reason"]) for r in rejects] == [(2, "answer 6 is out of range: KorMedMCQA answers are 1-5")]

    assert extract_cli.main(["--raw-dir", str(raw), "--output-dir", str(out), "--allow-rejects"]) == 0
    manifest = json.loads((out / "sets.json").read_text(encoding="utf-8"))
    assert manifest["sets"]["guide604"]["items"] == 7 and manifest["rejects"] == 1


def test_duplicate_upstream_keys_keep_unique_ids(tmp_path):
    rows = [upstream_row("doctor", "test", 0), upstream_row("doctor", "test", 0, question="다른 문항입니다 123")]
    raw = make_raw(tmp_path / "raw", {("doctor", "test"): rows})
    ids = [item["id"] for item in ItemSource(raw_dir=raw).items("doctor", "test")]
    assert ids == ["kormedmcqa/doctor/test/2022-1-1", "kormedmcqa/doctor/test/2022-1-1-row1"]


# ---------------------------------------------------------------------------
# Sets
# ---------------------------------------------------------------------------
def test_set_sizes_from_tiny_raw_dir(raw_dir):
    sets = build_sets(ItemSource(raw_dir=raw_dir))
    assert len(sets["guide604"]) == 3 + 4 + 1  # doctor dev + test + fewshot
    assert {i["split"] for i in sets["guide604"]} == {"dev", "test", "fewshot"}
    assert len(sets["official"]) == 4 + 2 + 2 + 2  # test split of all four configs
    assert {(i["config"], i["split"]) for i in sets["official"]} == {(c, "test") for c in CONFIGS}
    # 10 % of each config's train split (doctor 20 -> 2, others 10 -> 1)
    assert len(sets["steer"]) == 2 + 1 + 1 + 1


def test_guide604_scores_a_fewshot_row_that_repeats_a_dev_question_once(tmp_path, capsys):
    """Upstream draws fewshot from dev: the repeat is dropped, its cot kept, the row count reported."""
    dev = [upstream_row("doctor", "dev", i) for i in range(3)]
    fewshot = [dict(dev[1], cot="해설: 정답은 A이다."), upstream_row("doctor", "fewshot", 0)]
    raw = make_raw(tmp_path / "raw", {("doctor", "dev"): dev, ("doctor", "test"): [upstream_row("doctor", "test", 0)],
                                      ("doctor", "fewshot"): fewshot})
    guide = build_sets(ItemSource(raw_dir=raw))["guide604"]
    assert len(guide) == 5 and [i["split"] for i in guide] == ["dev", "dev", "dev", "test", "fewshot"]
    assert guide[1]["meta"]["repeated_as"] == ["kormedmcqa/doctor/fewshot/2021-1-2"]
    assert guide[1]["meta"]["cot"] == "해설: 정답은 A이다."
    out = tmp_path / "sets"
    assert extract_cli.main(["--raw-dir", str(raw), "--output-dir", str(out)]) == 0
    manifest = json.loads((out / "sets.json").read_text(encoding="utf-8"))["sets"]["guide604"]
    assert (manifest["rows"], manifest["items"], manifest["repeats_dropped"]) == (6, 5, 1)
    assert "guide604: 6 rows, 5 questions scored (1 fewshot rows repeat a dev question" in capsys.readouterr().out


def test_steer_is_deterministic_train_only_and_disjoint_from_tests(raw_dir):
    first = build_sets(ItemSource(raw_dir=raw_dir))
    second = build_sets(ItemSource(raw_dir=raw_dir))
    steer_ids = [i["id"] for i in first["steer"]]
    assert steer_ids == [i["id"] for i in second["steer"]]
    assert {i["split"] for i in first["steer"]} == {"train"}
    test_ids = {i["id"] for name in ("guide604", "official") for i in first[name]}
    assert not test_ids & set(steer_ids)


def test_steer_never_takes_a_train_copy_of_a_test_question(tmp_path):
    test_rows = [upstream_row("doctor", "test", i) for i in range(4)]
    train_rows = [upstream_row("doctor", "train", i) for i in range(20)]
    copied = dict(test_rows[0], year=2019, q_number=99)  # exams reuse questions across years
    train_rows[5] = copied
    raw = make_raw(tmp_path / "raw", {("doctor", "test"): test_rows, ("doctor", "train"): train_rows})
    sets = build_sets(ItemSource(raw_dir=raw), steer_fraction=0.99)  # take every eligible item
    doctor_steer = [i for i in sets["steer"] if i["config"] == "doctor"]
    assert len(doctor_steer) == 19
    assert copied["question"] not in {i["question"] for i in doctor_steer}


def test_extract_cli_writes_every_set_and_manifest(raw_dir, tmp_path, capsys):
    out = tmp_path / "kormedmcqa_test"
    assert extract_cli.main(["--raw-dir", str(raw_dir), "--output-dir", str(out)]) == 0
    captured = capsys.readouterr()
    assert "WARNING: guide604 has 8 items, not 604" in captured.err
    names = sorted(p.name for p in out.glob("*.jsonl"))
    assert names == ["all_test.jsonl", "guide604.jsonl", "official_test.jsonl", "other_eval.jsonl", "steer.jsonl"]
    other = read_jsonl(out / "other_eval.jsonl").records  # nurse/pharm/dentist dev + fewshot: never trained on
    assert {(i["config"], i["split"]) for i in other} == {(c, s) for c in CONFIGS[1:] for s in ("dev", "fewshot")}
    manifest = json.loads((out / "sets.json").read_text(encoding="utf-8"))
    assert manifest["sets"]["guide604"]["per_config_split"] == {"doctor/dev": 3, "doctor/fewshot": 1, "doctor/test": 4}
    for name, info in manifest["sets"].items():
        assert info["items"] == len(read_jsonl(out / info["file"]).records)
        assert info["sha256"] == sha256_file(out / info["file"])
    assert (out / "all_test.jsonl").read_bytes() == (out / "guide604.jsonl").read_bytes()
    item = read_jsonl(out / "all_test.jsonl").records[0]
    assert item["answer"] in "ABCDE" and isinstance(item["options"], dict)


@pytest.mark.parametrize("set_name,expected", [("official", 10), ("steer", 5), ("other_eval", 6),
                                                   ("all", 8 + 10 - 4 + 5 + 6)])
def test_extract_cli_set_choice(raw_dir, tmp_path, set_name, expected):
    out = tmp_path / "sets"
    assert extract_cli.main(["--raw-dir", str(raw_dir), "--output-dir", str(out), "--set", set_name]) == 0
    assert len(read_jsonl(out / "all_test.jsonl").records) == expected
    assert len(read_jsonl(out / "guide604.jsonl").records) == 8  # always written


def test_missing_raw_file_is_a_clear_error(tmp_path, capsys):
    raw = make_raw(tmp_path / "raw")
    (raw / "dentist" / "test.jsonl").unlink()
    assert extract_cli.main(["--raw-dir", str(raw), "--output-dir", str(tmp_path / "o")]) == 2
    assert "dentist/test.jsonl: missing" in capsys.readouterr().err


def test_hub_mirror_split_loads_with_datasets(tmp_path):
    mirror = tmp_path / "sample" / "sean0042" / "KorMedMCQA"
    write_jsonl(mirror / "doctor" / "test.jsonl", [upstream_row("doctor", "test", i, answer=i + 1) for i in range(4)])
    (mirror / "README.md").write_text(
        "---\nconfigs:\n- config_name: doctor\n  data_files:\n  - split: test\n    path: doctor/test.jsonl\n---\n",
        encoding="utf-8")
    source = ItemSource(from_dir=tmp_path / "sample")
    items = source.items("doctor", "test")
    assert [i["answer"] for i in items] == ["A", "B", "C", "D"]
    assert items[0]["id"] == "kormedmcqa/doctor/test/2022-1-1"
    with pytest.raises(DataError, match="cannot load"):
        load_hub_split(source.hub_dir, "nurse", "test", source.rejects.append)


# ---------------------------------------------------------------------------
# Normalisation and question extraction
# ---------------------------------------------------------------------------
def test_normalise_text_folds_spacing_punctuation_width_but_not_numbers():
    assert normalise_text("고혈압 환자, 무엇인가?") == normalise_text("고혈압환자：무엇인가？") == "고혈압환자무엇인가"
    assert normalise_text("ＣＴ 검사") == normalise_text("ct검사")
    assert normalise_text("5,000 IU") == normalise_text("5000 IU")
    assert normalise_text("1.5 mg") != normalise_text("15 mg")
    assert normalise_text("3-5 일") != normalise_text("35 일")


def test_punctuation_and_whitespace_removal_match_their_definitions():
    """strip_punctuation deletes every P* character unless a digit precedes and follows it, and
    str.split() removes exactly what regex \\s matches; both checked against the plain definitions."""
    import random
    import re
    import sys
    import unicodedata

    punctuation = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)).startswith("P")]
    klass = "".join(re.escape(p) for p in punctuation)
    reference = re.compile(rf"(?<!\d)[{klass}]|[{klass}](?!\d)")
    rng = random.Random(0)
    alphabet = "0123456789٣가나 a\t" + "".join(rng.sample(punctuation, 40)) + ".,-_·「」%$+"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        assert strip_punctuation(text) == reference.sub("", text), repr(text)
    assert strip_punctuation("1.5-3,2") == "1.5-3,2" and strip_punctuation("1..5") == "15"
    every = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    assert "".join(every.split()) == re.sub(r"\s+", "", every)


def test_split_stem_options_and_record_question():
    stem, options = split_stem_options("다음 중 옳은 것은?\nA) 하나\nB) 둘\nC) 셋")
    assert stem == "다음 중 옳은 것은?" and options == {"A": "하나", "B": "둘", "C": "셋"}
    assert split_stem_options("A형 간염에 대해 설명하시오.") == ("A형 간염에 대해 설명하시오.", None)
    mcq = {"question": "질문", "options": {"A": "가", "B": "나"}, "messages": []}
    assert record_question(mcq) == ("질문", {"A": "가", "B": "나"})
    chat = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "질문\nA) 가\nB) 나"}]}
    assert record_question(chat) == ("질문", {"A": "가", "B": "나"})
    assert record_question({"text": "평문"}) == ("평문", None)
    assert record_question({"id": 1}) is None


# ---------------------------------------------------------------------------
# Matching: what is caught and what is kept
# ---------------------------------------------------------------------------
VIGNETTE = ("65세 남자가 3일 전부터 시작된 발열과 기침, 누런 가래를 주소로 내원하였다. "
            "흉부 X선 검사에서 우하엽에 경화 소견이 보였다. 가장 적절한 초기 치료는?")
VIGNETTE_OPTIONS = {"A": "경험적 항생제 투여", "B": "기관지 내시경", "C": "흉관 삽입", "D": "경과 관찰", "E": "항결핵제 투여"}
GENERIC = "다음 중 옳은 것은?"
GENERIC_OPTIONS = {"A": "인슐린은 췌장 알파세포에서 분비된다", "B": "글루카곤은 혈당을 낮춘다",
                   "C": "코르티솔은 혈당을 높인다", "D": "갑상선호르몬은 기초대사를 낮춘다", "E": "알도스테론은 칼륨을 보존한다"}
ANEMIA = "만성 신부전으로 혈액투석을 받고 있는 환자에게서 빈혈을 교정하기 위해 가장 먼저 투여해야 할 약물은?"
ANEMIA_OPTIONS = {"A": "적혈구생성인자", "B": "비타민 B12", "C": "엽산", "D": "철분 정맥주사", "E": "수혈"}
POTASSIUM = "혈청 칼륨 농도가 2.5 mEq/L로 측정된 60세 여자 환자에게 가장 먼저 시행해야 할 처치는?"
POTASSIUM_OPTIONS = {"A": "염화칼륨 투여", "B": "인슐린 투여", "C": "혈액투석", "D": "칼슘 글루콘산 투여", "E": "이뇨제 투여"}

TEST_ITEMS = [
    {"id": "t/vignette", "question": VIGNETTE, "options": VIGNETTE_OPTIONS, "answer": "A"},
    {"id": "t/generic", "question": GENERIC, "options": GENERIC_OPTIONS, "answer": "C"},
    {"id": "t/anemia", "question": ANEMIA, "options": ANEMIA_OPTIONS, "answer": "A"},
    {"id": "t/potassium", "question": POTASSIUM, "options": POTASSIUM_OPTIONS, "answer": "A"},
]


def shuffled(options: dict) -> dict:
    values = list(options.values())
    return dict(zip("ABCDE", values[2:] + values[:2]))


def full_width(text: str) -> str:
    return text.translate({ord(c): ord(c) + 0xFEE0 for c in "?,.X"})


@pytest.fixture(scope="module")
def index() -> EvaluationIndex:
    return EvaluationIndex(TEST_ITEMS)


CAUGHT = [  # (name, stem, options, method, test id); the record's right option, where it has one, is below
    ("exact copy", VIGNETTE, VIGNETTE_OPTIONS, "exact", "t/vignette"),
    ("exact stem, no options (free text)", VIGNETTE, None, "exact", "t/vignette"),
    ("short stem, shuffled options", GENERIC, shuffled(GENERIC_OPTIONS), "exact", "t/generic"),
    ("spacing removed", VIGNETTE.replace(" ", ""), VIGNETTE_OPTIONS, "normalised", "t/vignette"),
    ("extra spaces and line breaks", VIGNETTE.replace(". ", ".\n\n  "), None, "normalised", "t/vignette"),
    ("full-width punctuation and letters", full_width(VIGNETTE), None, "normalised", "t/vignette"),
    ("short stem respaced, options shuffled and respaced", "다음중  옳은 것은 ?",
     {k: v.replace(" ", "") for k, v in shuffled(GENERIC_OPTIONS).items()}, "normalised", "t/generic"),
    ("wrapped in a longer prompt", "다음 문제를 읽고 답하시오.\n\n" + VIGNETTE, None, "contained", "t/vignette"),
    ("one syllable substituted, no options", VIGNETTE.replace("시작된", "시작한"), None, "near", "t/vignette"),
    ("one syllable substituted, options shuffled", VIGNETTE.replace("시작된", "시작한"), shuffled(VIGNETTE_OPTIONS),
     "near", "t/vignette"),
    ("one syllable deleted", ANEMIA.replace("투여해야", "투여해"), None, "near", "t/anemia"),
    ("one syllable inserted", POTASSIUM.replace("시행해야", "시행하여야"), None, "near", "t/potassium"),
    ("short stem edited, options kept", "다음 중 옳은 것만?", shuffled(GENERIC_OPTIONS), "near", "t/generic"),
    ("different age and sex", POTASSIUM.replace("60세 여자", "16세 남자"), None, "demographics", "t/potassium"),
    ("different age, options shuffled", POTASSIUM.replace("60세", "72세"), shuffled(POTASSIUM_OPTIONS),
     "demographics", "t/potassium"),
    ("infant age in months", VIGNETTE.replace("65세 남자", "생후 6개월 남아"), None, "demographics", "t/vignette"),
    ("different age and one syllable", VIGNETTE.replace("65세", "71세").replace("시작된", "시작한"), None,
     "near", "t/vignette"),
    ("reworded short stem, same options and answer", "다음 설명 가운데 맞는 것을 고르시오.",
     shuffled(GENERIC_OPTIONS), "options", "t/generic"),
]
GOLD = {"reworded short stem, same options and answer": GENERIC_OPTIONS["C"]}


@pytest.mark.parametrize("name,stem,options,method,test_id", CAUGHT, ids=[c[0] for c in CAUGHT])
def test_copies_of_test_questions_are_caught(index, name, stem, options, method, test_id):
    match = index.match(stem, options, GOLD.get(name))
    assert match is not None, name
    assert (match.method, match.item_id) == (method, test_id)
    if method == "near":
        assert NEAR_THRESHOLD <= match.score < 1


KEPT = [  # (name, stem, options) -- similar to a test item but a different question
    ("same short stem, different options", GENERIC,
     {"A": "폐렴구균 백신은 생백신이다", "B": "BCG는 사백신이다", "C": "홍역 백신은 생백신이다",
      "D": "B형 간염 백신은 생백신이다", "E": "독감 백신은 경구 투여한다"}),
    # Same vignette template, different finding (left upper lobe cavity: tuberculosis): J = 0.76.
    ("same vignette, different lesion", VIGNETTE.replace("우하엽에 경화", "좌상엽에 공동"), None),
    ("same vignette, different symptoms", VIGNETTE.replace("발열과 기침, 누런 가래", "체중 감소와 야간 발한"), None),
    # Same template, different disease (liver cirrhosis instead of renal failure): J = 0.78.
    ("same template, different disease", ANEMIA.replace("신부전", "간경변"), None),
    ("same template, different problem and options", ANEMIA.replace("빈혈", "고혈압"),
     {"A": "칼슘통로차단제", "B": "이뇨제", "C": "베타차단제", "D": "안지오텐신전환효소억제제", "E": "알파차단제"}),
    # Hypokalaemia (2.5) vs hyperkalaemia (6.5): one character apart, opposite treatment.
    ("same stem, different lab value", POTASSIUM.replace("2.5", "6.5"), POTASSIUM_OPTIONS),
    ("same stem, different lab value, no options", POTASSIUM.replace("2.5", "6.5"), None),
    ("same options, another right answer", "다음 설명 가운데 맞는 것을 고르시오.", shuffled(GENERIC_OPTIONS)),
    ("different lab value, same options", POTASSIUM.replace("2.5", "6.5").replace("60세", "16세"), POTASSIUM_OPTIONS),
    ("unrelated question", "소아에서 열성 경련이 처음 발생했을 때 부모에게 설명해야 할 내용으로 옳은 것은?", None),
]


KEPT_GOLD = {"same options, another right answer": GENERIC_OPTIONS["A"],
             "different lab value, same options": POTASSIUM_OPTIONS["D"]}


@pytest.mark.parametrize("name,stem,options", KEPT, ids=[k[0] for k in KEPT])
def test_similar_but_different_questions_are_kept(index, name, stem, options):
    assert index.match(stem, options, KEPT_GOLD.get(name)) is None


def test_demographic_masking_leaves_other_numbers_alone():
    assert mask_demographics("45세 남자가 내원") == f"{AGE_MASK} {SEX_MASK}가 내원"
    assert mask_demographics("생후 3주 여아") == f"{AGE_MASK} {SEX_MASK}"
    assert mask_demographics("A 45-year-old woman") == f"A {AGE_MASK} {SEX_MASK}"
    for kept in ("임신 32주 산모", "4~6주간의 항생제 치료", "K 2.5 mEq/L", "혈압 140/90 mmHg"):
        assert mask_demographics(kept) == kept


def test_known_limit_stem_only_template_swap_errs_toward_removal(index):
    """Without options to tell them apart, "빈혈" -> "고혈압" in a 42-character stem scores exactly 0.8.

    Character similarity cannot tell this from a copy; the rule errs toward removing the record
    (with its options, the same record is kept: see test_similar_but_different_questions_are_kept).
    """
    match = index.match(ANEMIA.replace("빈혈", "고혈압"), None)
    assert match is not None and match.method == "near" and match.score == pytest.approx(0.8)


def test_every_single_character_edit_of_a_long_stem_is_caught():
    """The threshold argument: one edit changes at most 3 of the L-2 grams, J >= (L-5)/(L+1) >= 0.8 at L >= 30."""
    boundary = "급성 충수염 환자에서 흔하게 관찰되는 초기 증상으로 옳은 것은 무엇인가?"  # exactly 30
    assert len(normalise_text(boundary)) == MIN_NEAR_CHARS
    stems = [ANEMIA, POTASSIUM, VIGNETTE, boundary]
    index = EvaluationIndex([{"id": f"s{i}", "question": s} for i, s in enumerate(stems)])
    checked = 0
    for i, stem in enumerate(stems):
        assert len(normalise_text(stem)) >= MIN_NEAR_CHARS
        for pos, char in enumerate(stem):
            if char.isdigit() or (pos and stem[pos - 1].isdigit()):
                continue  # a changed number is a different question (tested above)
            edits = [stem[:pos] + "훟" + stem[pos + 1:], stem[:pos] + stem[pos + 1:], stem[:pos] + "훟" + stem[pos:]]
            for edited in edits:
                match = index.match(edited)
                assert match is not None and match.item_id == f"s{i}", (edited, match)
                checked += 1
    assert checked > 300


def test_near_scores_are_jaccard_of_character_trigrams():
    a, b = normalise_text(ANEMIA), normalise_text(ANEMIA.replace("신부전", "간경변"))
    assert jaccard(char_ngrams(a), char_ngrams(b)) == pytest.approx(0.7778, abs=1e-4)


# ---------------------------------------------------------------------------
# The exclusion CLI on a small tree
# ---------------------------------------------------------------------------
def chat(user: str, assistant: str = "답") -> list[dict]:
    return [{"role": "system", "content": "시스템"}, {"role": "user", "content": user},
            {"role": "assistant", "content": assistant}]


def mcq_record(rid: str, stem: str, options: dict, answer: str = "A") -> dict:
    user = stem + "\n" + "\n".join(f"{k}) {v}" for k, v in options.items())
    return {"id": rid, "source": "kormedmcqa", "type": "type3_word", "question": stem, "options": options,
            "answer": answer, "meta": {"split": "train"}, "messages": chat(user, answer)}


@pytest.fixture()
def tree(tmp_path: Path) -> dict:
    tests = write_jsonl(tmp_path / "kormedmcqa_test" / "official_test.jsonl", TEST_ITEMS[:3])
    steer = write_jsonl(tmp_path / "kormedmcqa_test" / "steer.jsonl", TEST_ITEMS[3:])
    source = tmp_path / "refined"
    write_jsonl(source / "type3_word" / "train.jsonl", [
        mcq_record("m-exact", VIGNETTE, shuffled(VIGNETTE_OPTIONS)),
        mcq_record("m-keep-generic", GENERIC, {"A": "가", "B": "나", "C": "다", "D": "라", "E": "마"}),
        mcq_record("m-normalised", "다음 중옳은것은?", shuffled(GENERIC_OPTIONS)),
        mcq_record("m-keep-lab", POTASSIUM.replace("2.5", "6.5"), POTASSIUM_OPTIONS, answer="D"),
        mcq_record("m-steer", POTASSIUM, POTASSIUM_OPTIONS),
    ])
    write_jsonl(source / "type3_word" / "validation.jsonl", [mcq_record("v-keep", "완전히 다른 문항 7번", GENERIC_OPTIONS)])
    write_jsonl(source / "type1_text" / "train.jsonl", [
        {"id": "f-near", "source": "x", "type": "type1_text", "messages": chat(VIGNETTE.replace("시작된", "시작한"))},
        {"id": "f-keep", "source": "x", "type": "type1_text", "messages": chat(ANEMIA.replace("신부전", "간경변"))},
        "{not json",
        "[1, 2]",
        {"id": "f-noq", "source": "x"},
        {"id": "f-contained", "source": "x", "type": "type1_text", "messages": chat("설명하시오: " + ANEMIA)},
    ])
    write_jsonl(source / "nested" / "deeper" / "plain.jsonl", [{"text": "일반 의학 문서 본문입니다."}])
    (source / "notes.txt").write_text("not training data", encoding="utf-8")
    return {"source": source, "tests": [tests, steer], "output": tmp_path / "refined_clean"}


def test_exclusion_tree_stats_and_rejects(tree):
    stats = exclude_cli.exclude(tree["source"], tree["output"], tree["tests"])
    out = tree["output"]
    source_files = sorted(p.relative_to(tree["source"]) for p in tree["source"].rglob("*.jsonl"))
    assert sorted(p.relative_to(out) for p in out.rglob("*.jsonl")) == source_files  # the tree is mirrored

    summary = stats["summary"]
    assert summary == {"total": 10, "removed": 5, "kept": 5, "rejected": 3, "files": 4}
    assert summary["total"] == summary["removed"] + summary["kept"]
    for counts in stats["per_file"].values():
        assert counts["total"] == counts["removed"] + counts["kept"]
        assert sum(counts["per_method"].values()) == counts["removed"]
    assert stats["per_method"] == {"exact": 2, "normalised": 1, "demographics": 0, "contained": 1, "near": 1,
                                   "options": 0}
    assert sorted(stats["removed_ids"]) == ["f-contained", "f-near", "m-exact", "m-normalised", "m-steer"]
    by_id = {r["id"]: r for r in stats["removals"]}
    assert by_id["m-steer"]["test_id"] == "t/potassium" and by_id["f-near"]["file"] == "type1_text/train.jsonl"
    assert stats["per_set"] == {"official": 4, "steer": 1}
    assert stats["threshold"] == NEAR_THRESHOLD
    assert stats["not_mirrored"] == ["notes.txt"]
    assert {name: info["items"] for name, info in stats["test_sets"].items()} == {"official_test.jsonl": 3,
                                                                                "steer.jsonl": 1}

    kept = [r.get("id") for p in sorted(out.rglob("*.jsonl")) for r in read_jsonl(p).records]
    assert sorted(map(str, kept)) == ["None", "f-keep", "m-keep-generic", "m-keep-lab", "v-keep"]
    rejects = read_jsonl(out / exclude_cli.REJECTS_FILE).records
    assert [(r["source"].endswith("type1_text/train.jsonl"), r["line"]) for r in rejects] == [(True, 3), (True, 4),
                                                                                              (True, 5)]
    assert "invalid JSON" in rejects[0]["reason"] and "no question text" in rejects[2]["reason"]
    on_disk = json.loads((out / exclude_cli.STATS_FILE).read_text(encoding="utf-8"))
    assert on_disk["summary"] == summary and on_disk["removed_ids"] == stats["removed_ids"]


def test_exclusion_rebuilds_output_and_refuses_foreign_folders(tree, tmp_path):
    out = tree["output"]
    exclude_cli.exclude(tree["source"], out, tree["tests"])
    write_jsonl(out / "stale" / "old.jsonl", [{"id": "old"}])
    exclude_cli.exclude(tree["source"], out, tree["tests"])
    assert not (out / "stale").exists()  # rebuilt, not patched
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folders left

    foreign = tmp_path / "somebody_elses"
    write_jsonl(foreign / "keep.jsonl", [{"id": "x"}])
    with pytest.raises(DataError, match="does not look like an earlier output"):
        exclude_cli.exclude(tree["source"], foreign, tree["tests"])
    assert (foreign / "keep.jsonl").exists()
    with pytest.raises(DataError, match="must be outside"):
        exclude_cli.exclude(tree["source"], tree["source"] / "clean", tree["tests"])


def test_bad_test_file_line_is_fatal(tree, tmp_path):
    bad = write_jsonl(tmp_path / "bad_tests" / "x.jsonl", [TEST_ITEMS[0], {"id": "no-question"}])
    with pytest.raises(DataError, match=r"x\.jsonl:2: missing field 'question'"):
        exclude_cli.exclude(tree["source"], tree["output"], [bad])


def test_every_bad_test_line_is_reported_and_nothing_written(tree, tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad_tests" / "x.jsonl",
                      [TEST_ITEMS[0], {"id": "no-question"}, "{not json", {"text": "no item"}, TEST_ITEMS[1]])
    args = ["--source", str(tree["source"]), "--output", str(tree["output"]), "--test", str(bad)]
    assert exclude_cli.main(args) == 2
    err = capsys.readouterr().err
    for line, reason in ((2, "missing field 'question'"), (3, "invalid JSON"), (4, "neither an extracted item")):
        assert f"x.jsonl:{line}: {reason}" in err
    assert "3 line(s) of the evaluation set files are not items" in err
    rejects = read_jsonl(bad.parent / exclude_cli.TEST_REJECTS_FILE).records
    assert [r["line"] for r in rejects] == [2, 3, 4]
    assert not tree["output"].exists()


def test_upstream_kormedmcqa_rows_are_test_items(tree, tmp_path):
    """``--test`` takes a raw upstream split as it is: answer 1-5, options in columns A-E."""
    row = {"subject": "doctor", "year": 2022, "period": 1, "q_number": 7, "question": VIGNETTE,
           **VIGNETTE_OPTIONS, "answer": 1, "cot": ""}
    upstream = write_jsonl(tmp_path / "raw" / "doctor" / "test.jsonl", [row])
    stats = exclude_cli.exclude(tree["source"], tree["output"], [upstream])
    by_id = {r["id"]: r for r in stats["removals"]}
    assert by_id["m-exact"]["test_id"] == "kormedmcqa/doctor/test/2022-1-7"
    assert by_id["f-near"]["method"] == "near"


def test_dictionaries_are_filtered_and_copied(tree):
    entries = [{"term": "폐렴", "definition": "폐의 감염성 염증이다."},
               {"term": "복사된 문항", "definition": "문제: " + ANEMIA},
               {"term": "칼륨", "definition": "세포 안에 많은 양이온이다."}]
    (tree["source"] / "01_medical_dict.json").write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    (tree["source"] / "refine_stats.json").write_text(json.dumps({"not": "a dictionary"}), encoding="utf-8")
    stats = exclude_cli.exclude(tree["source"], tree["output"], tree["tests"])
    kept = json.loads((tree["output"] / "01_medical_dict.json").read_text(encoding="utf-8"))
    assert [e["term"] for e in kept] == ["폐렴", "칼륨"]
    info = stats["per_file"]["01_medical_dict.json"]
    assert (info["kind"], info["total"], info["removed"], info["per_method"]["contained"]) == ("dictionary", 3, 1, 1)
    assert "refine_stats.json" in stats["not_mirrored"] and "01_medical_dict.json" not in stats["not_mirrored"]


def test_exclude_cli_main(tree, capsys):
    args = ["--source", str(tree["source"]), "--output", str(tree["output"]), "--test", *map(str, tree["tests"])]
    assert exclude_cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "removed 5" in printed and "near 1" in printed


def test_run_test_exclusion_sh_end_to_end(raw_dir, tmp_path):
    test_dir, clean = tmp_path / "kormedmcqa_test", tmp_path / "clean"
    source = tmp_path / "refined"
    train_copy = upstream_row("nurse", "test", 1)  # an official test question inside the training data
    write_jsonl(source / "type3_word" / "train.jsonl", [
        mcq_record("copy", train_copy["question"], {k: train_copy[k] for k in "ABCDE"}),
        mcq_record("other", "전혀 관계없는 질문입니다", GENERIC_OPTIONS),
    ])
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "script" / "run_test_exclusion.sh"), "--raw-dir", str(raw_dir),
         "--test-dir", str(test_dir), "--source", str(source), "--output", str(clean)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in test_dir.glob("*.jsonl")) == ["all_test.jsonl", "guide604.jsonl",
                                                                "official_test.jsonl", "other_eval.jsonl",
                                                                "steer.jsonl"]
    stats = json.loads((clean / "test_exclusion_stats.json").read_text(encoding="utf-8"))
    assert stats["summary"] == {"total": 2, "removed": 1, "kept": 1, "rejected": 0, "files": 1}
    assert stats["removed_ids"] == ["copy"]
