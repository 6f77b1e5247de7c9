"""What the Phase 6 report of one model is made of: every result file the other scripts write, read
and reduced to plain numbers, one section each (``gather``).

Sections and where they come from (``<logs>`` = logs/, ``<models>`` = model/, ``M`` = the model name):

* ``kormedmcqa``  <logs>/kormedmcqa_M_base.json and _final.json (run_full_pipeline.sh, the guide's 604
                  set in letter mode after the model's own reasoning), plus the pipeline's cloze-form
                  reports of a cloze-scored model (<logs>/kormedmcqa_M_{base,final}_cloze.json) and any
                  other report of M under <logs>/eval/ (validation_kor_med_test.py's default place);
* ``kmmlu``       <logs>/kmmlu_M_base.json and _final.json (``evaluation_report --run-evals`` writes them
                  with the pipeline's arguments), plus KMMLU reports of M under <logs>/eval/;
* ``training``    <models>/<stage>/M/training_info.json of the pipeline stages and the type trainers:
                  steps, train loss, every metric measured before and after, the target, the
                  validation history and loss curves;
* ``type_metrics`` the guide's target per type (perplexity < 3 for types 1/2, accuracy >= 90 % for
                  type 3, type-4 score >= 1.2) from the type trainers' training_info.json;
* ``divisions``   every division_report.json of M written by phase5_subject_training/scripts/
                  train_with_divisions.py (under <models>/ or model/divisions/, where
                  the training_info.json beside it names M) and the per-division table of the
                  KorMedMCQA/KMMLU reports;
* ``loops``       <models>/loop_training/M/loop_history.json (train_loop_until_90) and
                  <models>/01_02_loop/M/loop_history.json (train_01_02_loop);
* ``rounds``      final_report.json of probe-and-focus and of adaptive type sampling.

A file that does not exist makes its part "not run", with the command that produces it; a file
that exists but cannot be read is "unreadable" (the report says why and the command exits 1).
Nothing here runs a model: ``evaluation_report --run-evals`` does that before gathering.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from script import formats
from script.controls import binomial_tail_at_least
from script.data_io import DataError, read_json
from script.pipeline_stages import TRAINED_STAGES
from script.report_comparison import compare, describe, load_report
from script.training_config import MODEL_CONFIGS, STAGE_00, STAGE_01, STAGE_02

NOT_RUN = "not run"
UNREADABLE = "unreadable"
OK = "ok"
PARTIAL = "partial"

EVAL_DATASETS = {"kormedmcqa": "KorMedMCQA (the guide's 604 set)", "kmmlu": "KMMLU-medical"}
EVAL_ROLES = ("base", "final")
WEAK_DIVISION_ACCURACY = 0.80  # the guide's "weak division" rule: accuracy below 80 %

# (stage dir, what it is, command that produces it). The pipeline's stages first, in its order.
PIPELINE_STAGES = (
    ("extended_tokenizer", "tokenizer extension (embedding-only phase)", "make extend-tokenizer MODEL={model}"),
    *((stage, what, "make pipeline MODEL={model}") for stage, what in TRAINED_STAGES),
    ("01_02_loop", "train_01 <-> train_02 loop", "python -m script.train.train_01_02_loop --model {model}"),
)
TYPE_STAGES = tuple((t, f"type {i}: {t}", f"python -m script.train.train_{t} --model {{model}}")
                    for i, t in enumerate(formats.TRAINING_TYPES, 1))
LOOP_SOURCES = (
    ("loop_training", "loop until 90 % (types 1-4 per loop)", "make loop MODEL={model}"),
    ("01_02_loop", "train_01 <-> train_02 loop", "python -m script.train.train_01_02_loop --model {model}"),
)
ROUND_SOURCES = (
    ("probe_focus_training", "probe and focus", "make probe-focus MODEL={model}"),
    ("adaptive_types", "adaptive type sampling", "python -m script.train.train_adaptive_types --model {model}"),
)
DIVISION_COMMAND = "python -m phase5_subject_training.scripts.train_with_divisions --model {model}"


@dataclass(frozen=True)
class Sources:
    """Where one model's results are: ``model_dir``/<stage>/<model>/ and ``logs_dir``."""

    model: str
    model_dir: Path
    logs_dir: Path
    phase5_dir: Path | None = None  # model/divisions/ (train_with_divisions.py's default output)

    def stage_dir(self, stage: str) -> Path:
        return self.model_dir / stage / self.model

    def eval_report(self, dataset: str, role: str) -> Path:
        return self.logs_dir / f"{dataset}_{self.model}_{role}.json"

    def final_adapter(self) -> Path:
        return self.stage_dir(STAGE_02) / "final"


