"""evaluation_report: exact tests against hand-computed values, paired comparison, CLI output.

    python -m pytest tests/test_evaluation_report.py -q
"""

import json
import math

import pytest

from script import controls
from script import evaluation_report as er


def test_binomial_tail_matches_a_direct_sum():
    n, p = 12, 0.2
    for k in range(0, n + 2):
        direct = sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))
        assert controls.binomial_tail_at_least(k, n, p) == pytest.approx(direct, rel=1e-9, abs=1e-15)
    assert controls.binomial_tail_at_least(5, 10, 0.5) == pytest.approx(638 / 1024)


def test_sign_test_is_two_sided_and_symmetric():
    assert controls.sign_test_two_sided(3, 0) == pytest.approx(0.25)
    assert controls.sign_test_two_sided(0, 3) == pytest.approx(0.25)
    assert controls.sign_test_two_sided(4, 4) == 1.0
    assert controls.sign_test_two_sided(0, 0) == 1.0


def fake_report(correct_ids, n=10, name="m", subjects=("doctor",), chance=0.2, dataset="kormedmcqa", adapters=()):
    """An evaluation report in validation_kor_med_test.py's shape; item i belongs to subjects[i % len]."""
    items = [{"id": f"q{i}", "correct": f"q{i}" in correct_ids, "subject": subjects[i % len(subjects)]}
             for i in range(n)]
    correct = sum(row["correct"] for row in items)
    per_subject = {}
    for subject in subjects:
        rows = [row for row in items if row["subject"] == subject]
        hits = sum(row["correct"] for row in rows)
        per_subject[subject] = {"accuracy": hits / len(rows), "correct": hits, "total": len(rows), "chance": chance}
    return {"accuracy": correct / n, "correct": correct, "total": n, "chance": chance, "mode": "letter",
            "prompt": {"style": "train02"}, "model": {"name": name, "adapters": list(adapters)},
            "set": {"name": "guide604" if dataset == "kormedmcqa" else "kmmlu_medical_test", "dataset": dataset},
            "per_subject": per_subject, "per_division": {}, "items": items}


def with_controls(report, control_ids):
    """Add what validation_kor_med_test.py writes with --control swap: per-item control results, the block."""
    for row in report["items"]:
        row["control_correct"] = row["id"] in control_ids
        row["cluster"] = f"gold:{row['id']}"
    correct = [row["correct"] for row in report["items"]]
    blind = [row["control_correct"] for row in report["items"]]
    clusters = [row["cluster"] for row in report["items"]]
    report["controls"] = {"clusters": len(clusters), "accuracy": {"ci95": [0.1, 0.6]},
                          "majority_letter": {"letter": "D", "accuracy": 0.3},
                          "question_blind": {"how": "swap", "accuracy": sum(blind) / len(blind), "correct": sum(blind),
                                             "total": len(blind), "ci95": [0.0, 0.5]},
                          "vs_question_blind": controls.paired_difference(correct, blind, clusters)}
    return report


def test_compare_judges_each_model_against_its_question_blind_control(tmp_path):
    base = with_controls(fake_report({"q0", "q1"}, name="base", n=20), {"q0", "q5"})
    # final gains 6 items, but its control gains 4 of them too: 2 items beyond the control
    final = with_controls(fake_report({"q0", "q1", "q2", "q3", "q4", "q6", "q7", "q8"}, name="final", n=20),
                          {"q0", "q2", "q3", "q4", "q5", "q6"})
    summary = er.compare([base, final], ["base", "final"])
    last = summary["columns"][1]
    assert last["controls"]["vs_question_blind"]["delta_points"] == pytest.approx(10.0)
    assert last["vs_first"]["clustered"]["delta_points"] == pytest.approx(30.0)
    assert last["vs_first"]["beyond_control"]["delta_points"] == pytest.approx(10.0)  # (8-6) - (2-2) of 20
    text = er.markdown(summary)
    assert "final 40.0% (8/20) — above its question-blind control by 10.0 points" in text
    assert "| final | 40.0% (10.0%–60.0%) | D 30.0% | 30.0% (swap) | +10.0 (" in text
    assert "its lead over the control is +10.0 points vs base's" in text
    row = er._evaluation_headline("KorMedMCQA", summary)
    assert row["result"] == "40.0% (8/20)" and row["reference"].startswith("above its question-blind control by 10.0")
    assert "beyond the control +10.0 (" in row["reference"]


def test_compare_counts_gained_and_lost_items_by_id(tmp_path):
    base = fake_report({"q0", "q1"}, name="base")
    final = fake_report({"q1", "q2", "q3", "q4", "q5"}, name="final")
    summary = er.compare([base, final], ["base", "final"])
    versus = summary["columns"][1]["vs_first"]
    assert versus["paired"] and versus["only_this_right"] == 4 and versus["only_first_right"] == 1
    assert versus["delta_points"] == 30.0
    assert versus["p_sign_test"] == pytest.approx(controls.sign_test_two_sided(4, 1))
    assert summary["columns"][1]["p_vs_chance"] == pytest.approx(controls.binomial_tail_at_least(5, 10, 0.2))

    paths = []
    for name, report in (("base", base), ("final", final)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(report), encoding="utf-8")
        paths.append(str(path))
    out = tmp_path / "summary.md"
    assert er.main(["--compare", *paths, "--names", "base", "final", "--output", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "| overall | 20.0% | 20.0% (2/10) | 50.0% (5/10) |" in text
    assert "+30.0 points (4 gained, 1 lost)" in text
    assert json.loads(out.with_suffix(".json").read_text())["columns"][0]["name"] == "base"


def test_a_file_that_is_not_a_report_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}', encoding="utf-8")
    assert er.main(["--compare", str(bad)]) == 2
    assert "not an evaluation report" in capsys.readouterr().err


def test_report_mode_flags_do_not_mix_with_compare(tmp_path):
    with pytest.raises(SystemExit):
        er.parse_args(["--compare", str(tmp_path / "a.json"), "--run-evals"])
    with pytest.raises(SystemExit):
        er.parse_args(["--compare", str(tmp_path / "a.json"), "--model", "tiny"])
    assert er.parse_args([]).model == "tiny" and er.parse_args([]).compare is None  # no --compare: report mode
