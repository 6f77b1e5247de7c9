"""Faults during real runs: kill -9 at seeded random points of the data stages, the trainers and the
loop-until-target, then a restart compared with an uninterrupted run; a full disk and a read-only
output folder (previous outputs intact, and the command line ends with one ``error:`` line naming
the file and exit status 74, no traceback: script/cli.py).

Already covered elsewhere and not repeated here: a type trainer killed at a fixed step and resumed
(tests/test_resume.py), the loop's round bookkeeping after a kill (tests/test_round_training.py), two
pipeline starts at once and stale PID files (tests/test_pipeline_control.py).

    python -m pytest tests/reliability/test_faults.py -q              # the fast cases
    python -m pytest tests/reliability/test_faults.py -q -m ""        # all (make test-reliability)
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from script import cli, data_io
from script.training_utils import FAULT_KILL_ENV
from tests.reliability import stages
from tests.reliability.stages import REPO, STAGES

SLOW = pytest.mark.reliability_slow
MAX_KILL_ATTEMPTS = 12
STAGE = {s.name: s for s in STAGES}


class Pipeline:
    """A work dir with the scaled input; stages run (in order) the first time a test needs them."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.reference: dict[str, dict] = {}
        self.timing: dict[str, stages.Timing] = {}
        stages.build_input(work)

    def ensure(self, name: str) -> dict:
        for stage in STAGES:
            if stage.name not in self.reference:
                self.timing[stage.name] = stages.run(stage, self.work)
                self.reference[stage.name] = stages.snapshot(self.work, stage)
            if stage.name == name:
                return self.reference[name]
        raise KeyError(name)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Pipeline:
    return Pipeline(tmp_path_factory.mktemp("faults"))


# ---------------------------------------------------------------------------
# kill -9 in the data stages
# ---------------------------------------------------------------------------
def kill_and_restart(pipeline: Pipeline, name: str, seed: int, kills: int) -> dict:
    """Kill the stage ``kills`` times while it writes (seeded points; with or without previous outputs),
    check what the kill left, restart it and compare with the uninterrupted run every time."""
    stage, work = STAGE[name], pipeline.work
    reference = pipeline.ensure(name)
    rng = random.Random(seed)
    landed = attempts = with_previous = 0
    while landed < kills and attempts < MAX_KILL_ATTEMPTS:
        attempts += 1
        previous = rng.random() < 0.5
        if not previous:
            stages.remove_outputs(work, stage)
        outcome = stages.run_killed(stage, work, rng, pipeline.timing[name])
        left_mid_write = bool(stages.temp_files(work, stage))
        for out in stage.outputs:  # what readers do first: put back a folder renamed aside by the kill
            data_io.recover_dir(work / out)
        after = stages.snapshot(work, stage)  # every file present parses completely
        for file, content in after.items():
            if file not in stage.progressive:
                assert content == reference[file], f"{name}: {file} is not the complete old/new version after the kill"
        assert not stages.consistent(work, stage, after), stages.consistent(work, stage, after)
        if previous:
            assert set(after) == set(reference), f"{name}: previous outputs lost: {set(reference) - set(after)}"
        # a progressive stage killed between two atomic writes left fewer parts: also mid-run
        partial = bool(stage.progressive) and set(after) != set(reference)
        if outcome == "killed" and (left_mid_write or partial):
            landed += 1
            with_previous += previous
        stages.run(stage, work)  # the restart
        restarted = stages.snapshot(work, stage)
        assert restarted == reference, f"{name}: the restarted run differs from the uninterrupted one"
        assert not stages.duplicate_ids(restarted)
        assert not stages.temp_files(work, stage), f"{name}: temp files of the killed run left behind"
    assert landed >= kills, f"{name}: {landed} of {attempts} kills landed while it was writing"
    return {"attempts": attempts, "landed": landed, "with_previous": with_previous}


def record_kills(record_property, result: dict) -> None:
    record_property("outcome", f"each output complete or absent after the kill, all equal to an uninterrupted "
                               f"run after the restart ({result['landed']} of {result['attempts']} kills mid-write, "
                               f"{result['with_previous']} of those over previous outputs)")


@pytest.mark.fault("kill -9 + restart", "data stage: refine_4types", "refine_4types on 8x sample data")
def test_refine_killed_mid_write_then_restarted_equals_an_uninterrupted_run(pipeline, record_property):
    record_kills(record_property, kill_and_restart(pipeline, "refine_4types", seed=4, kills=1))


