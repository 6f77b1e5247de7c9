"""Bad-input fuzzing of every reader: broken files (tests/reliability/broken_inputs.py) end in a counted
reject or a clear error naming ``path:line`` (or the entry), never a bare traceback, and every valid
record next to a broken one is kept.

Readers run in-process on files in tmp_path, the way their scripts call them. The line-length
limit is lowered for the "huge line" cases (the real 16 MB limit is exercised once, at the end).

    python -m pytest tests/reliability/test_bad_input_fuzz.py -q
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from script import data_io, formats
from script.data_io import DataError
from script.training_config import ConfigError
from tests.reliability import broken_inputs as bi

SMALL_LINE_LIMIT = 4096  # data_io.MAX_LINE_BYTES during these tests: "huge line" cases stay small
N_GOOD = 40  # valid records around each broken line: one reject stays under the readers' 5 % limits
SCHEMA_FAULTS = {"wrong type", "missing field", "out-of-range answer"}


@dataclass
class Outcome:
    """What a reader did: keys of the records it kept, and the lines/entries it refused (counted)."""

    kept: list[str] = field(default_factory=list)
    rejected_lines: list[int] = field(default_factory=list)
    rejected_entries: list[int] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


@dataclass
class Reader:
    name: str  # shown in the results table
    cases: Callable[[], list[bi.BrokenCase]]
    read: Callable[[Path, Path, bi.BrokenCase], Outcome]  # (tmp dir, file written, case) -> outcome
    place: Callable[[Path], Path]  # tmp dir -> where the broken file goes
    errors: tuple[type[BaseException], ...] = (DataError, ConfigError)
    empty_ok: bool = False  # an empty file is a valid input (0 records, counted), e.g. a filter's
    filters: bool = False  # passes schema faults through unchanged (it filters, another step validates)


def rejects_from(items) -> tuple[list[int], list[str]]:
    return [r.line for r in items], [str(r) for r in items]


# ---------------------------------------------------------------------------
# Valid records of each schema
# ---------------------------------------------------------------------------
def type1_records() -> list[dict]:
    return [{"id": f"t1-{i}", "source": "fuzz", "type": formats.TYPE1_TEXT,
             "messages": formats.type_messages(formats.TYPE1_TEXT, f"{i}번 질문: 가슴 통증의 원인은 무엇인가요?",
                                               f"{i}번 답변: 협심증, 심근경색, 대동맥 박리 등을 감별해야 합니다.")}
            for i in range(N_GOOD)]


def upstream_rows(n_options: int = 5) -> list[dict]:
    letters = formats.OPTION_LETTERS[:n_options]
    return [{"subject": "doctor", "year": 2023, "period": 1, "q_number": i + 1,
             "question": f"{i}번 문제: 45세 남자가 흉통으로 내원하였다. 가장 적절한 처치는?",
             **{letter: f"{i}번 보기 {letter}" for letter in letters}, "answer": i % n_options + 1, "cot": ""}
            for i in range(N_GOOD)]


def set_items() -> list[dict]:
    return [{"id": f"kormedmcqa/doctor/test/fuzz-{i}", "config": "doctor", "split": "test",
             "question": f"{i}번 문제: 당뇨병 환자의 혈당 조절 목표로 옳은 것은?",
             "options": {letter: f"{i}번 보기 {letter}" for letter in formats.OPTION_LETTERS},
             "answer": formats.OPTION_LETTERS[i % 5], "meta": {"row": i}} for i in range(N_GOOD)]


def kor_med_test_items() -> list[dict]:
    return [{"id": f"kmt-{i}", "subject": "doctor", "question": f"{i}번 문제: 고혈압의 1차 약제로 옳은 것은?",
             **{letter: f"{i}번 보기 {letter}" for letter in formats.OPTION_LETTERS},
             "answer": formats.OPTION_LETTERS[i % 5], "cot": "해설"} for i in range(N_GOOD)]


def kmmlu_rows() -> list[dict]:
    return [{"question": f"{i}번 문제: 건강 증진 행동으로 옳은 것은?", "answer": i % 4 + 1,
             **{letter: f"{i}번 보기 {letter}" for letter in "ABCD"}, "Category": "Health", "Human Accuracy": 0.5}
            for i in range(N_GOOD)]


def dictionary_entries() -> list[dict]:
    return [{"term": f"의학용어{i}", "definition": f"{i}번 용어의 뜻을 설명하는 정의 문장입니다."} for i in range(N_GOOD)]


def instruction_rows() -> list[dict]:
    return [{"instruction": f"{i}번 질문: 두통이 계속되면 어떻게 해야 하나요?", "input": "",
             "output": f"{i}번 답변: 두통이 지속되면 신경과 진료를 받는 것이 좋습니다."} for i in range(N_GOOD)]


def plain_text_rows() -> list[dict]:
    return [{"text": f"{i}번 문서입니다. 고혈압은 혈압이 정상보다 높은 상태로, 심혈관 질환의 주요 위험 인자이며 "
                     "생활 습관 개선과 약물 치료로 관리합니다.", "timestamp": "2020-01-01", "url": f"https://x/{i}"}
            for i in range(N_GOOD)]


MCQ_ANSWERS_1_5 = [0, 6, -1, "F", "A", True, 2.5, "", [1], "1.5", 10**20]
LETTER_ANSWERS = ["F", "a", "", 3, -1, "AB", "A.", 1.0]


# ---------------------------------------------------------------------------
# The readers
# ---------------------------------------------------------------------------
def read_trainer_split(tmp: Path, path: Path, case: bi.BrokenCase) -> Outcome:
    from script.training_data import load_split_records

    records = load_split_records(path, rejects_dir=tmp / "rejects")
    rejects = tmp / "rejects" / f"rejects_{path.parent.name}_{path.stem}.jsonl"
    saved = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()] if rejects.exists() else []
    return Outcome([r["id"] for r in records], [s["line"] for s in saved], [], [f"{s['source']}:{s['line']}" for s in saved])


def read_verify(tmp: Path, path: Path, case: bi.BrokenCase) -> Outcome:
    """verify_formats' main: failures are printed as ``path:line: reason``; exit 1 on any."""
    from refine_scripts import verify_formats

    for type_name in formats.TRAINING_TYPES:
        for split in ("train", "validation"):
            target = tmp / "refined" / type_name / f"{split}.jsonl"
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(b"")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        status = verify_formats.main(["--input", str(tmp / "refined"), "--max-listed", "100000"])
    text = out.getvalue()
    flagged = sorted({int(line.split(f"{path}:", 1)[1].split(":", 1)[0])
                      for line in text.splitlines() if f"{path}:" in line})
    if status != 0 and not flagged:
        raise SystemExit(text.strip().splitlines()[-1] + f" ({path.parent.parent})")
    keys = dict(case.line_keys)
    return Outcome([k for line, k in sorted(keys.items()) if line not in flagged], flagged, [], [text])


