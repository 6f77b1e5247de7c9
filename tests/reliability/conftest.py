"""Results of the reliability suite, by fault class, for docs/RELIABILITY.md.

Every test here carries ``@pytest.mark.fault(group, fault, what)`` (registered in pyproject.toml;
parametrized cases through ``pytest.param(..., marks=...)``) and may call
``record_property("outcome", "...")`` to say how the case ended ("counted reject naming
path:line", "old file intact", ...). When the environment
names a file in ``RELIABILITY_RESULTS``, the session writes one JSON document there: per
(group, fault) the number of cases, passed/failed/skipped, the outcomes seen and what was tested.
``script/reliability_table.py`` renders it (``make test-reliability`` does both).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

RESULTS_ENV = "RELIABILITY_RESULTS"
_results: dict[str, dict] = {}  # nodeid -> {"group", "fault", "what", "outcome", "status", "skip_reason"}


def _fault_of(item) -> tuple[str, str, str] | None:
    marker = item.get_closest_marker("fault")
    if marker is None:
        return None
    group, fault, *rest = marker.args
    return group, fault, rest[0] if rest else ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    fault = _fault_of(item)
    if fault is None:
        return
    entry = _results.setdefault(item.nodeid, {"group": fault[0], "fault": fault[1], "what": fault[2],
                                              "status": "passed", "outcome": None, "skip_reason": None})
    for name, value in item.user_properties:
        if name == "outcome":
            entry["outcome"] = value
    if report.skipped:
        entry["status"] = "skipped"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        entry["skip_reason"] = reason.removeprefix("Skipped: ")
    elif report.failed:
        entry["status"] = "failed"


def summarise(results: dict[str, dict]) -> list[dict]:
    """Rows per (group, fault): cases, passed/failed/skipped, outcomes, what was tested."""
    rows: dict[tuple[str, str], dict] = {}
    for entry in results.values():
        row = rows.setdefault((entry["group"], entry["fault"]), {
            "group": entry["group"], "fault": entry["fault"], "cases": 0, "passed": 0, "failed": 0, "skipped": 0,
            "outcomes": Counter(), "what": [], "skip_reasons": []})
        row["cases"] += 1
        row[entry["status"]] += 1
        if entry["status"] == "passed" and entry["outcome"]:
            row["outcomes"][entry["outcome"]] += 1
        if entry["what"] and entry["what"] not in row["what"]:
            row["what"].append(entry["what"])
        if entry["skip_reason"] and entry["skip_reason"] not in row["skip_reasons"]:
            row["skip_reasons"].append(entry["skip_reason"])
    out = []
    for key in sorted(rows):
        row = rows[key]
        row["outcomes"] = dict(row["outcomes"].most_common())
        out.append(row)
    return out


def pytest_sessionfinish(session, exitstatus):
    target = os.environ.get(RESULTS_ENV)
    if not target or not _results:
        return
    from script.data_io import atomic_write_json

    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    by_status = defaultdict(int)
    for entry in _results.values():
        by_status[entry["status"]] += 1
    atomic_write_json(target, {
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "markexpr": session.config.getoption("markexpr") or "",
        "totals": {"cases": len(_results), **{k: by_status[k] for k in ("passed", "failed", "skipped")}},
        "rows": summarise(_results),
    })
