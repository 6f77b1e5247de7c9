"""Two or more KorMedMCQA / KMMLU evaluation reports side by side: the ``--compare`` table of
``script/evaluation_report.py`` and the KorMedMCQA sections of its Phase 6 report.

Reads the JSON reports of ``script/validation_kor_med_test.py`` (``load_report``), lines them up
per subset (``compare``): accuracy beside chance with the exact binomial p-value, the paired sign
test and the clustered difference against the first report, each report's controls (majority
letter, question-blind run) and the difference of differences, and writes the markdown
(``markdown``). It sits below both evaluation_report.py and report_sources.py, which read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from script import controls
from script.controls import binomial_tail_at_least, sign_test_two_sided
from script.data_io import DataError, read_json


def load_report(path: Path) -> dict:
    try:
        report = read_json(path)
    except (OSError, ValueError, DataError) as exc:
        raise DataError(f"{path}: cannot read evaluation report ({exc})") from None
    if not isinstance(report, dict):
        raise DataError(f"{path}: not an evaluation report (a JSON {type(report).__name__}, expected an object)")
    for key in ("accuracy", "correct", "total", "chance", "items"):
        if key not in report:
            raise DataError(f"{path}: not an evaluation report (no {key!r}); "
                            "write one with python -m script.validation_kor_med_test")
    for key in ("accuracy", "correct", "total", "chance"):
        if isinstance(report[key], bool) or not isinstance(report[key], (int, float)):
            raise DataError(f"{path}: {key!r} should be a number, found {type(report[key]).__name__}")
    if not isinstance(report["items"], list) or not all(
            isinstance(row, dict) and "id" in row and "correct" in row for row in report["items"]):
        raise DataError(f"{path}: 'items' should be a list of {{\"id\", \"correct\", ...}} objects")
    return report


def describe(report: dict) -> str:
    prompt = report.get("prompt", {}).get("style", "?")
    return f"{report.get('mode', '?')}/{prompt}"


def _controls_of(report: Mapping) -> dict | None:
    """The report's control numbers compare() carries (None for reports written before controls)."""
    block = report.get("controls")
    if not isinstance(block, Mapping):
        return None
    blind = block.get("question_blind") or None
    majority = block.get("majority_letter") or {}
    return {"clusters": block.get("clusters"),
            "accuracy_ci95": (block.get("accuracy") or {}).get("ci95"),
            "majority_letter": {"letter": majority.get("letter"), "accuracy": majority.get("accuracy")},
            "question_blind": {k: blind.get(k) for k in ("how", "accuracy", "correct", "total", "ci95")} if blind else None,
            "vs_question_blind": block.get("vs_question_blind"),
            "acc_norm": (block.get("accuracy_norm") or {}).get("accuracy"),
            "vs_question_blind_norm": block.get("vs_question_blind_norm")}


def _paired_vs_first(first: Mapping, report: Mapping) -> dict:
    """Clustered base->this difference on the shared items and, when both ran the question-blind
    control, the difference of differences (each model's lead over its own control)."""
    first_rows = {row["id"]: row for row in first["items"]}
    rows = [(first_rows[row["id"]], row) for row in report["items"] if row["id"] in first_rows]
    if not rows:
        return {}
    clusters = [str(b.get("cluster") or a.get("cluster") or b["id"]) for a, b in rows]
    out = {"clustered": controls.paired_difference([bool(b["correct"]) for _, b in rows],
                                                   [bool(a["correct"]) for a, _ in rows], clusters)}
    if all("control_correct" in a and "control_correct" in b for a, b in rows):
        out["beyond_control"] = controls.difference_of_differences(
            [bool(b["correct"]) for _, b in rows], [bool(b["control_correct"]) for _, b in rows],
            [bool(a["correct"]) for a, _ in rows], [bool(a["control_correct"]) for a, _ in rows], clusters)
    return out


def compare(reports: Sequence[dict], names: Sequence[str]) -> dict:
    """Rows per subset (overall, then subjects) with each report's accuracy, its controls and the tests."""
    first = reports[0]
    first_items = {row["id"]: bool(row["correct"]) for row in first["items"]}
    columns = []
    for name, report in zip(names, reports):
        items = {row["id"]: bool(row["correct"]) for row in report["items"]}
        column = {
            "name": name,
            "model": report.get("model", {}).get("name"),
            "scoring": describe(report),
            "set": report.get("set", {}).get("name"),
            "accuracy": report["accuracy"],
            "correct": report["correct"],
            "total": report["total"],
            "chance": report["chance"],
            "p_vs_chance": binomial_tail_at_least(report["correct"], report["total"], report["chance"]),
            "per_subject": report.get("per_subject", {}),
            "controls": _controls_of(report),
        }
        if report is not first:
            shared = set(items) & set(first_items)
            paired = bool(shared) and len(shared) == len(items) == len(first_items)
            wins = sum(items[i] and not first_items[i] for i in shared)
            losses = sum(first_items[i] and not items[i] for i in shared)
            column["vs_first"] = {
                "paired": paired,
                "shared_items": len(shared),
                "delta_points": round(100 * (report["accuracy"] - first["accuracy"]), 2),
                "only_this_right": wins,
                "only_first_right": losses,
                "p_sign_test": sign_test_two_sided(wins, losses) if shared else None,
                **_paired_vs_first(first, report),
            }
        columns.append(column)
    subjects = sorted({s for c in columns for s in c["per_subject"]})
    return {"columns": columns, "subjects": subjects}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2g}" if value >= 1e-4 else "<1e-4"