def read_exclusion(tmp: Path, path: Path, case: bi.BrokenCase) -> Outcome:
    from script.exclude_test_from_training import REJECTS_FILE, exclude

    test_file = tmp / "tests" / "guide604.jsonl"
    test_file.parent.mkdir(parents=True, exist_ok=True)
    data_io.atomic_write_jsonl(test_file, [{"id": "kormedmcqa/doctor/test/x", "question":
                                            "전혀 관계가 없는 시험 문항으로 어떤 학습 데이터와도 겹치지 않는 긴 문장입니다.",
                                            "options": {"A": "가", "B": "나", "C": "다", "D": "라", "E": "마"},
                                            "answer": "A"}])
    out = tmp / "clean"
    exclude(tmp / "refined", out, [test_file])
    kept = [r.get("id") for _, r in data_io.iter_jsonl(out / path.relative_to(tmp / "refined"))]
    rejects = out / REJECTS_FILE
    saved = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()] if rejects.exists() else []
    return Outcome([str(k) for k in kept], [s["line"] for s in saved], [], [f"{s['source']}:{s['line']}" for s in saved])


def read_kormedmcqa_raw(tmp: Path, path: Path, case: bi.BrokenCase) -> Outcome:
    from script.kormedmcqa import load_raw_split

    rejects: list = []
    items = load_raw_split(tmp / "raw", "doctor", "test", rejects.append)
    return Outcome([i["question"] for i in items], *_split(rejects_from(rejects)))


