"""Checks for the synthetic sample data in data/sample and its generator.

Run: .venv/bin/python -m pytest tests/test_sample_data.py
"""

from __future__ import annotations

import os

# Must be set before `datasets` is imported: its config reads them at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json  # noqa: E402
import re  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from datasets import load_dataset  # noqa: E402

from script.embedded import make_sample_data  # noqa: E402
from script.embedded.sample_knowledge import CONDITIONS, DIVISIONS, SPECIALTIES, Condition  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = REPO_ROOT / "data" / "sample"

KMM_COLUMNS = ["subject", "year", "period", "q_number", "question", "A", "B", "C", "D", "E", "answer", "cot"]
KMMLU_COLUMNS = ["question", "answer", "A", "B", "C", "D", "Category", "Human Accuracy"]
KMM_SPLITS = ["train", "dev", "test", "fewshot"]
KMMLU_SPLITS = ["train", "dev", "test"]
KMCQA_COLUMNS = ["question", "option1", "option2", "option3", "option4", "answer_id"]

# hub id -> config -> (splits, upstream columns in order)
EXPECTED: dict[str, dict[str, tuple[list[str], list[str]]]] = {
    "ChuGyouk/Asan-AMC-Healthinfo": {"default": (["train"], ["instruction", "input", "output"])},
    "ChuGyouk/HealthSearchQA-ko": {"default": (["train"], ["question_ko", "answer_ko"])},
    "ChuGyouk/AI_healthcare_QA": {"default": (["train"], ["question", "answer"])},
    # the hub's current layout: no default config; kcd8_* have test only, atc_* dev and test
    "ChuGyouk/KorMedConceptsQA": {
        **{f"kcd8_{level}": (["test"], KMCQA_COLUMNS) for level in ("easy", "medium", "hard", "merged")},
        **{f"atc_{level}": (["dev", "test"], KMCQA_COLUMNS) for level in ("easy", "medium", "hard")}},
    "ChuGyouk/KoMedInstruct-52k": {"default": (["train"], ["instruction", "input", "output"])},
    "ChuGyouk/GenMedGPT-5k-ko": {"default": (["train"], ["instruction", "input", "output"])},
    "ChuGyouk/medical-o1-reasoning-SFT-Ko": {"default": (["train"], ["Question", "Complex_Cot", "Response"])},
    "ChuGyouk/ChainofDiagnosis-Ko": {"default": (["train"], ["question", "chain", "diagnosis"])},
    "sean0042/KorMedMCQA": {cfg: (KMM_SPLITS, KMM_COLUMNS) for cfg in ["doctor", "nurse", "pharm", "dentist"]},
    "ChuGyouk/MedQA": {"default": (["train", "test"], [
        "question", "options", "answer", "answer_idx", "question_ko", "A_ko", "B_ko", "C_ko", "D_ko"])},
    "ChuGyouk/MedQA-Evol-Korean": {"default": (["train"], ["input", "output"])},
    "snuh/KorMedLawQA": {"default": (["train"], ["question", "options", "answer"])},
    "HAERAE-HUB/KMMLU": {cfg: (KMMLU_SPLITS, KMMLU_COLUMNS) for cfg in ["Health", "Biology", "Psychology"]},
    "allenai/c4": {"ko": (["train"], ["text", "timestamp", "url"])},
    "heegyu/namuwiki": {"default": (["train"], ["title", "text", "contributors", "namespace"])},
    "wikimedia/wikipedia": {"20231101.ko": (["train"], ["id", "url", "title", "text"])},
    "local/01_medical_dict": {cfg: (["train"], ["term", "definition"]) for cfg in ["medical", "animal", "char"]},
}
LOAD_CASES = [(hub_id, cfg) for hub_id, configs in EXPECTED.items() for cfg in configs]


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def kmm_rows(config: str, split: str) -> list[dict]:
    return read_jsonl(SAMPLE / "sean0042" / "KorMedMCQA" / "data" / config / f"{split}.jsonl")


def all_kmm_rows() -> list[dict]:
    return [r for cfg in ["doctor", "nurse", "pharm", "dentist"] for s in KMM_SPLITS for r in kmm_rows(cfg, s)]