def _ci(versus: Mapping) -> str:
    low, high = versus["ci95_points"]
    return f"{versus['delta_points']:+.1f} ({low:+.1f} to {high:+.1f})"


def control_sentence(column: Mapping, first_name: str | None = None) -> str:
    """One model's accuracy in words, against its controls (and the first model, beyond its control)."""
    text = f"{column['name']} {_pct(column['accuracy'])} ({column['correct']}/{column['total']})"
    found = column.get("controls")
    if not found:
        return text + f"; chance {_pct(column['chance'])} (report has no controls: re-run validation_kor_med_test)"
    text += " — " + controls.vs_control_text(found.get("vs_question_blind"))
    majority = found.get("majority_letter") or {}
    if majority.get("letter"):
        text += f"; majority letter {majority['letter']} {_pct(majority['accuracy'])}; chance {_pct(column['chance'])}"
    beyond = (column.get("vs_first") or {}).get("beyond_control")
    if beyond and first_name:
        text += (f"; its lead over the control is {beyond['delta_points']:+.1f} points vs {first_name}'s "
                 f"(95 % CI {beyond['ci95_points'][0]:+.1f} to {beyond['ci95_points'][1]:+.1f}, "
                 f"p {controls.format_p(beyond.get('p_two_sided'))})")
    return text


def markdown(summary: dict) -> str:
    columns = summary["columns"]
    header = "| subset | chance | " + " | ".join(f"{c['name']} ({c['scoring']})" for c in columns) + " |"
    lines = [header, "|---" * (len(columns) + 2) + "|"]
    cells = [f"{_pct(c['accuracy'])} ({c['correct']}/{c['total']})" for c in columns]
    lines.append(f"| overall | {_pct(columns[0]['chance'])} | " + " | ".join(cells) + " |")
    for subject in summary["subjects"]:
        rows = [c["per_subject"].get(subject) for c in columns]
        chance = next((r["chance"] for r in rows if r), None)
        cells = [f"{_pct(r['accuracy'])} ({r['correct']}/{r['total']})" if r else "-" for r in rows]
        lines.append(f"| {subject} | {_pct(chance)} | " + " | ".join(cells) + " |")
    lines += ["", "| model | accuracy - chance | p (vs chance, one-sided binomial) | vs " + columns[0]["name"]
              + " | p (sign test on items only one got right) |", "|---|---|---|---|---|"]
    for c in columns:
        above = f"{100 * (c['accuracy'] - c['chance']):+.1f} points"
        versus = c.get("vs_first")
        if versus:
            note = "" if versus["paired"] else " (different items: unpaired)"
            delta = (f"{versus['delta_points']:+.1f} points ({versus['only_this_right']} gained, "
                     f"{versus['only_first_right']} lost){note}")
            p_pair = _p(versus["p_sign_test"])
        else:
            delta, p_pair = "-", "-"
        lines.append(f"| {c['name']} | {above} | {_p(c['p_vs_chance'])} | {delta} | {p_pair} |")
    with_controls = [c for c in columns if c.get("controls")]
    if with_controls:
        lines += ["", "Controls (points with 95 % CIs clustered over items sharing their right answer; "
                      "question-blind = the same model with the questions swapped between items):", "",
                  "| model | accuracy (95 % CI) | majority letter | question-blind | vs question-blind, points | p "
                  f"| vs {columns[0]['name']}, clustered | beyond the control vs {columns[0]['name']} | p |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in with_controls:
            found = c["controls"]
            ci = found.get("accuracy_ci95") or [None, None]
            blind, versus = found.get("question_blind"), found.get("vs_question_blind")
            paired = c.get("vs_first") or {}
            clustered, beyond = paired.get("clustered"), paired.get("beyond_control")
            majority = found.get("majority_letter") or {}
            lines.append("| " + " | ".join([
                c["name"], f"{_pct(c['accuracy'])} ({_pct(ci[0])}–{_pct(ci[1])})",
                f"{majority.get('letter')} {_pct(majority.get('accuracy'))}" if majority.get("letter") else "-",
                f"{_pct(blind['accuracy'])} ({blind['how']})" if blind else "not run",
                _ci(versus) if versus else "-", controls.format_p(versus.get("p_two_sided")) if versus else "-",
                _ci(clustered) if clustered else "-", _ci(beyond) if beyond else "-",
                controls.format_p(beyond.get("p_two_sided")) if beyond else "-"]) + " |")
        lines += [""] + [f"- {control_sentence(c, columns[0]['name'] if c is not columns[0] else None)}"
                         for c in columns]
    return "\n".join(lines) + "\n"