@SLOW
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.fault("kill -9 + restart", f"data stage: {n}", "8x sample data, 3 seeded kills"))
    for n in stages.STAGE_NAMES])
def test_every_data_stage_killed_at_random_points(pipeline, name, record_property):
    record_kills(record_property, kill_and_restart(pipeline, name, seed=sum(map(ord, name)), kills=3))


# ---------------------------------------------------------------------------
# A full disk (ENOSPC) and a read-only output folder
# ---------------------------------------------------------------------------
class FullDisk:
    """``os.fdopen`` whose writable files raise ENOSPC once ``budget`` bytes were written in total."""

    def __init__(self, budget: int) -> None:
        self.left = budget
        self.real = os.fdopen

    def fdopen(self, fd, mode="r", *args, **kwargs):
        handle = self.real(fd, mode, *args, **kwargs)
        return _Limited(handle, self) if any(c in mode for c in "wax+") else handle


class _Limited:
    def __init__(self, handle, disk: FullDisk) -> None:
        self._handle, self._disk = handle, disk

    def write(self, data):
        size = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
        if size > self._disk.left:
            self._disk.left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk.left -= size
        return self._handle.write(data)

    def __enter__(self):
        self._handle.__enter__()
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._handle, name)


def in_process(name: str, work: Path):
    """(main, argv) of a data stage, run in this process."""
    import importlib

    stage = STAGE[name]
    return importlib.import_module(stage.module).main, stages.command(stage, work)[3:]


ENOSPC_STAGES = ["refine_4types", "refine_dictionaries", "refine_kor_med_test", "extract_kormedmcqa_test",
                 "exclude_test_from_training"]


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.fault("full disk / read-only output", "ENOSPC while writing (in-process)", n))
    for n in ENOSPC_STAGES])
def test_a_full_disk_fails_clearly_and_keeps_the_previous_outputs(pipeline, name, monkeypatch, record_property):
    reference = pipeline.ensure(name)
    stage = STAGE[name]
    total = sum(len(json.dumps(c, ensure_ascii=False).encode()) if not isinstance(c, bytes) else len(c)
                for c in reference.values())
    disk = FullDisk(random.Random(name).randrange(1, max(2, total // 2)))
    monkeypatch.setattr(os, "fdopen", disk.fdopen)
    main, argv = in_process(name, pipeline.work)
    with pytest.raises(OSError) as raised:
        main(argv)
    monkeypatch.undo()
    assert raised.value.errno == errno.ENOSPC, f"the disk-full error was masked by: {raised.value!r}"
    named = str(raised.value.filename or "")
    assert named.startswith(str(pipeline.work)) and ".tmp-" not in named, f"the error names {named!r}"
    assert stages.snapshot(pipeline.work, stage) == reference, "previous outputs changed"
    assert not stages.temp_files(pipeline.work, stage), "temp files left behind"
    record_property("outcome", "OSError ENOSPC raised naming the output file (not a temp name), previous outputs "
                               "intact, no temp files")


def namespace_available() -> str | None:
    """None when `unshare -m` + mount work here (root with CAP_SYS_ADMIN), else why not."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare/mount not installed"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt && umount /mnt"],
                           capture_output=True, text=True, timeout=30)
    return None if probe.returncode == 0 else f"no private mount namespace here ({probe.stderr.strip()[:100]})"


def run_in_namespace(mode: str, name: str, pipeline: Pipeline, tmp_path: Path) -> dict:
    reason = namespace_available()
    if reason:
        pytest.skip(reason)
    stage = STAGE[name]
    pipeline.ensure(name)
    previous = tmp_path / "previous"
    for out in stage.outputs:  # the stage's previous outputs, as they sit under refined/
        source = pipeline.work / out
        destination = previous / Path(out).relative_to("refined")
        if source.is_dir():
            shutil.copytree(source, destination)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    work = tmp_path / "work"
    work.mkdir()
    (work / "raw").symlink_to(pipeline.work / "raw")
    child = subprocess.run(["unshare", "-m", sys.executable, "-m", "tests.reliability.fs_child", mode, name, str(work),
                            str(previous)], cwd=REPO, capture_output=True, text=True, timeout=600,
                           env=stages.environment(pipeline.work))
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


def one_error_line(exit_status: int, stderr: str, under: str | Path, reasons: tuple[str, ...]) -> str:
    """The run ended as script/cli.py promises: exit 74 and a single ``error:`` line naming a file
    under ``under`` and the OS's reason, no traceback. Returns that line."""
    assert exit_status == cli.EXIT_IO_ERROR, f"exit status {exit_status}:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, f"expected one error line:\n{stderr[-3000:]}"
    assert f"error: {under}/" in lines[0], lines[0]
    assert any(reason in lines[0] for reason in reasons), lines[0]
    return lines[0]


def named_file(line: str, under: str | Path) -> str:
    """The file an error line names, relative to ``under``."""
    return line.removeprefix(f"error: {under}/").split(": ", 1)[0]


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.fault("full disk / read-only output", "ENOSPC on a real full tmpfs", n))
    for n in ("refine_plain_text", "refine_4types")])
