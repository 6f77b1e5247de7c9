"""Data pipeline: download (from the shipped mirror) -> refine into the 4 types -> verify.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python -m pytest tests/test_data_pipeline.py -q

Offline and fast: the end-to-end tests read data/sample (a local hub mirror); the unit tests use
hand-made rows and files in tmp_path.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

# The suite never reaches the hub, even when run without the documented variables (set before
# datasets is first imported: it reads them once).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402

from refine_scripts import refine_4types, verify_formats  # noqa: E402
from refine_scripts.refine_4types import (  # noqa: E402
    RowReject,
    is_short_answer,
    kormedconceptsqa_item,
    kormedlawqa_item,
    kormedmcqa_item,
    medqa_evol_item,
    medqa_item,
    record_id,
    refine_reasoning,
    refine_type1,
    split_of,
)
from script import download_all_datasets  # noqa: E402
from script.data_io import DataError, read_json, sha256_file  # noqa: E402
from script.formats import SYSTEM_PROMPTS, TRAINING_TYPES, TYPE2_TEXT_REASONING, TYPE4_WORD_REASONING  # noqa: E402
from script.sources import KMMLU_MEDICAL_SUBJECTS, SOURCES, check_registry, get_source, raw_path  # noqa: E402
from script.training_config import SAMPLE_DATA_DIR  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def write_lines(path: Path, lines: list[str | dict], newline: str = "\n", bom: bool = False) -> Path:
    """A JSONL file from dicts (serialised) and raw strings (written as they are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = newline.join(line if isinstance(line, str) else json.dumps(line, ensure_ascii=False) for line in lines)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + (text + newline).encode("utf-8"))
    return path


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def refined_records(out: Path) -> dict[str, list[dict]]:
    return {t: read_records(out / t / "train.jsonl") + read_records(out / t / "validation.jsonl")
            for t in TRAINING_TYPES}


def kormed_row(answer=3, **overrides) -> dict:
    row = {"subject": "doctor", "year": 2020, "period": 1, "q_number": 7, "question": "ST 분절 상승, 진단은?",
           "A": "협심증", "B": "심근경색", "C": "심낭염", "D": "대동맥박리", "E": "폐색전증", "answer": answer, "cot": ""}
    row.update(overrides)
    return row


def refine(raw: Path, out: Path, *extra: str) -> int:
    return refine_4types.main(["--input", str(raw), "--output", str(out), *extra])


def download(output: Path, cache: Path, *extra: str, from_dir: Path | None = None) -> int:
    """download_all_datasets from a mirror (default: the shipped sample), datasets cache in tmp."""
    return download_all_datasets.main(["--from-dir", str(from_dir or SAMPLE_DATA_DIR), "--output", str(output),
                                       "--cache-dir", str(cache), *extra])


