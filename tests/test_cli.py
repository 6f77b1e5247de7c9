"""script/cli.py: how a script ends. Each kind of failure gives its exit status and one ``error:``
line (no traceback), a bug keeps its traceback, data_io's atomic writers name the file the user
asked for (not a temp name), and every runnable script goes through ``run_main``.

    python -m pytest tests/test_cli.py -q
"""

from __future__ import annotations

import ast
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from script import cli, data_io
from script.data_io import DataError
from script.training_config import ConfigError, UnknownModelError
from tests.conftest import REPO_ROOT

SCRIPT_DIRS = ("script", "script/train", "script/bench", "script/embedded", "refine_scripts",
               "phase5_subject_training/scripts")


def os_error(number: int, filename: str | None = None, filename2: str | None = None) -> OSError:
    return OSError(number, os.strerror(number), filename, None, filename2)


def run(main, monkeypatch, capsys) -> tuple[int, str]:
    """(exit status, stderr) of ``run_main(main)``."""
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    with pytest.raises(SystemExit) as exited:
        cli.run_main(main)
    return exited.value.code, capsys.readouterr().err


def raising(exc: BaseException):
    def main():
        raise exc
    return main


def chained(outer: BaseException, inner: BaseException) -> BaseException:
    """``outer`` as a library raises it: ``raise outer from inner``."""
    try:
        try:
            raise inner
        except BaseException as caught:
            raise outer from caught
    except BaseException as wrapped:
        return wrapped


@pytest.mark.parametrize("exc, status, expected", [
    (ConfigError("--lr must be positive"), 2, "error: --lr must be positive"),
    (DataError("data/x.jsonl:3: invalid JSON (Expecting value at column 1)"), 2,
     "error: data/x.jsonl:3: invalid JSON (Expecting value at column 1)"),
    (UnknownModelError("unknown model 'gpt'; choose one of tiny, medgemma-4b"), 2,
     "error: unknown model 'gpt'; choose one of tiny, medgemma-4b"),
    (os_error(errno.ENOSPC, "/out/train.jsonl"), 74,
     "error: /out/train.jsonl: No space left on device (nothing was replaced; free some space and rerun"),
    (os_error(errno.EDQUOT, "/out/train.jsonl"), 74, "error: /out/train.jsonl: Disk quota exceeded (nothing was"),
    (os_error(errno.EROFS, "/out"), 74, "error: /out: Read-only file system (nothing was replaced; fix the permissions"),
    (os_error(errno.EACCES, "/out/a.json"), 74, "error: /out/a.json: Permission denied"),
    (os_error(errno.EPERM, "/out/a.json"), 74, "error: /out/a.json: Operation not permitted"),
    (os_error(errno.ENOENT, "/in/missing.jsonl"), 74, "error: /in/missing.jsonl: No such file or directory (check"),
    (os_error(errno.ENOTDIR, "/blocker/refined"), 74, "error: /blocker/refined: Not a directory (a file stands"),
    (os_error(errno.EIO, "/out/a.json"), 74, "error: /out/a.json: Input/output error (the device"),
    (os_error(errno.ENOSPC), 74, "error: No space left on device (nothing was replaced"),
    (os_error(errno.EACCES, "/out/.a.tmp", "/out/a"), 74, "error: /out/.a.tmp -> /out/a: Permission denied"),
    (chained(RuntimeError("saving failed"), os_error(errno.ENOSPC, "/out/x.bin")), 74,
     "error: /out/x.bin: No space left on device"),
    # the Rust writers (safetensors, tokenizers) and torch.save's stream writer do not raise OSError
    (Exception("No space left on device (os error 28)"), 74, "error: No space left on device (nothing was"),
    (chained(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
             RuntimeError("basic_ios::clear: iostream error")), 74, "error: torch.save could not write the file"),
    (KeyboardInterrupt(), 130, "error: interrupted (Ctrl-C)"),
])
def test_each_failure_ends_in_one_line_and_its_exit_status(exc, status, expected, monkeypatch, capsys):
    code, err = run(raising(exc), monkeypatch, capsys)
    assert code == status
    assert err.startswith(expected), err
    assert err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("exc", [ValueError("a bug"), KeyError("missing"), os_error(errno.EBADF),
                                 Exception("no errno here (os error 9)"), RuntimeError("Parent directory x")])
def test_a_bug_keeps_its_traceback(exc, monkeypatch, capsys):
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    with pytest.raises(type(exc)) as raised:
        cli.run_main(raising(exc))
    assert raised.value is exc
    assert capsys.readouterr().err == ""


def test_a_bug_while_handling_a_disk_error_is_still_a_bug(monkeypatch, capsys):
    def main():
        try:
            raise os_error(errno.ENOENT, "/cache/a.json")
        except FileNotFoundError:
            return {}["missing"]

    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    with pytest.raises(KeyError):
        cli.run_main(main)
    assert capsys.readouterr().err == ""


def test_the_traceback_variable_shows_handled_errors_too(monkeypatch, capsys):
    exc = os_error(errno.ENOSPC, "/out/a.json")
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(OSError) as raised:
        cli.run_main(raising(exc))
    assert raised.value is exc and capsys.readouterr().err == ""


@pytest.mark.parametrize("result, status", [(0, 0), (None, 0), ({"metrics": {}}, 0), (1, 1), (3, 3)])
def test_the_result_of_main_is_the_exit_status(result, status, monkeypatch, capsys):
    assert run(lambda: result, monkeypatch, capsys) == (status, "")


