"""Compare KorMedMCQA / KMMLU evaluation reports side by side (e.g. the untrained base and the final adapter).

    python -m script.evaluation_report --compare logs/kormedmcqa_tiny_base.json logs/kormedmcqa_tiny_final.json \\
        --names base final --output logs/kormedmcqa_tiny_summary.md

Reads the JSON reports written by ``script/validation_kor_med_test.py`` and prints one markdown
table: overall and per-subject accuracy of each report, the chance baseline, and two tests that say
whether a difference is more than noise:

* **vs chance**: the one-sided exact binomial p-value of getting at least that many items right by
  guessing (the chance rate is the report's own, 1/number of options averaged over its items);
* **vs the first report** (paired, when both scored the same items): the exact two-sided sign test
  on the items where exactly one of the two models is right (McNemar's test without the normal
  approximation). Items are matched by id.

The markdown goes to stdout and ``--output`` (atomic write), the same numbers as JSON beside it.
Exit status 2 when a report cannot be read; reports of different item sets are compared unpaired,
with a note.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from script.data_io import DataError, atomic_write_json, atomic_write_text, read_json


def binomial_tail_at_least(successes: int, trials: int, p: float) -> float:
    """P(X >= successes) for X ~ Binomial(trials, p), exactly (sum in log space, no scipy)."""
    if successes <= 0:
        return 1.0
    if successes > trials:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_terms = [math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1)
                 + k * math.log(p) + (trials - k) * math.log1p(-p) for k in range(successes, trials + 1)]
    top = max(log_terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in log_terms))


def sign_test_two_sided(wins: int, losses: int) -> float:
    """Exact two-sided sign test on discordant pairs (McNemar): P of a split at least this uneven."""
    n = wins + losses
    if n == 0:
        return 1.0
    return min(1.0, 2 * binomial_tail_at_least(max(wins, losses), n, 0.5))


def load_report(path: Path) -> dict:
    try:
        report = read_json(path)
    except (OSError, ValueError, DataError) as exc:
        raise DataError(f"{path}: cannot read evaluation report ({exc})") from None
    for key in ("accuracy", "correct", "total", "chance", "items"):
        if key not in report:
            raise DataError(f"{path}: not an evaluation report (no {key!r}); "
                            "write one with python -m script.validation_kor_med_test")
    return report


def describe(report: dict) -> str:
    prompt = report.get("prompt", {}).get("style", "?")
    return f"{report.get('mode', '?')}/{prompt}"


def compare(reports: Sequence[dict], names: Sequence[str]) -> dict:
    """Rows per subset (overall, then subjects) with each report's accuracy and the two tests."""
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
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", nargs="+", type=Path, required=True, metavar="REPORT",
                        help="evaluation report JSONs; the first is the reference (e.g. the base model)")
    parser.add_argument("--names", nargs="+", default=None, help="a column name per report (default: file stems)")
    parser.add_argument("--output", type=Path, default=None,
                        help="write the markdown here and the numbers as JSON beside it (.json)")
    args = parser.parse_args(argv)
    if args.names and len(args.names) != len(args.compare):
        parser.error(f"--names has {len(args.names)} names for {len(args.compare)} reports")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
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


if __name__ == "__main__":
    raise SystemExit(main())