def read_eval_items(tmp: Path, path: Path, case: bi.BrokenCase) -> Outcome:
    from script.eval_items import read_items_file

    evalset = read_items_file(path)
    return Outcome([i["question"] for i in evalset.items], *_split(rejects_from(evalset.rejects)))


def read_kmmlu_raw(tmp: Path, path: Path, case: bi.BrokenCase) -> Outcome:
    from script.eval_items import read_kmmlu

    evalset = read_kmmlu(raw_dir=tmp / "raw", subjects=["Health"], split="test")
    return Outcome([i["question"] for i in evalset.items], *_split(rejects_from(evalset.rejects)))


def read_mcq_items(tmp: Path, path: Path, case: bi.BrokenCase) -> Outcome:
    from script.training_config import LOG_DIR
    from script.training_data import load_mcq_items

    rejects = LOG_DIR / f"rejects_{path.parent.name}_{path.stem}.jsonl"
    rejects.unlink(missing_ok=True)
    items = load_mcq_items(path)
    saved = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()] if rejects.exists() else []
    return Outcome([i["question"] for i in items], [s["line"] for s in saved], [],
                   [f"{s['source']}:{s['line']}" for s in saved])


def read_refine_4types(tmp: Path, path: Path, case: bi.BrokenCase) -> Outcome:
    from refine_scripts.refine_4types import Settings, refine_all

    stats = refine_all(Settings(tmp / "raw", tmp / "refined", max_reject_percent=100.0))
    kept = [r["messages"][2]["content"] for split in ("train", "validation")
            for _, r in data_io.iter_jsonl(tmp / "refined" / formats.TYPE1_TEXT / f"{split}.jsonl")]
    return Outcome(kept, *_split(rejects_from(stats.rejects)))


def read_refine_plain_text(tmp: Path, path: Path, case: bi.BrokenCase) -> Outcome:
    from refine_scripts.refine_plain_text import Settings, refine_all

    rejects = io.StringIO()
    refine_all(Settings(tmp / "raw", tmp / "plain", max_reject_percent=100.0), rejects)
    kept = [r["text"].split()[0] for shard in sorted((tmp / "plain").glob("train-*.jsonl"))
            for _, r in data_io.iter_jsonl(shard)]
    saved = [json.loads(line) for line in rejects.getvalue().splitlines()]
    return Outcome(kept, [s["line"] for s in saved], [], [f"{s['source']}:{s['line']}" for s in saved])


def read_dictionary_raw(tmp: Path, path: Path, case: bi.BrokenCase) -> Outcome:
    from refine_scripts.refine_dictionaries import refine_output

    result = refine_output("01_medical_dict.json", [path])
    return Outcome([e["term"] for e in result.entries], *_split(rejects_from(result.rejects)))


def read_dictionary_json(tmp: Path, path: Path, case: bi.BrokenCase) -> Outcome:
    from script.training_data import load_dictionary_records

    rejects = tmp / "dict_rejects.jsonl"
    records, _ = load_dictionary_records([path], rejects)
    saved = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()] if rejects.exists() else []
    terms = [r["messages"][0]["content"] for r in records]
    return Outcome(terms, [], [s["index"] for s in saved], [f"{s['source']}: entry [{s['index']}]" for s in saved])


def read_lexicon_terms(tmp: Path, path: Path, case: bi.BrokenCase) -> Outcome:
    from script.evaluation import read_dictionary_terms

    with capture_warnings("script.evaluation") as warnings:
        terms = read_dictionary_terms(path)
    entries = [int(w.split("entry [", 1)[1].split("]", 1)[0]) for w in warnings if "entry [" in w]
    return Outcome(terms, [], entries, warnings)


def _split(pair: tuple[list[int], list[str]]) -> tuple[list[int], list[int], list[str]]:
    lines, messages = pair
    return lines, [], messages


@contextlib.contextmanager
def capture_warnings(logger_name: str):
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Keep(level=logging.WARNING)
    target = logging.getLogger(logger_name)
    target.addHandler(handler)
    try:
        yield messages
    finally:
        target.removeHandler(handler)