@pytest.fixture(scope="session")
def hf_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A private datasets cache so stale caches elsewhere cannot mask a broken file."""
    return str(tmp_path_factory.mktemp("hf_cache"))


# --------------------------------------------------------------------------- loading and schema

@pytest.mark.parametrize(("hub_id", "config"), LOAD_CASES, ids=[f"{h}:{c}" for h, c in LOAD_CASES])
def test_loads_with_upstream_columns(hub_id: str, config: str, hf_cache: str) -> None:
    splits, columns = EXPECTED[hub_id][config]
    loaded = load_dataset(str(SAMPLE / hub_id), config, cache_dir=hf_cache)
    assert sorted(loaded) == sorted(splits)
    for split in splits:
        ds = loaded[split]
        assert ds.column_names == columns, f"{hub_id}/{config}/{split}: expected {columns}, found {ds.column_names}"
        assert len(ds) > 0


def test_registry_matches_the_pinned_hub_layout() -> None:
    """script/sources.py reads each hub source with exactly the configs and splits pinned above, and
    every column it expects is one the mirror (the hub's schema) has."""
    from script.sources import SOURCES, spellings

    for source in SOURCES:
        if source.is_local:
            continue
        pinned = EXPECTED[source.hub_id]
        assert sorted(source.parts()) == sorted((c, s) for c, (splits, _) in pinned.items() for s in splits), \
            source.name
        for config, (_, columns) in pinned.items():
            for column in source.columns:
                assert any(name in columns for name in spellings(column)), f"{source.name}/{config}: {column}"


def test_every_dataset_dir_is_declared() -> None:
    """No dataset directory is left untested, and each README says the data is synthetic."""
    readmes = {p.parent.relative_to(SAMPLE).as_posix() for p in SAMPLE.glob("*/*/README.md")}
    assert readmes == set(EXPECTED)
    for hub_id in EXPECTED:
        assert "synthetic" in (SAMPLE / hub_id / "README.md").read_text(encoding="utf-8").lower()
    top = (SAMPLE / "README.md").read_text(encoding="utf-8")
    assert "SYNTHETIC" in top and "NOT medical advice" in top


# --------------------------------------------------------------------------- MCQ rules

def test_kormedmcqa_counts_years_and_cot() -> None:
    doctor_eval = sum(len(kmm_rows("doctor", s)) for s in ["dev", "test", "fewshot"])
    assert doctor_eval == 604  # rows; 599 questions, since the fewshot rows repeat dev rows
    assert len(kmm_rows("doctor", "train")) == 400
    for cfg in ["nurse", "pharm", "dentist"]:
        assert [len(kmm_rows(cfg, s)) for s in KMM_SPLITS] == [80, 30, 60, 5]
    for cfg in ["doctor", "nurse", "pharm", "dentist"]:
        for split in KMM_SPLITS:
            for r in kmm_rows(cfg, split):
                assert r["subject"] == cfg
                assert isinstance(r["answer"], int) and 1 <= r["answer"] <= 5
                assert (r["cot"] != "") == (split == "fewshot")
                if split == "train":
                    assert r["year"] <= 2020
                elif split in ("dev", "fewshot"):
                    assert r["year"] == 2021
                elif split == "test":
                    assert 2022 <= r["year"] <= 2024


def test_kormedmcqa_fewshot_rows_are_dev_rows_with_cot() -> None:
    """As upstream: each config's five fewshot rows are questions of its dev split, with cot."""
    for cfg in ["doctor", "nurse", "pharm", "dentist"]:
        dev = [{k: v for k, v in r.items() if k != "cot"} for r in kmm_rows(cfg, "dev")]
        fewshot = kmm_rows(cfg, "fewshot")
        assert len(fewshot) == 5 and all(r["cot"] for r in fewshot)
        assert all({k: v for k, v in r.items() if k != "cot"} in dev for r in fewshot)


def test_kormedconceptsqa_rows_are_four_option_mcqs() -> None:
    for path in sorted((SAMPLE / "ChuGyouk" / "KorMedConceptsQA" / "data").rglob("*.jsonl")):
        for r in read_jsonl(path):
            options = [r[f"option{i}"] for i in range(1, 5)]
            assert len(set(options)) == 4 and r["answer_id"] in "ABCD", path


def test_kormedmcqa_stems_unique_and_options_distinct() -> None:
    rows = [r for r in all_kmm_rows() if not r["cot"]]  # fewshot rows repeat dev rows (above)
    stems = Counter(r["question"] for r in rows)
    assert [q for q, n in stems.items() if n > 1] == []
    for r in rows:
        assert len({r[k] for k in "ABCDE"}) == 5


def test_kormedmcqa_gold_positions_spread() -> None:
    letters = Counter(r["answer"] for r in all_kmm_rows())
    assert set(letters) == {1, 2, 3, 4, 5}
    assert min(letters.values()) > 0.12 * sum(letters.values())


def _field_values(c: Condition) -> set[str]:
    return {c.treatment, c.key_test, c.specialty, *c.symptoms}


def test_kormedmcqa_gold_consistent_with_table() -> None:
    """Gold = the condition whose findings are all in the stem, or a field of the named condition;
    and no other option is also right for that same question."""
    for r in all_kmm_rows():
        q = r["question"]
        options = [r[k] for k in "ABCDE"]
        gold = options[r["answer"] - 1]
        wrong = [o for o in options if o != gold]
        by_findings = [c for c in CONDITIONS if c.ko == gold and all(s in q for s in c.symptoms)]
        named = [c for c in CONDITIONS if c.ko in q and gold in _field_values(c)]
        assert by_findings or named, f"gold {gold!r} not supported by the table: {q}"
        for c in by_findings:
            rivals = [d.ko for d in CONDITIONS if d.ko in wrong and all(s in q for s in d.symptoms)]
            assert rivals == [], q
        for c in named:
            field = next(f for f in ("treatment", "key_test", "specialty") if getattr(c, f) == gold) \
                if gold in {c.treatment, c.key_test, c.specialty} else "symptoms"
            right = set(c.symptoms) if field == "symptoms" else {getattr(c, field)}
            assert not right & set(wrong), q


def test_kormedmcqa_train_and_eval_wordings_differ() -> None:
    """Train stems never use an eval wording (a near-duplicate filter must keep them)."""
    eval_markers = ["진단으로 옳은 것은", "진단으로 가장 적절한 것은", "치료로 옳은 것은", "가장 유용한 검사는",
                    "검사로 옳은 것은", "증상으로 옳은 것은", "나타날 수 있는 소견은", "담당하는 전문과는",
                    "이에 해당하는 것은", "조치로 옳은 것은", "근거로 옳은 것은", "상황으로 옳은 것은"]
    for cfg in ["doctor", "nurse", "pharm", "dentist"]:
        for r in kmm_rows(cfg, "train"):
            assert not any(m in r["question"] for m in eval_markers), r["question"]
        for split in ["dev", "test", "fewshot"]:
            for r in kmm_rows(cfg, split):
                assert any(m in r["question"] for m in eval_markers), r["question"]


def test_kmmlu_counts_and_answers() -> None:
    counts = {"Health": [40, 5, 60], "Biology": [20, 5, 30], "Psychology": [20, 5, 30]}
    for cfg, expected in counts.items():
        got = []
        for split in KMMLU_SPLITS:
            rows = read_jsonl(SAMPLE / "HAERAE-HUB" / "KMMLU" / "data" / cfg / f"{split}.jsonl")
            got.append(len(rows))
            for r in rows:
                assert isinstance(r["answer"], int) and 1 <= r["answer"] <= 4
                assert isinstance(r["Human Accuracy"], float)
                assert len({r[k] for k in "ABCD"}) == 4
        assert got == expected


def test_other_mcq_sources() -> None:
    medqa = read_jsonl(SAMPLE / "ChuGyouk" / "MedQA" / "medqa_edited_train.jsonl")
    medqa += read_jsonl(SAMPLE / "ChuGyouk" / "MedQA" / "medqa_edited_test.jsonl")
    for r in medqa:
        assert sorted(r["options"]) == ["A", "B", "C", "D"]
        assert r["options"][r["answer_idx"]] == r["answer"]
        assert len(set(r["options"].values())) == 4
    law = read_jsonl(SAMPLE / "snuh" / "KorMedLawQA" / "data" / "default" / "train.jsonl")
    ethics_actions = {c.treatment for c in CONDITIONS if c.kind == "ethics"}
    assert all(len(r["options"]) == 5 and r["answer"] in "ABCDE" for r in law)
    assert any(r["options"]["ABCDE".index(r["answer"])] in ethics_actions for r in law)
    evol = read_jsonl(SAMPLE / "ChuGyouk" / "MedQA-Evol-Korean" / "data" / "default" / "train.jsonl")
    for r in evol:
        lines = r["input"].split("\n")
        assert [ln[:2] for ln in lines[-5:]] == ["A.", "B.", "C.", "D.", "E."]
        m = re.match(r"정답: ([A-E])\. (.+)\n\n해설: .+", r["output"])
        assert m and lines[-5 + "ABCDE".index(m.group(1))] == f"{m.group(1)}. {m.group(2)}"


# --------------------------------------------------------------------------- learnability of the facts

def _source_text(hub_id: str, columns: list[str]) -> str:
    rows = read_jsonl(next((SAMPLE / hub_id).rglob("*.jsonl")))
    return "\n".join(str(r[c]) for r in rows for c in columns)


def test_training_sources_state_every_fact() -> None:
    type1_ids = ["ChuGyouk/Asan-AMC-Healthinfo", "ChuGyouk/HealthSearchQA-ko", "ChuGyouk/AI_healthcare_QA",
                 "ChuGyouk/KoMedInstruct-52k", "ChuGyouk/GenMedGPT-5k-ko"]
    type1 = "\n".join(_source_text(h, EXPECTED[h]["default"][1]) for h in type1_ids)
    plain = "\n".join(_source_text(h, ["text"]) for h in ["allenai/c4", "heegyu/namuwiki", "wikimedia/wikipedia"])
    for corpus in (type1, plain):
        for c in CONDITIONS:
            for fact in (c.ko, c.key_test, c.treatment, *c.symptoms):
                assert fact in corpus, f"{c.id}: {fact!r} missing"


def test_reasoning_sources_mix_long_and_short_answers() -> None:
    for hub_id, col in [("ChuGyouk/medical-o1-reasoning-SFT-Ko", "Response"),
                        ("ChuGyouk/ChainofDiagnosis-Ko", "diagnosis")]:
        answers = [r[col] for r in read_jsonl(next((SAMPLE / hub_id).rglob("*.jsonl")))]
        long = sum(len(a) > 150 for a in answers)
        short = sum(len(a) < 30 for a in answers)
        assert long + short == len(answers)
        assert 0.35 < long / len(answers) < 0.65


def test_plain_text_is_mostly_hangul() -> None:
    for hub_id in ["allenai/c4", "heegyu/namuwiki", "wikimedia/wikipedia"]:
        text = _source_text(hub_id, ["text"])
        letters = [ch for ch in text if ch.isalpha()]
        hangul = sum("가" <= ch <= "힣" for ch in letters)
        assert hangul / len(letters) > 0.9, hub_id


def test_dictionaries() -> None:
    base = SAMPLE / "local" / "01_medical_dict"
    medical = read_jsonl(base / "korean_medical_dict.jsonl")
    assert len(medical) >= 150
    assert {c.ko for c in CONDITIONS} <= {r["term"] for r in medical}
    not_english_first = [r for r in medical if not re.match(r"[A-Za-z0-9(]+[^가-힣]*\. ", r["definition"])]
    assert not_english_first == []  # "English name. Korean explanation"
    assert len(read_jsonl(base / "korean_animal_medical_dict.jsonl")) >= 30
    chars = read_jsonl(base / "char_dict.jsonl")
    assert {"↑", "↓", "±", "≥", "≤", "℃", "♂", "♀"} <= {r["term"] for r in chars}


# --------------------------------------------------------------------------- held-out knowledge

def _generator_records() -> tuple[dict[str, set], dict[str, set], set]:
    """(evaluation tuples per set, MCQ-shaped training tuples per source, steering tuples), each a
    (condition, kind, gold) tuple from the generator's own provenance records; the steering rows
    are the ones the toolkit's own steering draw takes from the shipped files."""
    from script.kormedmcqa import ItemSource, build_sets
    from script.sources import SOURCES

    datasets = {d.hub_id: d for d in make_sample_data.build_datasets(0)}
    as_tuple = lambda p: (p["condition"], p["kind"], p["gold"])  # noqa: E731
    kmm = datasets["sean0042/KorMedMCQA"].provenance
    steer_items = build_sets(ItemSource(from_dir=SAMPLE))["steer"]
    steer_rows = {(i["config"], i["meta"]["row"]) for i in steer_items}
    steering = {as_tuple(kmm[(config, "train")][row]) for config, row in steer_rows}
    assert len(steering) > 0 and len(steer_rows) == len(steer_items)
    evaluation: dict[str, set] = {}
    training: dict[str, set] = {}
    registry = {s.hub_id: s for s in SOURCES if s.hub_id}
    for hub_id, dataset in datasets.items():
        for (config, split), rows in dataset.provenance.items():
            source = registry[hub_id]
            if source.is_evaluation_split(split):
                evaluation.setdefault(f"{hub_id}/{split}", set()).update(as_tuple(p) for p in rows if p)
                continue
            train_rows = [p for row, p in enumerate(rows) if p and (hub_id != "sean0042/KorMedMCQA"
                                                                    or (config, row) not in steer_rows)]
            training.setdefault(hub_id, set()).update(as_tuple(p) for p in train_rows)
    return evaluation, training, steering


def test_evaluation_knowledge_is_held_out_of_every_mcq_training_source() -> None:
    """No (condition, question kind, gold) of an evaluation set or of the steering set is asked by an
    MCQ-shaped training row, and not even the conditions are shared: held-out facts are text-only."""
    evaluation, training, steering = _generator_records()
    assert {"sean0042/KorMedMCQA/dev", "sean0042/KorMedMCQA/test", "sean0042/KorMedMCQA/fewshot",
            "HAERAE-HUB/KMMLU/test", "ChuGyouk/MedQA/test"} <= set(evaluation)
    assert {"sean0042/KorMedMCQA", "ChuGyouk/MedQA", "ChuGyouk/MedQA-Evol-Korean", "snuh/KorMedLawQA",
            "ChuGyouk/KorMedConceptsQA", "ChuGyouk/medical-o1-reasoning-SFT-Ko", "ChuGyouk/ChainofDiagnosis-Ko"} \
        <= set(training)
    trained = set().union(*training.values())
    trained_conditions = {t[0] for t in trained}
    for name, tuples in evaluation.items():
        if name == "ChuGyouk/MedQA/test":
            continue  # MedQA's own benchmark split: never refined, asks about train conditions
        assert not tuples & trained, name
        assert not {t[0] for t in tuples} & trained_conditions, name
        assert not {t[0] for t in tuples} & {t[0] for t in steering}, f"{name} shares conditions with steering"
    assert not steering & trained and not {t[0] for t in steering} & trained_conditions


def test_held_out_facts_are_in_the_text_sources() -> None:
    """What the evaluation asks about can be learnt from text: every fact of every held-out condition
    is in the plain-text corpora and in the medical dictionary."""
    from script.embedded.sample_knowledge import GROUP_EVAL, GROUP_STEER, conditions_in

    plain = "\n".join(_source_text(h, ["text"]) for h in ["allenai/c4", "heegyu/namuwiki", "wikimedia/wikipedia"])
    dictionary = "\n".join(r["definition"] for r in
                           read_jsonl(SAMPLE / "local" / "01_medical_dict" / "korean_medical_dict.jsonl"))
    held_out = conditions_in(GROUP_EVAL, GROUP_STEER)
    assert len(held_out) >= 60
    for c in held_out:
        for fact in (c.ko, c.key_test, c.treatment, *c.symptoms):
            assert fact in plain and fact in dictionary, f"{c.id}: {fact!r}"


# --------------------------------------------------------------------------- generator and table

def test_generator_is_deterministic_and_data_is_current(tmp_path: Path) -> None:
    out = tmp_path / "sample"
    assert make_sample_data.main(["--out", str(out), "--seed", "0"]) == 0
    generated = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    tracked = {p.relative_to(SAMPLE).as_posix(): p.read_bytes() for p in SAMPLE.rglob("*") if p.is_file()}
    assert sorted(generated) == sorted(tracked)
    stale = [rel for rel in generated if generated[rel] != tracked[rel]]
    assert stale == [], "data/sample is stale: run python -m script.embedded.make_sample_data"


def test_sample_size_is_small() -> None:
    assert sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file()) < 4_000_000


def test_knowledge_table_sanity() -> None:
    assert len(CONDITIONS) >= 100
    assert len({c.id for c in CONDITIONS}) == len(CONDITIONS)
    assert len({frozenset(c.symptoms) for c in CONDITIONS}) == len(CONDITIONS)
    assert {c.top_division for c in CONDITIONS} == set(DIVISIONS)
    for c in CONDITIONS:
        assert 2 <= len(c.symptoms) <= 4, c.id
        assert c.specialty in SPECIALTIES, c.id
        assert c.kind in {"disease", "ethics"}
        if c.kind == "disease":  # English terms feed MedQA and the dictionary
            assert set(c.symptoms) | {c.key_test} <= set(c.en_terms), c.id
    specialties = {c.specialty for c in CONDITIONS}
    assert {"소아청소년과", "산부인과", "정신건강의학과", "피부과", "비뇨의학과", "안과", "이비인후과", "정형외과"} <= specialties
