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

Side by side: consecutive stages that carry a ``lane`` form a group whose lanes run at the same
time, each its stages in order, with the cores shared out between them (one thread each on 2
cores). A registry entry asks for it (``pipeline_side_by_side``): on 2 CPU cores two one-thread
processes get more done than one two-thread process. The group ends when every lane has; after a
failure no lane starts another stage.

Output goes to the runner's own stdout and stderr (the pipeline log), one ``=== [i/n] name ...``
line before and after each stage; ``logs/progress_<MODEL>.txt`` names the stage running. The first
lane of a group writes there as it runs; the others write to ``logs/stages/<stage>.log`` (follow
it with ``tail -f``), copied into the pipeline log when the group ends.
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

# A stage's compute threads, for torch (OpenMP, MKL) and for any process it starts.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

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
    lane: int | None  # None: runs alone; otherwise its lane in a side-by-side group

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

    def __init__(self, fork: bool | None = None, python: str = sys.executable, threads: int | None = None):
        self.python = python
        self._fork = fork  # None: decided when a stage first runs (importing torch takes seconds)
        self.preloaded = False
        self.threads = threads  # compute threads per stage (None: the libraries' default, every core)

    @property
    def fork(self) -> bool:
        if self._fork is None:
            self._fork = sys.platform == "linux" and torch_without_gpu_runtime()
        return self._fork

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
        if self.threads:
            env = {**env, **{name: str(self.threads) for name in THREAD_VARIABLES}}
        argv = project_module_argv(command, self.python) if self.fork else None
        if argv is None:
            process = subprocess.Popen(["bash", "-c", command], env={**os.environ, **env})
            return _wait(lambda: process.wait())
        self.preload()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _run_module_and_exit(argv, env, self.threads)
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


def _run_module_and_exit(argv: Sequence[str], env: Mapping[str, str], threads: int | None = None) -> None:
    """In the forked child: ``python -m module args`` as the interpreter would run it, then exit."""
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.update(env)
        if threads:  # torch read OMP_NUM_THREADS when the runner imported it
            import torch

            torch.set_num_threads(threads)
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
    """Every stage in order; 0 when all finished, 1 when one failed (no stage starts after it)."""
    processes = processes or StageProcesses()
    numbered = list(enumerate(stages, 1))
    described = False
    position = 0
    while position < len(numbered):
        group = [numbered[position]]
        if group[0][1].lane is not None:
            while position + len(group) < len(numbered) and numbered[position + len(group)][1].lane is not None:
                group.append(numbered[position + len(group)])
        position += len(group)
        lanes = _lanes(group, force)
        if lanes and not described:  # once, before the first stage that runs
            print(f"=== {processes.describe()}", flush=True)
            described = True
        if len(lanes) > 1:
            status = _run_side_by_side(lanes, len(stages), model, progress_file, force, processes)
        else:
            status = _run_lane(group, len(stages), model, progress_file, force, processes)
        if status != 0:
            return 1
    total = len(stages)
    _progress(progress_file, [f"pipeline: {model}", f"stage: {total}/{total} done", f"status: finished {_now()}"])
    return 0


def _lanes(group: list[tuple[int, PipelineStage]], force: bool) -> list[list[tuple[int, PipelineStage]]]:
    """The lanes of a group that have a stage to run, in lane order (a lone stage is a lane of one)."""
    by_lane: dict[int, list[tuple[int, PipelineStage]]] = {}
    for i, stage in group:
        by_lane.setdefault(stage.lane or 0, []).append((i, stage))
    return [lane for _, lane in sorted(by_lane.items()) if force or not all(stage.done() for _, stage in lane)]


def _run_side_by_side(lanes, total: int, model: str, progress_file: Path, force: bool,
                      processes: StageProcesses) -> int:
    """The lanes at the same time, each in a forked lane process with its share of the cores."""
    threads = max(1, (os.cpu_count() or 1) // len(lanes))
    names = [", ".join(stage.name for _, stage in lane) for lane in lanes]
    print(f"=== side by side, {threads} thread{'s' if threads > 1 else ''} each: "
          + " | ".join(names), flush=True)
    shared = StageProcesses(processes.fork, processes.python, threads)
    if shared.fork:
        shared.preload()  # once, before the lanes fork
        shared.preloaded = processes.preloaded = True
    logs = [None] + [progress_file.parent / "stages" / f"{lane[0][1].name}.log" for lane in lanes[1:]]
    for name, log in zip(names[1:], logs[1:]):
        print(f"=== {name}: output in {log} (tail -f it; copied here at the end)", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    pids = []
    for lane, log in zip(lanes, logs):
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                if log is not None:
                    _send_output_to(log)
                status = _run_lane(lane, total, model, progress_file if log is None else None, force, shared)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        pids.append(pid)
    statuses = [_wait(lambda pid=pid: exit_status(os.waitpid(pid, 0)[1])) for pid in pids]
    for log in logs[1:]:
        print(f"=== {log}:", flush=True)
        try:
            sys.stdout.write(log.read_text(encoding="utf-8", errors="replace"))
        except OSError as exc:
            print(f"(could not read {log}: {exc})", file=sys.stderr)
        sys.stdout.flush()
    failed = [name for name, status in zip(names, statuses) if status != 0]
    if failed:
        print(f"=== side by side: failed in {' | '.join(failed)} (above); the other lanes finished the stage "
              "they were running", file=sys.stderr, flush=True)
        _progress(progress_file, [f"pipeline: {model}", f"lanes: {' | '.join(names)}", "status: failed"])
        return 1
    return 0


def _send_output_to(log: Path) -> None:
    """In a lane process: its stdout and stderr, and its stages', go to ``log`` as they are written."""
    log.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)
    # the lane's own lines too, whatever sys.stdout was bound to
    sys.stdout = open(1, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115


def _run_lane(lane, total: int, model: str, progress_file: Path | None, force: bool,
              processes: StageProcesses) -> int:
    """The stages of one lane in order; 1 at the first that failed."""
    for i, stage in lane:
        label = f"[{i}/{total}] {stage.name}"
        if not force and stage.done():
            print(f"=== {label}: already finished, skipped (--force reruns it)", flush=True)
            continue
        position = f"{i}/{total} {stage.name}"
        if progress_file is not None:
            _progress(progress_file, [f"pipeline: {model}", f"stage: {position}", f"started: {_now()}"])
        print(f"=== {label}: {stage.command}", flush=True)
        started = time.monotonic()
        status = processes.run(stage.command, {"PIPELINE_STAGE": position})
        seconds = int(time.monotonic() - started)
        if status != 0:
            print(f"=== {label} FAILED after {seconds}s (exit {status}); fix the error above and rerun "
                  "(finished stages are skipped)", file=sys.stderr, flush=True)
            if progress_file is not None:
                _progress(progress_file, [f"pipeline: {model}", f"stage: {position}", "status: failed"])
            return 1
        try:
            stage.write_record()
        except (OSError, ValueError) as exc:
            print(f"=== {label}: could not record its inputs ({exc}); a restart reruns it", file=sys.stderr)
        print(f"=== {label} done in {seconds}s", flush=True)
    return 0


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")