def test_a_real_full_filesystem(pipeline, name, tmp_path, record_property):
    result = run_in_namespace("full", name, pipeline, tmp_path)
    line = one_error_line(result["exit"], result["stderr"], result["mount"], ("No space left on device",))
    assert result["intact"] and not result["leftovers"], result
    record_property("outcome", "exit 74, one error line naming the output file and 'No space left on device', no "
                               "traceback; previous outputs intact, no temp files")
    record_property("error_line", line)


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.fault("full disk / read-only output", "read-only output folder (EROFS)", n))
    for n in ("refine_plain_text", "refine_4types")])
def test_a_read_only_output_folder(pipeline, name, tmp_path, record_property):
    result = run_in_namespace("readonly", name, pipeline, tmp_path)
    line = one_error_line(result["exit"], result["stderr"], result["mount"],
                          ("Read-only file system", "Permission denied", "Operation not permitted"))
    assert result["intact"] and not result["leftovers"], result
    record_property("outcome", "exit 74, one error line naming the output path and 'Read-only file system', no "
                               "traceback; previous outputs intact")
    record_property("error_line", line)


# The files of checkpoint-1 the Trainer (transformers 5.24, PEFT adapter) writes before each of the
# three writers that report a full disk differently: safetensors (Rust "os error 28"), the fast
# tokenizer (Rust, plain Exception) and torch.save (a RuntimeError of its stream writer).
CHECKPOINT_WRITES_BEFORE = {
    "adapter_model.safetensors": ("README.md", "adapter_config.json"),
    "tokenizer.json": ("README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json",
                       "chat_template.jinja"),
    "optimizer.pt": ("README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json",
                     "chat_template.jinja", "tokenizer.json", "training_args.bin"),
}
TRAINER_ON_TMPFS = ["--model", "tiny", "--max-samples", "8", "--max-steps", "2", "--save-steps", "1",
                    "--batch-size", "4", "--max-length", "128", "--show-samples-every", "0", "--eval-samples", "2"]


