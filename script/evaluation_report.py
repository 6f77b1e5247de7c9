"""Compare KorMedMCQA / KMMLU evaluation reports side by side (e.g. the untrained base and the final adapter),
and build one model's Phase 6 report (report mode, below).

    python -m script.evaluation_report --compare logs/kormedmcqa_tiny_base.json logs/kormedmcqa_tiny_final.json \\
        --names base final --output logs/kormedmcqa_tiny_summary.md

Reads the JSON reports written by ``script/validation_kor_med_test.py`` and prints one markdown
table: overall and per-subject accuracy of each report, the chance baseline, and two tests that say
whether a difference is more than noise:

* **vs chance**: the one-sided exact binomial p-value of getting at least that many items right by
  guessing (the chance rate is the report's own, 1/number of options averaged over its items);
* **vs the first report** (paired, when both scored the same items): the exact two-sided sign test
  on the items where exactly one of the two models is right (McNemar's test without the normal
  approximation), and the same difference with a 95 % bootstrap CI and sign-flip p-value clustered
  by the items' ``cluster`` (items sharing their right answer's text; script/controls.py). Items
  are matched by id;
* **vs the question-blind control** (the report's ``controls`` block: the same model, scored the
  same way, with the questions swapped between items): how far each model is above what it gets
  from the options alone, clustered; and, for the second report, the difference of differences
  ``(final - its control) - (base - its control)``: a gain that lifts the control as much as the
  model (the model learnt which option texts look like answers, not the questions) nets out there.
  The headline line of each model says it in words: "above its question-blind control by X points
  (95 % CI a to b)". The majority-letter baseline (the best constant answer) stands beside them.

The markdown goes to stdout and ``--output`` (atomic write), the same numbers as JSON beside it.
Exit status 2 when a report cannot be read; reports of different item sets are compared unpaired,
with a note.

Report mode (``make report``; used when ``--compare`` is not given): everything one model's runs
wrote, in one place (the Phase 6 evaluation report):

    python -m script.evaluation_report --model tiny                 # -> logs/report_tiny/
    python -m script.evaluation_report --model medgemma-4b --run-evals --device cuda

gathers (script/report_sources.py) KorMedMCQA of the base and the final model side by side (the
table above, per subject), KMMLU-medical the same way, every training stage's run record (steps,
loss, each metric before and after, validation history), the guide's target per type, per-division
results, the loop history and the probe-and-focus / adaptive reports, and writes
``<output>/report.md``, ``report.json`` and PNG charts (per-subject accuracy, validation and loss
curves, loop accuracy, division bars). The directory is replaced atomically. A part whose files
do not exist is listed as "not run" with the command that produces it.

``--run-evals`` first runs the missing KorMedMCQA / KMMLU evaluations of the base model and of the
pipeline's final adapter (model/02_trained/<MODEL>/final, when it exists) with the pipeline's own
arguments (letter mode after the model's own reasoning), into the files the pipeline writes
(logs/kormedmcqa_<MODEL>_{base,final}.json, logs/kmmlu_<MODEL>_{base,final}.json). Without it the
report never loads a model and takes a second.

Exit status in report mode: 0 when the report was written; 1 when it was written but a source file
was unreadable or a --run-evals evaluation failed (the report says which); 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from script import controls, report_sources, validation_kor_med_test
from script.data_io import DataError, atomic_write_dir, atomic_write_json, atomic_write_text
from script.report_comparison import _ci, _p, _pct, compare, load_report, markdown
from script.report_sources import WEAK_DIVISION_ACCURACY, Sources
from script.training_config import DEFAULT_MODEL, DIVISIONS_MODEL_DIR, LOG_DIR, MODEL_DIR
from script.training_utils import git_sha

# ===========================================================================
# Report mode: one model's evaluation report (markdown + JSON + charts)
# ===========================================================================
REPORT_VERSION = 1
# Counters beside a measure (how many items/tokens it was taken on): in report.json, not in the table.
COUNT_SUFFIXES = ("_correct", "_total", "_tokens", "_texts", "_records", "_mean_nll")
STATUS_MARK = {"ok": "ok", "partial": "partial", "not run": "not run", "unreadable": "UNREADABLE"}


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _evaluation_headline(title: str, comparison: Mapping) -> dict:
    """The last model of a comparison against its controls and against the first model."""
    last, first = comparison["columns"][-1], comparison["columns"][0]
    found = last.get("controls") or {}
    if found:
        parts = [f"{controls.vs_control_text(found.get('vs_question_blind'))}"]
        majority = found.get("majority_letter") or {}
        if majority.get("letter"):
            parts.append(f"majority letter {majority['letter']} {_pct(majority['accuracy'])}")
    else:
        parts = ["no controls in the report (re-run validation_kor_med_test)"]
    parts.append(f"chance {_pct(last['chance'])}, p {_p(last['p_vs_chance'])} (vs chance)")
    versus = last.get("vs_first")
    if versus:
        text = f"{first['name']} {_pct(first['accuracy'])}"
        clustered, beyond = versus.get("clustered"), versus.get("beyond_control")
        if clustered:
            text += f" ({_ci(clustered)} points, p {controls.format_p(clustered.get('p_two_sided'))}"
            if beyond:
                text += f"; beyond the control {_ci(beyond)}, p {controls.format_p(beyond.get('p_two_sided'))}"
            text += ")"
        parts.append(text)
    return {"measure": f"{title}: {last['name']}", "result": f"{_pct(last['accuracy'])} ({last['correct']}/{last['total']})",
            "reference": "; ".join(parts)}


def headline(sections: Mapping[str, dict]) -> list[dict]:
    """The few numbers a reader looks for first, one row each."""
    rows = []
    for key, part, suffix in (("kormedmcqa", "comparison", ""), ("kmmlu", "comparison", ""),
                              ("kormedmcqa", "cloze_comparison", ", cloze form")):
        comparison = sections[key].get(part)
        if comparison:
            rows.append(_evaluation_headline(f"{sections[key]['title']}{suffix}", comparison))
    for row in sections["type_metrics"]["types"]:
        if row["status"] == "ok":
            met = "-" if row["met"] is None else ("met" if row["met"] else "not met")
            rows.append({"measure": f"{row['type']}: {row['metric']}",
                         "result": f"{_num(row['value'])} (before {_num(row['before'])})",
                         "reference": f"target {row['op']} {row['target']:g}: {met}"})
    for key in ("loops", "rounds"):
        for run in sections[key]["runs"]:
            reached = {True: "reached", False: "not reached"}.get(run.get("reached"), "")
            rows.append({"measure": f"{run['label']}: best steering accuracy",
                         "result": _pct(run.get("best_accuracy")),
                         "reference": f"target {_num(run.get('target_pct'))}% {reached}".rstrip()})
    for table in sections["divisions"]["tables"]:
        weak = [r["division"] for r in table["rows"] if r["weak"]]
        rows.append({"measure": f"weak divisions: {table['source']}",
                     "result": f"{len(weak)} of {len(table['rows'])}",
                     "reference": ", ".join(weak[:8]) + (" ..." if len(weak) > 8 else "")})
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _not_run_lines(section: dict) -> list[str]:
    lines = []
    for error in section["errors"]:
        lines.append(f"- **unreadable**: {error}")
    for item in section["not_run"]:
        lines.append(f"- not run: {item['what']}: `{item['command']}`")
    return lines + [""] if lines else []


def _evaluation_md(section: dict, plot: str | None) -> list[str]:
    lines = []
    if section.get("comparison"):
        lines += [markdown(section["comparison"]).rstrip(), ""]
        lines += [f"Reports: {', '.join(section['comparison']['reports'])}", ""]
    if plot:
        lines += [f"![per-subject accuracy]({plot})", ""]
    if section.get("cloze_comparison"):
        lines += ["Cloze form (each option's text scored as the answer to the question alone):", "",
                  markdown(section["cloze_comparison"]).rstrip(), ""]
    if section["other_reports"]:
        lines += ["Other evaluations of this model (the pipeline's cloze form, logs/eval/):", ""]
        lines += _table(("file", "set", "scoring", "model", "accuracy", "chance", "p vs chance"),
                        [(Path(r["file"]).name, r["set"], r["scoring"], r["model"],
                          f"{_pct(r['accuracy'])} ({r['correct']}/{r['total']})", _pct(r["chance"]),
                          _p(r["p_vs_chance"])) for r in section["other_reports"]]) + [""]
    return lines


def _training_md(section: dict, plots: Mapping[str, str]) -> list[str]:
    rows = []
    for s in section["stages"]:
        if s["status"] != "ok":
            rows.append((s["stage"], s["label"], STATUS_MARK[s["status"]], "-", "-", "-", "-"))
            continue
        changes = "; ".join(f"{p['metric']} {_num(p['before'])} -> {_num(p['after'])}" for p in s["before_after"]
                            if not p["metric"].endswith(COUNT_SUFFIXES))
        target = s["target"]
        target_text = (f"{target.get('metric')} {target.get('op')} {_num(target.get('value'))}: "
                       f"{'met' if target.get('met') else 'not met'} ({_num(target.get('value_reached'))})"
                       if target else "-")
        rows.append((s["stage"], s["label"], "ok", _num(s["global_step"]), _num(s["train_loss"]), changes or "-",
                     target_text))
    lines = _table(("stage", "what", "status", "steps", "train loss", "before -> after", "target"), rows) + [""]
    for name, alt in (("validation_history", "validation history per stage"), ("train_loss", "training loss per stage")):
        if name in plots:
            lines += [f"![{alt}]({plots[name]})", ""]
    return lines


def _type_metrics_md(section: dict) -> list[str]:
    rows = []
    for r in section["types"]:
        if r["status"] == "ok":
            met = "-" if r["met"] is None else ("met" if r["met"] else "not met")
            rows.append((r["type"], r["metric"], f"{r['op']} {r['target']:g}", _num(r.get("before")), _num(r["value"]), met))
        else:
            rows.append((r["type"], r["metric"], f"{r['op']} {r['target']:g}", "-", "-", STATUS_MARK[r["status"]]))
    return _table(("type", "metric", "target", "before training", "after training", "target met"), rows) + [""]


def _divisions_md(section: dict, plot: str | None) -> list[str]:
    lines = []
    for table in section["tables"]:
        lines += [f"**{table['source']}** (weak: as the source marks it, else accuracy below 80 %)", ""]
        lines += _table(("division", "count", "accuracy", "avg loss", "weak"),
                        [(r["division"] + (f" {r['name']}" if r.get("name") else ""), _num(r["count"]),
                          _pct(r["accuracy"]), _num(r["avg_loss"]), "weak" if r["weak"] else "")
                         for r in table["rows"]]) + [""]
    if plot:
        lines += [f"![per-division accuracy]({plot})", ""]
    return lines


def _test_sets_text(test_sets: Mapping) -> str:
    parts = []
    for name, result in test_sets.items():
        if isinstance(result, Mapping) and "accuracy" in result:
            parts.append(f"{name} {_pct(result['accuracy'])} ({result.get('correct')}/{result.get('total')}, "
                         f"chance {_pct(result.get('chance'))})")
        elif isinstance(result, Mapping) and "missing" in result:
            parts.append(f"{name}: set missing")
    return "; ".join(parts) or "-"


def _runs_md(section: dict, plot: str | None) -> list[str]:
    lines = []
    for run in section["runs"]:
        lines += [f"**{run['label']}** (`{run['file']}`)", ""]
        facts = [("initial steering accuracy", _pct(run.get("initial_accuracy"))),
                 ("best steering accuracy", _pct(run.get("best_accuracy"))
                  + (f" (loop {run['best_loop']})" if run.get("best_loop") is not None else "")),
                 ("target", f"{_num(run.get('target_pct'))}%"
                  + {True: ", reached", False: ", not reached"}.get(run.get("reached"), "")),
                 ("stopped", run.get("stop_reason") or "-"),
                 ("test sets (scored once, on the final adapter)", _test_sets_text(run.get("test_sets") or {}))]
        lines += _table(("", ""), facts) + [""]
        if run.get("recommendations"):
            lines += _table(("rank", "type", "mean improvement (points)", "steps"),
                            [(r.get("rank"), r.get("type"), _num(r.get("avg_improvement")), _num(r.get("total_steps")))
                             for r in run["recommendations"]]) + [""]
    if plot:
        lines += [f"![steering accuracy]({plot})", ""]
    return lines


def report_markdown(report: dict) -> str:
    sections, plots = report["sections"], report["plots"]
    counts = report["status_counts"]
    lines = [f"# Evaluation report: {report['model']}", "",
             f"Created {report['created_at']} (git {report['git_sha'] or 'unknown'}) from `{report['sources']['model_dir']}` "
             f"and `{report['sources']['logs_dir']}`. Sections: "
             + ", ".join(f"{n} {status}" for status, n in counts.items() if n) + ".", ""]
    if report["evaluations_run"]:
        lines += ["Evaluations run for this report (--run-evals):", ""]
        lines += [f"- `{e['command']}`: {'done' if e['exit_status'] == 0 else 'FAILED, exit ' + str(e['exit_status'])}"
                  for e in report["evaluations_run"]] + [""]
    lines += ["## Summary", ""]
    if report["headline"]:
        lines += _table(("measure", "result", "reference"),
                        [(h["measure"], h["result"], h["reference"]) for h in report["headline"]]) + [""]
    else:
        lines += ["Nothing has run yet for this model: see the commands below.", ""]
    render = {
        "kormedmcqa": lambda s: _evaluation_md(s, plots.get("kormedmcqa")),
        "kmmlu": lambda s: _evaluation_md(s, plots.get("kmmlu")),
        "training": lambda s: _training_md(s, plots),
        "type_metrics": _type_metrics_md,
        "divisions": lambda s: _divisions_md(s, plots.get("divisions")),
        "loops": lambda s: _runs_md(s, plots.get("loops")),
        "rounds": lambda s: _runs_md(s, plots.get("rounds")),
    }
    for number, (key, section) in enumerate(sections.items(), 1):
        lines += [f"## {number}. {section['title']}: {STATUS_MARK[section['status']]}", ""]
        if section["status"] != "not run" or key in ("training", "type_metrics"):
            lines += render[key](section)
        lines += _not_run_lines(section)
    not_run = report["not_run"]
    if not_run:
        lines += ["## Not run", "", "What is missing and the command that produces it:", ""]
        lines += _table(("part", "command"), [(n["what"], f"`{n['command']}`") for n in not_run]) + [""]
    return "\n".join(lines).rstrip() + "\n"


# ---- charts (matplotlib, files only) ----------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    _pyplot().close(fig)
    return path.name


def plot_subject_bars(comparison: dict, path: Path, title: str) -> str:
    """Overall and per-subject accuracy, one bar per report (base, final), chance dashed over each group."""
    plt = _pyplot()
    columns = comparison["columns"]
    groups = ["overall", *comparison["subjects"]]
    width = 0.8 / len(columns)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(groups) + 2), 4.2))
    for k, column in enumerate(columns):
        values = [column["accuracy"]] + [(column["per_subject"].get(s) or {}).get("accuracy") for s in groups[1:]]
        xs = [g - 0.4 + width * (k + 0.5) for g in range(len(groups))]
        ax.bar(xs, [100 * (v or 0) for v in values], width=width * 0.95, label=column["name"])
        for x, v in zip(xs, values):
            if v is not None:
                ax.text(x, 100 * v + 1.5, f"{100 * v:.1f}", ha="center", va="bottom", fontsize=7)
    for g, subject in enumerate(groups):
        rows = [columns[0]] if g == 0 else [c["per_subject"].get(subject) for c in columns]
        chance = next((r["chance"] for r in rows if r), None)
        if chance is not None:
            ax.hlines(100 * chance, g - 0.45, g + 0.45, colors="#c44e52", linestyles="dashed",
                      label="chance" if g == 0 else None)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, 110)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_panels(panels: Sequence[dict], path: Path) -> str:
    """One small line chart per panel: ``{"title", "xlabel", "ylabel", "lines": [(label, points)], "hline"}``."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for label, points in panel["lines"]:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if len(points) < 30 else None,
                    markersize=3, label=label)
        if panel.get("hline") is not None:
            ax.axhline(panel["hline"], color="#c44e52", linestyle="--", label=panel.get("hline_label", "target"))
        ax.set_title(panel["title"], fontsize=9)
        ax.set_xlabel(panel["xlabel"], fontsize=8)
        ax.set_ylabel(panel["ylabel"], fontsize=8)
        if panel["xlabel"] in ("loop", "step"):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if "accuracy" in panel["ylabel"]:
            ax.set_ylim(0, 100)  # steering accuracies are percent
        ax.legend(fontsize=7, loc="upper left")
        if panel.get("right"):  # a second measure in other units (e.g. a perplexity beside an accuracy)
            label, points = panel["right"]
            twin = ax.twinx()
            twin.plot([p[0] for p in points], [p[1] for p in points], color="tab:orange", marker="s", markersize=3,
                      label=label)
            twin.set_ylabel(label, fontsize=8)
            twin.legend(fontsize=7, loc="upper right")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    return _save(fig, path)