# ---------------------------------------------------------------------------
# Evaluation commands (the pipeline's own arguments)
# ---------------------------------------------------------------------------
def pipeline_eval_args(model: str) -> list[str]:
    """Scoring arguments of script/run_full_pipeline.sh's evaluations (keep the two in step): letter
    mode after the model's own train02 reasoning, so base and final are measured alike."""
    args = ["--mode", "letter", "--prompt", "train02", "--batch-size", "32"]
    budget = MODEL_CONFIGS[model].eval_max_new_tokens if model in MODEL_CONFIGS else None
    if budget is not None:  # the registry's reasoning budget, as the pipeline passes it
        args += ["--max-new-tokens", str(budget)]
    return args


def eval_argv(src: Sources, dataset: str, role: str) -> list[str]:
    """validation_kor_med_test.py arguments that write ``src.eval_report(dataset, role)``."""
    model = src.model if role == "base" else str(src.final_adapter())
    what = ["--kmmlu"] if dataset == "kmmlu" else ["--split", "guide604"]
    return ["--model", model, *what, *pipeline_eval_args(src.model), "--output", str(src.eval_report(dataset, role))]


def eval_command(src: Sources, dataset: str, role: str) -> str:
    return shlex.join(["python", "-m", "script.validation_kor_med_test", *eval_argv(src, dataset, role)])


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------
def read_source(path: Path) -> tuple[Any | None, str | None]:
    """(data, None) for a readable JSON file, (None, reason) for one that exists but is broken,
    (None, None) for a missing one."""
    if not path.is_file():
        return None, None
    try:
        return read_json(path), None
    except (OSError, ValueError, DataError) as exc:
        return None, f"{path}: {exc}"