def test_argparse_usage_errors_pass_through(monkeypatch, capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--n", type=int)
    code, err = run(lambda: parser.parse_args(["--n", "many"]), monkeypatch, capsys)
    assert code == 2 and "usage: x" in err and "invalid int value" in err


def test_a_real_safetensors_failure_names_the_file(tmp_path, monkeypatch, capsys):
    """safetensors reports "(os error 20)"; the file comes from its save_file frame."""
    import torch
    from safetensors.torch import save_file

    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    target = blocker / "adapter_model.safetensors"
    code, err = run(lambda: save_file({"w": torch.zeros(2)}, str(target)), monkeypatch, capsys)
    assert code == 74
    assert err.startswith(f"error: {target}: Not a directory (a file stands where a folder is needed"), err


def test_an_open_progress_bar_gets_its_own_line(monkeypatch, capsys):
    from tqdm import tqdm

    bars = []

    def main():
        bars.append(tqdm(total=4, file=sys.stderr))
        bars[0].update(1)
        raise os_error(errno.ENOSPC, "/out/a.json")

    code, err = run(main, monkeypatch, capsys)
    bars[0].close()
    assert code == 74
    assert "\nerror: /out/a.json: No space left on device" in err, err


# ---------------------------------------------------------------------------
# data_io names the destination, not the temp file
# ---------------------------------------------------------------------------
def failing_fdopen(number: int, monkeypatch) -> None:
    """Writable files opened through os.fdopen raise ``number`` (without a file name) on write."""
    real = os.fdopen

    class Failing:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            raise OSError(number, os.strerror(number))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.handle, name)

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: Failing(real(fd, mode, *a, **k)))


def test_atomic_write_names_the_target_when_the_disk_is_full(tmp_path, monkeypatch):
    target = tmp_path / "out" / "train.jsonl"
    data_io.atomic_write_jsonl(target, [{"id": 1}])
    failing_fdopen(errno.ENOSPC, monkeypatch)
    with pytest.raises(OSError) as raised:
        data_io.atomic_write_jsonl(target, [{"id": 2}])
    monkeypatch.undo()
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(target))
    assert raised.value.__cause__ is not None  # the original is kept for debugging
    assert target.read_text() == '{"id": 1}\n'
    assert sorted(p.name for p in target.parent.iterdir()) == ["train.jsonl"]


def test_atomic_write_keeps_the_error_class(tmp_path, monkeypatch):
    failing_fdopen(errno.EACCES, monkeypatch)
    with pytest.raises(PermissionError) as raised:
        data_io.atomic_write_text(tmp_path / "a.txt", "x")
    assert raised.value.filename == str(tmp_path / "a.txt")


def test_a_temp_file_that_cannot_be_created_is_named_as_the_target(tmp_path, monkeypatch):
    def read_only(dir=None, prefix="", suffix=""):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.path.join(dir, f"{prefix}x1y2{suffix}"))

    monkeypatch.setattr(data_io.tempfile, "mkstemp", read_only)
    with pytest.raises(OSError) as raised:
        data_io.atomic_write_json(tmp_path / "stats.json", {})
    assert (raised.value.errno, raised.value.filename) == (errno.EROFS, str(tmp_path / "stats.json"))


def test_atomic_write_dir_names_the_file_at_its_place_in_the_target(tmp_path, monkeypatch):
    target = tmp_path / "type1_text"

    def write(tmp: Path) -> None:
        data_io.atomic_write_jsonl(tmp / "sub" / "train.jsonl", [{"id": 1}])
        failing_fdopen(errno.ENOSPC, monkeypatch)
        data_io.atomic_write_jsonl(tmp / "sub" / "validation.jsonl", [{"id": 2}])

    with pytest.raises(OSError) as raised:
        data_io.atomic_write_dir(target, write)
    monkeypatch.undo()
    assert raised.value.filename == str(target / "sub" / "validation.jsonl")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_an_error_about_another_file_is_left_alone(tmp_path):
    missing = tmp_path / "input.jsonl"

    def write(tmp: Path) -> None:
        missing.read_text()

    with pytest.raises(FileNotFoundError) as raised:
        data_io.atomic_write_dir(tmp_path / "out", write)
    assert raised.value.filename == str(missing) and raised.value.__cause__ is None


# ---------------------------------------------------------------------------
# Every runnable script goes through run_main
# ---------------------------------------------------------------------------
def main_block(tree: ast.Module) -> ast.If | None:
    for node in tree.body:
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"):
            return node
    return None


def test_every_script_main_goes_through_run_main():
    checked, wrong = 0, []
    for folder in SCRIPT_DIRS:
        for path in sorted((REPO_ROOT / folder).glob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            has_main = any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)
            block = main_block(tree)
            if not has_main or block is None:
                continue
            calls = {n.func.id for n in ast.walk(block) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
            checked += 1
            if "run_main" not in calls:
                wrong.append(f"{path.relative_to(REPO_ROOT)}:{block.lineno}: __main__ does not call run_main(main)")
    assert checked >= 40 and not wrong, "\n".join(wrong)


def test_a_script_on_the_command_line(tmp_path):
    """A real script: exit 74 and one line for a path it cannot write; a bad input file ends in its
    ``path:line`` error line."""
    results = tmp_path / "results.json"
    results.write_text('{"rows": []}')
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    command = [sys.executable, "-m", "script.reliability_table", "--results", str(results)]
    blocked = subprocess.run([*command, "--output", str(blocker / "page.md")], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=120)
    assert blocked.returncode == 74, blocked.stderr
    assert blocked.stderr.startswith(f"error: {blocker}: ") and blocked.stderr.count("\n") == 1, blocked.stderr
    assert blocker.read_text() == "a file where a folder should be"

    results.write_text('{"rows": [')
    bad = subprocess.run(command + ["--output", str(tmp_path / "page.md")], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith(f"error: {results}:1: invalid JSON"), bad.stderr