def plot_divisions(tables: Sequence[dict], path: Path) -> str:
    """Horizontal accuracy bars per division, one panel per source; weak ones (< 80 %) in red."""

    plt = _pyplot()
    height = max(3.0, 0.28 * max(len(t["rows"]) for t in tables) + 1.2)
    fig, axes = plt.subplots(1, len(tables), figsize=(5.5 * len(tables), height), squeeze=False)
    for ax, table in zip(axes.flat, tables):
        rows = table["rows"]
        ax.barh(range(len(rows)), [100 * r["accuracy"] for r in rows],
                color=["#c44e52" if r["weak"] else "#4c72b0" for r in rows])
        ax.axvline(100 * WEAK_DIVISION_ACCURACY, color="grey", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(rows)), [f"{r['division']} (n={r['count']})" for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("accuracy (%)", fontsize=8)
        ax.set_title(table["source"], fontsize=8)
    return _save(fig, path)


def write_plots(sections: Mapping[str, dict], out: Path) -> dict[str, str]:
    """Every chart the gathered sections have data for; file names by chart."""
    plots: dict[str, str] = {}
    for key in ("kormedmcqa", "kmmlu"):
        comparison = sections[key].get("comparison")
        if comparison:
            plots[key] = plot_subject_bars(comparison, out / f"{key}.png", f"{sections[key]['title']}: accuracy by subject")
    stages = [s for s in sections["training"]["stages"] if s["status"] == "ok"]
    validation = []
    for s in stages:
        main, monitor = s["validation_curve"], s["monitor_curve"]
        if main and monitor:
            validation.append({"title": s["stage"], "xlabel": main["x"], "ylabel": main["metric"],
                               "lines": [(main["metric"], main["points"])],
                               "right": (f"plain-text {monitor['metric']}", monitor["points"])})
        elif main or monitor:
            one = main or monitor
            validation.append({"title": s["stage"], "xlabel": one["x"], "ylabel": one["metric"],
                               "lines": [(one["metric"], one["points"])]})
    if validation:
        plots["validation_history"] = plot_panels(validation, out / "validation_history.png")
    losses = [{"title": s["stage"], "xlabel": "step", "ylabel": "train loss", "lines": [("loss", s["loss_curve"])]}
              for s in stages if s["loss_curve"]]
    if losses:
        plots["train_loss"] = plot_panels(losses, out / "train_loss.png")
    if sections["divisions"]["tables"]:
        plots["divisions"] = plot_divisions(sections["divisions"]["tables"], out / "divisions.png")
    for key, xlabel in (("loops", "loop"), ("rounds", "step")):
        runs = [r for r in sections[key]["runs"] if r.get("curve")]
        if runs:
            target = next((r["target_pct"] for r in runs if r.get("target_pct") is not None), None)
            plots[key] = plot_panels([{"title": sections[key]["title"], "xlabel": xlabel,
                                       "ylabel": "steering accuracy (%)", "hline": target,
                                       "lines": [(r["label"], r["curve"]["points"]) for r in runs]}],
                                     out / f"{key}.png")
    return plots


# ---- building and running ---------------------------------------------------------------------
def build_report(src, evaluations_run: Sequence[dict] = ()) -> tuple[dict, dict]:
    """(report without plots, sections) for the model of ``src``."""
    sections = report_sources.gather(src)
    not_run, seen = [], set()
    for key, section in sections.items():
        for item in section["not_run"]:  # a type trainer is missing from two sections, listed once
            if item["command"] not in seen:
                seen.add(item["command"])
                not_run.append({"section": key, **item})
    counts = {status: sum(s["status"] == status for s in sections.values()) for status in STATUS_MARK}
    report = {
        "report_version": REPORT_VERSION,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": src.model,
        "git_sha": git_sha(),
        "sources": {"model_dir": str(src.model_dir), "logs_dir": str(src.logs_dir)},
        "status_counts": counts,
        "headline": headline(sections),
        "evaluations_run": list(evaluations_run),
        "not_run": not_run,
        "errors": [e for s in sections.values() for e in s["errors"]],
        "sections": sections,
    }
    return report, sections


def run_missing_evaluations(src, args: argparse.Namespace) -> list[dict]:
    """validation_kor_med_test.py for every missing base/final report, with the pipeline's arguments."""
    import shlex


    done = []
    for dataset, role in report_sources.missing_evaluations(src):
        argv = report_sources.eval_argv(src, dataset, role) + ["--device", args.device]
        if dataset == "kormedmcqa" and args.sets_dir:
            argv += ["--sets-dir", str(args.sets_dir)]
        if dataset == "kmmlu" and args.raw_dir:
            argv += ["--raw-dir", str(args.raw_dir)]
        command = shlex.join(["python", "-m", "script.validation_kor_med_test", *argv])
        print(f"running: {command}", file=sys.stderr)
        try:
            status = validation_kor_med_test.main(argv)
        except Exception as exc:  # one failed evaluation must not lose the report of everything else
            print(f"error: {command}: {type(exc).__name__}: {exc}", file=sys.stderr)
            status = 1
        done.append({"dataset": dataset, "role": role, "command": command, "exit_status": status})
    return done


def write_report(report: dict, sections: Mapping[str, dict], output: Path) -> Path:
    """report.md, report.json and the charts in ``output``, replaced as a whole (atomic)."""

    def write(tmp: Path) -> None:
        report["plots"] = write_plots(sections, tmp)
        (tmp / "report.md").write_text(report_markdown(report), encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    return atomic_write_dir(output, write)


def report_main(args: argparse.Namespace) -> int:
    src = Sources(args.model, args.model_dir.resolve(), args.logs_dir.resolve(),
                  phase5_dir=(args.divisions_dir or DIVISIONS_MODEL_DIR).resolve())
    evaluations = run_missing_evaluations(src, args) if args.run_evals else []
    report, sections = build_report(src, evaluations)
    output = args.output or src.logs_dir / f"report_{src.model}"
    write_report(report, sections, output)
    print((output / "report.md").read_text(encoding="utf-8"), end="")
    print(f"report: {output / 'report.md'} (+ report.json, {len(report['plots'])} charts)")
    failed = [e for e in evaluations if e["exit_status"] != 0]
    for error in report["errors"]:
        print(f"error: {error}", file=sys.stderr)
    return 1 if report["errors"] or failed else 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--compare", nargs="+", type=Path, metavar="REPORT",
                       help="evaluation report JSONs; the first is the reference (e.g. the base model)")
    which.add_argument("--model", default=None,
                       help="report mode: the model whose results to gather (default: "
                            f"{DEFAULT_MODEL}); the name in model/<stage>/<name>/ and logs/*_<name>_*.json")
    parser.add_argument("--names", nargs="+", default=None, help="--compare: a column name per report (default: file stems)")
    parser.add_argument("--output", type=Path, default=None,
                        help="--compare: write the markdown here and the numbers as JSON beside it (.json); "
                             "report mode: the report dir (default: <logs-dir>/report_<model>)")
    report = parser.add_argument_group("report mode")
    report.add_argument("--model-dir", type=Path, default=MODEL_DIR,
                        help="where the stages wrote their outputs, <dir>/<stage>/<model>/ (default: %(default)s)")
    report.add_argument("--logs-dir", type=Path, default=LOG_DIR,
                        help="where the evaluation reports are (default: %(default)s)")
    report.add_argument("--divisions-dir", type=Path, default=None,
                        help="also searched for division_report.json (default: model/divisions, "
                             "train_with_divisions.py's output)")
    report.add_argument("--run-evals", action="store_true",
                        help="first run the missing KorMedMCQA/KMMLU evaluations of the base model and the final "
                             "adapter, with the pipeline's arguments (loads the models)")
    report.add_argument("--device", default="auto", help="--run-evals: cpu, cuda, cuda:N or auto (default: auto)")
    report.add_argument("--sets-dir", type=Path, default=None,
                        help="--run-evals: KorMedMCQA set files (default: data/kormedmcqa_test)")
    report.add_argument("--raw-dir", type=Path, default=None,
                        help="--run-evals: download dir holding KMMLU (default: data/raw)")
    args = parser.parse_args(argv)
    if args.compare is not None:
        if args.run_evals:
            parser.error("--run-evals is for report mode (--model), not --compare")
        if args.names and len(args.names) != len(args.compare):
            parser.error(f"--names has {len(args.names)} names for {len(args.compare)} reports")
        return args
    if args.names:
        parser.error("--names goes with --compare")
    args.model = args.model or DEFAULT_MODEL
    return args


def compare_main(args: argparse.Namespace) -> int:
    try:
        reports = [load_report(path) for path in args.compare]
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = args.names or [path.stem for path in args.compare]
    summary = compare(reports, names)
    summary["reports"] = [str(path) for path in args.compare]
    text = markdown(summary)
    print(text, end="")
    if args.output:
        atomic_write_text(args.output, text)
        atomic_write_json(args.output.with_suffix(".json"), summary)
        print(f"summary: {args.output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return compare_main(args) if args.compare is not None else report_main(args)


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