# ---------------------------------------------------------------------------
# End to end on the shipped sample mirror
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Download data/sample twice, refine, verify; keeps what each step printed."""
    assert SAMPLE_DATA_DIR.is_dir(), f"{SAMPLE_DATA_DIR} is missing: the project ships its sample mirror there"
    root = tmp_path_factory.mktemp("pipeline")
    raw, cache, out = root / "raw", root / "cache", root / "refined"
    result = {"raw": raw, "out": out}
    result["download_rc"] = download(raw, cache)
    result["manifest"] = read_json(raw / "manifest.json")
    result["mtimes"] = {p: p.stat().st_mtime_ns for p in raw.rglob("*.jsonl")}
    result["second_rc"] = download(raw, cache)
    result["second_manifest"] = read_json(raw / "manifest.json")
    result["refine_rc"] = refine(raw, out)
    result["verify_rc"] = verify_formats.main(["--input", str(out)])
    return result


def test_download_writes_every_source_with_manifest(pipeline):
    assert pipeline["download_rc"] == 0
    parts = pipeline["manifest"]["parts"]
    assert {entry["source"] for entry in parts.values()} >= {"kormedmcqa", "kmmlu", "medqa_evol_ko", "c4_ko",
                                                            "medical_dict", "char_dict"}
    for key, entry in parts.items():
        path = pipeline["raw"] / entry["path"]
        assert path == raw_path(pipeline["raw"], entry["source"], entry["config"], entry["split"])
        assert sha256_file(path) == entry["sha256"], key
        assert entry["rows"] == len(read_records(path)) > 0, key
        assert entry["origin"] == "dir"
    # every KorMedMCQA config and split is kept; KMMLU only the chosen subjects
    configs, splits = ("doctor", "nurse", "pharm", "dentist"), ("train", "dev", "test", "fewshot")
    assert {k for k in parts if k.startswith("kormedmcqa/")} == {f"kormedmcqa/{c}/{s}" for c in configs for s in splits}
    assert {parts[k]["config"] for k in parts if k.startswith("kmmlu/")} == set(KMMLU_MEDICAL_SUBJECTS)


def test_second_download_skips_everything(pipeline):
    assert pipeline["second_rc"] == 0
    assert pipeline["second_manifest"] == pipeline["manifest"]
    assert {p: p.stat().st_mtime_ns for p in pipeline["raw"].rglob("*.jsonl")} == pipeline["mtimes"]


def test_refine_and_verify_pass_on_sample(pipeline):
    assert pipeline["refine_rc"] == 0
    assert pipeline["verify_rc"] == 0
    stats = read_json(pipeline["out"] / "refine_stats.json")
    assert stats["passed"]
    records = refined_records(pipeline["out"])
    for type_name in TRAINING_TYPES:
        assert records[type_name], f"no {type_name} records from the sample"
        assert stats["types"][type_name]["kept"] == len(records[type_name])
    # Evaluation splits (KorMedMCQA dev/test/fewshot of every config, MedQA test) never become training
    # records; they are listed as not refined
    kormed_splits = {r["meta"]["split"] for r in records["type3_word"] if r["source"] == "kormedmcqa"}
    assert kormed_splits == {"train"}
    assert {r["meta"]["split"] for r in records["type3_word"] if r["source"] == "medqa"} == {"train"}
    assert not any(r["source"] == "kmmlu" for rs in records.values() for r in rs)
    not_refined = {Path(p).relative_to(pipeline["raw"] / "by_source").as_posix()
                   for p in stats["evaluation_inputs_not_refined"]}
    assert not_refined == {f"kormedmcqa/{c}/{s}.jsonl" for c in ("doctor", "nurse", "pharm", "dentist")
                           for s in ("dev", "test", "fewshot")} | {"medqa/default/test.jsonl"}
    # MCQ records carry the stem, options and a letter answer
    for record in records["type3_word"]:
        assert record["answer"] in record["options"] and len(record["options"]) in (4, 5)
        assert record["messages"][1]["content"].startswith(record["question"])


def test_download_refuses_offline_without_mirror(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(download_all_datasets, "hub_offline", lambda: True)
    rc = download_all_datasets.main(["--output", str(tmp_path / "raw"), "--only", "kormedmcqa"])
    assert rc == 2
    assert "--from-dir data/sample" in capsys.readouterr().err
    assert not (tmp_path / "raw").exists()


def test_connection_errors_are_recognised_through_the_cause_chain():
    try:
        try:
            raise ConnectionError("Couldn't reach the hub")
        except ConnectionError as inner:
            raise RuntimeError("load failed") from inner
    except RuntimeError as outer:
        assert download_all_datasets.is_connection_error(outer)
    assert not download_all_datasets.is_connection_error(ValueError("Unknown split"))


def make_mirror_dataset(root: Path, hub_id: str, rows: list[dict]) -> None:
    """One default-config, train-only dataset laid out like a hub repository."""
    write_lines(root / hub_id / "data" / "train.jsonl", rows)
    (root / hub_id / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train.jsonl\n---\n")


def test_download_reports_wrong_columns_and_goes_on(tmp_path, capsys):
    mirror = tmp_path / "mirror"
    make_mirror_dataset(mirror, "ChuGyouk/HealthSearchQA-ko", [{"question": "q", "answer": "a"}])  # not *_ko
    make_mirror_dataset(mirror, "ChuGyouk/AI_healthcare_QA", [{"question": "q", "answer": "a"}])
    rc = download(tmp_path / "raw", tmp_path / "cache", "--only", "healthsearchqa_ko", "ai_healthcare_qa",
                  from_dir=mirror)
    captured = capsys.readouterr()
    assert rc == 0  # an optional source: skipped with its reason, the run goes on
    assert "expected columns ['question_ko', 'answer_ko'], found ['question', 'answer']" in captured.out
    assert "1 of 2 sources ok, 1 failed" in captured.out
    assert "skipped optional source(s) healthsearchqa_ko" in captured.err
    assert download(tmp_path / "raw2", tmp_path / "cache", "--only", "healthsearchqa_ko", "--strict",
                    from_dir=mirror) == 1
    make_mirror_dataset(mirror, "sean0042/KorMedMCQA", [{"question": "q"}])  # required, and wrong
    assert download(tmp_path / "raw3", tmp_path / "cache", "--only", "kormedmcqa", from_dir=mirror) == 1
    assert "required source(s) kormedmcqa" in capsys.readouterr().err
    assert raw_path(tmp_path / "raw", "ai_healthcare_qa", "default", "train").is_file()
    assert not raw_path(tmp_path / "raw", "healthsearchqa_ko", "default", "train").exists()


def test_download_redoes_a_source_whose_file_changed(tmp_path, capsys):
    mirror = tmp_path / "mirror"
    make_mirror_dataset(mirror, "ChuGyouk/AI_healthcare_QA", [{"question": "q", "answer": "a"}])
    make_mirror_dataset(mirror, "ChuGyouk/HealthSearchQA-ko", [{"question_ko": "q2", "answer_ko": "a2"}])
    only = ("--only", "ai_healthcare_qa", "healthsearchqa_ko")
    assert download(tmp_path / "raw", tmp_path / "cache", *only, from_dir=mirror) == 0
    tampered = raw_path(tmp_path / "raw", "ai_healthcare_qa", "default", "train")
    tampered.write_text("{}\n")
    capsys.readouterr()
    assert download(tmp_path / "raw", tmp_path / "cache", *only, from_dir=mirror) == 0
    summary = capsys.readouterr().out
    assert re.search(r"ai_healthcare_qa +downloaded", summary)
    assert re.search(r"healthsearchqa_ko +skipped", summary)
    assert read_records(tampered) == [{"question": "q", "answer": "a"}]


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------
def test_registry_is_consistent():
    assert check_registry() == []
    assert KMMLU_MEDICAL_SUBJECTS == ["Health", "Biology", "Psychology"]
    assert get_source("kmmlu").feeds == "evaluation"
    with pytest.raises(KeyError, match="valid names"):
        get_source("no_such_source")


# ---------------------------------------------------------------------------
# The long/short rule
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "max_chars", "short"),
    [
        ("갑상선기능저하증", 30, True),
        ("  폐렴  \n", 30, True),  # surrounding whitespace does not count
        ("가" * 30, 30, True),  # the limit itself is short; Hangul syllables count one each
        ("가" * 31, 30, False),
        ("폐렴\n세균성", 30, False),  # two lines are never a single word
        ("갑상선기능저하증으로 진단되며, 레보티록신을 매일 아침 공복에 복용하여 치료합니다.", 30, False),
        ("abcdef", 5, False),
    ],
)
def test_is_short_answer(text, max_chars, short):
    assert is_short_answer(text, max_chars) is short


def test_reasoning_rows_split_into_type2_and_type4():
    source = get_source("medical_o1_reasoning_ko")
    short = refine_reasoning(source, {"Question": "q", "Complex_CoT": "생각", "Response": "폐렴"}, 30)
    long = refine_reasoning(source, {"Question": "q", "Complex_Cot": "생각", "Response": "폐렴입니다. " * 10}, 30)
    assert short.type == TYPE4_WORD_REASONING and short.messages[2]["content"] == "<R>생각<R/>폐렴"
    assert short.extra == {"answer": "폐렴"}
    assert long.type == TYPE2_TEXT_REASONING and long.messages[0]["content"] == SYSTEM_PROMPTS[TYPE2_TEXT_REASONING]


def test_type1_joins_instruction_and_input():
    source = get_source("komedinstruct_52k")
    with_input = refine_type1(source, {"instruction": "설명하세요.", "input": "두통", "output": "답"})
    without = refine_type1(source, {"instruction": "설명하세요.", "input": "", "output": "답"})
    assert with_input.messages[1]["content"] == "설명하세요.\n\n두통"
    assert without.messages[1]["content"] == "설명하세요."
    with pytest.raises(RowReject, match="'output' is empty"):
        refine_type1(source, {"instruction": "x", "input": "", "output": "  "})


# ---------------------------------------------------------------------------
# MCQ option-schema normalisation, one source at a time
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(("number", "letter"), [(1, "A"), (2, "B"), (3, "C"), (4, "D"), (5, "E"), ("3", "C")])
def test_kormedmcqa_numbers_become_letters(number, letter):
    item = kormedmcqa_item(kormed_row(answer=number))
    assert item.answer == letter
    assert list(item.options) == ["A", "B", "C", "D", "E"] and item.options["B"] == "심근경색"


@pytest.mark.parametrize(("answer", "reason"), [
    (0, "answer 0 is out of range"), (6, "answer 6 is out of range"), ("C", "should be an integer"),
    (True, "should be an integer"), (None, "should be an integer"), (2.5, "should be an integer"),
])
def test_kormedmcqa_bad_answers_are_rejected(answer, reason):
    with pytest.raises(RowReject, match=reason):
        kormedmcqa_item(kormed_row(answer=answer))


def test_medqa_uses_korean_columns_and_answer_idx():
    row = {"question": "What?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer": "b", "answer_idx": "B",
           "question_ko": "무엇인가?", "A_ko": "가", "B_ko": "나", "C_ko": "다", "D_ko": "라"}
    item = medqa_item(row)
    assert (item.question, item.options, item.answer) == ("무엇인가?", {"A": "가", "B": "나", "C": "다", "D": "라"}, "B")
    with pytest.raises(RowReject, match="not one of the option letters"):
        medqa_item({**row, "answer_idx": "E"})


def test_medqa_evol_options_and_answer_are_parsed():
    row = {"input": "65세 남성이 흉통으로 내원하였다.\n가장 적절한 다음 단계는?\nA. 아스피린\nB. 헤파린\nC. 관상동맥조영술\nD. 퇴원\nE. 관찰",
           "output": "정답: C. 관상동맥조영술\n\n해설: ST 상승이 있으므로 …"}
    item = medqa_evol_item(row)
    assert item.question == "65세 남성이 흉통으로 내원하였다.\n가장 적절한 다음 단계는?"
    assert item.options == {"A": "아스피린", "B": "헤파린", "C": "관상동맥조영술", "D": "퇴원", "E": "관찰"}
    assert item.answer == "C"


@pytest.mark.parametrize(("row", "reason"), [
    ({"input": "질문?\nA. 가\nC. 다\nD. 라\nE. 마", "output": "정답: A"}, "expected a line starting with 'B.'"),
    ({"input": "질문? 선택지 없음", "output": "정답: A"}, "no line starting with 'A.'"),
    ({"input": "질문?\nA. 가\nB. 나\nC. 다\nD. 라", "output": "해설만 있음"}, "no '정답: <letter>'"),
    ({"input": "질문?\nA. 가\nB. 나\nC. 다\nD. 라", "output": "정답: E. 마"}, "not one of the option letters"),
    ({"input": "질문?\nA. 가\nB. 나\nC. 다", "output": "정답: A"}, "3 options; expected 4 or 5"),
    ({"input": "질문?\nA. 가\nB. 나\nC. 다\nD. 라\nE. 마\n정답을 고르시오.", "output": "정답: A"},
     "unexpected line after option E"),
    ({"input": "질문?\nA. 가\nB. 나\nC. 다\nD. 라", "output": "정답은 알 수 없음"}, "no '정답: <letter>'"),
])
def test_medqa_evol_unparseable_rows_are_rejected(row, reason):
    with pytest.raises(RowReject, match=reason):
        medqa_evol_item(row)


def test_kormedconceptsqa_option_columns_become_letters():
    item = kormedconceptsqa_item({"question": "'Asthma'에 해당하는 한국어 질병명은?", "option1": "천식",
                                  "option2": "폐렴", "option3": "결핵", "option4": "비염", "answer_id": "A"})
    assert item.options == {"A": "천식", "B": "폐렴", "C": "결핵", "D": "비염"} and item.answer == "A"
    with pytest.raises(RowReject, match="not one of the option letters"):
        kormedconceptsqa_item({"question": "q", "option1": "a", "option2": "b", "option3": "c", "option4": "d",
                               "answer_id": "E"})
    with pytest.raises(RowReject, match="should be a letter"):  # a 0- or 1-based number is refused, not guessed
        kormedconceptsqa_item({"question": "q", "option1": "a", "option2": "b", "option3": "c", "option4": "d",
                               "answer_id": 1})


def test_kormedlawqa_list_options_become_letters():
    item = kormedlawqa_item({"question": "의료법상 옳은 것은?", "options": ["가", "나", "다", "라", "마"], "answer": "D"})
    assert item.options == {"A": "가", "B": "나", "C": "다", "D": "라", "E": "마"} and item.answer == "D"
    with pytest.raises(RowReject, match="should be a list"):
        kormedlawqa_item({"question": "q", "options": "가,나", "answer": "A"})
    with pytest.raises(RowReject, match="not one of the option letters"):
        kormedlawqa_item({"question": "q", "options": ["가", "나", "다", "라"], "answer": "E"})


# ---------------------------------------------------------------------------
# Refine runs on hand-made raw directories
# ---------------------------------------------------------------------------
def test_duplicates_are_dropped_and_counted(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    row = {"question": "폐렴이란?", "answer": "폐의 염증입니다."}
    write_lines(raw_path(raw, "ai_healthcare_qa", "default", "train"), [row, row, {"question": "기침?", "answer": "증상"}])
    write_lines(raw_path(raw, "asan_amc_healthinfo", "default", "train"),  # same messages, other source
                [{"instruction": row["question"], "input": "", "output": row["answer"]}])
    assert refine(raw, out) == 0
    stats = read_json(out / "refine_stats.json")
    assert stats["sources"]["ai_healthcare_qa"] == {  # read after asan (registry order)
        "read": 3, "kept": 1, "duplicates": 2, "rejects": 0,
        "kept_by_type": {"type1_text": 1}, "kept_by_part": {"default/train": 1}}
    assert stats["sources"]["asan_amc_healthinfo"]["kept"] == 1
    assert stats["types"]["type1_text"]["kept"] == 2 and stats["types"]["type1_text"]["duplicates"] == 2
    assert len(refined_records(out)["type1_text"]) == 2


def test_ids_and_split_are_deterministic(tmp_path):
    raw = tmp_path / "raw"
    rows = [{"question": f"질문 {i}", "answer": f"답 {i}"} for i in range(300)]
    write_lines(raw_path(raw, "ai_healthcare_qa", "default", "train"), rows)
    assert refine(raw, tmp_path / "a") == 0 and refine(raw, tmp_path / "b") == 0
    for split in ("train", "validation"):
        first = (tmp_path / "a" / "type1_text" / f"{split}.jsonl").read_bytes()
        assert first == (tmp_path / "b" / "type1_text" / f"{split}.jsonl").read_bytes()
    records = refined_records(tmp_path / "a")["type1_text"]
    assert all(r["id"] == record_id("ai_healthcare_qa", r["source_id"]) for r in records)
    # the split is a function of the id alone, about 10 % validation
    assert record_id("kormedmcqa", "doctor/train/0") == record_id("kormedmcqa", "doctor/train/0")
    ids = [record_id("s", f"default/train/{i}") for i in range(10_000)]
    share = sum(split_of(i, 10) == "validation" for i in ids) / len(ids)
    assert 0.08 < share < 0.12
    assert [split_of(i, 10) for i in ids] == [split_of(i, 10) for i in ids]
    assert all(split_of(i, 0) == "train" for i in ids[:100])


def test_bad_raw_lines_are_reported_counted_and_good_lines_kept(tmp_path, caplog):
    raw, out = tmp_path / "raw", tmp_path / "out"
    path = write_lines(raw_path(raw, "kormedmcqa", "doctor", "train"), [
        kormed_row(answer=1, q_number=1),  # line 1, after a BOM
        '{"question": "잘린 줄", ',  # 2: invalid JSON
        {k: v for k, v in kormed_row(q_number=3).items() if k != "question"},  # 3: missing field
        kormed_row(answer=0, q_number=4),  # 4: out of range
        kormed_row(answer=6, q_number=5),  # 5: out of range
        kormed_row(answer=5, q_number=6, question="다른 문제"),  # 6: good
        kormed_row(q_number=7, B=""),  # 7: empty option
    ], newline="\r\n", bom=True)
    assert refine(raw, out, "--max-reject-percent", "100") == 0
    kept = refined_records(out)["type3_word"]
    assert sorted(r["meta"]["q_number"] for r in kept) == [1, 6]
    assert {r["source_id"] for r in kept} == {"doctor/train/0", "doctor/train/5"}
    rejects = read_records(out / "rejects.jsonl")
    assert [(r["source"], r["line"]) for r in rejects] == [(str(path), n) for n in (2, 3, 4, 5, 7)]
    reasons = [r["reason"] for r in rejects]
    assert "invalid JSON" in reasons[0] and "missing column 'question'" in reasons[1]
    assert "answer 0 is out of range" in reasons[2] and "answer 6 is out of range" in reasons[3]
    assert "empty option 'B'" in reasons[4]
    assert f"{path}:4: answer 0 is out of range" in caplog.text
    counts = read_json(out / "refine_stats.json")["sources"]["kormedmcqa"]
    assert (counts["read"], counts["kept"], counts["rejects"]) == (7, 2, 5)


def test_too_many_rejects_fail_and_leave_outputs_untouched(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_lines(raw_path(raw, "kormedmcqa", "doctor", "train"), [kormed_row(answer=1), kormed_row(answer=9)])
    write_lines(out / "type3_word" / "train.jsonl", ['{"previous": "run"}'])
    assert refine(raw, out) == 1  # 50 % rejected > 5 %
    assert read_records(out / "type3_word" / "train.jsonl") == [{"previous": "run"}]
    assert not (out / "type1_text" / "train.jsonl").exists()
    stats = read_json(out / "refine_stats.json")
    assert not stats["passed"] and stats["over_reject_limit"] == ["kormedmcqa: 1 of 2 rows rejected (50.0%)"]
    assert len(read_records(out / "rejects.jsonl")) == 1


def test_report_only_keeps_the_data_and_says_what_was_over_the_limit(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_lines(raw_path(raw, "kormedmcqa", "doctor", "train"), [kormed_row(answer=1), kormed_row(answer=9)])
    assert refine(raw, out, "--report-only") == 0
    assert "kormedmcqa: 1 of 2 rows rejected (50.0%)" in capsys.readouterr().err
    stats = read_json(out / "refine_stats.json")
    assert not stats["passed"] and stats["settings"]["report_only"]
    assert len(read_records(out / "type3_word" / "train.jsonl")) + len(
        read_records(out / "type3_word" / "validation.jsonl")) == 1


def test_refine_without_raw_data_says_what_to_run(tmp_path, capsys):
    assert refine(tmp_path / "empty", tmp_path / "out") == 2
    assert "download_all_datasets" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# verify_formats catches each kind of bad record
# ---------------------------------------------------------------------------
def good_records() -> dict[str, dict]:
    def record(type_name: str, user: str, assistant: str, **extra) -> dict:
        return {"id": f"id-{type_name}", "source": "test", "source_id": "default/train/0", "type": type_name,
                "messages": [{"role": "system", "content": SYSTEM_PROMPTS[type_name]},
                             {"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
                **extra}

    options = {"A": "가", "B": "나", "C": "다", "D": "라"}
    return {
        "type1_text": record("type1_text", "당뇨병이란?", "혈당이 높은 병입니다."),
        "type2_text_reasoning": record("type2_text_reasoning", "치료는?", "<R>생각<R/>레보티록신으로 치료합니다."),
        "type3_word": record("type3_word", "문제\nA) 가\nB) 나\nC) 다\nD) 라", "B",
                             question="문제", options=options, answer="B", meta={}),
        "type4_word_reasoning": record("type4_word_reasoning", "기침, 발열", "<R>경화<R/>폐렴", answer="폐렴"),
    }


def _set(path: tuple, value):
    def mutate(record: dict) -> None:
        target = record
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


BAD_RECORDS = [
    ("type1_text", _set(("messages",), [{"role": "user", "content": "q"}, {"role": "system", "content": "s"},
                                         {"role": "assistant", "content": "a"}]), "roles are ['user', 'system'"),
    ("type1_text", _set(("messages", 2, "content"), "  "), "empty assistant turn"),
    ("type1_text", _set(("messages", 0, "content"), "다른 시스템 프롬프트"), "system prompt is not the type1_text prompt"),
    ("type1_text", _set(("messages", 2, "content"), "<R>생각<R/>답"), "assistant turn contains a reasoning marker"),
    ("type1_text", _set(("type",), "type3_word"), "type 'type3_word' in the type1_text directory"),
    ("type2_text_reasoning", _set(("messages", 2, "content"), "답만 있음"), "does not start with <R>"),
    ("type2_text_reasoning", _set(("messages", 2, "content"), "<R>a<R/>b<R>c<R/>d"), "exactly one <R>…<R/> block"),
    ("type2_text_reasoning", _set(("messages", 2, "content"), "<R>생각<R/>  "), "no answer after <R/>"),
    ("type2_text_reasoning", _set(("messages", 2, "content"), "<R> <R/>답"), "empty reasoning block"),
    ("type3_word", _set(("messages", 2, "content"), "E"), "'E' is not one letter among ABCD"),
    ("type3_word", _set(("messages", 2, "content"), "B. 나"), "is not one letter among ABCD"),
    ("type3_word", _set(("messages", 2, "content"), "<R>생각<R/>B"), "contains a reasoning marker"),
    ("type3_word", _set(("options",), {"A": "가", "C": "다", "D": "라", "E": "마"}), "option keys are"),
    ("type3_word", _set(("answer",), "C"), "'answer' 'C' differs"),
    ("type3_word", _set(("messages", 1, "content"), "문제 A)가 B)나"), "not formats.format_mcq"),
    ("type4_word_reasoning", _set(("messages", 2, "content"), "폐렴<R>경화<R/>"), "does not start with <R>"),
    ("type4_word_reasoning", _set(("messages", 1, "content"), "<R>질문"), "user turn contains a reasoning marker"),
]


@pytest.mark.parametrize(("type_name", "mutate", "reason"), BAD_RECORDS,
                         ids=[f"{t}-{r[:30]}" for t, _, r in BAD_RECORDS])
def test_verify_catches_bad_record(tmp_path, capsys, type_name, mutate, reason):
    records = good_records()
    for name, record in records.items():
        bad = json.loads(json.dumps(record))
        bad["id"] = f"bad-{name}"
        if name == type_name:
            mutate(bad)
        write_lines(tmp_path / name / "train.jsonl", [record, bad] if name == type_name else [record])
        write_lines(tmp_path / name / "validation.jsonl", [])
    assert verify_formats.main(["--input", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    path = tmp_path / type_name / "train.jsonl"
    assert f"{path}:2: " in out and reason in out, out
    assert f"{path}:1: " not in out  # the good record beside it passes


def test_verify_passes_good_records_and_reports_unreadable_lines(tmp_path, capsys):
    for name, record in good_records().items():
        write_lines(tmp_path / name / "train.jsonl", [record])
        write_lines(tmp_path / name / "validation.jsonl", [])
    assert verify_formats.main(["--input", str(tmp_path)]) == 0
    write_lines(tmp_path / "type1_text" / "validation.jsonl", ["not json"])
    assert verify_formats.main(["--input", str(tmp_path)]) == 1
    assert f"{tmp_path / 'type1_text' / 'validation.jsonl'}:1: invalid JSON" in capsys.readouterr().out


def test_verify_catches_duplicate_ids_and_missing_files(tmp_path, capsys):
    records = good_records()
    for name, record in records.items():
        write_lines(tmp_path / name / "train.jsonl", [record])
    write_lines(tmp_path / "type1_text" / "validation.jsonl", [records["type1_text"]])
    assert verify_formats.main(["--input", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "duplicate id id-type1_text" in out
    assert f"{tmp_path / 'type3_word' / 'validation.jsonl'}: missing file" in out


def test_verify_with_nothing_to_check_fails(tmp_path):
    assert verify_formats.main(["--input", str(tmp_path)]) == 1


def test_cli_help_runs():
    for module in (download_all_datasets, refine_4types, verify_formats):
        with pytest.raises(SystemExit) as exit_info:
            module.main(["--help"])
        assert exit_info.value.code == 0



# ---------------------------------------------------------------------------
# Volume caps and revisions
# ---------------------------------------------------------------------------
def make_namuwiki_mirror(root: Path, rows: int) -> None:
    """heegyu/namuwiki's schema, ~1 KB per row, default config."""
    make_mirror_dataset(root, "heegyu/namuwiki", [
        {"title": f"문서 {i}", "text": "가" * 330 + f" {i}", "contributors": "x", "namespace": ""}
        for i in range(rows)])


