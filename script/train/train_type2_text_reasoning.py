"""Type 2 (TEXT_REASONING): reason inside <R>…<R/>, then answer in full text.

Trains on the clean refined type-2 data (long answers of the reasoning sources) and reports the
guide's target metric, completion perplexity of the whole assistant turn (reasoning block and
answer) on the validation split (target < 3.0).

    python -m script.train.train_type2_text_reasoning --model tiny --epochs 1
    python script/train/train_type2_text_reasoning.py --model medgemma-27b --epochs 3

Output: model/type2_text_reasoning/<MODEL>/{checkpoint-N/, final/, training_info.json, README.md}
"""

from __future__ import annotations

from script import formats
from script.train.refined_types import perplexity_metric, train_refined_type


def main(argv: list[str] | None = None) -> dict:
    return train_refined_type(formats.TYPE2_TEXT_REASONING, __doc__, perplexity_metric, argv)


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
