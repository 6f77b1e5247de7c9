"""Phase 6 report (evaluation_report.py report mode, report_sources.py): every section and its
numbers from a pipeline-like directory, "not run" with commands for what is missing, unreadable
files flagged, charts written, and --run-evals producing the evaluations with the real writers.

    python -m pytest tests/test_phase6_report.py -q
"""

import json

import pytest

from script import evaluation_report as er
from script import report_sources
from script.data_io import atomic_write_jsonl
from script.training_config import SAMPLE_DATA_DIR
from tests.test_evaluation_report import fake_report
from tests.test_merge_and_export import random_adapter

PNG = b"\x89PNG\r\n\x1a\n"


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


def training_info(metrics, **extra):
    """A training_info.json in training_utils.write_training_info's shape (the parts the report reads)."""
    return {"script": "train", "finished_at": "2026-01-01T00:00:00+00:00", "metrics": metrics,
            "loss_history": [{"step": 1, "loss": 4.0}, {"step": 10, "loss": 3.0}, {"step": 20, "loss": 2.5}], **extra}


@pytest.fixture()
def pipeline(tmp_path):
    """model/ and logs/ of a run of 'tiny' with known numbers, in the shapes their writers use."""
    models, logs = tmp_path / "model", tmp_path / "logs"
    subjects = ("doctor", "nurse")
    write_json(logs / "kormedmcqa_tiny_base.json", fake_report({"q0", "q1"}, subjects=subjects, name="tiny"))
    write_json(logs / "kormedmcqa_tiny_final.json",
               fake_report({"q1", "q2", "q3", "q4", "q5"}, subjects=subjects, adapters=[str(models / "02_trained/tiny/final")]))
    write_json(logs / "kmmlu_tiny_final.json",
               fake_report({"q0", "q1", "q2"}, n=8, subjects=("Health", "Biology"), chance=0.25, dataset="kmmlu",
                           adapters=[str(models / "02_trained/tiny/final")]))
    write_json(logs / "eval" / "official_tiny_letter.json",
               fake_report({"q0"}, n=4, adapters=[str(models / "type3_word/tiny/final")]))
    write_json(logs / "eval" / "guide604_other-model_letter.json", fake_report({"q0"}, n=4, name="other-model"))

    write_json(models / "00_trained/tiny/training_info.json", training_info(
        {"global_step": 36, "train_loss": 2.5, "validation_perplexity_before": 25.0, "validation_perplexity": 18.5}))
    write_json(models / "01_trained/tiny/training_info.json", training_info(
        {"global_step": 20, "train_loss": 3.5, "steer_accuracy_before": 10.0, "steer_accuracy": 15.0},
        validation_history=[{"step": 10, "accuracy": 10.0}, {"step": 20, "accuracy": 15.0}],
        plain_text_history=[{"step": 0, "perplexity": 19.5}, {"step": 10, "perplexity": 21.0}]))
    write_json(models / "02_trained/tiny/training_info.json", training_info(
        {"global_step": 30, "train_loss": 1.5, "steer_accuracy_before": 10.0, "steer_accuracy": 35.0},
        target={"metric": "steer_accuracy", "op": ">=", "value": 90.0, "met": False},
        validation_history=[{"step": 15, "accuracy": 20.0}, {"step": 30, "accuracy": 35.0}]))
    write_json(models / "type1_text/tiny/training_info.json", training_info(
        {"global_step": 8, "train_loss": 1.2, "validation_perplexity_before": 12.0, "validation_perplexity": 2.5},
        target={"metric": "validation_perplexity", "op": "<", "value": 3.0, "met": True}))
    write_json(models / "type3_word/tiny/training_info.json", training_info(
        {"global_step": 8, "train_loss": 0.9, "validation_accuracy_before": 0.2, "validation_accuracy": 0.5},
        target={"metric": "validation_accuracy", "op": ">=", "value": 0.9, "met": False}))
    write_json(models / "loop_training/tiny/loop_history.json", {
        "target": 90.0, "max_loops": 2, "target_reached": False, "stopped_at_loop": 2,
        "stop_reason": "--max-loops 2 done without reaching 90%", "best_loop": 2, "best_accuracy": 40.0,
        "initial_accuracy": 20.0, "history": [{"loop": 0, "step": 0, "accuracy": 20.0},
                                              {"loop": 1, "step": 10, "accuracy": 30.0},
                                              {"loop": 2, "step": 20, "accuracy": 40.0}],
        "test_sets": {"guide604": {"accuracy": 31.46, "correct": 190, "total": 604, "chance": 20.0}}})
    write_json(models / "probe_focus_training/tiny/final_report.json", {
        "initial_accuracy": 20.0, "final_best_accuracy": 55.5, "last_accuracy": 50.0, "target_accuracy": 90.0,
        "target_reached": False, "stop_reason": "every type exhausted",
        "recommendations": [{"rank": 1, "type": "type3_word", "avg_improvement": 4.2, "total_steps": 40}],
        "history": [{"step": 0, "accuracy": 20.0}, {"step": 5, "accuracy": 55.5}], "test_sets": {}})
    write_json(models / "division_training/type3_word/tiny/division_report.json", {  # the guide's example
        "1.4.1": {"accuracy": 0.65, "count": 234, "avg_loss": 0.8234},
        "2.4.3": {"accuracy": 0.92, "count": 156, "avg_loss": 0.3421}})
    # train_with_divisions.py's output dir is per data folder: the run record beside it names the model.
    phase5 = tmp_path / "phase5_models"
    write_json(phase5 / "type1_text/division_report.json", {
        "2": {"accuracy": 0.85, "count": 12, "avg_loss": 1.5, "mcq_count": 0, "name": "호흡기", "weak": True,
              "weak_reasons": ["avg loss 1.5 > 1.0986"]},
        "OVERALL": {"accuracy": 0.85, "count": 12, "avg_loss": 1.5}})
    write_json(phase5 / "type1_text/training_info.json", {"model": "tiny"})
    write_json(phase5 / "type2_text_reasoning/division_report.json", {"9": {"accuracy": 0.1, "count": 3}})
    write_json(phase5 / "type2_text_reasoning/training_info.json", {"model": "medgemma-4b"})
    return models, logs


