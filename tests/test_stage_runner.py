"""script/stage_runner.py: stages in order, finished ones skipped, each in its own process (forked or fresh).

    python -m pytest tests/test_stage_runner.py -q
"""

import os
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
    lane: int | None = None
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


def test_lanes_of_a_group_run_at_the_same_time_with_the_cores_shared(tmp_path, capfd):
    """Lane 0 waits for a file that only lane 1 writes: it passes only if both run at once."""
    flag, progress = tmp_path / "flag", tmp_path / "logs" / "progress_tiny.txt"
    threads = max(1, (os.cpu_count() or 1) // 2)
    wait_for_flag = f"for i in $(seq 100); do [ -f {flag} ] && exit 0; sleep 0.1; done; exit 1"
    stages = [FakeStage("first", "true"),
              FakeStage("train", wait_for_flag, lane=0),
              FakeStage("evaluate", f'[ "$OMP_NUM_THREADS" = {threads} ] && echo scored && touch {flag}', lane=1),
              FakeStage("evaluate_more", "echo more", lane=1),
              FakeStage("last", "true")]
    assert run_stages(stages, "tiny", progress, processes=StageProcesses(fork=False)) == 0
    out = capfd.readouterr().out
    assert f"side by side, {threads} thread" in out and "train | evaluate, evaluate_more" in out
    log = progress.parent / "stages" / "evaluate.log"
    assert "scored" in log.read_text() and "[4/5] evaluate_more done in" in log.read_text()
    assert "scored" in out  # the second lane's log is copied into the pipeline's output
    assert out.index("[5/5] last done in") > out.index("[4/5] evaluate_more done in")
    assert "status: finished" in progress.read_text()


def test_a_failed_lane_fails_the_run_after_the_others_finish_their_stage(tmp_path, capfd):
    progress = tmp_path / "logs" / "progress_tiny.txt"
    stages = [FakeStage("train", "sleep 0.5", lane=0), FakeStage("train_more", "true", lane=0),
              FakeStage("evaluate", "exit 5", lane=1), FakeStage("last", "true")]
    assert run_stages(stages, "tiny", progress, processes=StageProcesses(fork=False)) == 1
    out, err = capfd.readouterr()
    assert "[1/4] train done in" in out and "[4/4] last" not in out
    assert "failed in evaluate" in err and "status: failed" in progress.read_text()


def test_a_group_with_one_lane_left_to_run_runs_it_alone(tmp_path, capfd):
    stages = [FakeStage("train", "true", lane=0), FakeStage("evaluate", "true", finished=True, lane=1)]
    assert run_stages(stages, "tiny", tmp_path / "progress.txt", processes=StageProcesses(fork=False)) == 0
    out = capfd.readouterr().out
    assert "side by side" not in out and "[2/2] evaluate: already finished" in out
