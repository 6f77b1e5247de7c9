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

from script.training_utils import train_plain_text


def main(argv: list[str] | None = None) -> dict:
    return train_plain_text(__doc__, argv, script="train_00_plain_text")


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