def build(models, logs, out, *extra):
    return er.main(["--model", "tiny", "--model-dir", str(models), "--logs-dir", str(logs), "--output", str(out),
                    "--divisions-dir", str(models.parent / "phase5_models"), *extra])


def test_report_has_every_section_its_numbers_and_charts(pipeline, tmp_path, capsys):
    models, logs = pipeline
    out = tmp_path / "report"
    assert build(models, logs, out) == 0
    text = (out / "report.md").read_text(encoding="utf-8")
    assert capsys.readouterr().out.startswith("# Evaluation report: tiny")
    for number, title in enumerate(("KorMedMCQA (the guide's 604 set): ok", "KMMLU-medical: partial",
                                    "Training stages: ok", "Type metrics (the guide's targets): partial",
                                    "Per-division results: ok", "Loop training: ok",
                                    "Probe-and-focus / adaptive training: ok"), 1):
        assert f"## {number}. {title}" in text
    # KorMedMCQA base vs final through the --compare table, per subject
    assert "| overall | 20.0% | 20.0% (2/10) | 50.0% (5/10) |" in text
    assert "| nurse | 20.0% | 20.0% (1/5) | 60.0% (3/5) |" in text
    assert "+30.0 points (4 gained, 1 lost)" in text
    assert "| official_tiny_letter.json | guide604 |" in text and "other-model" not in text
    # KMMLU: the final only; the base is "not run" with the command that writes it
    assert "| overall | 25.0% | 37.5% (3/8) |" in text
    assert "--kmmlu" in text and str(logs / "kmmlu_tiny_base.json") in text
    # training stages and the guide's type targets
    assert "| 00_trained | train_00: plain text | ok | 36 | 2.5 | validation_perplexity 25 -> 18.5 | - |" in text
    assert "steer_accuracy >= 90: not met (35)" in text
    assert "| type1_text | perplexity | < 3 | 12 | 2.5 | met |" in text
    assert "| type3_word | accuracy | >= 0.9 | 0.2 | 0.5 | not met |" in text
    assert "`python -m script.train.train_type2_text_reasoning --model tiny`" in text
    # divisions (the guide's division_report.json shape), loops, probe-and-focus
    assert "| 1.4.1 | 234 | 65.0% | 0.8234 | weak |" in text and "| 2.4.3 | 156 | 92.0% | 0.3421 |  |" in text
    assert "| 2 호흡기 | 12 | 85.0% | 1.5 | weak |" in text  # weak by loss, as the file says
    assert "**phase5_models/type1_text/division_report.json**" in text and "| 9 |" not in text  # other model's
    assert "40.0% (loop 2)" in text and "guide604 31.5% (190/604, chance 20.0%)" in text
    assert "55.5%" in text and "| 1 | type3_word | 4.2 | 40 |" in text

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    statuses = {key: section["status"] for key, section in report["sections"].items()}
    assert statuses == {"kormedmcqa": "ok", "kmmlu": "partial", "training": "ok", "type_metrics": "partial",
                        "divisions": "ok", "loops": "ok", "rounds": "ok"}
    final = report["sections"]["kormedmcqa"]["comparison"]["columns"][1]
    assert final["accuracy"] == 0.5 and final["vs_first"]["only_this_right"] == 4
    assert {h["measure"] for h in report["headline"]} >= {"KorMedMCQA (the guide's 604 set): final",
                                                          "type1_text: perplexity"}
    assert set(report["plots"]) == {"kormedmcqa", "kmmlu", "validation_history", "train_loss", "divisions",
                                    "loops", "rounds"}
    for name in report["plots"].values():
        assert (out / name).read_bytes()[:8] == PNG and f"]({name})" in text


