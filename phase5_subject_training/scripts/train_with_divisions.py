"""Train a LoRA adapter on division-annotated data and report performance per division (Phase 5, step 3).

    python -m phase5_subject_training.scripts.train_with_divisions \\
        --train-data data/division/type1_text/train.jsonl --val-data data/division/type1_text/validation.jsonl \\
        --model medgemma-4b --output-dir model/divisions/type1_text --epochs 3 --device cuda:0
    python -m phase5_subject_training.scripts.train_with_divisions \\
        --train-data data/division_added/1/train.jsonl --val-data data/division_added/1/validation.jsonl \\
        --output-dir model/divisions/division_1_cardio --epochs 5
    python -m phase5_subject_training.scripts.train_with_divisions --max-steps 2      # tiny smoke run

Training is the project's shared LoRA/SFT machinery (training_utils: registry defaults, flags,
completion-only loss, checkpoints, ``--resume``, final/ + training_info.json). ``--model`` is a
registry name (tiny, medgemma-4b, medgemma-27b); any other value (a hub id such as
google/gemma-2-2b-it, or a model dir) is trained as ``--base-model`` with the hyper-parameters of
the ``--profile`` registry entry. ``--output-dir`` is the guide's name for ``--output``; by default
``model/divisions/<folder of --train-data>`` (type1_text, 1, ...).

After training, every validation record is scored and grouped by its primary division
(``--level top`` groups 1.4.1 under 1):

* accuracy -- a multiple-choice record (question + options + answer letter, type 3) counts 1 or 0
  by letter mode (the answer letter's logit among its options, type-3 prompt); any other record
  counts the share of its completion tokens the model predicts exactly (teacher-forced argmax).
  A division's accuracy is the mean over its records.
* avg_loss -- mean over its records of the mean NLL of the completion tokens.
* count -- records.

A division is weak when accuracy < ``--weak-accuracy`` (default 0.80, the guide) or avg_loss >
``--weak-loss`` (default ln 3 = 1.0986: the loss of perplexity 3, the guide's type-1/2 target).
Outputs in the output dir: ``division_report.json`` ({division: {accuracy, count, avg_loss,
mcq_count, name, weak, weak_reasons}, ..., "OVERALL": {...}}), ``division_report.png`` (accuracy
and loss bars, weak divisions red), the guide's table on stdout, and a ``division_tracking``
section in training_info.json. All validation records are scored unless ``--eval-samples N``.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from phase5_subject_training.divisions import (
    DIVISION_ADDED_DIR,
    MODELS_DIR,
    TAXONOMY_PATH,
    WEAK_ACCURACY,
    WEAK_LOSS,
    division_key,
    evaluate_by_division,
    format_division_table,
    load_taxonomy,
    plot_division_report,
)
from script.data_io import atomic_write_json
from script.training_config import MODEL_CONFIGS
from script.training_data import describe_data_file, load_split_records, to_sft_dataset
from script.training_utils import (
    attach_lora,
    build_arg_parser,
    build_trainer,
    load_model_and_tokenizer,
    start_run,
    steering_eval_callbacks,
    train_and_save,
    update_training_info,
)

logger = logging.getLogger("train_with_divisions")
STAGE = "phase5_divisions"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_arg_parser(__doc__, epochs=3)
    d = parser.add_argument_group("division tracking")
    d.add_argument("--train-data", type=Path, default=DIVISION_ADDED_DIR / "type1_text" / "train.jsonl",
                   help="division-annotated training records (default: %(default)s)")
    d.add_argument("--val-data", type=Path, default=DIVISION_ADDED_DIR / "type1_text" / "validation.jsonl",
                   help="division-annotated validation records (default: %(default)s)")
    d.add_argument("--output-dir", dest="output", type=Path, default=None,
                   help="same as --output (default: model/divisions/<folder of --train-data>)")
    d.add_argument("--profile", default="medgemma-4b", choices=sorted(MODEL_CONFIGS),
                   help="registry entry whose hyper-parameters a non-registry --model trains with (default: %(default)s)")
    d.add_argument("--level", choices=("full", "top"), default="full",
                   help="report divisions as annotated (1.4.1) or by major division (1) (default: %(default)s)")
    d.add_argument("--weak-accuracy", type=float, default=WEAK_ACCURACY,
                   help="weak below this accuracy (default: %(default)s)")
    d.add_argument("--weak-loss", type=float, default=WEAK_LOSS,
                   help="weak above this average loss (default: ln 3 = %(default).4f)")
    d.add_argument("--taxonomy", type=Path, default=TAXONOMY_PATH, help="taxonomy file (default: %(default)s)")
    parser.set_defaults(eval_samples=0)  # every validation record: divisions need their counts
    args = parser.parse_args(argv)
    if args.model not in MODEL_CONFIGS:  # the guide passes hub ids here (google/gemma-2-2b-it)
        args.base_model = args.base_model or args.model
        args.model = args.profile
    if args.output is None:
        args.output = MODELS_DIR / args.train_data.parent.name
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    run = start_run(args, stage=STAGE, script="train_with_divisions")
    taxonomy = load_taxonomy(args.taxonomy)

    train_records = load_split_records(args.train_data, run.max_samples, run.seed)
    val_records = load_split_records(args.val_data, run.eval_samples or None, run.seed)
    train_divisions = Counter(division_key(r, args.level) for r in train_records)
    logger.info("train: %d records, validation: %d records; train divisions: %s", len(train_records),
                len(val_records), dict(train_divisions.most_common()))

    model, tokenizer = load_model_and_tokenizer(run)
    model = attach_lora(model, run)
    history: list[dict] = []
    trainer = build_trainer(run, model, tokenizer, to_sft_dataset(train_records),
                            callbacks=steering_eval_callbacks(run, tokenizer, history))
    info = train_and_save(run, trainer, tokenizer, extra_info={
        "train_samples": len(train_records),
        "validation_samples": len(val_records),
        "data_files": [describe_data_file(args.train_data), describe_data_file(args.val_data)],
        "validation_history": history,
    })
    if not trainer.is_world_process_zero():
        return info

    logger.info("*** Evaluate per division ***")
    report = evaluate_by_division(trainer.model, tokenizer, val_records, taxonomy, batch_size=run.batch,
                                  max_length=run.max_length, level=args.level,
                                  weak_accuracy=args.weak_accuracy, weak_loss=args.weak_loss, progress=True)
    report_file = run.output_dir / "division_report.json"
    chart_file = run.output_dir / "division_report.png"
    atomic_write_json(report_file, report)
    plot_division_report(report, chart_file, title=f"{run.model_name}: {args.val_data}",
                         weak_accuracy=args.weak_accuracy, weak_loss=args.weak_loss)
    print(format_division_table(report))
    weak = {k: v["weak_reasons"] for k, v in report.items() if k != "OVERALL" and v["weak"]}
    if weak:
        print(f"Weak divisions (accuracy < {args.weak_accuracy:.0%} or avg loss > {args.weak_loss:.4f}):")
        for key, reasons in weak.items():
            print(f"  {key:<10}{taxonomy.name(key):<45}{'; '.join(reasons)}")
    print(f"division report: {report_file}\nchart: {chart_file}")
    return update_training_info(run, info, division_tracking={
        "level": args.level, "report": str(report_file), "chart": str(chart_file),
        "weak_accuracy": args.weak_accuracy, "weak_loss": args.weak_loss,
        "train_divisions": dict(train_divisions), "weak_divisions": sorted(weak),
        "overall": report.get("OVERALL"),
        "accuracy_definition": "MCQ records: letter-mode correctness; other records: teacher-forced "
                               "next-token accuracy on the completion; division = mean over records",
    })


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
