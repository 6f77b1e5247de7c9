"""Type 1 (TEXT): answer Korean medical questions in full text, no reasoning tokens.

Trains a LoRA adapter on the clean refined type-1 data and reports the guide's target metric,
completion perplexity on the validation split (target < 3.0).

    python -m script.train.train_type1_text --model tiny --epochs 1
    python script/train/train_type1_text.py --model medgemma-4b --epochs 3
    python -m script.train.train_type1_text --resume          # continue an interrupted run

Output: model/type1_text/<MODEL>/{checkpoint-N/, final/, training_info.json, README.md}
"""

from __future__ import annotations

import logging
from pathlib import Path

from script import formats
from script.evaluation import completion_perplexity
from script.training_config import CLEAN_DIR
from script.training_utils import (
    attach_lora,
    build_arg_parser,
    build_trainer,
    describe_data_file,
    load_model_and_tokenizer,
    load_split_records,
    start_run,
    to_sft_dataset,
    train_and_save,
)

TYPE = formats.TYPE1_TEXT
logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> dict:
    parser = build_arg_parser(__doc__, epochs=3)
    parser.add_argument("--data-dir", type=Path, default=CLEAN_DIR / TYPE,
                        help="dir with train.jsonl and validation.jsonl (default: %(default)s)")
    args = parser.parse_args(argv)
    run = start_run(args, stage=TYPE, script="train_type1_text")

    # ---- data
    train_file, val_file = args.data_dir / "train.jsonl", args.data_dir / "validation.jsonl"
    train_records = load_split_records(train_file, run.max_samples, run.seed)
    val_records = load_split_records(val_file, run.eval_samples if run.eval_samples > 0 else None, run.seed)
    logger.info("train: %d records, validation: %d records", len(train_records), len(val_records))

    # ---- model
    model, tokenizer = load_model_and_tokenizer(run)
    model = attach_lora(model, run)

    # ---- train, then the guide's type-1 metric on the validation split
    def evaluate(trained_model) -> dict:
        result = completion_perplexity(trained_model, tokenizer, val_records, run.batch, run.max_length)
        return {"validation_perplexity": result["perplexity"],
                "validation_completion_tokens": result["completion_tokens"]}

    trainer = build_trainer(run, model, tokenizer, to_sft_dataset(train_records))
    metric, op, target = formats.TYPE_TARGETS[TYPE]
    return train_and_save(
        run, trainer, tokenizer,
        extra_info={
            "train_samples": len(train_records),
            "validation_samples": len(val_records),
            "data_files": [describe_data_file(train_file), describe_data_file(val_file)],
        },
        evaluate=evaluate,
        target=(f"validation_{metric}", op, target),
    )


if __name__ == "__main__":
    main()
