"""script/stage_runner.py: stages in order, finished ones skipped, each in its own process (forked or fresh).

    python -m pytest tests/test_stage_runner.py -q
"""

import shlex
import sys
from dataclasses import dataclass, field

from script.stage_runner import StageProcesses, exit_status, project_module_argv, run_stages

PY = shlex.quote(sys.executable)


@dataclass
class FakeStage:
    name: str
    command: str
    finished: bool = False
    records: list = field(default_factory=list)

    def done(self) -> bool:
        return self.finished

    def write_record(self) -> bool:
        self.records.append(self.name)
        return True


def test_only_project_modules_of_this_interpreter_are_forked():
    assert project_module_argv(f"{PY} -m script.leakage_probe --strict") == ["script.leakage_probe", "--strict"]
    assert project_module_argv(f"{PY} -m refine_scripts.refine_4types") == ["refine_scripts.refine_4types"]
    assert project_module_argv(f"{PY} -m accelerate.commands.launch -m script.train.train_00_plain_text") is None
    assert project_module_argv("/other/python -m script.leakage_probe") is None
    assert project_module_argv(f"PYTHON={PY} bash script/run_test_exclusion.sh") is None
    assert project_module_argv(f"{PY} -m 'unclosed") is None


def test_exit_status_reads_codes_and_signals_as_the_shell_does():
    assert exit_status(0) == 0
    assert exit_status(2 << 8) == 2
    assert exit_status(9) == 128 + 9  # killed by SIGKILL


def test_a_forked_stage_runs_its_module_and_keeps_its_exit_status(tmp_path, capfd):
    processes = StageProcesses(fork=True)
    assert processes.run(f"{PY} -m script.pipeline_stages --model tiny --final-adapter", {}) == 0
    assert "02_trained" in capfd.readouterr().out
    # run_main's status for an unknown model (2) comes back through the fork
    assert processes.run(f"{PY} -m script.pipeline_stages --model nonesuch --final-adapter", {}) == 2
    assert "unknown model 'nonesuch'" in capfd.readouterr().err
    assert processes.preloaded


def test_a_shell_stage_sees_the_stage_environment():
    processes = StageProcesses(fork=True)
    assert processes.run('test "$PIPELINE_STAGE" = "2/5 verify"', {"PIPELINE_STAGE": "2/5 verify"}) == 0
    assert processes.run("exit 3", {}) == 3
    assert not processes.preloaded  # nothing forked, nothing imported


def test_stages_run_in_order_skip_finished_ones_and_stop_at_the_first_failure(tmp_path, capfd):
    progress = tmp_path / "progress_tiny.txt"
    stages = [FakeStage("a", "true", finished=True), FakeStage("b", "true"), FakeStage("c", "exit 4"),
              FakeStage("d", "true")]
    assert run_stages(stages, "tiny", progress, processes=StageProcesses(fork=False)) == 1
    out, err = capfd.readouterr()
    assert "[1/4] a: already finished, skipped" in out and "[2/4] b done in" in out
    assert "[3/4] c FAILED after" in err and "(exit 4)" in err and "[4/4] d" not in out
    assert [s.records for s in stages] == [[], ["b"], [], []]
    assert "status: failed" in progress.read_text() and "3/4 c" in progress.read_text()
    assert run_stages(stages[:2], "tiny", progress, force=True, processes=StageProcesses(fork=False)) == 0
    assert "already finished" not in capfd.readouterr().out  # --force reruns it
    assert "status: finished" in progress.read_text()
