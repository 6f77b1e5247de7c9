"""One refined type, end to end: the shared body of ``train_type{1,2,3,4}_*.py``.

Each type script names its data type and its target metric and hands over to
:func:`train_refined_type`; the type's own metric is the only part that differs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from script import formats
from script.evaluation import completion_perplexity
from script.training_config import CLEAN_DIR
from script.training_data import describe_data_file, load_split_records, to_sft_dataset
from script.training_utils import (
    RunConfig,
    attach_lora,
    build_arg_parser,
    build_trainer,
    load_model_and_tokenizer,
    start_run,
    steering_eval_callbacks,
    train_and_save,
)

logger = logging.getLogger(__name__)

# metric(model, tokenizer, validation_records, run) -> {"validation_<name>": value, ...}
TypeMetric = Callable[[Any, Any, list[dict], RunConfig], dict]


def perplexity_metric(model, tokenizer, records, run) -> dict:
    """Completion perplexity of the assistant turn: the target metric of types 1 and 2."""
    result = completion_perplexity(model, tokenizer, records, run.batch, run.max_length, progress=True)
    return {"validation_perplexity": result["perplexity"], "validation_completion_tokens": result["completion_tokens"]}


def train_refined_type(type_name: str, description: str, metric: TypeMetric, argv: list[str] | None = None,
                       script: str | None = None) -> dict:
    """Train a LoRA adapter on ``<data-dir>/{train,validation}.jsonl`` of one refined type.

    ``metric`` is the guide's target metric of the type (formats.TYPE_TARGETS); it runs before
    and after training, and whether the target was met is recorded in training_info.json.
    """
    parser = build_arg_parser(description, epochs=3)
    parser.add_argument("--data-dir", type=Path, default=CLEAN_DIR / type_name,
                        help="dir with train.jsonl and validation.jsonl (default: %(default)s)")
    args = parser.parse_args(argv)
    run = start_run(args, stage=type_name, script=script or f"train_{type_name}")

    train_file, val_file = args.data_dir / "train.jsonl", args.data_dir / "validation.jsonl"
    train_records = load_split_records(train_file, run.max_samples, run.seed)
    val_records = load_split_records(val_file, run.eval_samples if run.eval_samples > 0 else None, run.seed)
    logger.info("train: %d records, validation: %d records", len(train_records), len(val_records))

    model, tokenizer = load_model_and_tokenizer(run)
    model = attach_lora(model, run)
    history: list[dict] = []
    callbacks = steering_eval_callbacks(run, tokenizer, history)
    trainer = build_trainer(run, model, tokenizer, to_sft_dataset(train_records), callbacks=callbacks)
    name, op, value = formats.TYPE_TARGETS[type_name]
    return train_and_save(
        run, trainer, tokenizer,
        extra_info={
            "type": type_name,
            "train_samples": len(train_records),
            "validation_samples": len(val_records),
            "data_files": [describe_data_file(train_file), describe_data_file(val_file)],
            "validation_history": history,
        },
        evaluate=lambda trained: metric(trained, tokenizer, val_records, run),
        target=(f"validation_{name}", op, value),
    )