def jsonl(good, key_of, fields, **kw) -> Callable[[], list[bi.BrokenCase]]:
    return lambda: bi.jsonl_cases(bi.JsonlSpec(good(), key_of, fields, huge_line_bytes=SMALL_LINE_LIMIT + 1, **kw))


def at(*parts: str) -> Callable[[Path], Path]:
    return lambda tmp: tmp.joinpath(*parts)


MESSAGES_FIELDS = {("messages",): "list", ("messages", 1, "content"): "str", ("messages", 2, "role"): "str"}
USER_TEXT = ("messages", 1, "content")

READERS = [
    Reader("refined JSONL -> trainers (training_data.load_split_records)",
           jsonl(type1_records, lambda r: r["id"], MESSAGES_FIELDS, id_field=("id",), text_field=USER_TEXT),
           read_trainer_split, at("refined", "type1_text", "train.jsonl")),
    Reader("refined JSONL -> verify_formats",
           jsonl(type1_records, lambda r: r["id"], {("id",): "str", ("type",): "str", **MESSAGES_FIELDS},
                 id_field=("id",), text_field=USER_TEXT),
           read_verify, at("refined", "type1_text", "train.jsonl"), errors=(SystemExit,)),
    Reader("refined JSONL -> test exclusion (exclude_test_from_training)",
           jsonl(type1_records, lambda r: r["id"], MESSAGES_FIELDS, id_field=("id",), text_field=USER_TEXT),
           read_exclusion, at("refined", "type1_text", "train.jsonl"), empty_ok=True, filters=True),
    Reader("raw rows -> refine_4types (type 1 source)",
           jsonl(instruction_rows, lambda r: r["output"], {("instruction",): "str", ("output",): "str"},
                 id_field=("instruction",), text_field=("output",)),
           read_refine_4types, at("raw", "by_source", "asan_amc_healthinfo", "default", "train.jsonl"),
           empty_ok=True),
    Reader("raw rows -> refine_plain_text",
           jsonl(plain_text_rows, lambda r: r["text"].split()[0], {("text",): "str"}, text_field=("text",)),
           read_refine_plain_text, at("raw", "by_source", "c4_ko", "ko", "train.jsonl"), empty_ok=True),
    Reader("KorMedMCQA raw rows (kormedmcqa.load_raw_split)",
           jsonl(upstream_rows, lambda r: r["question"], {("question",): "cell", ("A",): "cell", ("answer",): "int"},
                 answers=(("answer",), MCQ_ANSWERS_1_5), id_field=("q_number",), text_field=("question",)),
           read_kormedmcqa_raw, at("raw", "doctor", "test.jsonl"), empty_ok=True),
    Reader("KorMedMCQA set items (eval_items.read_items_file / load_eval_items)",
           jsonl(set_items, lambda r: r["question"],
                 {("question",): "str", ("options",): "dict", ("options", "A"): "str", ("answer",): "str"},
                 answers=(("answer",), LETTER_ANSWERS), id_field=("id",), text_field=("question",)),
           read_eval_items, at("sets", "guide604.jsonl"), empty_ok=True),
    Reader("KMMLU raw rows (eval_items.read_kmmlu)",
           jsonl(kmmlu_rows, lambda r: r["question"], {("question",): "cell", ("A",): "cell", ("answer",): "int"},
                 answers=(("answer",), [0, 5, -1, "E", "A", True, 2.5, [2]]), text_field=("question",)),
           read_kmmlu_raw, at("raw", "by_source", "kmmlu", "Health", "test.jsonl"), empty_ok=True),
    Reader("02_kor_med_test items -> train_02 (training_data.load_mcq_items)",
           jsonl(kor_med_test_items, lambda r: r["question"],
                 {("question",): "str", ("A",): "str", ("answer",): "str", ("cot",): "str"},
                 optional=(("cot",),), answers=(("answer",), LETTER_ANSWERS), id_field=("id",),
                 text_field=("question",)),
           read_mcq_items, at("refined", "02_kor_med_test", "train.jsonl")),
    Reader("dictionary raw JSONL -> refine_dictionaries",
           jsonl(dictionary_entries, lambda r: r["term"], {("term",): "str", ("definition",): "str"},
                 id_field=("term",), text_field=("definition",)),
           read_dictionary_raw, at("raw", "medical_dict.jsonl"), empty_ok=True),
    Reader("01_medical_dict.json / 02_char_dict.json -> train_01 (load_dictionary_records)",
           lambda: bi.json_array_cases(dictionary_entries(),
                                       lambda e: formats.dictionary_messages(e["term"], e["definition"])[0]["content"],
                                       {("term",): "str", ("definition",): "str"}, text_field=("definition",)),
           read_dictionary_json, at("refined", "01_medical_dict.json")),
    Reader("01_medical_dict.json -> type-4 lexicon (evaluation.read_dictionary_terms)",
           lambda: bi.json_array_cases(dictionary_entries(), lambda e: e["term"], {("term",): "str"}),
           read_lexicon_terms, at("refined", "01_medical_dict.json")),
]

