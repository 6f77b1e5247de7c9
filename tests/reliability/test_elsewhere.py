"""Fault cases whose tests live in other files, called from here under fault markers so that
`make test-reliability` lists them in docs/RELIABILITY.md. `make test` runs them in their own
files only (these wrappers are deselected there), so nothing is run twice or written twice.

    python -m pytest tests/reliability/test_elsewhere.py -q -m ""
"""

from __future__ import annotations

import pytest

from tests import test_pipeline_control as control
from tests import test_resume as resume

pytestmark = pytest.mark.reliability_slow
PIPELINE = "script/run_full_pipeline.sh (tests/test_pipeline_control.py)"


@pytest.mark.fault("pipeline control", "two starts at once: the second is refused", PIPELINE)
def test_second_start_is_refused(tmp_path, record_property):
    control.test_a_second_run_is_refused_while_one_holds_the_lock(tmp_path)
    record_property("outcome", "exit 1, 'already running'")


@pytest.mark.fault("pipeline control", "stale PID file of a dead run", PIPELINE)
def test_stale_pid_file_is_cleaned(tmp_path, record_property):
    control.test_status_reports_not_running_and_cleans_a_stale_pid_file(tmp_path)
    record_property("outcome", "PID file removed, the run can start")


@pytest.mark.fault("pipeline control", "PID file naming a live unrelated process", PIPELINE)
def test_pid_of_another_process_is_stale(tmp_path, record_property):
    control.test_a_pid_file_naming_a_live_process_that_is_not_a_pipeline_is_stale(tmp_path)
    record_property("outcome", "treated as stale, the other process untouched")


@pytest.mark.fault("pipeline control", "stop ends the run and all its children", PIPELINE)
def test_stop_ends_children(tmp_path, record_property):
    control.test_stop_ends_a_running_pipeline_and_its_children(tmp_path)
    (tmp_path / "foreground").mkdir()
    control.test_stop_ends_a_foreground_pipeline_and_its_children(tmp_path / "foreground")
    record_property("outcome", "background and foreground runs stopped, no child left")


@pytest.mark.fault("kill -9 + restart", "trainer: train_type1_text at a fixed step",
                   "tests/test_resume.py (a checkpoint cut short by the kill is skipped)")
def test_type_trainer_killed_at_a_fixed_step(tiny_models, tmp_path, record_property):
    resume.test_kill_9_then_resume_matches_an_uninterrupted_run(tiny_models, tmp_path)
    record_property("outcome", "resumed from checkpoint-5: same steps and adapter")
