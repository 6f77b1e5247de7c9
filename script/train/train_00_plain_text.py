"""Step 1/4: continued pretraining on Korean plain text (data/refined_clean/00_plain_text).

Plain language modelling on every token of the texts (no prompt, no chat template): rsLoRA on the
7 projections, plus the embeddings trained whole (modules_to_save) where the model's
MEMORY_CONFIGS allows it. The shards are streamed line by line, never loaded whole; max_steps is
planned from their line count x tokens per record / --max-length x epochs / effective batch, and
rows are packed ("wrapped": no padding, no token dropped). A seeded slice of --validation-samples
texts is held out: its perplexity is measured before and after training and every
--show-samples-every steps (validation_history).

    python -m script.train.train_00_plain_text --model tiny --epochs 1
    python script/train/train_00_plain_text.py --model medgemma-4b --epochs 1 --max-samples 10000

Output: model/00_trained/<MODEL>/{checkpoint-N/, final/, training_info.json, README.md}
"""

from __future__ import annotations

import logging
from pathlib import Path

from script.cli import run_main
from script.data_io import write_rejects
from script.evaluation import plain_text_perplexity
from script.training_config import CLEAN_DIR, LOG_DIR, STAGE_00, ConfigError
from script.training_data import (
    describe_data_file,
    plain_text_files,
    plain_text_heldout,
    plain_text_step_plan,
    plain_text_stream,
)
from script.training_utils import (
    adapter_chain_callbacks,
    attach_lora,
    build_arg_parser,
    build_trainer,
    load_model_and_tokenizer,
    make_plain_text_monitor,
    prefixed,
    start_run,
    train_and_save,
    training_options,
    update_training_info,
)

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> dict:
    parser = build_arg_parser(__doc__, epochs=1)
    parser.add_argument("--data", type=Path, default=CLEAN_DIR / "00_plain_text",
                        help="dir of train-*.jsonl shards ({\"id\", \"source\", \"text\"}) or one JSONL file "
                             "(default: %(default)s)")
    parser.add_argument("--validation-samples", type=int, default=64,
                        help="held-out texts for the perplexity before/after and every --show-samples-every "
                             "steps; seeded, never trained on (default: %(default)s)")
    parser.add_argument("--shuffle-buffer", type=int, default=10_000,
                        help="records in the seeded shuffle buffer of the stream (default: %(default)s)")
    args = parser.parse_args(argv)
    run = start_run(args, stage=STAGE_00, script="train_00_plain_text", train_embeddings=True, use_rslora=True)

    files = plain_text_files(args.data)
    data_files = [describe_data_file(f) for f in files]
    heldout = plain_text_heldout(files, args.validation_samples, run.seed)
    texts = [r["text"] for r in heldout]
    exclude = {r["id"] for r in heldout}
    records = max(0, sum(d["rows"] for d in data_files) - len(heldout))
    records = min(records, run.max_samples) if run.max_samples else records
    if records == 0:
        raise ConfigError(f"{args.data}: nothing left to train on after holding out {len(heldout)} texts")
    rejects: dict = {}
    dataset = plain_text_stream(files, exclude, run.max_samples, run.seed, args.shuffle_buffer, rejects)
    logger.info("plain text: %d shards, ~%d training records (streamed), %d held out", len(files), records, len(texts))

    model, tokenizer = load_model_and_tokenizer(run)
    model = attach_lora(model, run)
    plan = plain_text_step_plan(tokenizer, files, exclude, records, run)
    max_steps = run.max_steps if run.max_steps > 0 else plan["max_steps"]
    logger.info("step plan: %s -> max_steps %d", plan, max_steps)
    history: list[dict] = []
    callbacks = adapter_chain_callbacks(run)
    if run.show_samples_every > 0 and texts:
        callbacks.append(make_plain_text_monitor(tokenizer, texts, run.show_samples_every, history, run.batch,
                                                 run.max_length, name="validation"))
    # Dense text: "wrapped" packing fills every row (no padding, no token dropped); attention across
    # the <eos> between documents is the usual trade of pretraining and needs no flash attention.
    trainer = build_trainer(run, model, tokenizer, dataset, callbacks=callbacks, max_steps=max_steps,
                            dataset_text_field="text", packing=True, packing_strategy="wrapped",
                            completion_only_loss=False, save_strategy="steps",
                            save_steps=run.save_steps or min(500, plan["steps_per_epoch"]))

    def evaluate(trained) -> dict:
        return prefixed("validation_", plain_text_perplexity(trained, tokenizer, texts, run.batch, run.max_length,
                                                             progress=True))

    info = train_and_save(
        run, trainer, tokenizer,
        extra_info={"train_samples": records, "validation_samples": len(texts), "validation_history": history,
                    "data_files": data_files, "step_plan": plan, "streaming": True,
                    "training_options": training_options(trainer, streaming=True)},
        evaluate=evaluate if texts else None)
    if rejects:
        rejects_path = LOG_DIR / "rejects_00_plain_text.jsonl"
        write_rejects(rejects_path, rejects.values())
        logger.warning("%d bad plain-text lines skipped (written to %s)", len(rejects), rejects_path)
    return update_training_info(run, info, data_rejects=len(rejects))

if __name__ == "__main__":
    run_main(main)