def test_text_corpora_are_capped_streamed_and_the_cap_is_part_of_the_identity(tmp_path, capsys):
    mirror, out = tmp_path / "mirror", tmp_path / "raw"
    make_namuwiki_mirror(mirror, 200)  # ~200 KB
    only = ("--only", "namuwiki")
    assert download(out, tmp_path / "cache", *only, "--max-mb", "0.05", from_dir=mirror) == 0
    manifest = read_json(out / "manifest.json")
    entry = manifest["parts"]["namuwiki/default/train"]
    assert entry["capped"] and entry["max_mb"] == 0.05 and 45 <= entry["rows"] <= 55
    assert 50_000 <= entry["bytes"] < 52_000 and entry["bytes"] == raw_path(out, "namuwiki", "default",
                                                                            "train").stat().st_size
    assert "capped at 0.05 MB per part" in capsys.readouterr().out
    assert download(out, tmp_path / "cache", *only, "--max-mb", "0.05", from_dir=mirror) == 0
    assert re.search(r"namuwiki +skipped", capsys.readouterr().out)
    assert download(out, tmp_path / "cache", *only, "--max-mb", "0", from_dir=mirror) == 0  # whole
    entry = read_json(out / "manifest.json")["parts"]["namuwiki/default/train"]
    assert entry["rows"] == 200 and not entry["capped"] and entry["max_mb"] is None
    assert download(out, tmp_path / "cache", *only, from_dir=mirror) == 0  # the registry's 500 MB
    entry = read_json(out / "manifest.json")["parts"]["namuwiki/default/train"]
    assert entry["rows"] == 200 and entry["max_mb"] == get_source("namuwiki").max_mb == 500


