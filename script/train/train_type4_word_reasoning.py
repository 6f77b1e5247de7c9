"""Type 4 (WORD_REASONING): reason inside <R>…<R/>, then answer with a word (a diagnosis).

Trains on the clean refined type-4 data (short answers of the reasoning sources) and reports the
guide's target metric on the validation split: the mean type-4 score of greedy generations
(1.0 exact answer + 0.1 reasoning of >= 10 words + 0.05 per matched key term, max 1.4; target
>= 1.2; see evaluation.type4_score).

    python -m script.train.train_type4_word_reasoning --model tiny --epochs 1
    python script/train/train_type4_word_reasoning.py --model medgemma-27b --epochs 5

Output: model/type4_word_reasoning/<MODEL>/{checkpoint-N/, final/, training_info.json, README.md}
"""

from __future__ import annotations

from script import formats
from script.evaluation import type4_evaluate
from script.train.refined_types import train_refined_type


def type4_metric(model, tokenizer, records, run) -> dict:
    result = type4_evaluate(model, tokenizer, records, batch_size=run.batch, max_new_tokens=run.max_length,
                            progress=True)
    return {"validation_type4_score": result["type4_score"],
            "validation_answer_accuracy": result["answer_accuracy"],
            "validation_records": result["records"]}


def main(argv: list[str] | None = None) -> dict:
    return train_refined_type(formats.TYPE4_WORD_REASONING, __doc__, type4_metric, argv)


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
