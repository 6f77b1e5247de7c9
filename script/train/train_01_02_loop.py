"""Loop training: train_01 (dictionary) -> train_02 (MCQ with reasoning) -> evaluate, until good enough.

Loop k runs train_01_medical_dict for --epochs (default 1) from loop k-1's train_02 final/ (loop 1:
--base-model, else the registry model), then train_02_kor_med_test for --epochs from loop k's
train_01 final/, both in this process through their main(). After each loop the KorMedMCQA
accuracy on --eval-samples questions of the steering set (a held-out slice of KorMedMCQA train,
never a test set; train02-style greedy generation, train_02's final evaluation) decides: stop when
it reaches --target-accuracy (percent) or after --max-loops loops. loop_history.json is rewritten
(atomically) after every loop and names the best loop. --resume skips the loops already in
loop_history.json and continues an interrupted loop: a stage whose run record exists is kept, the
other resumes from its last checkpoint.

    python -m script.train.train_01_02_loop --model tiny --max-loops 3
    python script/train/train_01_02_loop.py --model medgemma-4b --max-loops 5 --target-accuracy 80
    python script/train/train_01_02_loop.py --model medgemma-4b --max-loops 5 --resume

Output: model/01_02_loop/<MODEL>/{loop_N/01/, loop_N/02/, loop_history.json, training_info.json, README.md}
(loop_N/01 and loop_N/02 are ordinary train_01 / train_02 outputs with final/ and training_info.json)
"""

from __future__ import annotations

import datetime as _dt
import gc
import logging
from pathlib import Path

from script.cli import setup_logging
from script.data_io import atomic_write_json, read_json
from script.steering import add_steering_args
from script.train import train_01_medical_dict, train_02_kor_med_test
from script.training_config import LOG_DIR, ConfigError
from script.training_utils import build_arg_parser, start_run, write_training_info

logger = logging.getLogger("train_01_02_loop")

STAGE = "01_02_loop"
# Options every stage of every loop gets as given here (the common options and registry overrides).
PASS_THROUGH = ("--max-samples", "--device", "--show-samples-every", "--eval-samples", "--seed", "--lr",
                "--batch-size", "--grad-accum", "--max-length", "--lora-r", "--lora-alpha", "--max-steps",
                "--save-steps", "--quantization", "--gradient-checkpointing", "--steer-on")


def stage_argv(args, output: Path, base_model: str | None, extra: list[str]) -> list[str]:
    argv = ["--model", args.model, "--epochs", str(args.epochs), "--output", str(output)]
    for flag in PASS_THROUGH:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None and not (flag == "--max-steps" and value <= 0):
            argv += [flag, str(value)]
    if base_model:
        argv += ["--base-model", str(base_model)]
    return argv + extra + (["--resume"] if args.resume else [])


def run_stage(main, args, output: Path, base_model: str | None, extra: list[str]) -> dict:
    """One stage of a loop; with --resume a stage that already finished from the same base is kept."""
    record = output / "training_info.json"
    if args.resume and record.is_file() and (output / "final").is_dir():
        info = read_json(record)
        if str(info.get("base_model")) == str(base_model or info.get("base_model")):
            logger.info("%s finished before (%s): kept", output, record)
            return info
    info = main(stage_argv(args, output, base_model, extra))
    gc.collect()  # the stage's model is garbage now; free it before the next one loads
    setup_logging(LOG_DIR / f"{STAGE}_{args.model}.log")  # each stage points the log at its own file
    return info


def stop_reason(loops: list[dict], target: float, max_loops: int) -> str | None:
    if loops and loops[-1].get("accuracy") is not None and loops[-1]["accuracy"] >= target:
        return f"target reached: {loops[-1]['accuracy']}% >= {target}% in loop {loops[-1]['loop']}"
    if len(loops) >= max_loops:
        return f"--max-loops {max_loops} done"
    return None


