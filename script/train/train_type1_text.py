"""Type 1 (TEXT): answer Korean medical questions in full text, no reasoning tokens.

Trains a LoRA adapter on the clean refined type-1 data and reports the guide's target metric,
completion perplexity on the validation split (target < 3.0).

    python -m script.train.train_type1_text --model tiny --epochs 1
    python script/train/train_type1_text.py --model medgemma-4b --epochs 3
    python -m script.train.train_type1_text --resume          # continue an interrupted run

Output: model/type1_text/<MODEL>/{checkpoint-N/, final/, training_info.json, README.md}
"""

from __future__ import annotations

from script import formats
from script.train.refined_types import perplexity_metric, train_refined_type


def main(argv: list[str] | None = None) -> dict:
    return train_refined_type(formats.TYPE1_TEXT, __doc__, perplexity_metric, argv)


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
