"""run_full_pipeline.sh process control: status, stale PID files, refusing a second run, stop.

    python -m pytest tests/test_pipeline_control.py -q
"""

import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from script.training_config import MODEL_CONFIGS

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "script" / "run_full_pipeline.sh"


def run_script(home: Path, *args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDGEMMA_KOREAN_HOME": str(home), "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), "--model", "tiny", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def process_alive(pid: int) -> bool:
    """kill(pid, 0) through os: never /usr/bin/kill, whose procps-ng 4.0.2 build signals every process
    when given a process group that no longer exists ("kill -KILL -<pgid>")."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is gone for our purposes
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


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
    started = subprocess.run(["bash", "-c", "setsid bash -c 'sleep 300 & wait' run_full_pipeline.sh >/dev/null 2>&1 & echo $!"],
                             capture_output=True, text=True, timeout=30)
    pid = int(started.stdout.strip())
    try:
        (logs / "pipeline_tiny.pid").write_text(f"{pid}\n")
        assert "running (pid" in run_script(tmp_path, "--status").stdout
        result = run_script(tmp_path, "--stop")
        assert result.returncode == 0 and "stopping pipeline" in result.stdout
        assert not (logs / "pipeline_tiny.pid").exists()
        assert not process_alive(pid)
    finally:
        kill_group(pid)


def test_help_lists_the_options():
    result = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for option in ("--background", "--status", "--stop", "--data-only"):
        assert option in result.stdout


def test_stop_ends_a_foreground_pipeline_and_its_children(tmp_path):
    """A pipeline run in the foreground is not a process-group leader; its children must still go."""
    logs = tmp_path / "logs"
    logs.mkdir()
    parent = subprocess.Popen(["bash", "-c", "sleep 300 & sleep 300 & wait", "run_full_pipeline.sh"])
    try:
        for _ in range(50):  # wait until both children exist
            children = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split()
            if len(children) == 2:
                break
            time.sleep(0.1)
        assert len(children) == 2
        (logs / "pipeline_tiny.pid").write_text(f"{parent.pid}\n")
        result = run_script(tmp_path, "--stop")
        assert result.returncode == 0 and "stopping pipeline" in result.stdout
        parent.wait(timeout=30)
        for child in children:
            assert not process_alive(int(child))
    finally:
        parent.kill()


def test_a_pid_file_naming_a_live_process_that_is_not_a_pipeline_is_stale(tmp_path):
    """After a reboot the recorded pid can belong to anything; that must not block a new run."""
    logs = tmp_path / "logs"
    logs.mkdir()
    other = subprocess.Popen(["sleep", "300"])
    try:
        (logs / "pipeline_tiny.pid").write_text(f"{other.pid}\n")
        result = run_script(tmp_path, "--status")
        assert "not running" in result.stdout and "stale pid file" in result.stderr
        assert process_alive(other.pid)  # and it was not touched
    finally:
        other.kill()
        other.wait()


def hub_cache_holding(cache: Path, *repo_ids: str) -> Path:
    """A hub cache in huggingface_hub's layout where each repo's config.json has been downloaded."""
    for repo_id in repo_ids:
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text("0" * 40)
        snapshot = repo / "snapshots" / ("0" * 40)
        snapshot.mkdir(parents=True, exist_ok=True)
        (snapshot / "config.json").write_text("{}")
    return cache


def run_dry(home: Path, model: str, *flags: str, cached: bool = True) -> subprocess.CompletedProcess:
    """The pipeline's --dry-run, offline; ``cached``: the hub cache holds the real models (a user who
    downloaded them once), else it is empty."""
    env = {**os.environ, "MEDGEMMA_KOREAN_HOME": str(home), "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1"}
    real = [c.path for c in MODEL_CONFIGS.values() if not c.embedded] if cached else []
    env["HF_HUB_CACHE"] = str(hub_cache_holding(home / ("hub_cache" if cached else "empty_hub_cache"), *real))
    env.pop("DICT_DIR", None)
    env.pop("ALLOW_SAMPLE_DICTS", None)
    return subprocess.run(["bash", str(SCRIPT), "--model", model, "--dry-run", *flags], env=env,
                          capture_output=True, text=True, timeout=60)


def dry_run_stages(home: Path, model: str, *flags: str) -> dict[str, str]:
    result = run_dry(home, model, *flags)
    assert result.returncode == 0, result.stderr
    rows = [line.split("] ", 1)[1] for line in result.stdout.splitlines() if line.startswith("[")]
    return {row.split(" ", 1)[0]: row.split("): ", 1)[1] for row in rows}


def test_a_real_model_needs_real_dictionaries_before_any_stage(tmp_path):
    refused = run_dry(tmp_path, "medgemma-4b")
    assert refused.returncode == 2 and "DICT_DIR" in refused.stderr and "ALLOW_SAMPLE_DICTS=1" in refused.stderr
    assert not [line for line in refused.stdout.splitlines() if line.startswith("[")]  # no stage listed or run
    dicts = tmp_path / "dicts" / "01_medical_dict"
    dicts.mkdir(parents=True)
    (dicts / "korean_medical_dict.jsonl").write_text('{"term": "폐렴", "definition": "폐의 염증."}\n')
    missing = run_dry(tmp_path, "medgemma-4b", "--dict-dir", str(dicts.parent))
    assert missing.returncode == 2 and "char_dict.jsonl" in missing.stderr
    assert "korean_animal_medical_dict.jsonl" in missing.stderr  # every file the sources name (sources.py)
    (dicts / "char_dict.jsonl").write_text('{"term": "↑", "definition": "증가."}\n')
    (dicts / "korean_animal_medical_dict.jsonl").write_text('{"term": "파보", "definition": "개의 감염병."}\n')
    stages = dry_run_stages(tmp_path, "medgemma-4b", "--dict-dir", str(dicts.parent))
    assert stages["download"].endswith(f"--local-dir {dicts.parent.resolve()}")
    assert "--local-dir" not in dry_run_stages(tmp_path, "tiny")["download"]  # the embedded world's sample
    unknown = run_dry(tmp_path, "medgemma-9b")
    assert unknown.returncode == 2 and "unknown model 'medgemma-9b'" in unknown.stderr
    several = run_dry(tmp_path, "medgemma-9b", "--launch", "nonesuch", "--dict-dir", str(tmp_path / "nowhere"))
    assert several.returncode == 2 and "3 problems, nothing started" in several.stderr
    assert all(part in several.stderr for part in ("medgemma-9b", "--launch nonesuch", "no such directory"))


def test_a_hub_model_the_stages_could_not_load_is_refused_before_any_stage(tmp_path):
    """Offline with an empty hub cache, MedGemma's weights cannot be had: the run stops before the
    data stages (with every other problem), not at the first stage that loads the model."""
    refused = run_dry(tmp_path, "medgemma-4b", "--allow-sample-dicts", cached=False)
    assert refused.returncode == 2 and not [line for line in refused.stdout.splitlines() if line.startswith("[")]
    assert "google/medgemma-4b-it is not in the hub cache" in refused.stderr and "HF_HUB_OFFLINE" in refused.stderr
    assert "huggingface-cli download google/medgemma-4b-it" in refused.stderr
    both = run_dry(tmp_path, "medgemma-27b-text", "--launch", "nonesuch", "--allow-sample-dicts", cached=False)
    assert "2 problems, nothing started" in both.stderr and "google/medgemma-27b-text-it" in both.stderr
    assert run_dry(tmp_path, "medgemma-4b", "--allow-sample-dicts").returncode == 0  # once downloaded: fine
    assert run_dry(tmp_path, "tiny", cached=False).returncode == 0  # the embedded model is built, not downloaded
    # the data stages alone (make data) load no model
    assert run_dry(tmp_path, "medgemma-4b", "--data-only", "--allow-sample-dicts", cached=False).returncode == 0


def test_dry_run_adds_the_cloze_evaluations_for_cloze_scored_models_only(tmp_path):
    """tiny's registry entry scores KorMedMCQA in cloze form too: base and final cloze evaluations,
    their own summary (last), and a second adapter that trains the embeddings; MedGemma gets none."""
    tiny = dry_run_stages(tmp_path, "tiny")
    assert list(tiny)[-1] == "summary_cloze"
    assert "--mode cloze" in tiny["evaluate_base_cloze"] and "--mode cloze" in tiny["evaluate_final_cloze"]
    assert list(tiny).index("evaluate_final_cloze") > list(tiny).index("train_02")
    assert "--train-embeddings" in tiny["add_lora_adapter_01"]
    big = dry_run_stages(tmp_path, "medgemma-4b", "--allow-sample-dicts")
    assert not [name for name in big if "cloze" in name]
    assert "--train-embeddings" not in big["add_lora_adapter_01"]
    assert "--mode letter --prompt train02" in big["evaluate_final"]
    # the leakage probe follows the exclusion; it stops the embedded world's run, only reports on real data
    assert list(tiny).index("leakage_probe") == list(tiny).index("test_exclusion") + 1
    assert tiny["leakage_probe"].endswith("--strict") and "--strict" not in big["leakage_probe"]
    # epochs and the reasoning budget come from the registry entries, not from the shell
    assert "--epochs 2 " in tiny["train_02"] and "--epochs 5 " in big["train_02"] and "--epochs 3 " in big["train_01"]
    assert "--max-new-tokens 96" in tiny["evaluate_final"] and "--max-new-tokens" not in big["evaluate_final"]
    # the letter evaluations' batch is the entry's too (tiny decodes faster per row in large batches on CPU)
    assert "--mode letter --prompt train02 --batch-size 128" in tiny["evaluate_base"]
    assert "--batch-size 32" in big["evaluate_base"] and "--batch-size 32" in tiny["evaluate_base_cloze"]
    assert "tiny_model" in tiny and "tiny_model" not in big
    # quality gates report and go on; --strict makes them stop the run
    assert big["refine"].endswith("--report-only") and big["korean_proficiency"].endswith("--no-fail")
    strict = dry_run_stages(tmp_path, "medgemma-4b", "--allow-sample-dicts", "--strict")
    assert "--report-only" not in strict["refine"] and "--no-fail" not in strict["korean_proficiency"]
    assert strict["leakage_probe"].endswith("--strict")


def test_per_model_settings_live_in_the_registry_not_in_shell_case_blocks(tmp_path, monkeypatch):
    """The stage table reads the registry: a model's entry changes its stages, its name does not."""
    import dataclasses

    from script import training_config
    from script.pipeline_stages import PipelineOptions, pipeline_stages

    def commands(model: str) -> dict[str, str]:
        return {s.name: s.command for s in pipeline_stages(PipelineOptions(model, python="py"), home=tmp_path)}

    tiny = commands("tiny")
    assert "--epochs 2 " in tiny["train_00"] and "tiny_model" in tiny and "evaluate_base_cloze" in tiny
    monkeypatch.setitem(training_config.MODEL_CONFIGS, "tiny", dataclasses.replace(
        training_config.MODEL_CONFIGS["tiny"], pipeline_epochs=(7, 8, 9), mcq_scoring="letter", eval_max_new_tokens=None))
    changed = commands("tiny")
    assert "--epochs 7 " in changed["train_00"] and "--epochs 9 " in changed["train_02"]
    assert "evaluate_base_cloze" not in changed and "--max-new-tokens" not in changed["evaluate_final"]
    for script in SCRIPT.parent.glob("*.sh"):
        text = script.read_text(encoding="utf-8")
        assert not re.search(r"tiny\|tiny-\*|medgemma-[0-9]+b\)", text), f"{script.name}: a case on model names"