def test_every_hub_source_has_a_revision_entry_and_pins_are_written_back(tmp_path):
    revisions = download_all_datasets.load_revisions(download_all_datasets.REVISIONS_FILE)
    assert set(revisions) == {s.hub_id for s in SOURCES if not s.is_local}
    path = tmp_path / "revisions.json"
    path.write_text(json.dumps({"revisions": {"sean0042/KorMedMCQA": None, "allenai/c4": "abc"}}))
    manifest = {"parts": {"kormedmcqa/doctor/test": {"origin": "hub", "hub_id": "sean0042/KorMedMCQA",
                                                     "commit": "f00d"},
                          "medqa/default/train": {"origin": "dir", "hub_id": "ChuGyouk/MedQA", "commit": None}}}
    assert download_all_datasets.pin_revisions(path, manifest) == 1
    assert download_all_datasets.load_revisions(path) == {"sean0042/KorMedMCQA": "f00d", "allenai/c4": "abc"}
    settings = download_all_datasets.Settings(tmp_path, None, tmp_path, None, None, False,
                                              revisions={"allenai/c4": "abc"})
    assert settings.revision(get_source("c4_ko")) == "abc" and settings.revision(get_source("namuwiki")) is None
    assert download_all_datasets.identity(get_source("c4_ko"), "ko", "train", settings)["revision"] == "abc"
    path.write_text(json.dumps({"revisions": ["not", "a", "mapping"]}))
    with pytest.raises(DataError, match="expected"):
        download_all_datasets.load_revisions(path)
