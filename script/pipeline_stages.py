"""The pipeline's stages, in one table: name, the script it runs, its command, and when it is done.

``script/run_full_pipeline.sh`` (``make pipeline``) keeps only process control (background,
PID and lock files, the log, the progress file); which stages run, with which arguments, and
which of them already finished come from here, and so do the report's stage list
(report_sources.py) and the adapter ``make merge`` exports.

    python -m script.pipeline_stages --model tiny --plan        # env lines, then one line per stage
    python -m script.pipeline_stages --model tiny --done train_02 && echo finished
    python -m script.pipeline_stages --model medgemma-4b --final-adapter

What differs per model is a registry field (training_config.ModelConfig: embedded, pipeline_epochs,
mcq_scoring, eval_max_new_tokens, pipeline_plain_text_samples), never a branch on the model's name.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from script.data_io import DataError
from script.download_all_datasets import REVISIONS_FILE, check_local_files, load_revisions
from script.model_loading import hub_model_access_problem
from script.sources import SOURCES
from script.stage_records import code_digest, record_path, stage_is_current, write_stage_record
from script.stage_runner import StageProcesses, run_stages
from script.training_config import (
    EVAL_BATCH_SIZE,
    HOME,
    PROJECT_ROOT,
    STAGE_00,
    STAGE_01,
    STAGE_01_ADAPTER,
    STAGE_02,
    TINY_MM_MODEL_DIR,
    TINY_MODEL_DIR,
    ConfigError,
    ModelConfig,
    UnknownModelError,
    get_model_config,
)

RAW_ADAPTER_STAGE = "raw_lora_added"  # add_lora_adapter.py without --on
LAUNCH_CONFIG_DIR = PROJECT_ROOT / "configs" / "accelerate"

# The trained stages the report lists, in the pipeline's order: (model/<dir>, what it is).
TRAINED_STAGES = (
    (STAGE_00, "train_00: plain text"),
    (STAGE_01, "train_01: medical dictionary with a plain-text monitor"),
    (STAGE_02, "train_02: KorMedMCQA with reasoning"),
)
# KorMedMCQA on the guide's 604 set, in the format train_02 teaches: the model writes its
# <reasoning>...</reasoning> and the option letter is read right after it (letter mode, train02
# prompt), so the untrained base and the final adapter are measured the same way. The letter
# batch is the registry entry's (letter_eval_batch_size).
LETTER_EVAL_ARGS = "--split guide604 --mode letter --prompt train02"
CLOZE_EVAL_ARGS = f"--split guide604 --mode cloze --batch-size {EVAL_BATCH_SIZE}"


def letter_eval_args(config: ModelConfig) -> str:
    return f"{LETTER_EVAL_ARGS} --batch-size {config.letter_eval_batch_size}"


@dataclass(frozen=True)
class Stage:
    """One step: ``command`` runs ``script``. A trained or evaluated stage is done when ``output``
    exists (and, with ``newer_than``, was written after that file: an evaluation is stale once its
    model retrains). A stage with ``inputs`` (the data stages, the summaries) is done when its
    record (script/stage_records.py) says it last succeeded with this command, this code and inputs
    of the same content, and every one of ``outputs`` is still there."""

    name: str
    script: str
    command: str
    output: Path | None = None
    newer_than: Path | None = None
    inputs: tuple[Path, ...] | None = None
    outputs: tuple[Path, ...] = ()
    record: Path | None = None  # where the record of an ``inputs`` stage is kept
    root: Path = PROJECT_ROOT
    lane: int | None = None  # its lane in a side-by-side group (script/stage_runner.py); None: alone

    def done(self) -> bool:
        if self.inputs is not None:
            return self.record is not None and stage_is_current(
                self.record, self.command, code_digest(self.root / self.script, self.root), self.inputs,
                self.outputs, skip=(self.record.parent,))
        if self.output is None or not self.output.is_file():
            return False
        if self.newer_than is None or not self.newer_than.exists():
            return True
        return self.output.stat().st_mtime > self.newer_than.stat().st_mtime

    def write_record(self) -> bool:
        """After a successful run: note what it ran on (a no-op for output-marked stages)."""
        if self.inputs is None or self.record is None:
            return False
        write_stage_record(self.record, self.command, code_digest(self.root / self.script, self.root), self.inputs,
                           skip=(self.record.parent,))
        return True


@dataclass(frozen=True)
class PipelineOptions:
    model: str
    python: str = sys.executable
    data_only: bool = False
    skip_00: bool = False
    epochs: int | None = None
    epochs_00: int | None = None
    epochs_01: int | None = None
    epochs_02: int | None = None
    launch: str | None = None
    nproc: int | None = None
    max_samples: int | None = None
    text_mb: float | None = None  # download cap of each text corpus (None: the registry's; 0: whole)
    dict_dir: Path | None = None
    allow_sample_dicts: bool = False
    strict: bool = False


def stage_dir(model: str, stage: str, home: Path = HOME) -> Path:
    return home / "model" / stage / model


def final_adapter(model: str, home: Path = HOME) -> Path:
    """The pipeline's last adapter: what ``make merge`` exports and the report scores."""
    return stage_dir(model, STAGE_02, home) / "final"