def test_the_pipelines_cloze_pair_is_listed_and_headlined(pipeline, tmp_path):
    """A cloze-scored model's pipeline also writes logs/kormedmcqa_M_{base,final}_cloze.json."""
    models, logs = pipeline
    for role, right in (("base", {"q0"}), ("final", {"q0", "q1", "q2", "q4"})):
        report = fake_report(right, name="tiny", adapters=[str(models / "02_trained/tiny/final")] if role == "final" else [])
        report.update(mode="cloze", prompt={"style": "answer_text"})
        write_json(logs / f"kormedmcqa_tiny_{role}_cloze.json", report)
    out = tmp_path / "report"
    assert build(models, logs, out) == 0
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "| kormedmcqa_tiny_final_cloze.json | guide604 | cloze/answer_text |" in text
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    row = next(h for h in report["headline"] if "cloze form" in h["measure"])
    assert row["result"] == "40.0% (4/10)" and "; base 10.0% (+30.0 (" in row["reference"]
    assert "no controls in the report" in row["reference"]  # these fake reports predate the controls
    assert "Cloze form (each option's text" in text


def test_missing_parts_are_listed_as_not_run_with_their_commands(tmp_path):
    out = tmp_path / "report"
    assert build(tmp_path / "model", tmp_path / "logs", out) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert {s["status"] for s in report["sections"].values()} == {"not run"}
    assert report["plots"] == {} and not list(out.glob("*.png"))
    commands = [item["command"] for item in report["not_run"]]
    assert len(commands) == len(set(commands))  # a missing type trainer is listed once
    text = (out / "report.md").read_text(encoding="utf-8")
    for command in ("make pipeline MODEL=tiny", "make loop MODEL=tiny", "make probe-focus MODEL=tiny",
                    report_sources.eval_command(report_sources.Sources("tiny", tmp_path / "model", tmp_path / "logs"),
                                                "kormedmcqa", "base"),
                    report_sources.DIVISION_COMMAND.format(model="tiny")):
        assert f"`{command}`" in text
    assert "Nothing has run yet for this model" in text


def test_an_unreadable_source_is_flagged_and_fails_the_command(pipeline, tmp_path, capsys):
    models, logs = pipeline
    (models / "02_trained/tiny/training_info.json").write_text("{not json", encoding="utf-8")
    write_json(logs / "kormedmcqa_tiny_base.json", {"hello": 1})
    out = tmp_path / "report"
    assert build(models, logs, out) == 1
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "## 3. Training stages: UNREADABLE" in text and "02_trained/tiny/training_info.json" in text
    assert "not an evaluation report" in text and "| overall | 20.0% | 50.0% (5/10) |" in text  # the rest stands
    assert "kormedmcqa_tiny_base.json" in capsys.readouterr().err


def test_run_evals_writes_the_pipelines_evaluation_files(tiny_models, tmp_path):
    """--run-evals runs validation_kor_med_test.py (the real writer) for what is missing, then reports it."""
    from script.eval_items import read_items_file
    from script.sources import KMMLU_MEDICAL_SUBJECTS

    models, logs = tmp_path / "model", tmp_path / "logs"
    random_adapter(tiny_models["tiny"], models / "02_trained" / "tiny" / "final", seed=5)
    sets = tmp_path / "sets"
    doctor = read_items_file(SAMPLE_DATA_DIR / "sean0042" / "KorMedMCQA" / "data" / "doctor" / "test.jsonl")
    atomic_write_jsonl(sets / "guide604.jsonl", doctor.items[:4])
    raw = tmp_path / "raw"
    for subject in KMMLU_MEDICAL_SUBJECTS:
        rows = (SAMPLE_DATA_DIR / "HAERAE-HUB" / "KMMLU" / "data" / subject / "test.jsonl").read_text(
            encoding="utf-8").splitlines()[:2]
        target = raw / "by_source" / "kmmlu" / subject / "test.jsonl"
        target.parent.mkdir(parents=True)
        target.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "report"
    assert build(models, logs, out, "--run-evals", "--device", "cpu", "--sets-dir", str(sets),
                 "--raw-dir", str(raw)) == 0

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [(e["dataset"], e["role"], e["exit_status"]) for e in report["evaluations_run"]] == [
        ("kormedmcqa", "base", 0), ("kormedmcqa", "final", 0), ("kmmlu", "base", 0), ("kmmlu", "final", 0)]
    for dataset, total, chance in (("kormedmcqa", 4, 0.2), ("kmmlu", 2 * len(KMMLU_MEDICAL_SUBJECTS), 0.25)):
        section = report["sections"][dataset]
        assert section["status"] == "ok"
        final = json.loads((logs / f"{dataset}_tiny_final.json").read_text(encoding="utf-8"))
        assert final["total"] == total and final["chance"] == pytest.approx(chance)
        assert final["mode"] == "letter" and final["prompt"]["style"] == "train02"  # the pipeline's scoring
        assert final["model"]["adapters"][-1] == str(models / "02_trained" / "tiny" / "final")
        column = section["comparison"]["columns"][1]
        assert (column["name"], column["correct"], column["total"]) == ("final", final["correct"], total)
        assert column["vs_first"]["paired"]  # base and final scored on the same items
    assert report_sources.missing_evaluations(report_sources.Sources("tiny", models, logs)) == []
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "| subset | chance | base (letter/train02) | final (letter/train02) |" in text
