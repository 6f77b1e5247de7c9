"""Type 3 (WORD): answer a multiple-choice question with the option letter only.

Trains on the clean refined type-3 data (KorMedMCQA train, MedQA, MedQA-Evol, KorMedLawQA with
every evaluation item removed) and reports the guide's target metric, letter accuracy on the
validation split (target >= 90%), scored in letter mode with the same prompt as training.

    python -m script.train.train_type3_word --model tiny --epochs 3
    python script/train/train_type3_word.py --model medgemma-27b --epochs 10

Output: model/type3_word/<MODEL>/{checkpoint-N/, final/, training_info.json, README.md}
"""

from __future__ import annotations

from script import formats
from script.evaluation import mcq_accuracy, score_mcq_letter_mode
from script.train.refined_types import train_refined_type


def accuracy_metric(model, tokenizer, records, run) -> dict:
    predictions = score_mcq_letter_mode(model, tokenizer, records, batch_size=run.batch)
    result = mcq_accuracy(records, predictions)
    return {"validation_accuracy": result["accuracy"], "validation_chance": result["chance"],
            "validation_correct": result["correct"], "validation_total": result["total"]}


def main(argv: list[str] | None = None) -> dict:
    return train_refined_type(formats.TYPE3_WORD, __doc__, accuracy_metric, argv)


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