def eval_report(model: str, role: str, home: Path = HOME) -> Path:
    return home / "logs" / f"kormedmcqa_{model}_{role}.json"


def check_options(options: PipelineOptions) -> None:
    """Refuse, before any stage starts, a run that cannot work (a background run is checked too);
    every problem found is listed in one error."""
    problems = []
    try:
        config = get_model_config(options.model)
    except (ConfigError, UnknownModelError) as exc:  # the model's own checks below need its entry
        problems.append(str(exc))
        config = None
    if options.launch and not (LAUNCH_CONFIG_DIR / f"{options.launch}.yaml").is_file():
        choices = " ".join(sorted(p.stem for p in LAUNCH_CONFIG_DIR.glob("*.yaml")))
        problems.append(f"--launch {options.launch}: no {LAUNCH_CONFIG_DIR / options.launch}.yaml "
                        f"(choose one of: {choices})")
    if options.text_mb is not None and options.text_mb < 0:
        problems.append(f"--text-mb/TEXT_MB {options.text_mb:g}: a size in MB (0: download the text corpora whole)")
    try:
        load_revisions(REVISIONS_FILE)
    except DataError as exc:
        problems.append(f"source revisions: {exc}")
    # Dictionaries: the embedded world trains on the shipped sample; a real model on the user's own,
    # never silently on the ~835 synthetic sample entries.
    if options.dict_dir is not None:
        if not options.dict_dir.is_dir():
            problems.append(f"--dict-dir/DICT_DIR {options.dict_dir}: no such directory")
        elif check_local_files(options.dict_dir, [s for s in SOURCES if s.is_local]) != 0:
            problems.append(f"--dict-dir/DICT_DIR {options.dict_dir}: dictionary files missing (above)")
    elif config is not None and not config.embedded and not options.allow_sample_dicts:
        problems.append(
            f"MODEL={options.model} trains train_01 and its lexicons on medical dictionaries, and none are set.\n"
            f"  Point DICT_DIR (make pipeline MODEL={options.model} DICT_DIR=/path, or --dict-dir) at a folder "
            "laid out like\n  data/sample/local/ (01_medical_dict/*.jsonl, one {\"term\", \"definition\"} object "
            "per line; README, \"Dictionaries\"),\n  or set ALLOW_SAMPLE_DICTS=1 to use the ~835 synthetic sample "
            "entries (a smoke run, not a model).")
    # A hub model the stages cannot load (gated and not accepted, no login, offline and not cached)
    # would otherwise stop the run at its first model stage, after the data stages.
    if config is not None and not config.embedded and not options.data_only:
        access = hub_model_access_problem(config.path)
        if access:
            problems.append(f"MODEL={options.model}: {access}")
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} problems, nothing started:\n" + "\n".join(f"- {p}" for p in problems))


def environment(options: PipelineOptions) -> dict[str, str]:
    """Variables every stage runs with: the embedded world never reaches for the hub."""
    env = {"HF_HUB_DISABLE_TELEMETRY": "1"}
    if get_model_config(options.model).embedded:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


