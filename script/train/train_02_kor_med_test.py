"""Step 4/4: KorMedMCQA-style questions answered with reasoning per choice, then the letter.

Each item of data/refined_clean/02_kor_med_test/train.jsonl becomes one conversation
(formats.train02_messages), the loss on the model turn only:

    user:  Reasoning 후 정답 알파벳 하나만 답하세요. [```format``` block when detailed] {question} A) … E) …
    model: <reasoning>
           {reasoning per choice}
           </reasoning>{letter}<end_of_turn>

95% of the items (--detailed-fraction 0.05, chosen by a seeded hash of the item id) get the simple
reasoning, one short verdict line per option (or upstream's cot where the item has one); the rest
get the detailed 첫째/둘째/셋째/넷째 reasoning with a percentage per option. Validation: greedy
train02-style generations on --eval-samples steering-set questions (a held-out slice of
KorMedMCQA train), before and after training and every --show-samples-every steps: accuracy
(percent) and the train02 score (answer 2/3 + reasoning format 1/3, 1/4 for a wrong answer with
a well-formed reasoning). The simple reasoning does not have the 첫째..넷째 format, so a model that
answers in it scores at most 2/3 per question.

    python -m script.train.train_02_kor_med_test --model tiny --epochs 3
    python script/train/train_02_kor_med_test.py --base-model model/01_another_lora_added/medgemma-4b --epochs 3

With --base-model an adapter dir that has parents (adapter_chain.json, from add_lora_adapter.py
--on), the parents are merged into the base and the top adapter is trained; final/ keeps the chain.

Output: model/02_trained/<MODEL>/{checkpoint-N/, final/, training_info.json, README.md}
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from script import formats
from script.cli import run_main
from script.evaluation import train02_eval_fn
from script.steering import add_steering_args, load_steering_set
from script.training_config import CLEAN_DIR, STAGE_02
from script.training_data import describe_data_file, load_mcq_items, select_samples, to_sft_dataset, train02_records
from script.training_utils import (
    NO_PACKING_WHY,
    adapter_chain_callbacks,
    attach_lora,
    build_arg_parser,
    build_trainer,
    load_model_and_tokenizer,
    make_periodic_eval_callback,
    prefixed,
    start_run,
    train_and_save,
    training_options,
    update_training_info,
)

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> dict:
    parser = build_arg_parser(__doc__, epochs=3)
    parser.add_argument("--data", type=Path, default=CLEAN_DIR / "02_kor_med_test" / "train.jsonl",
                        help="items {id, question, A..E, answer, cot?} (default: %(default)s)")
    parser.add_argument("--detailed-fraction", type=float, default=formats.DETAILED_FRACTION,
                        help="share of items (chosen by a seeded hash of their id) trained in the detailed "
                             "첫째..넷째 format; the rest get the simple one (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=256,
                        help="generation budget of the evaluations (reasoning + answer) (default: %(default)s)")
    parser.add_argument("--answer-text", action=argparse.BooleanOptionalAction, default=None,
                        help="also train each item once in its cloze form, the question alone answered with "
                             "the right option's text: teaches the answers themselves, which is what a small "
                             "model's (cloze) accuracy measures (default: on for models whose registry "
                             "entry scores KorMedMCQA in cloze form, i.e. tiny; off for MedGemma)")
    add_steering_args(parser)
    args = parser.parse_args(argv)
    if not 0 <= args.detailed_fraction <= 1:
        parser.error(f"--detailed-fraction {args.detailed_fraction}: expected a fraction between 0 and 1")
    run = start_run(args, stage=STAGE_02, script="train_02_kor_med_test")

    items = select_samples(load_mcq_items(args.data), run.max_samples, run.seed)
    answer_text = args.answer_text if args.answer_text is not None else run.model_config.mcq_scoring == "cloze"
    records = train02_records(items, run.seed, args.detailed_fraction, answer_text)
    detailed = sum(r["detailed"] for r in records)
    logger.info("train_02: %d items, %d in the detailed format%s", len(items), detailed,
                ", each also in its cloze form" if answer_text else "")
    model, tokenizer = load_model_and_tokenizer(run)
    model = attach_lora(model, run)

    steer, steering = load_steering_set(args.steer_on, run.eval_samples, run.seed, required=False)
    eval_fn = train02_eval_fn(tokenizer, steer, run.batch, args.max_new_tokens) if steer else None
    history: list[dict] = []
    callbacks = adapter_chain_callbacks(run)
    if eval_fn and run.show_samples_every > 0:
        callbacks.append(make_periodic_eval_callback(eval_fn, run.show_samples_every, history))
    trainer = build_trainer(run, model, tokenizer, to_sft_dataset(records), callbacks=callbacks)
    info = train_and_save(
        run, trainer, tokenizer,
        extra_info={"train_samples": len(records), "items": len(items), "answer_text_records": answer_text,
                    "detailed_samples": detailed,
                    "detailed_fraction": args.detailed_fraction, "validation_samples": len(steer),
                    "validation_set": steering and steering["path"], "steering": steering, "steer_on": args.steer_on,
                    "validation_history": history,
                    "data_files": [describe_data_file(args.data)],
                    "training_options": training_options(trainer, packing_why_not=NO_PACKING_WHY)},
        evaluate=(lambda trained: prefixed("steer_", eval_fn(trained, -1))) if eval_fn else None,
        # The guide's MCQ target (type 3 and the loop's default stop rule): 90% accuracy.
        target=("steer_accuracy", ">=", 90.0) if eval_fn else None)
    return update_training_info(run, info, final_accuracy=info["metrics"].get("steer_accuracy"),
                                final_train02_score=info["metrics"].get("steer_train02_score"))

if __name__ == "__main__":
    run_main(main)