def number(value: Any) -> float | None:
    """A finite float, else None (metrics may be missing, null, NaN or text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def fraction(value: Any) -> float | None:
    """A division accuracy as a fraction, whichever way its file wrote it (the guide and
    train_with_divisions.py write fractions; a percent above 1 is read as percent)."""
    value = number(value)
    if value is None:
        return None
    return value / 100.0 if value > 1.0 else value


def new_section(title: str) -> dict:
    return {"title": title, "status": NOT_RUN, "not_run": [], "errors": []}


def settle(section: dict, found: int, expected: int) -> dict:
    """Status from what was found: ok (all), partial (some), not run (none); unreadable wins."""
    if section["errors"]:
        section["status"] = UNREADABLE
    elif found == 0:
        section["status"] = NOT_RUN
    else:
        section["status"] = OK if found >= expected else PARTIAL
    return section


def curve(history: Sequence[Mapping], keys: Sequence[str] = ("accuracy", "perplexity"),
          x_keys: Sequence[str] = ("step", "loop")) -> dict | None:
    """The first of ``keys`` that the history entries carry, against the first of ``x_keys`` they
    carry (else their position)."""
    rows = [h for h in history if isinstance(h, Mapping)]
    if not rows:
        return None
    x_name = next((x for x in x_keys if x in rows[0]), "evaluation")
    for key in keys:
        points = [(h.get(x_name, i), number(h.get(key))) for i, h in enumerate(rows)]
        points = [(x, y) for x, y in points if number(x) is not None and y is not None]
        if points:
            return {"metric": key, "x": x_name, "points": points}
    return None


# ---------------------------------------------------------------------------
# KorMedMCQA / KMMLU
# ---------------------------------------------------------------------------
def report_belongs_to(report: Mapping, model: str) -> bool:
    """Whether an evaluation report measured ``model``: by registry name, or by an adapter under
    model/<stage>/<model>/."""
    info = report.get("model") or {}
    if info.get("name") == model and not info.get("adapters"):
        return True
    return any(model in Path(str(a)).parts for a in info.get("adapters") or [])


def describe_report(path: Path, report: Mapping) -> dict:
    adapters = (report.get("model") or {}).get("adapters") or []
    return {"file": str(path), "set": (report.get("set") or {}).get("name"), "scoring": describe(report),
            "model": adapters[-1] if adapters else (report.get("model") or {}).get("name"),
            "accuracy": report["accuracy"], "correct": report["correct"], "total": report["total"],
            "chance": report["chance"],
            "p_vs_chance": binomial_tail_at_least(report["correct"], report["total"], report["chance"])}


def gather_evaluation(src: Sources, dataset: str) -> dict:
    """Base and final reports side by side (report_comparison.compare), other reports of the model."""

    section = new_section(EVAL_DATASETS[dataset])
    reports, names = [], []
    for role in EVAL_ROLES:
        path = src.eval_report(dataset, role)
        if not path.is_file():
            section["not_run"].append({"what": f"{EVAL_DATASETS[dataset]}, {role} model",
                                       "command": eval_command(src, dataset, role)})
            continue
        try:
            report = load_report(path)
        except DataError as exc:
            section["errors"].append(str(exc))
            continue
        if (report.get("set") or {}).get("dataset", dataset) != dataset:
            section["errors"].append(f"{path}: a {report['set']['dataset']} report, expected {dataset}")
            continue
        reports.append((path, report))
        names.append(role)
    if reports:
        section["comparison"] = compare([r for _, r in reports], names)
        section["comparison"]["reports"] = [str(p) for p, _ in reports]
        section["per_division"] = {name: report.get("per_division") or {} for name, (_, report) in zip(names, reports)}
    section["other_reports"] = other_reports(src, dataset, {p.resolve() for p, _ in reports})
    # The pipeline's cloze-form pair of a cloze-scored model (run_full_pipeline.sh writes them), for the headline.
    by_file = {row["file"]: row for row in section["other_reports"]}
    section["cloze"] = {role: by_file[str(src.eval_report(dataset, f"{role}_cloze"))]
                        for role in EVAL_ROLES if str(src.eval_report(dataset, f"{role}_cloze")) in by_file}
    cloze_paths = [src.eval_report(dataset, f"{role}_cloze") for role in section["cloze"]]
    if cloze_paths:  # compared like the pair above: controls, clustered differences
        try:
            section["cloze_comparison"] = compare([load_report(p) for p in cloze_paths], list(section["cloze"]))
            section["cloze_comparison"]["reports"] = [str(p) for p in cloze_paths]
        except DataError as exc:
            section["errors"].append(str(exc))
    return settle(section, len(reports), len(EVAL_ROLES))


def other_reports(src: Sources, dataset: str, skip: set[Path]) -> list[dict]:
    """Reports of the model in <logs>/eval/ (validation_kor_med_test.py's default output dir) and the
    pipeline's other scorings of it (<logs>/kormedmcqa_M_{base,final}_cloze.json for cloze-scored models)."""
    rows = []
    candidates = sorted(src.logs_dir.glob(f"{dataset}_{src.model}_*.json")) + sorted((src.logs_dir / "eval").glob("*.json"))
    for path in candidates:
        report, _ = read_source(path)
        if (path.resolve() in skip or not isinstance(report, dict)
                or not all(k in report for k in ("accuracy", "correct", "total", "chance"))):
            continue
        if (report.get("set") or {}).get("dataset") == dataset and report_belongs_to(report, src.model):
            rows.append(describe_report(path, report))
    return rows


# ---------------------------------------------------------------------------
# Training runs: training_info.json
# ---------------------------------------------------------------------------
def summarize_training_info(info: Mapping) -> dict:
    """The numbers of one training_info.json: steps, loss, before/after metrics, target, curves."""
    metrics = info.get("metrics") or {}
    before_after = [{"metric": key, "before": number(metrics[f"{key}_before"]), "after": number(value)}
                    for key, value in metrics.items()
                    if f"{key}_before" in metrics and number(value) is not None]
    target = dict(info["target"]) if isinstance(info.get("target"), Mapping) else None
    if target:
        target["value_reached"] = number(metrics.get(target.get("metric")))
    loss = [(h.get("step"), number(h.get("loss"))) for h in info.get("loss_history") or [] if isinstance(h, Mapping)]
    return {
        "script": info.get("script"),
        "finished_at": info.get("finished_at"),
        "global_step": metrics.get("global_step"),
        "epochs": info.get("epochs"),
        "train_samples": info.get("train_samples"),
        "train_loss": number(metrics.get("train_loss")),
        "before_after": before_after,
        "target": target,
        "validation_curve": curve(info.get("validation_history") or []),
        "monitor_curve": curve(info.get("plain_text_history") or [], ("perplexity",)),
        "loss_curve": [(x, y) for x, y in loss if number(x) is not None and y is not None],
    }


def gather_training(src: Sources) -> dict:
    section = new_section("Training stages")
    stages = []
    for stage, label, command in (*PIPELINE_STAGES, *TYPE_STAGES):
        path = src.stage_dir(stage) / "training_info.json"
        info, error = read_source(path)
        row = {"stage": stage, "label": label, "file": str(path)}
        if error or (info is not None and not isinstance(info, dict)):
            section["errors"].append(error or f"{path}: not a training record (a JSON object)")
            row["status"] = UNREADABLE
        elif info is None:
            row["status"] = NOT_RUN
            row["command"] = command.format(model=src.model)
            section["not_run"].append({"what": label, "command": row["command"]})
        else:
            row.update(status=OK, **summarize_training_info(info))
        stages.append(row)
    section["stages"] = stages
    found = sum(s["status"] == OK for s in stages)
    # The pipeline's three training stages are what "everything ran" means; the rest are options.
    core = sum(s["status"] == OK for s in stages if s["stage"] in (STAGE_00, STAGE_01, STAGE_02))
    settle(section, found, 1)
    if section["status"] == OK and core < 3:
        section["status"] = PARTIAL
    return section


def gather_type_metrics(src: Sources, training: Mapping) -> dict:
    """The guide's target of each type, from the type stages gathered in ``training``."""
    section = new_section("Type metrics (the guide's targets)")
    by_stage = {s["stage"]: s for s in training["stages"]}
    rows = []
    for type_name, label, command in TYPE_STAGES:
        name, op, target = formats.TYPE_TARGETS[type_name]
        stage = by_stage.get(type_name, {})
        row = {"type": type_name, "metric": name, "op": op, "target": target, "status": stage.get("status", NOT_RUN)}
        if row["status"] == OK:
            pair = next((p for p in stage["before_after"] if p["metric"] == f"validation_{name}"), None)
            value = pair["after"] if pair else (stage.get("target") or {}).get("value_reached")
            row.update(before=pair["before"] if pair else None, value=value,
                       met=None if value is None else (value < target if op == "<" else value >= target))
        elif row["status"] == NOT_RUN:
            row["command"] = command.format(model=src.model)
            section["not_run"].append({"what": label, "command": row["command"]})
        else:
            section["errors"].append(f"{stage.get('file')}: unreadable (see training stages)")
        rows.append(row)
    section["types"] = rows
    return settle(section, sum(r["status"] == OK for r in rows), len(rows))


# ---------------------------------------------------------------------------
# Per-division results
# ---------------------------------------------------------------------------
def division_rows(data: Any) -> list[dict]:
    """Rows ``{division, count, accuracy (fraction), avg_loss}`` of a division table.

    Accepts the guide's ``{"1.4.1": {"accuracy": 0.65, "count": 234, "avg_loss": 0.82}, ...}`` (as
    train_with_divisions.py writes it, with ``name`` and ``weak`` and an ``OVERALL`` row), the same
    under a ``divisions`` / ``per_division`` key, and evaluation.mcq_accuracy's ``per_division``
    (``correct``/``total``). Totals and entries that are not division rows are left out. ``weak``
    is the file's own verdict when it has one, else accuracy below 80 %.
    """
    if isinstance(data, Mapping):
        for key in ("divisions", "per_division"):
            if isinstance(data.get(key), Mapping):
                data = data[key]
                break
    if not isinstance(data, Mapping):
        return []
    rows = []
    for name, stats in data.items():
        if not isinstance(stats, Mapping) or str(name).lower() in ("overall", "total", "all"):
            continue
        count = number(stats.get("count", stats.get("total")))
        if number(stats.get("correct")) is not None and count:
            accuracy = stats["correct"] / count
        else:
            accuracy = fraction(stats.get("accuracy"))
        if accuracy is None:
            continue
        weak = stats["weak"] if isinstance(stats.get("weak"), bool) else accuracy < WEAK_DIVISION_ACCURACY
        rows.append({"division": str(name), "name": stats.get("name") if isinstance(stats.get("name"), str) else None,
                     "count": int(count) if count is not None else None, "accuracy": accuracy,
                     "avg_loss": number(stats.get("avg_loss")), "weak": weak})
    return sorted(rows, key=lambda r: r["division"])


def division_report_files(src: Sources) -> list[Path]:
    """Every division_report.json of the model: under <models>/ and model/divisions/,
    where the run record beside it names the model (or, without one, a path part does)."""
    found = []
    for root in (src.model_dir, src.phase5_dir):
        if root is None or not root.is_dir():
            continue
        for path in sorted(root.rglob("division_report.json")):
            info, _ = read_source(path.parent / "training_info.json")
            if isinstance(info, dict) and info.get("model") is not None:
                if info["model"] == src.model:
                    found.append(path)
            elif src.model in path.relative_to(root).parts:
                found.append(path)
    return found


def gather_divisions(src: Sources, evaluations: Mapping[str, Mapping]) -> dict:
    section = new_section("Per-division results")
    tables = []
    for path in division_report_files(src):
        data, error = read_source(path)
        rows = division_rows(data) if error is None else []
        if error or not rows:
            section["errors"].append(error or f"{path}: no division with an accuracy in it")
            continue
        root = next((r for r in (src.model_dir, src.phase5_dir) if r is not None and path.is_relative_to(r)), None)
        label = f"{root.name}/{path.relative_to(root)}" if root is not None else str(path)
        tables.append({"source": label, "file": str(path), "rows": rows})
    for dataset, evaluation in evaluations.items():
        for role, table in (evaluation.get("per_division") or {}).items():
            rows = division_rows(table)
            if rows:
                tables.append({"source": f"{EVAL_DATASETS[dataset]}, {role} model", "rows": rows})
    if not tables:
        section["not_run"].append({"what": "division training (phase 5) with per-division reports",
                                   "command": DIVISION_COMMAND.format(model=src.model)})
    section["tables"] = tables
    return settle(section, len(tables), 1)


# ---------------------------------------------------------------------------
# Loops and round-based training
# ---------------------------------------------------------------------------
def from_percent(value: Any) -> float | None:
    """The loops and round-based trainers write accuracies in percent; the report keeps fractions."""
    value = number(value)
    return None if value is None else value / 100.0


def test_set_scores(test_sets: Any) -> dict:
    """round_training.evaluate_report_sets' ``test_sets`` (percent) with fractions; a missing set
    stays ``{"missing": path}``."""
    if not isinstance(test_sets, Mapping):
        return {}
    return {name: {**result, "accuracy": from_percent(result["accuracy"]), "chance": from_percent(result.get("chance"))}
            if isinstance(result, Mapping) and "accuracy" in result else result
            for name, result in test_sets.items()}


def summarize_loop(stage: str, data: Mapping) -> dict:
    """loop_history.json of train_loop_until_90 (``history``) or train_01_02_loop (``loops``).
    Accuracies as fractions, the target and the curve's points in percent, as the trainers write them."""
    if stage == "01_02_loop":
        loops = [e for e in data.get("loops") or [] if isinstance(e, Mapping)]
        return {"target_pct": number(data.get("target_accuracy")), "reached": None, "stop_reason": data.get("stopped"),
                "best_loop": data.get("best_loop"), "best_accuracy": from_percent(data.get("best_accuracy")),
                "initial_accuracy": None, "curve": curve(loops, ("accuracy",), ("loop",)), "test_sets": {}}
    return {"target_pct": number(data.get("target")), "reached": data.get("target_reached"),
            "stop_reason": data.get("stop_reason"), "best_loop": data.get("best_loop"),
            "best_accuracy": from_percent(data.get("best_accuracy")),
            "initial_accuracy": from_percent(data.get("initial_accuracy")),
            "curve": curve(data.get("history") or [], ("accuracy",), ("loop",)),
            "test_sets": test_set_scores(data.get("test_sets"))}


def summarize_rounds(data: Mapping) -> dict:
    """final_report.json of probe-and-focus / adaptive type sampling (round_training.run_type_policy)."""
    return {"target_pct": number(data.get("target_accuracy")), "reached": data.get("target_reached"),
            "stop_reason": data.get("stop_reason"), "initial_accuracy": from_percent(data.get("initial_accuracy")),
            "best_accuracy": from_percent(data.get("final_best_accuracy")),
            "last_accuracy": from_percent(data.get("last_accuracy")),
            "total_steps": data.get("total_steps"), "recommendations": data.get("recommendations") or [],
            "persistent_failures": (data.get("persistent_failures") or [])[:3],
            "curve": curve(data.get("history") or [], ("accuracy",)), "test_sets": test_set_scores(data.get("test_sets"))}


def gather_runs(src: Sources, title: str, table: Sequence[tuple[str, str, str]], file_name: str,
                summarize: Callable[[str, Mapping], dict]) -> dict:
    section = new_section(title)
    runs = []
    for stage, label, command in table:
        path = src.stage_dir(stage) / file_name
        data, error = read_source(path)
        if error or (data is not None and not isinstance(data, dict)):
            section["errors"].append(error or f"{path}: not a JSON object")
        elif data is None:
            section["not_run"].append({"what": label, "command": command.format(model=src.model)})
        else:
            runs.append({"stage": stage, "label": label, "file": str(path), **summarize(stage, data)})
    section["runs"] = runs
    # One of the alternatives having run is the whole section: they are alternatives, not steps.
    return settle(section, len(runs), 1)


# ---------------------------------------------------------------------------
# Everything
# ---------------------------------------------------------------------------
SECTION_ORDER = ("kormedmcqa", "kmmlu", "training", "type_metrics", "divisions", "loops", "rounds")


def gather(src: Sources) -> dict[str, dict]:
    """Every section of the report of ``src.model``, in ``SECTION_ORDER``."""
    sections: dict[str, dict] = {dataset: gather_evaluation(src, dataset) for dataset in EVAL_DATASETS}
    sections["training"] = gather_training(src)
    sections["type_metrics"] = gather_type_metrics(src, sections["training"])
    sections["divisions"] = gather_divisions(src, {d: sections[d] for d in EVAL_DATASETS})
    sections["loops"] = gather_runs(src, "Loop training", LOOP_SOURCES, "loop_history.json", summarize_loop)
    sections["rounds"] = gather_runs(src, "Probe-and-focus / adaptive training", ROUND_SOURCES, "final_report.json",
                                     lambda _stage, data: summarize_rounds(data))
    return {name: sections[name] for name in SECTION_ORDER}


def missing_evaluations(src: Sources) -> list[tuple[str, str]]:
    """(dataset, role) pairs whose report is missing and whose model exists (the final adapter for
    ``final``): what ``--run-evals`` can produce."""
    pairs = []
    for dataset in EVAL_DATASETS:
        for role in EVAL_ROLES:
            if src.eval_report(dataset, role).is_file():
                continue
            if role == "final" and not (src.final_adapter() / "adapter_config.json").is_file():
                continue
            pairs.append((dataset, role))
    return pairs