def main(argv: list[str] | None = None) -> dict:
    parser = build_arg_parser(__doc__, epochs=1)
    parser.add_argument("--max-loops", type=int, default=5, help="at most this many loops (default: %(default)s)")
    parser.add_argument("--target-accuracy", type=float, default=90.0,
                        help="stop once a loop reaches this steering-set accuracy, percent (default: %(default)s)")
    parser.add_argument("--dictionaries", nargs="+", default=None,
                        help="train_01 dictionary files (default: train_01's)")
    parser.add_argument("--mcq-data", type=Path, default=None, help="train_02 items file (default: train_02's)")
    parser.add_argument("--max-new-tokens", type=int, default=256,
                        help="train_02's generation budget for the evaluation (default: %(default)s)")
    add_steering_args(parser)
    args = parser.parse_args(argv)
    if args.max_loops < 1:
        parser.error("--max-loops must be at least 1")
    run = start_run(args, stage=STAGE, script="train_01_02_loop")
    history_path = run.output_dir / "loop_history.json"

    # ---- history: continue it with --resume, else start over ----
    if args.resume and history_path.is_file():
        history = read_json(history_path)
        if history.get("model") != run.model_name:
            raise ConfigError(f"{history_path} is a loop of {history.get('model')!r}, not {run.model_name!r}")
        logger.info("resuming after %d finished loop(s) of %s", len(history["loops"]), history_path)
    else:
        if history_path.is_file():
            logger.warning("%s is replaced: starting over (pass --resume to continue it)", history_path)
        history = {"script": "train_01_02_loop", "model": run.model_name, "base_model": args.base_model,
                   "started_at": run.started_at, "loops": []}
    history.update(target_accuracy=args.target_accuracy, max_loops=args.max_loops, steer_on=args.steer_on,
                   epochs_per_stage=args.epochs)
    if args.steer_on != "steer":
        history["warning"] = f"steered on {args.steer_on}, a test set: the accuracies are not held-out measures"
    loops: list[dict] = history["loops"]
    extra_01 = ["--dictionaries", *map(str, args.dictionaries)] if args.dictionaries else []
    extra_02 = (["--data", str(args.mcq_data)] if args.mcq_data else []) + ["--max-new-tokens", str(args.max_new_tokens)]

    # ---- the loops ----
    previous = loops[-1]["final_dir"] if loops else args.base_model
    while (reason := stop_reason(loops, args.target_accuracy, args.max_loops)) is None:
        k = len(loops) + 1
        loop_dir = run.output_dir / f"loop_{k}"
        logger.info("=== loop %d/%d: train_01 from %s", k, args.max_loops, previous or run.base_model)
        info_01 = run_stage(train_01_medical_dict.main, args, loop_dir / "01", previous, extra_01)
        logger.info("=== loop %d/%d: train_02", k, args.max_loops)
        info_02 = run_stage(train_02_kor_med_test.main, args, loop_dir / "02", str(loop_dir / "01" / "final"), extra_02)
        entry = {
            "loop": k,
            "accuracy": info_02.get("final_accuracy"),
            "train02_score": info_02.get("final_train02_score"),
            "train_01": {"output_dir": str(loop_dir / "01"), "final_accuracy": info_01.get("final_accuracy"),
                         "train_loss": info_01["metrics"].get("train_loss")},
            "train_02": {"output_dir": str(loop_dir / "02"), "train_loss": info_02["metrics"].get("train_loss")},
            "final_dir": str(loop_dir / "02" / "final"),
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        if entry["accuracy"] is None:
            logger.warning("loop %d: no steering-set accuracy (no steering set?): the loop can only stop at "
                           "--max-loops", k)
        loops.append(entry)
        scored = [e for e in loops if e.get("accuracy") is not None]
        best = max(scored, key=lambda e: e["accuracy"]) if scored else loops[-1]
        history.update(best_loop=best["loop"], best_accuracy=best.get("accuracy"), best_final_dir=best["final_dir"])
        atomic_write_json(history_path, history)
        logger.info("loop %d: accuracy %s%% (train02 score %s); best so far: loop %d", k, entry["accuracy"],
                    entry["train02_score"], best["loop"])
        previous = entry["final_dir"]

    # ---- summary ----
    history["stopped"] = reason
    atomic_write_json(history_path, history)
    logger.info("stopped: %s; best loop %s (%s%%): %s", reason, history.get("best_loop"),
                history.get("best_accuracy"), history.get("best_final_dir"))
    write_training_info(run, {
        "loops": len(loops), "stopped": reason, "best_loop": history.get("best_loop"),
        "best_final_dir": history.get("best_final_dir"), "final_accuracy": loops[-1].get("accuracy"),
        "best_accuracy": history.get("best_accuracy"), "validation_samples": run.eval_samples,
        "validation_history": [{"loop": e["loop"], "accuracy": e["accuracy"]} for e in loops],
        "metrics": {"best_accuracy": history.get("best_accuracy"), "loops": len(loops)},
        "loop_history": str(history_path),
    })
    return history


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