@pytest.fixture(scope="module")
def checkpoint_sizes(tiny_models, tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """Type-1 data and the size of each checkpoint-1 file of an uninterrupted run on it."""
    from tests.sample_records import write_type1_data

    work = tmp_path_factory.mktemp("checkpoint_enospc")
    write_type1_data(work / "type1_text")
    child = subprocess.run([sys.executable, "-m", "script.train.train_type1_text", *TRAINER_ON_TMPFS,
                            "--data-dir", str(work / "type1_text"), "--output", str(work / "reference")],
                           cwd=REPO, env=trainer_environment(), capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    return work, {p.name: p.stat().st_size for p in (work / "reference" / "checkpoint-1").iterdir()}


def trainer_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != FAULT_KILL_ENV}
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.parametrize("writer", [
    pytest.param("optimizer.pt", marks=pytest.mark.fault(
        "full disk / read-only output", "ENOSPC while the Trainer saves a checkpoint (real tmpfs)",
        "train_type1_text, tiny: torch.save of optimizer.pt")),
    *(pytest.param(w, marks=[SLOW, pytest.mark.fault(
        "full disk / read-only output", "ENOSPC while the Trainer saves a checkpoint (real tmpfs)",
        f"train_type1_text, tiny: {what}")])
      for w, what in (("adapter_model.safetensors", "safetensors adapter"), ("tokenizer.json", "fast tokenizer")))])
def test_a_full_disk_while_the_trainer_saves_a_checkpoint(checkpoint_sizes, writer, tmp_path, record_property):
    """The disk fills while checkpoint-1 is written, at a given file: the writers of torch, safetensors
    and tokenizers do not raise OSError, yet the run ends with the same one line and exit 74."""
    reason = namespace_available()
    if reason:
        pytest.skip(reason)
    work, sizes = checkpoint_sizes
    page = 4096
    size = sum(-(-sizes[f] // page) * page for f in CHECKPOINT_WRITES_BEFORE[writer]) + sizes[writer] // 2
    mount = tmp_path / "fs"
    mount.mkdir()
    shell = ('mount -t tmpfs -o size="$1" tmpfs "$2" || exit 99; mnt="$2"; shift 2; "$@"; status=$?; '
             'ls "$mnt/out/checkpoint-1" > "$mnt.files"; exit $status')
    child = subprocess.run(["unshare", "-m", "sh", "-c", shell, "sh", str(size), str(mount), sys.executable, "-m",
                            "script.train.train_type1_text", *TRAINER_ON_TMPFS, "--data-dir", str(work / "type1_text"),
                            "--output", str(mount / "out")],
                           cwd=REPO, env=trainer_environment(), capture_output=True, text=True, timeout=600)
    line = one_error_line(child.returncode, child.stderr, mount / "out", ("No space left on device",))
    assert named_file(line, mount / "out") == f"checkpoint-1/{writer}", line
    left = Path(f"{mount}.files").read_text().split()
    assert "trainer_state.json" not in left, left  # incomplete: --resume skips and removes it
    record_property("outcome", "exit 74, one error line naming the checkpoint file and 'No space left on device', "
                               "no traceback; the incomplete checkpoint has no trainer_state.json (--resume skips it)")
    record_property("error_line", line)


@pytest.mark.fault("full disk / read-only output", "read-only output folder (chmod 0555)", "refine_dictionaries")
def test_a_write_protected_output_folder(pipeline, tmp_path, record_property):
    """chmod stops ordinary users only: as root (containers, CI) the case is skipped, EROFS above covers it."""
    out = tmp_path / "refined"
    out.mkdir()
    (out / "01_medical_dict.json").write_text("[]")
    out.chmod(0o555)
    try:
        probe = out / ".probe"
        try:
            probe.write_text("x")
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip("this user can write into a 0555 folder (root): see the read-only mount case")
        from refine_scripts import refine_dictionaries

        with pytest.raises(PermissionError):
            refine_dictionaries.main(["--input", str(pipeline.work / "raw"), "--output", str(out)])
        assert (out / "01_medical_dict.json").read_text() == "[]"
    finally:
        out.chmod(0o755)
    record_property("outcome", "PermissionError raised, previous outputs intact")


@pytest.mark.fault("full disk / read-only output", "output path under a regular file (ENOTDIR)", "refine_4types")
def test_an_output_path_that_cannot_be_a_folder(pipeline, tmp_path, record_property):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the output folder should go")
    from refine_scripts import refine_4types

    pipeline.ensure("refine_4types")
    with pytest.raises((NotADirectoryError, FileExistsError)):
        refine_4types.main(["--input", str(pipeline.work / "raw"), "--output", str(blocker / "refined")])
    assert blocker.read_text() == "a file where the output folder should go"
    record_property("outcome", "NotADirectoryError/FileExistsError raised, nothing written")


# ---------------------------------------------------------------------------
# kill -9 in the trainers (fault hook: training_utils.FAULT_KILL_ENV) and the loop
# ---------------------------------------------------------------------------
TRAINER_STEPS, SAVE_STEPS = 8, 3
COMMON = ["--model", "tiny", "--max-steps", str(TRAINER_STEPS), "--save-steps", str(SAVE_STEPS), "--batch-size", "4",
          "--max-length", "128", "--show-samples-every", "0"]


def trainer_args(name: str, work: Path) -> list[str]:
    refined = work / "clean"
    return {
        "train_00_plain_text": ["--data", str(refined / "00_plain_text"), "--validation-samples", "4"],
        "train_01_medical_dict": ["--dictionaries", str(work / "refined" / "01_medical_dict.json"),
                                  str(work / "refined" / "02_char_dict.json"), "--eval-samples", "2"],
        "train_02_kor_med_test": ["--data", str(refined / "02_kor_med_test" / "train.jsonl"), "--eval-samples", "2",
                                  "--max-new-tokens", "16"],
    }[name]


def train(module: str, args: list[str], output: Path, work: Path, kill_at: int | None = None, resume: bool = False):
    env = {k: v for k, v in stages.environment(work).items() if k != FAULT_KILL_ENV}
    env["MEDGEMMA_KOREAN_HOME"] = os.environ["MEDGEMMA_KOREAN_HOME"]  # the session's home: tiny is built there
    if kill_at is not None:
        env[FAULT_KILL_ENV] = str(kill_at)
    command = [sys.executable, "-m", module, *args, "--output", str(output), *(["--resume"] if resume else [])]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def adapter(output: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(output / "final" / "adapter_model.safetensors"))


def assert_same_adapter(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


@SLOW
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.fault("kill -9 + restart", f"trainer: {n}", "tiny model, seeded kill step"))
    for n in ("train_00_plain_text", "train_01_medical_dict", "train_02_kor_med_test")])
def test_trainer_killed_at_a_random_step_resumes_to_the_same_adapter(pipeline, tiny_models, name, tmp_path,
                                                                     record_property):
    pipeline.ensure("exclude_test_from_training")
    module, args = f"script.train.{name}", COMMON + trainer_args(name, pipeline.work)
    straight = train(module, args, tmp_path / "straight", pipeline.work)
    assert straight.returncode == 0, straight.stderr[-3000:]
    kill_at = random.Random(name).randint(SAVE_STEPS + 1, TRAINER_STEPS - 1)
    killed = train(module, args, tmp_path / "killed", pipeline.work, kill_at=kill_at)
    assert killed.returncode == -9, f"expected SIGKILL at step {kill_at}: {killed.stderr[-2000:]}"
    assert not (tmp_path / "killed" / "final").exists()
    resumed = train(module, args, tmp_path / "killed", pipeline.work, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    info = json.loads((tmp_path / "killed" / "training_info.json").read_text(encoding="utf-8"))
    reference = json.loads((tmp_path / "straight" / "training_info.json").read_text(encoding="utf-8"))
    assert info["metrics"]["global_step"] == reference["metrics"]["global_step"] == TRAINER_STEPS
    steps = [entry["step"] for entry in info["loss_history"]]
    assert steps == sorted(set(steps)) and steps[-1] == TRAINER_STEPS, steps  # no step trained twice
    assert_same_adapter(adapter(tmp_path / "straight"), adapter(tmp_path / "killed"))
    record_property("outcome", f"killed at step {kill_at}, resumed: same step count and adapter")


@SLOW
@pytest.mark.fault("kill -9 + restart", "loop until target (train_loop_until_90)",
                   "tiny model, SIGKILL at seeded random moments (rounds, evaluations, state saves)")
def test_loop_until_target_killed_at_random_moments_ends_like_an_uninterrupted_run(pipeline, tiny_models, tmp_path,
                                                                                   record_property):
    """The fault hook counts steps within a round, so the loop is killed from outside instead: at a
    seeded moment of its run, which can fall in a round, an evaluation or the save of its state."""
    import signal
    import time

    pipeline.ensure("exclude_test_from_training")
    args = ["--model", "tiny", "--data-dir", str(pipeline.work / "clean"), "--sets-dir", str(pipeline.work / "sets"),
            "--types", "type1_text", "type3_word", "--max-samples", "8", "--batch-size", "4", "--max-length", "256",
            "--max-loops", "2", "--target", "101", "--eval-samples", "4", "--save-steps", "2",
            "--report-sets", "--seed", "7"]
    module = "script.train.train_loop_until_90"
    started = time.perf_counter()
    straight = train(module, args, tmp_path / "straight", pipeline.work)
    seconds = time.perf_counter() - started
    assert straight.returncode == 0, straight.stderr[-3000:]
    reference = json.loads((tmp_path / "straight" / "loop_history.json").read_text(encoding="utf-8"))
    env = {**stages.environment(pipeline.work), "MEDGEMMA_KOREAN_HOME": os.environ["MEDGEMMA_KOREAN_HOME"]}
    command = [sys.executable, "-m", module, *args, "--output", str(tmp_path / "killed"), "--resume"]
    rng, kills = random.Random(90), []
    while len(kills) < 2:  # two kills in one run, each followed by a --resume
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        moment = rng.uniform(0.3, 0.9) * seconds
        try:
            proc.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills.append(round(moment, 1))
        else:
            assert proc.returncode == 0
            break  # it finished before the kill (the resumes make it shorter): nothing left to kill
    resumed = train(module, args, tmp_path / "killed", pipeline.work, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history = json.loads((tmp_path / "killed" / "loop_history.json").read_text(encoding="utf-8"))

    def rounds(h):
        return [(r["type"], r["start_step"], r["end_step"], r["cursor"]) for r in h["rounds"]]

    assert kills, "no kill landed before the run finished"
    assert rounds(history) == rounds(reference)  # every round once, same data positions
    assert [h["loop"] for h in history["history"]] == [h["loop"] for h in reference["history"]]
    assert_same_adapter(adapter(tmp_path / "straight"), adapter(tmp_path / "killed"))
    record_property("outcome", f"killed {len(kills)}x (at {', '.join(f'{k}s' for k in kills)}), resumed: "
                               "same rounds and final adapter")
