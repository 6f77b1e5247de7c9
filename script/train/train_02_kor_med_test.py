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

from script.training_utils import train_mcq_reasoning


def main(argv: list[str] | None = None) -> dict:
    return train_mcq_reasoning(__doc__, argv, script="train_02_kor_med_test")


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