def pipeline_stages(options: PipelineOptions, home: Path = HOME, root: Path = PROJECT_ROOT) -> list[Stage]:
    """Every stage of one run, in order; a stage is listed only when its script is in this checkout."""
    config = get_model_config(options.model)
    model, py = options.model, shlex.quote(options.python)
    # offline (the embedded world, or HF_HUB_OFFLINE=1): the datasets come from the local hub mirror
    offline = config.embedded or os.environ.get("HF_HUB_OFFLINE", "0") == "1"
    stages: list[Stage] = []
    data, logs = home / "data", home / "logs"
    raw, refined, clean, sets = data / "raw", data / "refined", data / "refined_clean", data / "kormedmcqa_test"

    def add(name: str, script: str, command: str, output: Path | None = None, newer_than: Path | None = None,
            lane: int | None = None):
        if (root / script).exists():
            stages.append(Stage(name, script, command, output, newer_than, root=root, lane=lane))

    def add_recorded(name: str, script: str, command: str, inputs: tuple[Path, ...], outputs: tuple[Path, ...]):
        """A stage skipped on a restart when its command, code and inputs are unchanged."""
        if (root / script).exists():
            stages.append(Stage(name, script, command, inputs=inputs, outputs=outputs,
                                record=record_path(data, name), root=root))

    # ---- data ----
    if not options.data_only and config.embedded:
        # the builder skips models that exist; the record spares a restart even the process that checks
        tiny_dirs = (home / "model" / Path(TINY_MODEL_DIR).name, home / "model" / Path(TINY_MM_MODEL_DIR).name)
        add_recorded("tiny_model", "script/embedded/make_tiny_model.py", f"{py} -m script.embedded.make_tiny_model",
                     (root / "data" / "sample",), tuple(d / "config.json" for d in tiny_dirs))
    download = (f" --local-dir {shlex.quote(str(options.dict_dir.resolve()))}" if options.dict_dir else "") + \
        (" --strict" if options.strict else "") + \
        (f" --max-mb {options.text_mb:g}" if options.text_mb is not None else "")  # --strict: any failed source stops
    from_dir = f" --from-dir {shlex.quote(str(root / 'data' / 'sample'))}" if offline else ""
    dictionaries = options.dict_dir or (root / "data" / "sample" / "local")
    add_recorded("download", "script/download_all_datasets.py",
                 f"{py} -m script.download_all_datasets{from_dir}{download}",
                 ((root / "data" / "sample",) if offline else ()) + (dictionaries, REVISIONS_FILE),
                 (raw / "manifest.json",))
    # Quality gates report and the run goes on (real data has rough sources: the guide's own run missed
    # its type-2 coverage target); --strict makes them stop it. A malformed refined record (verify) is a
    # bug, not a data-quality finding, and always stops.
    gate_refine, gate_proficiency = ("", "") if options.strict else (" --report-only", " --no-fail")
    by_source = (raw / "by_source",)
    add_recorded("refine", "refine_scripts/refine_4types.py", f"{py} -m refine_scripts.refine_4types{gate_refine}",
                 by_source, (refined / "refine_stats.json",))
    add_recorded("refine_plain_text", "refine_scripts/refine_plain_text.py",
                 f"{py} -m refine_scripts.refine_plain_text", by_source, (refined / "00_plain_text",))
    add_recorded("refine_dictionaries", "refine_scripts/refine_dictionaries.py",
                 f"{py} -m refine_scripts.refine_dictionaries", by_source, (refined / "01_medical_dict.json",))
    add_recorded("refine_kor_med_test", "refine_scripts/refine_kor_med_test.py",
                 f"{py} -m refine_scripts.refine_kor_med_test", by_source, (refined / "02_kor_med_test",))
    add_recorded("verify", "refine_scripts/verify_formats.py", f"{py} -m refine_scripts.verify_formats",
                 (refined,), ())
    add_recorded("test_exclusion", "script/run_test_exclusion.sh",
                 f"PYTHON={py} bash {shlex.quote(str(root / 'script' / 'run_test_exclusion.sh'))}",
                 (raw / "by_source" / "kormedmcqa", refined), (sets / "sets.json", clean))
    # Can the evaluation sets be answered by copying the nearest training question? The embedded world
    # is built so that they cannot (a failure there is a bug: stop); on real data it is reported.
    probe = " --strict" if config.embedded or options.strict else ""
    add_recorded("leakage_probe", "script/leakage_probe.py", f"{py} -m script.leakage_probe{probe}",
                 (sets, clean), (clean / "leakage_probe.json",))
    add_recorded("korean_proficiency", "script/validate_korean_proficiency.py",
                 f"{py} -m script.validate_korean_proficiency --all{gate_proficiency}",
                 (refined, clean), (logs / "korean_proficiency.json",))
    if options.data_only:
        return stages

    # ---- training: the guide's four steps (00 plain text -> 01 dictionary with a plain-text monitor ->
    # a second LoRA -> 02 MCQ with reasoning), each stage starting from the previous stage's adapter ----
    train = f"{py} -m"
    if options.launch:
        nproc = f" --num_processes {options.nproc}" if options.nproc else ""
        train = (f"{py} -m accelerate.commands.launch --config_file "
                 f"{shlex.quote(str(LAUNCH_CONFIG_DIR / options.launch))}.yaml{nproc} -m")
    epochs = [e if e is not None else (options.epochs if options.epochs is not None else default)
              for e, default in zip((options.epochs_00, options.epochs_01, options.epochs_02), config.pipeline_epochs)]
    common = f"--model {model} --resume" + (f" --max-samples {options.max_samples}" if options.max_samples else "")
    budget = f" --max-new-tokens {config.eval_max_new_tokens}" if config.eval_max_new_tokens is not None else ""
    # Models whose registry entry scores KorMedMCQA in cloze form (the embedded tiny model: letter form
    # stays at chance at its size) are also measured that way, base and final, with a summary of its
    # own; their second adapter trains the embeddings.
    cloze = config.mcq_scoring == "cloze"
    trained = {stage: stage_dir(model, stage, home) for stage in (STAGE_00, STAGE_01, STAGE_01_ADAPTER, STAGE_02)}
    raw_adapter = stage_dir(model, RAW_ADAPTER_STAGE, home)
    final, final_info = final_adapter(model, home), trained[STAGE_02] / "training_info.json"

    def evaluate(role: str, target: str, args: str, newer_than: Path | None = None, lane: int | None = None) -> None:
        script = ("script/validation_kor_med_test.py" if role.startswith("base")
                  else "script/train/train_02_kor_med_test.py")  # a final evaluation needs train_02
        report = eval_report(model, role, home)
        add(f"evaluate_{role}", script,
            f"{py} -m script.validation_kor_med_test --model {target} {args} --output {report}", report, newer_than,
            lane)

    # With the registry's pipeline_side_by_side, the base's evaluations (lane 1) run beside the first
    # training stages (lane 0): neither needs the other's output, and the summaries come after both.
    side = config.pipeline_side_by_side
    evaluate("base", model, letter_eval_args(config) + budget, lane=1 if side else None)
    if cloze:
        evaluate("base_cloze", model, CLOZE_EVAL_ARGS, lane=1 if side else None)
    first_base = ""
    if not options.skip_00:
        add("add_lora_adapter_00", "script/add_lora_adapter.py",
            f"{py} -m script.add_lora_adapter {common} --train-embeddings --rslora",
            raw_adapter / "adapter_config.json", lane=0 if side else None)
        # the registry caps train_00's records (the guide's --max-samples 10000) unless --max-samples is given
        plain_text = "" if options.max_samples or config.pipeline_plain_text_samples is None else \
            f" --max-samples {config.pipeline_plain_text_samples}"
        add("train_00", "script/train/train_00_plain_text.py",
            f"{train} script.train.train_00_plain_text {common}{plain_text} --epochs {epochs[0]} "
            f"--base-model {raw_adapter}", trained[STAGE_00] / "training_info.json", lane=0 if side else None)
        first_base = f" --base-model {trained[STAGE_00] / 'final'}"
    add("train_01", "script/train/train_01_with_00_monitor.py",
        f"{train} script.train.train_01_with_00_monitor {common} --epochs {epochs[1]}{first_base}",
        trained[STAGE_01] / "training_info.json", lane=0 if side else None)
    add("add_lora_adapter_01", "script/add_lora_adapter.py",
        f"{py} -m script.add_lora_adapter {common}{' --train-embeddings' if cloze else ''} "
        f"--on {trained[STAGE_01] / 'final'}",
        trained[STAGE_01_ADAPTER] / "adapter_config.json", trained[STAGE_01] / "training_info.json")
    add("train_02", "script/train/train_02_kor_med_test.py",
        f"{train} script.train.train_02_kor_med_test {common}{budget} --epochs {epochs[2]} "
        f"--base-model {trained[STAGE_01_ADAPTER]}", final_info)
    evaluate("final", str(final), letter_eval_args(config) + budget, final_info)
    if cloze:
        evaluate("final_cloze", str(final), CLOZE_EVAL_ARGS, final_info)
    for suffix in ("", "_cloze") if cloze else ("",):
        if (root / "script/train/train_02_kor_med_test.py").exists():
            reports = (eval_report(model, "base" + suffix, home), eval_report(model, "final" + suffix, home))
            summary = logs / f"kormedmcqa_{model}_summary{suffix}.md"
            add_recorded(f"summary{suffix}", "script/evaluation_report.py",
                         f"{py} -m script.evaluation_report --compare {reports[0]} {reports[1]} --names base final "
                         f"--output {summary}", reports, (summary,))
    return stages


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="registry name (training_config.MODEL_CONFIGS)")
    parser.add_argument("--python", default=sys.executable, help="interpreter the stages run with")
    parser.add_argument("--data-only", action="store_true", help="the data stages only (make data)")
    parser.add_argument("--skip-00", action="store_true", help="start at train_01 from the base model")
    for flag in ("--epochs", "--epochs-00", "--epochs-01", "--epochs-02"):
        parser.add_argument(flag, type=int, default=None, help="epochs (default: the registry's pipeline_epochs)")
    parser.add_argument("--launch", default=None, help="configs/accelerate/<LAUNCH>.yaml to run the trainers under")
    parser.add_argument("--nproc", type=int, default=None, help="processes of a --launch run")
    parser.add_argument("--max-samples", type=int, default=None, help="training records per stage")
    parser.add_argument("--text-mb", type=float, default=None,
                        help="download cap of each text corpus in MB (default: the registry's 500; 0: whole)")
    parser.add_argument("--dict-dir", type=Path, default=None, help="your medical dictionaries (README, Dictionaries)")
    parser.add_argument("--allow-sample-dicts", action="store_true", help="a real model on the synthetic sample")
    parser.add_argument("--strict", action="store_true", help="quality gates stop the run")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--plan", action="store_true",
                      help="check the options, then print 'env<TAB>NAME=VALUE' lines and 'stage<TAB>name<TAB>done"
                           "<TAB>command' lines (done: 1 when its output is there)")
    what.add_argument("--done", metavar="STAGE", help="exit 0 when STAGE finished, 1 when it has to run")
    what.add_argument("--record", metavar="STAGE",
                      help="after STAGE succeeded: record its command, code and inputs, so that a restart with "
                           "nothing changed skips it (a no-op for stages marked by their output)")
    what.add_argument("--final-adapter", action="store_true", help="print the pipeline's final adapter dir")
    what.add_argument("--run", action="store_true",
                      help="check the options, then run the stages in order, skipping finished ones "
                           "(script/stage_runner.py); exit 1 at the first that fails")
    parser.add_argument("--force", action="store_true", help="with --run: rerun finished stages too")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fields = set(PipelineOptions.__dataclass_fields__)
    options = PipelineOptions(**{k: v for k, v in vars(args).items() if k in fields})
    if args.final_adapter:
        get_model_config(options.model)
        print(final_adapter(options.model))
        return 0
    if args.done or args.record:
        name = args.done or args.record
        stage = next((s for s in pipeline_stages(options) if s.name == name), None)
        if stage is None:
            return 1
        if args.record:
            stage.write_record()
            return 0
        return 0 if stage.done() else 1
    check_options(options)
    if args.run:
        os.environ.update(environment(options))  # before the runner imports the libraries the stages use
        return run_stages(pipeline_stages(options), options.model, HOME / "logs" / f"progress_{options.model}.txt",
                          force=args.force, processes=StageProcesses())
    for key, value in environment(options).items():
        print(f"env\t{key}={value}")
    for stage in pipeline_stages(options):
        print(f"stage\t{stage.name}\t{int(stage.done())}\t{stage.command}")
    return 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