def all_cases():
    for reader in READERS:
        for case in reader.cases():
            marks = [pytest.mark.fault("bad input", case.fault, reader.name)]
            yield pytest.param(reader, case, id=f"{reader.name.split(' (')[0].split(' ->')[0][:30]}-{case.id}",
                               marks=marks)


@pytest.fixture(autouse=True)
def small_line_limit(monkeypatch):
    monkeypatch.setattr(data_io, "MAX_LINE_BYTES", SMALL_LINE_LIMIT)


def run_reader(reader: Reader, case: bi.BrokenCase, tmp_path: Path) -> tuple[Path, Outcome | BaseException]:
    path = reader.place(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(case.content)
    try:
        return path, reader.read(tmp_path, path, case)
    except reader.errors as exc:
        return path, exc
    except Exception as exc:  # the failure this suite exists to find
        raise AssertionError(f"{reader.name} crashed on {case.id} with a bare traceback:\n"
                             + "".join(traceback.format_exception(exc))) from None


def check(reader: Reader, case: bi.BrokenCase, path: Path, result) -> str:
    """Assert the reader met the case's expectation; returns how (for the results table)."""
    expect = case.expect
    if reader.filters and case.fault in SCHEMA_FAULTS and expect == bi.REJECT:
        expect = bi.EITHER
    if isinstance(result, BaseException):
        message = str(result)
        assert expect != bi.KEEP, f"{case.id}: nothing is wrong with this file, yet: {message}"
        assert str(path) in message or str(path.parent.parent) in message, f"error does not name the file: {message}"
        if case.bad_lines and expect in (bi.REJECT, bi.EITHER):
            assert f"{path}:{case.bad_lines[0]}" in message, f"error does not name the line: {message}"
            return "error naming path:line"
        if case.bad_entries:
            assert f"[{case.bad_entries[0]}]" in message, f"error does not name the entry: {message}"
            return "error naming the entry"
        return "error naming path:line" if f"{path}:" in message else "error naming the file"
    outcome: Outcome = result
    if expect == bi.ERROR:
        assert reader.empty_ok and case.fault == "empty file", f"{case.id}: expected a clear error, got {outcome}"
        assert not outcome.kept and not outcome.rejected_lines
        return "empty input, 0 records (counted)"
    if expect == bi.KEEP:
        assert sorted(outcome.kept) == sorted(case.good_keys), f"{case.id}: records lost or added"
        assert not outcome.rejected_lines and not outcome.rejected_entries, f"{case.id}: {outcome.messages}"
        return "all records kept"
    missing = set(case.good_keys) - set(outcome.kept)
    assert not missing, f"{case.id}: valid records lost next to the bad line: {sorted(missing)[:3]}"
    rejected = outcome.rejected_lines if case.bad_lines else outcome.rejected_entries
    bad = case.bad_lines or case.bad_entries
    if expect == bi.REJECT:
        assert sorted(outcome.kept) == sorted(case.good_keys), f"{case.id}: a broken record was kept"
        assert sorted(rejected) == sorted(bad), f"{case.id}: rejected {rejected}, expected {bad}: {outcome.messages}"
        assert all(str(path) in m for m in outcome.messages), outcome.messages
        return "counted reject naming path:line" if case.bad_lines else "counted reject naming the entry"
    assert set(rejected) <= set(bad), f"{case.id}: valid lines rejected: {rejected}"
    return "counted reject naming path:line" if rejected else "kept, no error"


@pytest.mark.parametrize(("reader", "case"), list(all_cases()))
def test_reader_handles_broken_input(reader, case, tmp_path, record_property):
    path, result = run_reader(reader, case, tmp_path)
    record_property("outcome", check(reader, case, path, result))


# ---------------------------------------------------------------------------
# Config files the user hands the project (JSON documents)
# ---------------------------------------------------------------------------
def make_adapter_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text('{"base_model_name_or_path": "model/base", "peft_type": "LORA"}')
    (path / "adapter_model.safetensors").write_bytes(b"")
    return path


def read_adapter_chain(tmp: Path) -> tuple[Path, Callable[[], object], object]:
    from script.model_loading import ADAPTER_CHAIN_FILE, resolve_adapter_chain

    parent = make_adapter_dir(tmp / "parent")
    child = make_adapter_dir(tmp / "child")
    return child / ADAPTER_CHAIN_FILE, lambda: resolve_adapter_chain(child), [str(parent.resolve()), str(child)]


def read_adapter_config(tmp: Path):
    from script.model_loading import adapter_base_model

    adapter = make_adapter_dir(tmp / "adapter")
    return adapter / "adapter_config.json", lambda: adapter_base_model(adapter), "model/base"


def read_model_config(tmp: Path):
    from script.check_gpu_memory import resolve_architecture

    (tmp / "m").mkdir()
    return tmp / "m" / "config.json", lambda: resolve_architecture(str(tmp / "m")).hidden_size, 64


def read_eval_report(tmp: Path):
    from script.evaluation_report import load_report

    path = tmp / "report.json"
    return path, lambda: load_report(path)["accuracy"], 50.0


def read_download_manifest(tmp: Path):
    from script.download_all_datasets import load_manifest

    return tmp / "manifest.json", lambda: load_manifest(tmp)["version"], 1


def read_taxonomy(tmp: Path):
    divisions = taxonomy_module()
    path = tmp / "med_division.json"
    return path, lambda: len(divisions.load_taxonomy(path).divisions), len(shipped_taxonomy()["divisions"])


def taxonomy_module():
    """phase5_subject_training.divisions, or a skip where this checkout has no taxonomy loader yet."""
    return pytest.importorskip("phase5_subject_training.divisions")


def shipped_taxonomy() -> dict:
    path = Path(__file__).resolve().parents[2] / "phase5_subject_training" / "med_division.json"
    if not path.is_file():  # the cases are still generated; the test skips without the loader
        return {"divisions": [{"id": "GENERAL", "name_en": "General", "name_ko": "일반"}]}
    return json.loads(path.read_text(encoding="utf-8"))


CONFIGS = [
    ("adapter_chain.json (model_loading.resolve_adapter_chain)", read_adapter_chain,
     lambda tmp: {"parents": [str((tmp / "parent").resolve())]},
     {("parents",): "list", ("parents", 0): "str"}, [("parents",)]),
    ("adapter_config.json (model_loading.adapter_base_model)", read_adapter_config,
     lambda tmp: {"base_model_name_or_path": "model/base", "peft_type": "LORA", "r": 8},
     {("base_model_name_or_path",): "str"}, [("base_model_name_or_path",)]),
    ("model config.json (check_gpu_memory.resolve_architecture)", read_model_config,
     lambda tmp: {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 1000},
     {("hidden_size",): "int", ("vocab_size",): "int"}, [("hidden_size",), ("vocab_size",)]),
    ("evaluation report (evaluation_report.load_report)", read_eval_report,
     lambda tmp: {"accuracy": 50.0, "correct": 1, "total": 2, "chance": 20.0, "items": [{"id": "a", "correct": True}]},
     {("accuracy",): "int", ("total",): "int", ("items",): "list"}, [("accuracy",), ("items",)]),
    ("download manifest.json (download_all_datasets.load_manifest)", read_download_manifest,
     lambda tmp: {"version": 1, "parts": {}}, {("parts",): "dict"}, [("parts",)]),
    ("med_division.json taxonomy (divisions.load_taxonomy)", read_taxonomy, lambda tmp: shipped_taxonomy(),
     {("divisions",): "list", ("divisions", 0): "dict", ("divisions", 0, "id"): "str",
      ("divisions", 0, "name_ko"): "str"}, [("divisions",), ("divisions", 0, "id")]),
]


def config_params():
    for index, (name, *_rest) in enumerate(CONFIGS):
        _, _, valid, fields, required = CONFIGS[index]
        for number, case in enumerate(bi.config_cases(valid(Path("/probe")), fields, required)):
            yield pytest.param(index, number, id=f"{name.split(' ')[0]}-{case.id}",
                               marks=pytest.mark.fault("bad input (config file)", case.fault, name))


@pytest.mark.parametrize(("index", "number"), list(config_params()))
def test_config_file_handles_broken_input(index, number, tmp_path, record_property):
    from script.check_gpu_memory import UnknownArchitectureError

    name, setup, valid, fields, required = CONFIGS[index]
    path, read, expected = setup(tmp_path)
    case = bi.config_cases(valid(tmp_path), fields, required)[number]
    path.write_bytes(case.content)
    try:
        value = read()
    except (DataError, ConfigError, UnknownArchitectureError) as exc:  # TaxonomyError is a DataError
        assert case.expect == bi.ERROR, f"{case.id}: a good file was refused: {exc}"
        assert str(path) in str(exc) or str(path.parent) in str(exc), f"error does not name the file: {exc}"
        record_property("outcome", "error naming path:line" if f"{path}:" in str(exc) else "error naming the file")
        return
    except Exception as exc:
        raise AssertionError(f"{name} crashed on {case.id} with a bare traceback:\n"
                             + "".join(traceback.format_exception(exc))) from None
    assert case.expect == bi.KEEP, f"{case.id}: a broken file was accepted (read {value!r})"
    assert value == expected
    record_property("outcome", "read correctly")


# ---------------------------------------------------------------------------
# The real 16 MB limit, once
# ---------------------------------------------------------------------------
@pytest.mark.fault("bad input", "huge line", "refined JSONL -> trainers (training_data.load_split_records)")
def test_a_line_over_the_real_limit_is_rejected_without_parsing(tmp_path, monkeypatch, record_property):
    monkeypatch.setattr(data_io, "MAX_LINE_BYTES", 16 * 1024 * 1024)
    good = type1_records()
    huge = bi.set_path(good[0], USER_TEXT, "가" * (data_io.MAX_LINE_BYTES // 3 + 10))
    path = tmp_path / "refined" / "type1_text" / "train.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\n".join([bi.dumps(r) for r in good[:20]] + [bi.dumps(huge)] + [bi.dumps(r) for r in good[20:]]))
    outcome = read_trainer_split(tmp_path, path, None)
    assert outcome.rejected_lines == [21]
    assert sorted(outcome.kept) == sorted(r["id"] for r in good)
    record_property("outcome", "counted reject naming path:line")


# ---------------------------------------------------------------------------
# The Korean-proficiency lexicon's --dictionary files (whole-document faults; the lexicon itself needs kiwi)
# ---------------------------------------------------------------------------
def lexicon_document_cases():
    valid = json.dumps(dictionary_entries(), ensure_ascii=False, indent=1).encode("utf-8")
    return [c for c in bi.document_cases(valid, wrong_top=("an object", {"entries": dictionary_entries()}))
            if c.expect == bi.ERROR]


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c.id, marks=pytest.mark.fault("bad input", c.fault,
                                                     "--dictionary of validate_korean_proficiency (load_lexicon)"))
    for c in lexicon_document_cases()])
def test_lexicon_dictionary_files_fail_clearly(case, tmp_path, record_property):
    from script.validate_korean_proficiency import load_lexicon

    path = tmp_path / "dictionary.json"
    path.write_bytes(case.content)
    with pytest.raises(DataError) as raised:
        load_lexicon([path], tmp_path, tmp_path, kiwi=None)
    assert str(path) in str(raised.value)
    record_property("outcome", "error naming path:line" if f"{path}:" in str(raised.value) else "error naming the file")