def test_a_stage_is_done_when_its_output_is_newer_than_what_it_measured(tmp_path):
    from script.pipeline_stages import Stage

    trained, report = tmp_path / "training_info.json", tmp_path / "report.json"
    stage = Stage("evaluate_final", "script/validation_kor_med_test.py", "true", report, trained)
    assert not stage.done()  # nothing written yet
    trained.write_text("{}")
    report.write_text("{}")
    os.utime(trained, (1_000, 1_000))
    os.utime(report, (2_000, 2_000))
    assert stage.done()
    os.utime(trained, (3_000, 3_000))  # the model retrained after it was scored
    assert not stage.done()
    assert not Stage("refine", "refine_scripts/refine_4types.py", "true").done()  # no output: never done


def test_a_recorded_stage_is_current_while_its_command_code_and_input_content_are(tmp_path):
    from script.stage_records import code_digest, code_files, record_path, stage_is_current, write_stage_record

    root = tmp_path / "project"
    (root / "script").mkdir(parents=True)
    (root / "script" / "stage.py").write_text("from script import helper\n")
    (root / "script" / "helper.py").write_text("import script.deep\n")
    (root / "script" / "deep.py").write_text("X = 1\n")
    (root / "script" / "unrelated.py").write_text("Y = 1\n")
    inputs, output = tmp_path / "raw", tmp_path / "out.json"
    (inputs / "a").mkdir(parents=True)
    (inputs / "a" / "rows.jsonl").write_text('{"q": 1}\n')
    output.write_text("{}")
    record = record_path(tmp_path / "data", "refine")
    script = root / "script" / "stage.py"
    assert [p.name for p in code_files(script, root)] == ["deep.py", "helper.py", "stage.py"]

    def current(command="run") -> bool:
        return stage_is_current(record, command, code_digest(script, root), (inputs,), (output,))

    assert not current()  # never recorded
    write_stage_record(record, "run", code_digest(script, root), (inputs,))
    assert current() and not current("run --strict")
    os.utime(inputs / "a" / "rows.jsonl", (5_000, 5_000))
    assert current()  # rewritten with the same content: still current
    (root / "script" / "unrelated.py").write_text("Y = 2\n")
    assert current()  # code the stage cannot run does not count
    (root / "script" / "deep.py").write_text("X = 2\n")
    assert not current()  # an imported module changed
    write_stage_record(record, "run", code_digest(script, root), (inputs,))
    (inputs / "a" / "rows.jsonl").write_text('{"q": 2}\n')
    assert not current()
    write_stage_record(record, "run", code_digest(script, root), (inputs,))
    (inputs / "b.jsonl").write_text("{}\n")
    assert not current()  # a new input file
    write_stage_record(record, "run", code_digest(script, root), (inputs,))
    output.unlink()
    assert not current()  # its output is gone
    output.write_text("{}")
    record.write_text("not json")
    assert not current()


