"""Phase 5 divisions: taxonomy, annotator (lexical and model stage), kill/resume, validate/check/organize,
division-tracked training and its report, and the benchmark's gold labels.

    OMP_NUM_THREADS=1 python -m pytest tests/test_divisions.py -q -x
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from phase5_subject_training import divisions as dv
from phase5_subject_training.scripts import (
    check_divisions,
    organize_by_division,
    train_with_divisions,
    validate_divisions,
)
from script import formats
from script.data_io import atomic_write_jsonl, iter_jsonl, read_json
from tests.conftest import REPO_ROOT
from tests.sample_records import asan_type1_records

GUIDE_CATEGORIES = ["Cardiovascular Medicine", "Respiratory Medicine", "Gastroenterology and Hepatology", "Nephrology",
                    "Endocrinology and Metabolism", "Hematology and Oncology", "Neurology", "Infectious Diseases",
                    "Emergency and Critical Care", "Ethics, Law, and Patient Safety"]
GUIDE_SPECIALTIES = ["내과", "외과", "소아청소년과", "산부인과", "정신건강의학과", "피부과", "비뇨의학과", "안과", "이비인후과",
                     "정형외과", "신경과", "흉부외과", "마취통증의학과", "의상의학과", "진단검사의학과", "응급의학과", "가정의학과",
                     "재활의학과", "핵의학과", "병리과"]

# Hand-written Korean cases, one per major division: (text, expected primary id)
CASES = [
    ("58세 남성이 갑자기 시작된 가슴 통증과 식은땀으로 왔다. 심전도에서 ST 분절 상승이 보였고 트로포닌이 증가했다.", "1.4.1"),
    ("천식 환자의 흡입 스테로이드 사용법과 기관지확장제의 역할을 설명해 주세요.", "2.1"),
    ("간경화 환자에서 복수가 차고 황달이 생겼을 때의 관리는?", "3.8"),
    ("만성 신장병 환자가 혈액투석을 시작해야 하는 시점은 언제인가요?", "4.2"),
    ("제2형 당뇨병 환자의 당화혈색소 목표와 메트포르민 사용에 대해 알려 주세요.", "5.1"),
    ("철결핍성 빈혈이 의심될 때 페리틴 검사를 하는 이유는 무엇인가요?", "6.1"),
    ("편두통이 올 때 트립탄을 복용하는 방법을 알려 주세요.", "7.2"),
    ("대상포진 예방 백신은 몇 세부터 맞을 수 있나요?", "8.4"),
    ("벌에 쏘인 뒤 호흡곤란과 혈압 저하가 생기면 아나필락시스로 보고 에피네프린 근육주사를 투여한다.", "9.1"),
    ("의식이 있는 성인 환자가 수혈을 거부할 때 의사는 환자의 자기결정권을 존중해야 하는가?", "10.2"),
    ("A 60-year-old woman with type 2 diabetes asks about her HbA1c target and metformin.", "5.1"),
    ("COPD 환자의 FEV1/FVC ratio가 감소하고 wheezing이 들린다.", "2.1"),
]


def qa(user: str, answer: str = "") -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def mcq_record(rid: str, question: str, options: dict, answer: str) -> dict:
    return {"id": rid, "type": formats.TYPE3_WORD, "question": question, "options": options, "answer": answer,
            "messages": formats.type_messages(formats.TYPE3_WORD, formats.format_mcq(question, options), answer)}


def assert_well_formed(annotation: dv.Annotation, taxonomy: dv.Taxonomy) -> None:
    fields = annotation.fields()
    assert dv.division_problems(fields, taxonomy) == []
    assert 1 <= len(fields["divisions"]) <= dv.MAX_DIVISIONS
    assert fields["divisions"][0] == fields["primary_division"]
    assert len(set(fields["divisions"])) == len(fields["divisions"])
    assert isinstance(fields["division_reasoning"], str) and fields["division_reasoning"]


@pytest.fixture(scope="module")
def taxonomy() -> dv.Taxonomy:
    return dv.load_taxonomy()


@pytest.fixture(scope="module")
def annotator(taxonomy) -> dv.DivisionAnnotator:
    return dv.DivisionAnnotator(taxonomy)


# ---------------------------------------------------------------------------
# Taxonomy
# ---------------------------------------------------------------------------
def test_taxonomy_has_the_guides_categories_and_specialties(taxonomy):
    assert taxonomy.top_level == [str(i) for i in range(1, 11)]
    assert [taxonomy.name(d) for d in taxonomy.top_level] == GUIDE_CATEGORIES
    assert taxonomy.name("1.4.1") == "Ischemic Heart Disease" and taxonomy.divisions["1.4.1"].parent == "1.4"
    assert {dv.GENERAL, dv.UNKNOWN} <= set(taxonomy.divisions)
    names = {n for s in taxonomy.specialties for n in (s.name_ko, *s.aliases)}
    assert set(GUIDE_SPECIALTIES) <= names
    for node in taxonomy.divisions.values():
        assert node.name_ko and node.name_en
        if node.id not in dv.SPECIAL_IDS:
            assert any(node.keywords.values()), node.id
            assert node.parent is None or node.parent in taxonomy.divisions
    assert taxonomy.resolve_label("심혈관 질환") == "1" and taxonomy.resolve_label("Neurology") == "7"
    assert taxonomy.resolve_label("정신과") == "7.10" and taxonomy.resolve_label("내과") is None


def test_every_keyword_matches_itself_in_a_sentence(taxonomy, annotator):
    """A keyword kiwipiepy cannot find on morpheme boundaries would never fire."""
    unmatched = []
    for node in taxonomy.divisions.values():
        for words in node.keywords.values():
            for word in words:
                key = dv.normalize_term(word)
                if not any(key in [k.key for k in annotator.lexical.matches(context)]
                           for context in (f"환자에게 {word}이 있었다", f"{word}의 치료에 대해")):
                    unmatched.append((node.id, word))
    assert unmatched == []


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["divisions"].append(copy.deepcopy(d["divisions"][0])), "duplicate id"),
    (lambda d: d["divisions"].append({"id": "11.2", "name_en": "x", "name_ko": "x"}), "parent 11 is not defined"),
    (lambda d: d["divisions"].append({"id": "1.x", "name_en": "x", "name_ko": "x"}), "is not a dotted number"),
    (lambda d: d["divisions"][1]["keywords_ko"].append(d["divisions"][0]["terms_ko"][0]), "also listed under"),
    (lambda d: d["divisions"].__setitem__(slice(None), [n for n in d["divisions"] if n["id"] != "UNKNOWN"]),
     "UNKNOWN is missing"),
    (lambda d: d["specialties"][0]["divisions"].append("42"), "not a division"),
    (lambda d: d["divisions"][0].__setitem__("name_ko", ""), "name_ko"),
    (lambda d: d["divisions"][0].__setitem__("keywords_en", "heart"), "list of non-empty strings"),
])
def test_taxonomy_loader_rejects_bad_files(tmp_path, mutate, message):
    doc = json.loads(dv.TAXONOMY_PATH.read_text(encoding="utf-8"))
    mutate(doc)
    path = tmp_path / "med_division.json"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(dv.TaxonomyError, match=re.escape(message)):
        dv.load_taxonomy(path)


# ---------------------------------------------------------------------------
# Lexical annotator
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", CASES)
def test_lexical_annotator_on_hand_written_cases(annotator, taxonomy, text, expected):
    annotation = annotator.annotate(qa(text))
    assert_well_formed(annotation, taxonomy)
    assert annotation.primary_division == expected, annotation.division_reasoning
    assert taxonomy.top(annotation.primary_division) == expected.split(".")[0]


def test_unknown_general_and_multi_division(annotator, taxonomy):
    empty = annotator.annotate({"id": "x", "source": "nothing"})
    assert empty.divisions == [dv.UNKNOWN] and "no text fields" in empty.division_reasoning
    everyday = annotator.annotate(qa("주말에 가족과 함께 공원에 가서 도시락을 먹고 벚꽃을 구경했다."))
    assert everyday.divisions == [dv.UNKNOWN] and "no medical keyword" in everyday.division_reasoning
    general = annotator.annotate(qa("환자가 병원에서 진료를 받고 처방을 받았다."))
    assert general.divisions == [dv.GENERAL]
    several = annotator.annotate(qa("고혈압, 천식, 위궤양, 만성 신장병을 함께 앓는 환자의 약물 관리"))
    assert several.primary_division == dv.GENERAL and len(several.divisions) == 3
    two = annotator.annotate(qa("심부전과 만성 폐쇄성 폐질환이 함께 있는 환자의 운동 요법"))
    assert two.divisions == ["1.3", "2.1"]
    for annotation in (empty, everyday, general, several, two):
        assert_well_formed(annotation, taxonomy)


def test_morpheme_boundaries_and_record_fields(annotator):
    keys = lambda text: [k.key for k in annotator.lexical.matches(text)]  # noqa: E731
    assert "간" in keys("간에 지방이 쌓였다") and "간" not in keys("시간이 지나 3일간 기다렸다")
    assert keys("급성 심근경색(Acute myocardial infarction)") == ["급성심근경색", "acutemyocardialinfarction"]
    assert "seizure" in keys("recurrent seizures")
    assert "심근경색" in keys("심근경색증으로 진단됩니다") and "빈혈" in keys("빈혈증이 있다")
    guide_record = {"prompt": "<|im_start|>system\n당신은 한국어 의료 전문 AI입니다...<|im_end|>\n<|im_start|>user\n"
                              "가슴이 쥐어짜듯 아프고 식은땀이 납니다.<|im_end|>",
                    "completion": "심근경색증으로 진단됩니다", "text": "..."}  # the guide's data format
    assert annotator.annotate(guide_record).primary_division == "1.4.1"
    # a multiple-choice record: the stem and its correct option count, the system prompt never does
    record = mcq_record("m1", "다음 중 이 환자에게 가장 적절한 치료는?",
                        {"A": "흡입 스테로이드", "B": "인슐린", "C": "철분제", "D": "트립탄", "E": "항히스타민제"}, "B")
    kinds = dv.record_fields(record)
    assert ("answer", "인슐린") in kinds and ("options", "철분제") in kinds
    assert all(formats.SYSTEM_PROMPTS[formats.TYPE3_WORD] not in text for _, text in kinds)
    assert annotator.annotate(record).primary_division.startswith("5")
    reasoning = qa("기침과 발열이 있다.", formats.wrap_reasoning("폐렴을 시사한다", "지역사회획득 폐렴"))
    assert [k for k, _ in dv.record_fields(reasoning)] == ["question", "reasoning", "answer"]


def test_no_malformed_output_on_fuzzed_records(annotator, taxonomy):
    rng = random.Random(7)
    alphabet = ["가", "힣", "심", "장", "폐", "간", "암", "a", "Z", "1", ".", "-", "·", " ", "\n", "\t", "(", ")",
                "💊", "\u200b", "\x00", "ㅁ", "ᆷ", "é", "<R>", "<R/>", "천식", "COPD", "의료법"]

    def text() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))

    junk = [None, 3, 2.5, True, [], {}, ["a"], {"content": 1}]
    for _ in range(200):
        record: dict = {}
        if rng.random() < 0.6:
            record["messages"] = [rng.choice([{"role": "user", "content": text()},
                                              {"role": "assistant", "content": text()},
                                              {"role": "system", "content": text()},
                                              {"role": "user", "content": rng.choice(junk)},
                                              rng.choice(junk)]) for _ in range(rng.randint(0, 4))]
        if rng.random() < 0.3:
            record["question"] = rng.choice([text(), rng.choice(junk)])
            record["options"] = rng.choice([{"A": text(), "B": rng.choice(junk)}, rng.choice(junk)])
            record["answer"] = rng.choice(["A", "B", "Z", None])
        for name in ("text", "prompt", "completion", "output"):
            if rng.random() < 0.15:
                record[name] = rng.choice([text(), rng.choice(junk)])
        assert_well_formed(annotator.annotate(record), taxonomy)
    assert_well_formed(annotator.annotate({"text": "심근경색 " * 3000}), taxonomy)


# ---------------------------------------------------------------------------
# Annotating a file: checkpoints, kill, resume
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def annotation_input(tmp_path_factory) -> Path:
    """328 records (the sample's type-1 records twice, renamed) with a bad line and a blank line."""
    base = asan_type1_records()
    records = [dict(r, id=f"{r['id']}-{n}") for n in range(2) for r in base]
    path = tmp_path_factory.mktemp("annotate") / "input.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    lines.insert(120, "{not json")
    lines.insert(200, "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_annotate(input_path: Path, output: Path, *extra: str, kill_at: int | None = None):
    env = {k: v for k, v in os.environ.items() if k != dv.KILL_AT_RECORD_ENV}
    env["PYTHONPATH"] = str(REPO_ROOT)
    if kill_at is not None:
        env[dv.KILL_AT_RECORD_ENV] = str(kill_at)
    command = [sys.executable, "-m", "phase5_subject_training.scripts.annotate_divisions", "--input", str(input_path),
               "--output", str(output), "--no-progress", *extra]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_kill_and_resume_lose_and_duplicate_nothing(annotation_input, annotator, tmp_path):
    expected_ids = [r["id"] for _, r in iter_jsonl(annotation_input, on_reject=lambda r: None)]
    reference = tmp_path / "reference.jsonl"
    stats = dv.annotate_jsonl(annotation_input, reference, annotator, progress=False)
    assert stats["records"] == len(expected_ids) == 328 and stats["rejected"] == 1

    output = tmp_path / "killed.jsonl"
    killed = run_annotate(annotation_input, output, kill_at=250)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    partial, state = dv.checkpoint_paths(output)
    assert not output.exists() and partial.exists()
    committed = read_json(state)
    assert committed["records"] == 200  # records 201-250 were never committed
    assert partial.stat().st_size >= committed["partial_bytes"]

    resumed = run_annotate(annotation_input, output, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["id"] for _, r in iter_jsonl(output)] == expected_ids
    assert output.read_bytes() == reference.read_bytes()
    assert not partial.exists() and not state.exists()
    rejects = [r for _, r in iter_jsonl(output.with_name(output.name + ".rejects.jsonl"))]
    assert [r["line"] for r in rejects] == [121] and "invalid JSON" in rejects[0]["reason"]
    again = run_annotate(annotation_input, output, "--resume")  # complete: nothing to redo
    assert again.returncode == 0 and "already complete" in again.stdout


# ---------------------------------------------------------------------------
# validate / check / organize
# ---------------------------------------------------------------------------
PROBLEM_RECORDS = [
    {"id": "ok", "divisions": ["1.4.1", "9.2"], "primary_division": "1.4.1"},
    {"id": "missing"},
    {"id": "invalid", "divisions": ["1.4.1", "99.9"], "primary_division": "1.4.1"},
    {"id": "empty", "divisions": [], "primary_division": "UNKNOWN"},
    {"id": "primary", "divisions": ["2.1"], "primary_division": "1"},
    {"id": "string", "divisions": "1.4.1, 9.2", "primary_division": "1.4.1"},
    {"id": "numbers", "divisions": [1, 2], "primary_division": 1},
]
FIXED = {"ok": (["1.4.1", "9.2"], "1.4.1"), "missing": (["UNKNOWN"], "UNKNOWN"), "invalid": (["1.4.1"], "1.4.1"),
         "empty": (["UNKNOWN"], "UNKNOWN"), "primary": (["2.1"], "2.1"), "string": (["1.4.1", "9.2"], "1.4.1"),
         "numbers": (["1", "2"], "1")}


def test_validate_reports_and_fixes_every_problem_kind(tmp_path, capsys):
    source = tmp_path / "annotated.jsonl"
    lines = [json.dumps(r) for r in PROBLEM_RECORDS]
    lines.insert(3, "[1, 2]")  # not an object: reported, cannot be fixed
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert validate_divisions.main(["--input", str(source)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["records"] == 7 and report["valid"] == 1 and report["unreadable_lines"] == 1
    assert report["problems"] == {"missing_field": 1, "invalid_id": 3, "empty_divisions": 1,
                                  "primary_not_in_divisions": 2, "not_a_list": 1}
    assert any(example.startswith(f"{source}:3:") for example in report["examples"])  # path:line of 'invalid'

    fixed_path = tmp_path / "fixed.jsonl"
    assert validate_divisions.main(["--input", str(source), "--output", str(fixed_path), "--fix"]) == 1  # bad line
    fixed_report = json.loads(capsys.readouterr().out)
    assert fixed_report["written"] == 7 and fixed_report["fixed"] == 6
    fixed = [r for _, r in iter_jsonl(fixed_path)]
    assert [r["id"] for r in fixed] == [r["id"] for r in PROBLEM_RECORDS]
    taxonomy = dv.load_taxonomy()
    for record in fixed:
        assert dv.division_problems(record, taxonomy) == []
        assert (record["divisions"], record["primary_division"]) == FIXED[record["id"]]
    assert fixed_path.with_name("fixed.jsonl.rejects.jsonl").is_file()
    # the fixed file validates clean, and --fix in place keeps every record
    assert validate_divisions.main(["--input", str(fixed_path)]) == 0
    assert validate_divisions.main(["--input", str(fixed_path), "--output", str(fixed_path), "--fix"]) == 0
    assert len(list(iter_jsonl(fixed_path))) == 7


def test_check_report_numbers(tmp_path, capsys):
    records = [{"divisions": [d], "primary_division": d} for d in ("1.4.1", "1.3", "2.1", "2.1", "5", "GENERAL")]
    records += [{"divisions": ["UNKNOWN"], "primary_division": "UNKNOWN"}] * 2
    records += [{"divisions": ["1"]}, {"divisions": ["77"], "primary_division": "77"}]
    path = tmp_path / "train.jsonl"
    atomic_write_jsonl(path, records)
    summary = tmp_path / "check.json"
    assert check_divisions.main(["--file", str(path), "--json", str(summary)]) == 1  # invalid records present
    out = capsys.readouterr().out
    for line in ("Total samples: 10", "Valid: 6 (60.00%)", "Invalid: 2 (20.00%)", "Unknown: 2 (20.00%)",
                 "Missing fields: 1", f"Division Check Report: {path}", "Primary Division Distribution (Top 15):",
                 "'77': 2"):
        assert line in out, line
    assert re.search(r"^  1\s+Cardiovascular Medicine\s+2\s+20\.0%$", out, re.M)
    assert re.search(r"^  UNKNOWN\s+Unknown\s+2\s+20\.0%$", out, re.M)
    assert "UNKNOWN share 20.0% is above 5%" in out
    counts = read_json(summary)["files"][0]
    assert (counts["total"], counts["valid"], counts["invalid"], counts["unknown"], counts["missing_fields"]) == \
        (10, 6, 2, 2, 1)
    assert counts["primary_top"] == {"1": 2, "2": 2, "5": 1, "GENERAL": 1, "UNKNOWN": 2}


def annotated(rid: str, primary: str) -> dict:
    return {"id": rid, "messages": [], "divisions": [primary], "primary_division": primary}


def test_organize_is_rerunnable_and_drops_stale_folders(tmp_path, capsys):
    source = tmp_path / "division_added"
    train = [annotated(f"c{i}", "1.4.1" if i % 2 else "1.3") for i in range(10)] + \
        [annotated(f"r{i}", "2.1") for i in range(3)] + [annotated("u1", "UNKNOWN"), annotated("c1", "1.4.1")]
    atomic_write_jsonl(source / "type1_text" / "train.jsonl", train)
    atomic_write_jsonl(source / "type1_text" / "validation.jsonl", [annotated("c-val", "1")])
    atomic_write_jsonl(source / "type3_word" / "train.jsonl", [annotated("q1", "1.5")])
    args = ["--source", str(source), "--min-samples", "5"]
    for _ in range(2):  # the second run rebuilds the same folders, nothing appended
        assert organize_by_division.main(args) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["duplicates_dropped"] == 1
        assert len(list(iter_jsonl(source / "1" / "train.jsonl"))) == 11
        assert len(list(iter_jsonl(source / "1" / "validation.jsonl"))) == 1
    index = read_json(source / "division_index.json")
    assert index["1"] == {"train_samples": 11, "validation_samples": 1, "total_samples": 12, "path": str(source / "1")}
    assert index["2"]["path"] is None and index["2"]["total_samples"] == 3
    assert index["UNKNOWN"]["total_samples"] == 1 and not (source / "2").exists()
    assert read_json(source / "1" / "metadata.json") == {
        "division_id": "1", "name": "Cardiovascular Medicine", "train_samples": 11, "validation_samples": 1,
        "total_samples": 12, "sources": {"type1_text": 11, "type3_word": 1}}
    # division 1 no longer qualifies: its folder from the earlier run goes away
    atomic_write_jsonl(source / "type1_text" / "train.jsonl", [annotated(f"r{i}", "2.1") for i in range(6)])
    assert organize_by_division.main(args) == 0
    capsys.readouterr()
    assert not (source / "1").exists() and (source / "2" / "train.jsonl").is_file()
    atomic_write_jsonl(source / "type3_word" / "train.jsonl", [{"id": "bad", "divisions": "x"}])
    assert organize_by_division.main(args) == 1


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.mark.parametrize("division", ["../../x", "/tmp/organize-escape", "1/../../x"])
def test_organize_never_writes_outside_the_output_folder(tmp_path, capsys, monkeypatch, division):
    """A division id from a data file becomes a folder name: one that leads outside --output is a
    ``path:line`` error (the record's id is not in the taxonomy), and, should the taxonomy ever map
    a record to such a name, organize stops with exit 2 before writing anything."""
    source = tmp_path / "work" / "division_added"
    train = source / "type1_text" / "train.jsonl"
    atomic_write_jsonl(train, [annotated(f"c{i}", "1.4.1") for i in range(3)] + [annotated("escape", division)])
    before = files_under(tmp_path)
    args = ["--source", str(source), "--min-samples", "1"]
    assert organize_by_division.main(args) == 1
    err = capsys.readouterr().err
    assert f"error: {train}:4: invalid division fields" in err, err
    assert files_under(tmp_path) == before and not Path("/tmp/organize-escape").exists()

    atomic_write_jsonl(train, [annotated(f"c{i}", "1.4.1") for i in range(3)])
    before = files_under(tmp_path)
    monkeypatch.setattr(dv.Taxonomy, "top", lambda self, division_id: division)
    assert organize_by_division.main(args) == 2
    err = capsys.readouterr().err
    assert f"error: division id {division!r} is not a safe path under {source}" in err, err
    assert files_under(tmp_path) == before and not Path("/tmp/organize-escape").exists()


# ---------------------------------------------------------------------------
# Per-division report
# ---------------------------------------------------------------------------
def test_division_report_numbers_by_hand(taxonomy):
    rows = [{"division": "1.4.1", "accuracy": 1.0, "loss": 0.5, "mcq": True},
            {"division": "1.4.1", "accuracy": 0.0, "loss": 1.5, "mcq": True},
            {"division": "2", "accuracy": 0.9, "loss": 0.2, "mcq": False},
            {"division": "10", "accuracy": 0.85, "loss": 1.2, "mcq": False}]
    report = dv.aggregate_division_rows(rows, taxonomy)
    assert list(report) == ["1.4.1", "2", "10", "OVERALL"]
    assert report["1.4.1"] == {"accuracy": 0.5, "count": 2, "avg_loss": 1.0, "mcq_count": 2,
                               "name": "Ischemic Heart Disease", "weak": True, "weak_reasons": ["accuracy 50.00% < 80%"]}
    assert report["2"]["weak"] is False and report["2"]["avg_loss"] == 0.2
    assert report["10"]["weak_reasons"] == [f"avg loss 1.2000 > {math.log(3):.4f}"]
    assert report["OVERALL"] == {"accuracy": round(2.75 / 4, 6), "count": 4, "avg_loss": round(3.4 / 4, 6),
                                 "mcq_count": 2}
    table = dv.format_division_table(report)
    assert re.search(r"^1\.4\.1\s+2\s+50\.00%\s+1\.0000\s+weak$", table, re.M)
    assert re.search(r"^OVERALL\s+4\s+68\.75%$", table, re.M)


@pytest.fixture(scope="module")
def division_data(tmp_path_factory, annotator) -> dict:
    """Lexically annotated type-1 records plus a few multiple-choice ones, as train/validation files."""
    root = tmp_path_factory.mktemp("division_data")
    text_records = []
    for record in asan_type1_records()[:40]:
        text_records.append({**record, **annotator.annotate(record).fields()})
    options = {"A": "천식", "B": "편두통", "C": "당뇨병", "D": "빈혈", "E": "폐렴"}
    mcq = [mcq_record(f"m{i}", q, options, a) for i, (q, a) in enumerate(
        [("흡입 스테로이드로 조절하는 질환은?", "A"), ("트립탄이 듣는 두통은?", "B"), ("인슐린으로 치료하는 질환은?", "C")])]
    mcq = [{**r, **annotator.annotate(r).fields()} for r in mcq]
    atomic_write_jsonl(root / "train.jsonl", text_records[:32] + mcq[:1])
    atomic_write_jsonl(root / "validation.jsonl", text_records[32:] + mcq[1:])
    return {"dir": root, "validation": text_records[32:] + mcq[1:]}


def test_train_with_divisions_writes_report_and_chart(tiny_models, division_data, tmp_path, capsys, taxonomy):
    output = tmp_path / "run"
    info = train_with_divisions.main([
        "--train-data", str(division_data["dir"] / "train.jsonl"), "--val-data", str(division_data["dir"] / "validation.jsonl"),
        "--output-dir", str(output), "--max-steps", "2", "--batch-size", "4", "--max-length", "160",
        "--device", "cpu", "--show-samples-every", "0"])
    out = capsys.readouterr().out
    assert "Division Performance" in out and "OVERALL" in out
    report = read_json(output / "division_report.json")
    assert (output / "division_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (output / "final" / "adapter_config.json").is_file()
    validation = division_data["validation"]
    assert report["OVERALL"]["count"] == len(validation)
    assert sum(v["count"] for k, v in report.items() if k != "OVERALL") == len(validation)
    assert all(taxonomy.is_valid(k) for k in report if k != "OVERALL")
    assert sum(v["mcq_count"] for k, v in report.items() if k != "OVERALL") == 2
    tracking = read_json(output / "training_info.json")["division_tracking"]
    assert tracking["overall"] == report["OVERALL"] and info["metrics"]["global_step"] == 2

    # the same numbers recomputed independently from the saved adapter: the evaluation module's
    # perplexity per record for the loss, letter mode for the multiple-choice records
    from script.evaluation import completion_perplexity, score_mcq_letter_mode
    from script.model_loading import load_model_for_eval

    loaded = load_model_for_eval(str(output / "final"), device="cpu")
    rows = []
    for record in validation:
        loss = completion_perplexity(loaded.model, loaded.tokenizer, [record], max_length=160)["mean_nll"]
        if dv.is_mcq_record(record):
            accuracy = float(score_mcq_letter_mode(loaded.model, loaded.tokenizer, [record])[0]["correct"])
        else:
            accuracy = dv.completion_token_stats(loaded.model, loaded.tokenizer, [record], max_length=160)[0][
                "token_accuracy"]
        rows.append({"division": dv.division_key(record), "loss": loss, "mcq": dv.is_mcq_record(record),
                     "accuracy": accuracy})
    recomputed = dv.aggregate_division_rows(rows, taxonomy)
    for key, entry in report.items():
        assert entry["count"] == recomputed[key]["count"]
        assert entry["accuracy"] == pytest.approx(recomputed[key]["accuracy"], abs=1e-6)
        assert entry["avg_loss"] == pytest.approx(recomputed[key]["avg_loss"], rel=1e-4)


# ---------------------------------------------------------------------------
# Model stage
# ---------------------------------------------------------------------------
def test_model_scorer_on_tiny_returns_valid_ids(tiny_models, taxonomy):
    import torch

    from script.model_loading import load_model_for_eval

    loaded = load_model_for_eval("tiny", device="cpu")
    scorer = dv.ModelScorer(loaded.model, loaded.tokenizer, taxonomy, batch_size=2, max_text_tokens=48)
    texts = ["가슴 통증과 호흡곤란", "", "주말 나들이 이야기"]
    probabilities = scorer.score(texts)
    assert len(probabilities) == 3
    for probs in probabilities:
        assert list(probs) == taxonomy.top_level and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    # one batched pass over cached prompt keys/values == each name scored on its own
    prompts = [scorer.prompt_ids(t) for t in texts[:2]]
    batched = scorer.log_likelihoods(prompts)
    for row, prompt in enumerate(prompts):
        for col, tokens in enumerate(scorer.name_tokens):
            with torch.no_grad():
                logits = loaded.model(input_ids=torch.tensor([prompt + tokens])).logits[0].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            single = sum(float(logprobs[len(prompt) - 1 + j, token]) for j, token in enumerate(tokens))
            assert float(batched[row, col]) == pytest.approx(single, abs=1e-3)
    combined = dv.DivisionAnnotator(taxonomy, scorer, model_name="tiny")
    for annotation in combined.annotate_many([qa(t) for t in texts] + [qa(CASES[0][0]), {}]):
        assert_well_formed(annotation, taxonomy)


# ---------------------------------------------------------------------------
# The benchmark's gold labels and baseline parser
# ---------------------------------------------------------------------------
def test_bench_gold_labels_and_baseline_parser(taxonomy):
    from script.bench.bench_divisions import GoldIndex, parse_generated_division
    from script.embedded.sample_knowledge import CONDITIONS

    gold = GoldIndex()
    records = asan_type1_records()  # one article per condition, in the table's order
    found = [gold.gold_condition(r)[0] for r in records]
    assert [c.division for c in found] == [c.division for c in CONDITIONS]
    assert parse_generated_division("답: 1.4.1 허혈성 심질환", taxonomy) == "1.4.1"
    assert parse_generated_division("Respiratory Medicine 입니다", taxonomy) == "2"
    assert parse_generated_division("정신과 진료가 필요합니다", taxonomy) == "7.10"
    assert parse_generated_division("다음 글을 이어서 쓰세요: [목차]", taxonomy) is None
    assert parse_generated_division("분야 99", taxonomy) is None
