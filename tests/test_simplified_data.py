"""Simplified-pipeline data: 00 plain text, 01/02 dictionaries, 02_kor_med_test, Korean proficiency, bench.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/test_simplified_data.py -q
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from refine_scripts import refine_dictionaries, refine_kor_med_test, refine_plain_text
from refine_scripts.refine_plain_text import Filters, ShardWriter, SourceCounts, normalise_text, refine_rows
from script import download_all_datasets
from script import validate_korean_proficiency as proficiency
from script.bench import bench_data
from script.data_io import read_jsonl
from script.kormedmcqa import CONFIGS, EvaluationIndex, ItemSource, build_sets, dedupe_items
from script.training_config import SAMPLE_DATA_DIR

KOREAN_60 = "환자는 어제부터 열이 나고 기침을 하여 병원에 왔으며 의사는 폐렴을 의심하고 흉부 사진을 찍기로 하였다"


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sample_raw(tmp_path_factory) -> Path:
    """download_all_datasets.py output of the shipped sample mirror (offline)."""
    raw = tmp_path_factory.mktemp("raw")
    assert download_all_datasets.main(["--from-dir", str(SAMPLE_DATA_DIR), "--output", str(raw)]) == 0
    return raw


# ===========================================================================
# Korean ratio (shared by the plain-text refiner and the validator)
# ===========================================================================
@pytest.mark.parametrize("text, ratio", [
    ("가나다 abc", 0.5),  # 3 Hangul of 6 letters
    ("가나다 abc 123 !!", 0.5),  # digits, punctuation and spaces count for neither side
    ("가나다", 1.0),
    ("abc", 0.0),
    ("", 0.0),
    ("ㄱㄴ ab", 0.5),  # compatibility jamo are Hangul
    ("\u1100\u1161 ab", 0.5),  # conjoining jamo too
    ("高血壓 고혈압", 0.5),  # Hanja are letters, not Hangul
])
def test_korean_ratio(text, ratio):
    assert proficiency.korean_ratio(text) == pytest.approx(ratio)


# ===========================================================================
# 00_plain_text
# ===========================================================================
def test_normalise_text_collapses_whitespace_and_composes_hangul():
    decomposed = "\u1112\u1161\u11ab\u1100\u1173\u11af"  # 한글 as conjoining jamo
    assert normalise_text(f"  {decomposed}\t\u00a0 text \r\n\r\n\r\n\n 둘째  줄 ") == "한글 text\n\n둘째 줄"


def test_filters_keep_and_drop_by_ratio_and_length():
    filters = Filters(min_hangul_ratio=0.5, min_chars=50)
    assert filters.drop_reason(KOREAN_60) is None
    assert filters.drop_reason("가나다라마") == "too_short"
    english = "The patient has had a fever and a cough since yesterday and came to the hospital."
    assert filters.drop_reason(english) == "low_hangul"
    half = "가나다라마바사아자차 " * 3 + "abcdefghij " * 3  # 30 Hangul / 60 letters = 0.5: kept (>=)
    assert proficiency.korean_ratio(half) == 0.5 and filters.drop_reason(half) is None
    below = "가나다라마바사아 " * 3 + "abcdefghij " * 3  # 24 / 54 < 0.5
    assert filters.drop_reason(below) == "low_hangul"


def _plain_rows(texts):
    return [{"text": t, "timestamp": "2019-01-01T00:00:00", "url": "https://example.org"} for t in texts]


def test_refine_rows_dedups_after_normalisation():
    counts, seen = SourceCounts(), set()
    rows = enumerate(_plain_rows([KOREAN_60, f"  {KOREAN_60}  ", KOREAN_60.replace(" ", "  "), KOREAN_60 + "."]), 1)
    kept = list(refine_rows(rows, "c4_ko", "ko/train", Filters(), seen, counts))
    assert [r["text"] for r in kept] == [KOREAN_60, KOREAN_60 + "."]
    assert counts.dropped["duplicate"] == 2 and counts.kept == 2 and len(seen) == 2
    assert set(kept[0]) == {"id", "source", "text"} and kept[0]["id"] != kept[1]["id"]


def test_refine_rows_is_lazy_on_an_endless_input():
    """An endless generator can only be refined if rows are processed one at a time."""
    consumed = itertools.count()

    def endless():
        for n in itertools.count():
            next(consumed)
            yield n + 1, {"text": f"{KOREAN_60} {n}"}

    first = list(itertools.islice(refine_rows(endless(), "c4_ko", "ko/train", Filters(), set(), SourceCounts()), 5))
    assert len(first) == 5 and next(consumed) == 5


def test_shard_writer_closes_each_shard_as_it_fills(tmp_path):
    def records():
        for n in range(7):
            if n == 4:  # shards 0 and 1 are complete on disk before the input is exhausted
                assert [len((tmp_path / f"train-0000{i}.jsonl").read_text().splitlines()) for i in (0, 1)] == [2, 2]
            yield {"id": str(n), "source": "c4_ko", "text": "가"}

    writer = ShardWriter(tmp_path, shard_size=2)
    for record in records():
        writer.write(record)
    writer.close()
    assert [s["records"] for s in writer.shards] == [2, 2, 2, 1]


def _plain_raw(root: Path, c4: list, namu: list, wiki: list) -> Path:
    write_jsonl(root / "by_source" / "c4_ko" / "ko" / "train.jsonl", c4)
    write_jsonl(root / "by_source" / "namuwiki" / "default" / "train.jsonl",
                [{"title": "t", "text": t, "contributors": "", "namespace": ""} for t in namu])
    write_jsonl(root / "by_source" / "wikipedia_ko" / "20231101.ko" / "train.jsonl",
                [{"id": str(i), "url": "u", "title": "t", "text": t} for i, t in enumerate(wiki)])
    return root


def test_plain_text_cli_shards_counts_and_rejects(tmp_path):
    korean = [f"{KOREAN_60} 문서 {i}번" for i in range(6)]
    c4 = _plain_rows([*korean[:4], korean[0], "짧은 글", "English only text " * 5]) + ["{not json", {"url": "x"}]
    raw = _plain_raw(tmp_path / "raw", c4, [korean[4], korean[1]], [korean[5]])
    out = tmp_path / "refined" / "00_plain_text"
    code = refine_plain_text.main(["--input", str(raw), "--output", str(out), "--shard-size", "2",
                                   "--max-reject-percent", "50"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["stats.json", "train-00000.jsonl", "train-00001.jsonl",
                                                     "train-00002.jsonl"]
    records = [r for shard in sorted(out.glob("train-*.jsonl")) for r in read_jsonl(shard).records]
    assert [r["text"] for r in records] == korean  # registry order: c4_ko, namuwiki, wikipedia_ko
    assert [len(read_jsonl(p).records) for p in sorted(out.glob("train-*.jsonl"))] == [2, 2, 2]
    assert all(set(r) == {"id", "source", "text"} for r in records) and len({r["id"] for r in records}) == 6
    stats = json.loads((out / "stats.json").read_text())
    assert stats["sources"]["c4_ko"] == {"read": 9, "kept": 4, "kept_chars": sum(map(len, korean[:4])),
                                         "dropped": {"rejected": 2, "too_short": 1, "low_hangul": 1, "duplicate": 1}}
    assert stats["sources"]["namuwiki"]["dropped"]["duplicate"] == 1  # dedup works across sources
    assert stats["totals"]["kept"] == 6 and stats["dedup"]["digests"] == 6
    rejects = [json.loads(line) for line in (tmp_path / "refined" / "00_plain_text.rejects.ndjson").open()]
    c4_path = str(raw / "by_source" / "c4_ko" / "ko" / "train.jsonl")
    assert [(r["source"], r["line"]) for r in rejects] == [(c4_path, 8), (c4_path, 9)]
    assert "invalid JSON" in rejects[0]["reason"] and "'text'" in rejects[1]["reason"]


def test_plain_text_failed_run_keeps_previous_output(tmp_path):
    raw = _plain_raw(tmp_path / "raw", _plain_rows([KOREAN_60]), [], [])
    out = tmp_path / "out"
    assert refine_plain_text.main(["--input", str(raw), "--output", str(out)]) == 0
    before = (out / "train-00000.jsonl").read_text()
    _plain_raw(tmp_path / "raw", _plain_rows([KOREAN_60 + " 새 글"]) + ["broken"] * 3, [], [])
    assert refine_plain_text.main(["--input", str(raw), "--output", str(out)]) == 1
    assert (out / "train-00000.jsonl").read_text() == before
    assert refine_plain_text.main(["--input", str(tmp_path / "nothing"), "--output", str(out)]) == 2


# ===========================================================================
# 01_medical_dict.json / 02_char_dict.json
# ===========================================================================
def test_dictionaries_in_guide_format_with_duplicates_and_rejects(tmp_path):
    raw = tmp_path / "raw" / "by_source"
    human = write_jsonl(raw / "medical_dict" / "korean_medical_dict" / "train.jsonl", [
        {"term": "고혈압", "definition": "Hypertension. 혈압이 높은 상태"},
        {"term": "급성 심근경색", "definition": "Acute myocardial infarction."},
        {"term": " 급성  심근경색 ", "definition": "second copy"},  # same term after normalisation
        {"term": "  ", "definition": "no term"},
        {"term": "당뇨병", "definition": " "},
        '{"term": "broken"',
        {"term": 7, "definition": "not a string"},
    ])
    write_jsonl(raw / "medical_dict" / "korean_animal_medical_dict" / "train.jsonl", [
        {"term": "고혈압", "definition": "animal copy"},  # human terms take precedence
        {"term": "개 홍역", "definition": "Canine distemper."},
    ])
    write_jsonl(raw / "char_dict" / "default" / "train.jsonl", [
        {"term": "↑", "definition": "increased"}, {"term": "↑", "definition": "again"},
    ])
    out = tmp_path / "refined"
    assert refine_dictionaries.main(["--input", str(tmp_path / "raw"), "--output", str(out),
                                     "--max-reject-percent", "50"]) == 0
    medical = json.loads((out / "01_medical_dict.json").read_text())
    assert medical == [
        {"term": "고혈압", "definition": "Hypertension. 혈압이 높은 상태"},
        {"term": "급성 심근경색", "definition": "Acute myocardial infarction."},
        {"term": "개 홍역", "definition": "Canine distemper."},
    ]
    assert json.loads((out / "02_char_dict.json").read_text()) == [{"term": "↑", "definition": "increased"}]
    stats = json.loads((out / "dictionaries_stats.json").read_text())["outputs"]
    assert stats["01_medical_dict.json"]["dropped"] == {"empty_term": 1, "empty_definition": 1, "duplicate_term": 2}
    assert stats["01_medical_dict.json"]["rejected"] == 2
    assert stats["02_char_dict.json"]["dropped"]["duplicate_term"] == 1
    rejects = [json.loads(line) for line in (out / "dictionaries_rejects.ndjson").open()]
    assert [(r["source"], r["line"]) for r in rejects] == [(str(human), 6), (str(human), 7)]
    assert "invalid JSON" in rejects[0]["reason"] and "'term' should be str" in rejects[1]["reason"]

    # over the default 5 % limit: nothing written for that output, exit 1
    (out / "01_medical_dict.json").unlink()
    assert refine_dictionaries.main(["--input", str(tmp_path / "raw"), "--output", str(out)]) == 1
    assert not (out / "01_medical_dict.json").exists()


def test_dictionaries_on_sample(sample_raw, tmp_path):
    assert refine_dictionaries.main(["--input", str(sample_raw), "--output", str(tmp_path)]) == 0
    medical = json.loads((tmp_path / "01_medical_dict.json").read_text())
    assert medical and all(set(e) == {"term", "definition"} and e["term"] and e["definition"] for e in medical)
    assert len({e["term"] for e in medical}) == len(medical)


# ===========================================================================
# 02_kor_med_test
# ===========================================================================
def _planted_kormedmcqa(sample_raw: Path, root: Path) -> tuple[Path, int]:
    """The sample KorMedMCQA plus train rows copied from evaluation items (exact and respaced)."""
    src, dst = sample_raw / "by_source" / "kormedmcqa", root / "kormedmcqa"
    for path in src.rglob("*.jsonl"):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    planted = []
    for config, split, n in (("doctor", "test", 0), ("doctor", "dev", 1), ("nurse", "test", 2)):
        row = json.loads((src / config / f"{split}.jsonl").read_text().splitlines()[n])
        planted.append(dict(row, year=2015, q_number=900 + n, question=row["question"].replace(" ", "  ")
                            if n == 2 else row["question"]))
    train = dst / "doctor" / "train.jsonl"
    train.write_text(train.read_text() + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in planted))
    return dst, len(planted)


def test_kor_med_test_train_excludes_every_evaluation_item(sample_raw, tmp_path):
    raw, planted = _planted_kormedmcqa(sample_raw, tmp_path)
    out = tmp_path / "02_kor_med_test"
    assert refine_kor_med_test.main(["--raw-dir", str(raw), "--output", str(out)]) == 0
    train = read_jsonl(out / "train.jsonl").records
    test = read_jsonl(out / "test.jsonl").records
    stats = json.loads((out / "stats.json").read_text())
    # 604 rows; the five fewshot rows repeat dev questions and are kept once
    assert len(test) == 599 and stats["test"]["set"] == "guide604"

    sets = build_sets(ItemSource(raw_dir=raw))
    index = EvaluationIndex(dedupe_items(sets["guide604"] + sets["official"] + sets["steer"]))
    steer_ids = {item["id"] for item in sets["steer"]}
    for record in train:
        options = {letter: record[letter] for letter in "ABCDE" if letter in record}
        assert index.match(record["question"], options) is None, record["id"]
        assert index.match_record(record) is None, record["id"]  # how exclude_test_from_training reads it
        assert record["id"] not in steer_ids
        assert record["answer"] in options and len(record["answer"]) == 1
        assert {"id", "subject", "question", "A", "B", "C", "D", "answer"} <= set(record)
    assert all(r["answer"] in "ABCDE" and len(r["answer"]) == 1 for r in test)
    assert any("cot" in r for r in test)  # the fewshot items carry upstream's cot

    train_rows = sum(len(read_jsonl(raw / c / "train.jsonl").records) for c in CONFIGS)
    assert stats["train"]["read"] == train_rows
    assert stats["train"]["removed_steer"] == len(steer_ids)
    assert stats["train"]["removed_matching_evaluation"] >= planted
    removed = len(steer_ids) + stats["train"]["removed_matching_evaluation"]
    assert stats["train"]["kept"] == len(train) == train_rows - removed
    assert stats["files"]["train.jsonl"]["records"] == len(train)

    assert refine_kor_med_test.main(["--raw-dir", str(raw), "--output", str(out), "--test-set", "official"]) == 0
    official = read_jsonl(out / "test.jsonl").records
    assert {r["id"] for r in official} == {item["id"] for item in sets["official"]}


# ===========================================================================
# Korean proficiency
# ===========================================================================
@pytest.fixture(scope="module")
def kiwi():
    return proficiency.get_kiwi()


@pytest.fixture(scope="module")
def lexicon(kiwi):
    return proficiency.Lexicon.build(["환자", "진단", "검사", "급성 심근경색", "비후성 심근병증"], kiwi)


@pytest.mark.parametrize("text, found", [
    ("환자를 진단했다", {"환자", "진단"}),
    ("전진단계로 나아갔다", set()),  # 전진 + 단계: the characters 진단 are there, the word is not
    ("교환자에게 연락했다", set()),  # 교환자 is one noun
    ("검사장이 도착했다", set()),  # prosecutor's office head, not a test
    ("급성심근경색이 의심된다", {"급성심근경색"}),  # spacing of the compound does not matter
    ("급성 심근경색으로 입원", {"급성심근경색"}),
    ("비후성 심근병증 환자", {"비후성심근병증", "환자"}),
])
def test_lexicon_matches_whole_morphemes_only(kiwi, lexicon, text, found):
    assert set(lexicon.find(kiwi.tokenize(text))) == found


def _typed(kind: str, user: str, assistant: str, rec_id: str) -> dict:
    return {"id": rec_id, "type": kind, "messages": [{"role": "system", "content": "시스템"},
                                                    {"role": "user", "content": user},
                                                    {"role": "assistant", "content": assistant}]}


def test_proficiency_figures_and_exit_codes(tmp_path):
    data = tmp_path / "data"
    write_jsonl(data / "type1_text" / "train.jsonl", [
        _typed("type1_text", "가나다", "abc", "t1-a"),  # 3 / 6 = 0.5, no term
        _typed("type1_text", "환자가 왔다", "진단은 감기", "t1-b"),  # 1.0, terms
    ])
    write_jsonl(data / "type2_text_reasoning" / "validation.jsonl", [
        _typed("type2_text_reasoning", "환자 질문", "<R>가나다 abc<R/>가나다라", "t2"),
    ])
    write_jsonl(data / "type3_word" / "train.jsonl", [
        {**_typed("type3_word", "환자의 진단은?\nA) 감기\nB) flu", "A", "t3"), "question": "환자의 진단은?",
         "options": {"A": "감기", "B": "flu"}, "answer": "A"},
    ])
    write_jsonl(data / "02_kor_med_test" / "train.jsonl", [
        {"id": "k1", "subject": "doctor", "question": "다음 중 옳은 것은?", "A": "가", "B": "나", "C": "다",
         "D": "라", "E": "마", "answer": "C"},
    ])
    dictionary = write_jsonl(tmp_path / "dict.jsonl", [{"term": "감기", "definition": "cold"}])
    report_path = tmp_path / "report.json"
    args = ["--all", "--input", str(data), "--output", str(report_path), "--dictionary", str(dictionary)]
    assert proficiency.main(args) == 1  # type 1 misses both targets
    report = json.loads(report_path.read_text())
    t1, t2, t3 = (report["types"][k] for k in ("type1_text", "type2_text_reasoning", "type3_word"))
    assert (t1["records"], t1["mean_korean_ratio"], t1["medical_term_coverage"]) == (2, 0.75, 0.5)
    assert t1["pooled_korean_ratio"] == pytest.approx(round(13 / 16, 4))  # (3 + 10) Hangul / (6 + 10) letters
    assert not t1["passed"] and {c["metric"] for c in t1["checks"] if not c["passed"]} == {
        "mean_korean_ratio", "medical_term_coverage"}
    assert t2["mean_reasoning_korean_ratio"] == 0.5 and t2["mean_answer_korean_ratio"] == 1.0
    assert t3["mean_korean_ratio"] == pytest.approx(round(8 / 11, 4))  # question + option texts, no letters
    assert t3["letter_answer_share"] == 1.0
    assert {c["metric"]: c["passed"] for c in t3["checks"]} == {"mean_korean_ratio": False,
                                                               "medical_term_coverage": True}
    assert report["types"]["02_kor_med_test"]["medical_term_coverage"] == 0.0
    assert "환자" in {t["term"] for t in t1["top_terms"]} and "감기" in {t["term"] for t in t1["top_terms"]}
    assert report["types"]["type1_text"]["lowest_ratio_records"][0] == {"id": "t1-a", "korean_ratio": 0.5}
    assert proficiency.main([*args, "--no-fail"]) == 0

    good = write_jsonl(tmp_path / "good.jsonl", [_typed("type1_text", "환자가 왔다", "진단은 감기", "g")])
    records_out = tmp_path / "records.jsonl"
    assert proficiency.main(["--file", str(good), "--output", str(report_path), "--dictionary", str(dictionary),
                             "--records-output", str(records_out)]) == 0
    assert json.loads(records_out.read_text())["medical_terms"] == ["감기", "진단", "환자"]
    assert proficiency.main(["--all", "--input", str(tmp_path / "empty"), "--output", str(report_path)]) == 2


# ===========================================================================
# bench_data
# ===========================================================================
def test_bench_data_prints_json_with_expected_keys(sample_raw, capsys):
    assert bench_data.main(["--scale", "2", "--raw-dir", str(sample_raw)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["scale"] == 2 and result["machine"]["cpu_count"] and result["machine"]["python"]
    stages = result["stages"]
    for name in ("refine_4types", "verify_formats", "extract_kormedmcqa_test", "exclude_test_from_training"):
        assert stages[name]["seconds"] >= 0 and stages[name]["peak_rss_mb"] > 0
    assert stages["refine_4types"]["records_in"] == result["training_records"] > 2000
    assert stages["verify_formats"]["records"] == stages["refine_4types"]["records_out"]
    assert stages["exclude_test_from_training"]["records_in"] == stages["refine_4types"]["records_out"]
    assert result["refine_verify_exclusion_seconds"] > 0
    plain = result["plain_text"]
    assert plain["peak_rss_mb_1x"] > 0 and plain["peak_rss_mb_10x"] > 0
    assert plain["runs"]["10x"]["records_in"] == 10 * plain["runs"]["1x"]["records_in"]
    assert plain["runs"]["10x"]["records_out"] == plain["runs"]["10x"]["records_in"]  # copies are not duplicates


def test_bench_text_volume_caps_the_download_and_reports_disk(tmp_path, capsys):
    from script.bench import bench_text_volume

    assert bench_text_volume.main(["--gb", "0.004", "--cap-mb", "0.002", "--workdir", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    stages = result["stages"]
    assert result["input"]["mb"] >= 4 and result["cap_mb"] == 0.002
    assert stages["download_capped"]["capped"] and stages["download_capped"]["rows"] < result["input"]["rows"]
    assert stages["download_capped"]["cache_mb"] == 0.0  # streamed: nothing cached
    assert not stages["download_whole"]["capped"] and stages["download_whole"]["rows"] == result["input"]["rows"]
    for stage in stages.values():
        assert stage["seconds"] > 0 and stage["peak_rss_mb"] > 0
    assert result["disk_peak_mb"] >= stages["download_capped"]["raw_mb"] > 0