def test_a_second_data_run_with_nothing_changed_skips_every_stage(tmp_path):
    """The data stages on the sample mirror, twice, then once more after a raw file changed."""
    first = run_script(tmp_path, "--data-only", timeout=300)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    stages = re.findall(r"=== \[\d+/\d+\] (\w+) done in", first.stdout)
    assert stages[:2] == ["download", "refine"] and "korean_proficiency" in stages
    second = run_script(tmp_path, "--data-only", timeout=300)
    assert second.returncode == 0
    assert re.findall(r"=== \[\d+/\d+\] (\w+): already finished, skipped", second.stdout) == stages
    law = tmp_path / "data" / "raw" / "by_source" / "kormedlawqa" / "default" / "train.jsonl"
    law.write_text("\n".join(law.read_text(encoding="utf-8").splitlines()[:-1]) + "\n", encoding="utf-8")
    third = run_script(tmp_path, "--data-only", timeout=300)
    assert third.returncode == 0
    rerun = re.findall(r"=== \[\d+/\d+\] (\w+) done in", third.stdout)
    assert "download" not in rerun and rerun[:4] == ["refine", "refine_plain_text", "refine_dictionaries",
                                                     "refine_kor_med_test"]
    forced = run_script(tmp_path, "--data-only", "--dry-run", "--force")
    assert "(would run)" in forced.stdout and "would skip" not in forced.stdout


