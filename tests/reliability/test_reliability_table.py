"""script/reliability_table.py: the page is rendered from the suite's results, failures shown as such.

    python -m pytest tests/reliability/test_reliability_table.py -q
"""

from __future__ import annotations

import json

from script import reliability_table
from tests.reliability.conftest import summarise


def results(entries: dict) -> dict:
    return {"generated_at": "2026-01-01T00:00:00+00:00", "commit": "abc1234", "python": "3.11", "markexpr": "",
            "totals": {"cases": len(entries), "passed": 2, "failed": 1, "skipped": 1}, "rows": summarise(entries)}


def entry(group, fault, status="passed", outcome=None, what="reader A", skip=None):
    return {"group": group, "fault": fault, "what": what, "status": status, "outcome": outcome, "skip_reason": skip}


def test_rows_count_cases_outcomes_and_failures(tmp_path):
    rows = {
        "t1": entry("bad input", "truncated line", outcome="counted reject naming path:line"),
        "t2": entry("bad input", "truncated line", outcome="error naming path:line", what="reader B"),
        "t3": entry("bad input", "BOM", status="failed"),
        "t4": entry("full disk / read-only output", "chmod", status="skipped", skip="root"),
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results(rows)))
    out = tmp_path / "RELIABILITY.md"
    assert reliability_table.main(["--results", str(path), "--output", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert "do not edit by hand" in page and "make test-reliability" in page and "commit abc1234" in page
    assert ("| truncated line | 2 | all 2 passed | counted reject naming path:line (1); error naming path:line (1) | "
            "reader A; reader B |") in page
    assert "| BOM | 1 | **1 FAILED** of 1 |" in page
    assert "| chmod | 1 | skipped: root |" in page


def test_a_missing_or_malformed_results_file_fails(tmp_path, capsys):
    out = tmp_path / "RELIABILITY.md"
    assert reliability_table.main(["--results", str(tmp_path / "none.json"), "--output", str(out)]) == 1
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": [{"group": "x"}]}')
    assert reliability_table.main(["--results", str(bad), "--output", str(out)]) == 1
    assert "rows[0]: missing 'fault'" in capsys.readouterr().err
    assert not out.exists()
