"""Medical dictionary learning: every term of the medical (and character) dictionaries in the guide's
turn format, the loss on the definition only:

    <start_of_turn>user
    Meaning of word {term}:<end_of_turn>
    <start_of_turn>model
    {definition}<end_of_turn>

The model turn ends with <end_of_turn>, so the model learns to stop. Every --show-samples-every
steps, --eval-samples KorMedMCQA questions of the steering set (a held-out slice of KorMedMCQA
train, never a test set; batched with left padding) are scored in letter mode -> validation_history
and TensorBoard; the same questions are scored before and after training (final_accuracy, percent).
A malformed dictionary entry is reported as `path: entry [i]: reason`, skipped and counted.

    python -m script.train.train_01_medical_dict --model tiny --epochs 3
    python script/train/train_01_medical_dict.py --epochs 3 --show-samples-every 50 --eval-samples 10
    python script/train/train_01_medical_dict.py --base-model model/00_trained/medgemma-4b/final

Output: model/01_trained/<MODEL>/{checkpoint-N/, final/, training_info.json, README.md}
"""

from __future__ import annotations

import logging
from pathlib import Path

from script.cli import run_main
from script.evaluation import make_mcq_eval_fn, plain_text_perplexity
from script.steering import add_steering_args, load_steering_set
from script.training_config import CLEAN_DIR, STAGE_01
from script.training_data import (
    describe_data_file,
    load_dictionary_records,
    plain_text_files,
    plain_text_heldout,
    select_samples,
    to_sft_dataset,
)
from script.training_utils import (
    NO_PACKING_WHY,
    adapter_chain_callbacks,
    attach_lora,
    build_arg_parser,
    build_trainer,
    load_model_and_tokenizer,
    make_periodic_eval_callback,
    make_plain_text_monitor,
    prefixed,
    start_run,
    train_and_save,
    training_options,
    update_training_info,
)

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None, monitor: bool = False, script: str = "train_01_medical_dict",
         description: str | None = None) -> dict:
    """The dictionary run; ``monitor`` adds the plain-text forgetting monitor (train_01_with_00_monitor)."""
    parser = build_arg_parser(description or __doc__, epochs=3)
    parser.add_argument("--dictionaries", nargs="+",
                        default=[str(CLEAN_DIR / "01_medical_dict.json"), str(CLEAN_DIR / "02_char_dict.json")],
                        help="dictionary JSON arrays of {\"term\", \"definition\"}, as the exclusion step leaves "
                             "them (default: %(default)s)")
    add_steering_args(parser)
    if monitor:
        m = parser.add_argument_group("plain-text forgetting monitor")
        m.add_argument("--monitor-data", type=Path, default=CLEAN_DIR / "00_plain_text",
                       help="plain-text shards (or one JSONL file) to draw the monitored texts from (default: %(default)s)")
        m.add_argument("--monitor-samples", type=int, default=32,
                       help="held-out plain texts measured each time; seeded, the same every time, and a subset "
                            "of what train_00 held out with the same seed (default: %(default)s)")
        m.add_argument("--monitor-every", type=int, default=None,
                       help="measure every N optimizer steps (default: --show-samples-every); 0 = start and end only")
        m.add_argument("--forgetting-threshold", type=float, default=0.10,
                       help="warn when the perplexity rises more than this fraction above its value at the start "
                            "(default: %(default)s = 10%%)")
    args = parser.parse_args(argv)
    run = start_run(args, stage=STAGE_01, script=script)

    records, dictionary_stats = load_dictionary_records(args.dictionaries)
    train_records = select_samples(records, run.max_samples, run.seed)
    logger.info("dictionaries: %d entries, training on %d", len(records), len(train_records))
    model, tokenizer = load_model_and_tokenizer(run)
    model = attach_lora(model, run)

    items, steering = load_steering_set(args.steer_on, run.eval_samples, run.seed, required=False)
    letter_eval = None
    history: list[dict] = []
    callbacks = adapter_chain_callbacks(run)
    if items:
        letter_eval = make_mcq_eval_fn(tokenizer, items, run.batch)
        if run.show_samples_every > 0:
            callbacks.append(make_periodic_eval_callback(letter_eval, run.show_samples_every, history))
    plain_history: list[dict] = []
    monitor_info: dict = {}
    if monitor:
        texts = [r["text"] for r in plain_text_heldout(plain_text_files(args.monitor_data), args.monitor_samples,
                                                         run.seed)]
        every = run.show_samples_every if args.monitor_every is None else args.monitor_every
        callbacks.append(make_plain_text_monitor(tokenizer, texts, every, plain_history, run.batch, run.max_length,
                                                 rise_threshold=args.forgetting_threshold, at_start=True))
        monitor_info = {"monitor_data": str(args.monitor_data), "monitor_samples": len(texts),
                        "monitor_every": every, "forgetting_threshold": args.forgetting_threshold}
    trainer = build_trainer(run, model, tokenizer, to_sft_dataset(train_records), callbacks=callbacks)

    def evaluate(trained) -> dict:
        metrics = prefixed("steer_", letter_eval(trained, -1)) if letter_eval else {}
        if monitor and texts:
            result = plain_text_perplexity(trained, tokenizer, texts, run.batch, run.max_length, progress=True)
            metrics["plain_text_perplexity"] = result["perplexity"]
        return metrics

    info = train_and_save(
        run, trainer, tokenizer,
        extra_info={"train_samples": len(train_records), "validation_samples": len(items),
                    "validation_set": steering and steering["path"], "steering": steering, "steer_on": args.steer_on,
                    "validation_history": history,
                    "data_files": [describe_data_file(p) for p in args.dictionaries],
                    "dictionary_entries": dictionary_stats,
                    "training_options": training_options(trainer, packing_why_not=NO_PACKING_WHY),
                    **({"plain_text_history": plain_history, **monitor_info} if monitor else {})},
        evaluate=evaluate if (letter_eval or monitor) else None)
    extra = {"final_accuracy": info["metrics"].get("steer_accuracy")}
    if monitor:
        extra["forgetting_detected"] = any(e.get("forgetting") for e in plain_history)
    return update_training_info(run, info, **extra)

if __name__ == "__main__":
    run_main(main)
