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

from script.training_utils import train_dictionary


def main(argv: list[str] | None = None) -> dict:
    return train_dictionary(__doc__, argv, script="train_01_medical_dict")


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