def test_an_unknown_launch_config_is_refused_before_any_stage(tmp_path):
    refused = run_dry(tmp_path, "tiny", "--launch", "nonesuch")
    assert refused.returncode == 2 and "--launch nonesuch" in refused.stderr and "ddp" in refused.stderr
    assert not [line for line in refused.stdout.splitlines() if line.startswith("[")]


def test_volume_settings_reach_the_download_and_train_00(tmp_path):
    """train_00 reads the registry's plain-text cap (the guide's 10,000 for MedGemma, all for tiny);
    --max-samples replaces it; --text-mb becomes the download's --max-mb."""
    from script.pipeline_stages import PipelineOptions, pipeline_stages

    def commands(model: str, **options) -> dict[str, str]:
        return {s.name: s.command for s in pipeline_stages(PipelineOptions(model, python="py", **options),
                                                            home=tmp_path)}

    assert "--max-samples 10000" in commands("medgemma-4b", allow_sample_dicts=True)["train_00"]
    assert "--max-samples" not in commands("tiny")["train_00"]
    assert commands("medgemma-4b", max_samples=50)["train_00"].count("--max-samples") == 1
    assert "--max-mb 0" in commands("tiny", text_mb=0.0)["download"]
    assert "--max-mb" not in commands("tiny")["download"]


