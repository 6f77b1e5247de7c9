"""run_full_pipeline.sh process control: status, stale PID files, refusing a second run, stop.

    python -m pytest tests/test_pipeline_control.py -q
"""

import fcntl
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "script" / "run_full_pipeline.sh"


def run_script(home: Path, *args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDGEMMA_KOREAN_HOME": str(home), "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), "--model", "tiny", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_status_reports_not_running_and_cleans_a_stale_pid_file(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "pipeline_tiny.pid").write_text(f"{dead_pid()}\n")
    result = run_script(tmp_path, "--status")
    assert result.returncode == 0
    assert "not running" in result.stdout
    assert "stale pid file" in result.stderr
    assert not (logs / "pipeline_tiny.pid").exists()


def test_a_second_run_is_refused_while_one_holds_the_lock(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    with open(logs / "pipeline_tiny.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running pipeline holds
        result = run_script(tmp_path, "--data-only")
    assert result.returncode == 1
    assert "already running" in result.stderr


def test_stop_ends_a_running_pipeline_and_its_children(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    # A stand-in pipeline in its own process group with a child, detached from this test process
    # (as --background starts it), so that it is not left a zombie of ours when stopped.
    started = subprocess.run(["bash", "-c", "setsid bash -c 'sleep 300 & wait' >/dev/null 2>&1 & echo $!"],
                             capture_output=True, text=True, timeout=30)
    pid = int(started.stdout.strip())
    try:
        (logs / "pipeline_tiny.pid").write_text(f"{pid}\n")
        assert "running (pid" in run_script(tmp_path, "--status").stdout
        result = run_script(tmp_path, "--stop")
        assert result.returncode == 0 and "stopping pipeline" in result.stdout
        assert not (logs / "pipeline_tiny.pid").exists()
        assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0
    finally:
        subprocess.run(["kill", "-KILL", f"-{pid}"], capture_output=True)


def test_help_lists_the_options():
    result = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for option in ("--background", "--status", "--stop", "--data-only"):
        assert option in result.stdout
