"""How the pipeline's stages run: in order, a finished one skipped, each in a process of its own.

    python -m script.pipeline_stages --model tiny --run [--force]    # what run_full_pipeline.sh calls

Each stage is its own process, as if it had been typed at the shell: its exit status decides the
run, and whatever it leaves in memory ends with it. Most stages are ``python -m script.<name>``,
and each of those used to spend its first 5-8 s (on 2 cores) importing torch, transformers, peft
and trl, eleven times in the tiny pipeline. With a CPU build of torch (what ``make setup``
installs) the runner imports those libraries once, the first time a stage needs them, and forks
each such stage from itself: the child runs the same module with the same arguments and
environment and ends with the same exit status, without the imports. With a CUDA, ROCm or XPU
build every stage starts a fresh interpreter instead: a GPU runtime does not survive the fork of a
process that has touched it (library imports probe the device), and there the imports are seconds
against minutes of loading weights. Other stages (a shell script, ``accelerate launch``) always
run through ``bash -c``.

Output goes to the runner's own stdout and stderr (the pipeline log), one ``=== [i/n] name ...``
line before and after each stage; ``logs/progress_<MODEL>.txt`` names the stage running.
"""

from __future__ import annotations

import atexit
import datetime as dt
import importlib
import os
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from script.data_io import atomic_write_text
from script.stage_records import PROJECT_PACKAGES

# What the stages import that takes seconds; each is only a speed-up, so a missing one is skipped.
PRELOAD_MODULES = (
    "torch",
    "transformers",
    "transformers.models.gemma3.modeling_gemma3",
    "transformers.trainer",
    "torch.utils.tensorboard",
    "peft",
    "trl",
    "trl.trainer.sft_trainer",
    "datasets",
    "matplotlib",
)


class PipelineStage(Protocol):
    name: str
    command: str

    def done(self) -> bool: ...

    def write_record(self) -> bool: ...


def torch_without_gpu_runtime() -> bool:
    """True for a build of torch that has no GPU runtime compiled in (its CPU build); False without torch."""
    try:
        import torch
    except ImportError:
        return False
    version = torch.version
    return all(getattr(version, name, None) is None for name in ("cuda", "hip", "xpu"))


def project_module_argv(command: str, python: str = sys.executable) -> list[str] | None:
    """``[module, *args]`` when ``command`` is ``<this interpreter> -m <project module> args``, else None."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if len(words) < 3 or words[1] != "-m":
        return None
    interpreter = words[0] if os.sep in words[0] else (shutil.which(words[0]) or words[0])
    if os.path.abspath(interpreter) != os.path.abspath(python):
        return None
    if words[2].split(".")[0] not in PROJECT_PACKAGES:
        return None
    return words[2:]


def exit_status(wait_status: int) -> int:
    """The shell's reading of a child's end: its exit code, or 128 + the signal that killed it."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


class StageProcesses:
    """Starts the stages' processes; ``fork`` decides whether project modules run in forked children."""

    def __init__(self, fork: bool | None = None, python: str = sys.executable):
        self.python = python
        self.fork = (sys.platform == "linux" and torch_without_gpu_runtime()) if fork is None else fork
        self.preloaded = False

    def describe(self) -> str:
        if self.fork:
            return ("stages run as forks of one process that imports torch, transformers, peft and trl once "
                    "(CPU build of torch)")
        return "each stage starts a fresh interpreter"

    def preload(self) -> None:
        if self.preloaded:
            return
        for name in PRELOAD_MODULES:
            try:
                importlib.import_module(name)
            except ImportError:
                continue
        self.preloaded = True

    def run(self, command: str, env: Mapping[str, str]) -> int:
        """Run one stage to its end and return its exit status (130 when it was interrupted)."""
        argv = project_module_argv(command, self.python) if self.fork else None
        if argv is None:
            process = subprocess.Popen(["bash", "-c", command], env={**os.environ, **env})
            return _wait(lambda: process.wait())
        self.preload()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _run_module_and_exit(argv, env)
        return _wait(lambda: exit_status(os.waitpid(pid, 0)[1]))


def _wait(wait):
    """Wait for the child, through a Ctrl-C: it reaches the child too, which ends in its own way."""
    interrupted = False
    while True:
        try:
            status = wait()
            break
        except KeyboardInterrupt:
            interrupted = True
    return 130 if interrupted and status == 0 else status


def _run_module_and_exit(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """In the forked child: ``python -m module args`` as the interpreter would run it, then exit."""
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.update(env)
        sys.argv = [argv[0], *argv[1:]]
        sys.modules.pop(argv[0], None)  # a module the runner imported runs afresh as __main__, as with -m
        try:
            runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        except KeyboardInterrupt:
            status = 130
        except BaseException:
            traceback.print_exc()
            status = 1
        atexit._run_exitfuncs()  # what the interpreter does on its way out (flushes, temp dirs)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def _progress(path: Path, lines: Sequence[str]) -> None:
    try:
        atomic_write_text(path, "\n".join(lines) + "\n")
    except OSError as exc:  # the progress file is for watching; the run does not depend on it
        print(f"(could not write {path}: {exc})", file=sys.stderr)


def run_stages(stages: Sequence[PipelineStage], model: str, progress_file: Path, force: bool = False,
               processes: StageProcesses | None = None) -> int:
    """Every stage in order; 0 when all finished, 1 at the first that failed (the rest are not started)."""
    processes = processes or StageProcesses()
    total = len(stages)
    print(f"=== {processes.describe()}", flush=True)
    for i, stage in enumerate(stages, 1):
        label = f"[{i}/{total}] {stage.name}"
        if not force and stage.done():
            print(f"=== {label}: already finished, skipped (--force reruns it)", flush=True)
            continue
        position = f"{i}/{total} {stage.name}"
        _progress(progress_file, [f"pipeline: {model}", f"stage: {position}", f"started: {_now()}"])
        print(f"=== {label}: {stage.command}", flush=True)
        started = time.monotonic()
        status = processes.run(stage.command, {"PIPELINE_STAGE": position})
        seconds = int(time.monotonic() - started)
        if status != 0:
            print(f"=== {label} FAILED after {seconds}s (exit {status}); fix the error above and rerun "
                  "(finished stages are skipped)", file=sys.stderr, flush=True)
            _progress(progress_file, [f"pipeline: {model}", f"stage: {position}", "status: failed"])
            return 1
        try:
            stage.write_record()
        except (OSError, ValueError) as exc:
            print(f"=== {label}: could not record its inputs ({exc}); a restart reruns it", file=sys.stderr)
        print(f"=== {label} done in {seconds}s", flush=True)
    _progress(progress_file, [f"pipeline: {model}", f"stage: {total}/{total} done", f"status: finished {_now()}"])
    return 0


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")