def test_side_by_side_lanes_come_from_the_registry(tmp_path):
    """tiny's base evaluations (lane 1) run beside add_lora_adapter_00, train_00 and train_01 (lane 0);
    everything that needs both, and every stage of a GPU-sized model, runs alone."""
    from script.pipeline_stages import PipelineOptions, pipeline_stages

    def lanes(model: str) -> dict:
        return {s.name: s.lane for s in pipeline_stages(PipelineOptions(model, python="py", allow_sample_dicts=True),
                                                         home=tmp_path)}

    tiny = lanes("tiny")
    assert tiny["evaluate_base"] == tiny["evaluate_base_cloze"] == 1
    assert tiny["add_lora_adapter_00"] == tiny["train_00"] == tiny["train_01"] == 0
    assert {name for name, lane in tiny.items() if lane is not None} == {
        "evaluate_base", "evaluate_base_cloze", "add_lora_adapter_00", "train_00", "train_01"}
    names = list(tiny)  # one run of consecutive stages, so the runner sees one group
    assert names.index("train_01") - names.index("evaluate_base") == 4
    assert set(lanes("medgemma-4b").values()) == {None}


def test_the_tiny_model_stage_is_skipped_on_a_restart_by_its_record(tmp_path):
    """The builder checks itself, but a restart with nothing changed starts no process for it."""
    from script.pipeline_stages import PipelineOptions, pipeline_stages

    stage = next(s for s in pipeline_stages(PipelineOptions("tiny", python="py"), home=tmp_path) if s.name == "tiny_model")
    assert [p.parent.name for p in stage.outputs] == ["tiny-gemma3", "tiny-gemma3-mm"]
    assert not stage.done()  # never recorded
    for output in stage.outputs:
        output.parent.mkdir(parents=True)
        output.write_text("{}")
    stage.write_record()
    assert stage.done()
    stage.outputs[1].unlink()  # a model deleted: the stage runs (and the builder rebuilds it)
    assert not stage.done()


def test_every_trainer_is_reached_by_a_make_target():
    """script/train/__init__ names a target per trainer, and `make train TRAINER=` runs any of them."""
    import script.train

    trainers = sorted(p.stem for p in (REPO / "script" / "train").glob("train_*.py"))
    for trainer in trainers:
        assert trainer in script.train.__doc__, trainer
        dry = subprocess.run(["make", "-n", "-C", str(REPO), "train", f"TRAINER={trainer}", "STAMP="],
                             capture_output=True, text=True)
        assert f"-m script.train.{trainer} --model tiny" in dry.stdout, dry.stdout + dry.stderr
    refused = subprocess.run(["make", "-s", "-C", str(REPO), "train", "TRAINER=nonesuch", "STAMP="],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "choose one of: train_00_plain_text" in refused.stderr


def test_the_hub_check_says_why_a_model_cannot_be_had_and_only_warns_when_the_hub_is_unreachable(
        monkeypatch, caplog):
    import httpx2
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    from script.model_loading import hub_model_access_problem

    request = httpx2.Request("GET", "https://huggingface.co/api/models/google/medgemma-4b-it/auth-check")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)

    def hub_answers(error: Exception | None) -> str | None:
        def auth_check(repo_id: str, **kwargs) -> None:
            if error is not None:
                raise error
        monkeypatch.setattr(huggingface_hub, "auth_check", auth_check)
        return hub_model_access_problem("google/medgemma-4b-it")

    gated = hub_answers(GatedRepoError("gated", response=httpx2.Response(403, request=request)))
    assert "accept its terms at https://huggingface.co/google/medgemma-4b-it" in gated and "HF_TOKEN" in gated
    missing = hub_answers(RepositoryNotFoundError("not found", response=httpx2.Response(404, request=request)))
    assert "no such model on the hub" in missing and "huggingface-cli whoami" in missing
    assert hub_answers(None) is None  # access granted
    with caplog.at_level("WARNING", logger="script.model_loading"):
        assert hub_answers(httpx2.ConnectError("Name or service not known", request=request)) is None
    assert "could not ask the hub about google/medgemma-4b-it" in caplog.text
    # a model in the hub cache is not asked about at all
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: "/cache/config.json")
    assert hub_answers(GatedRepoError("gated", response=httpx2.Response(403, request=request))) is None
