"""Benchmark: naive per-question generation versus letter mode, on the same questions, in one run.

    python -m script.bench.bench_eval                       # tiny, the guide's 604 set
    python -m script.bench.bench_eval --model tiny --n 604 --device cpu
    python -m script.bench.bench_eval --model medgemma-4b --n 200 --device cuda
    python -m script.bench.bench_eval --threads 1           # a CPU shared with other jobs (see below)

The naive way is what the guide's validation did: one ``generate`` call per question (greedy,
``--max-new-tokens``), then parse the letter from the text -- here with the project's
``extract_answer``, so an unparseable output is wrong and counted, never guessed. Letter mode is
``score_mcq_letter_mode``: one forward pass per left-padded batch, option-letter logits at the
answer position, with the keys/values of the prompt opening every item shares computed once. Both see
the same type-3 prompt, run on the same model with the same torch thread count (``--threads``).

Where letter mode spends its time on the 2-core CPU with ``tiny`` (604 items, ~82 prompt tokens
each): rendering the chat template (~0.03 s), tokenizing (~0.07 s) and ``letter_token_ids`` (~1 ms)
are small; nearly all of it is the model's forward over the prompt tokens (matrix products, GELU,
norms). The speed-up is therefore bounded by what one naive question costs (a prefill of the whole
prompt, then up to 8 decoding steps: ~16 ms) over the matrix products of one prompt's own tokens
(~1.3 ms at one thread): about 12x on that CPU, whatever the batching.
On a CPU that other jobs share, torch's threads (one per core) stall each other whenever another
job holds a core, and either way can then slow several-fold, so the ratio swings from run to run:
``--threads 1`` gives steadier figures there.

Items: the guide604 set file (``data/kormedmcqa_test/guide604.jsonl``) when it exists, else the same
set built from the shipped sample mirror (data/sample). ``--n`` takes a seeded subset.

Prints ONE JSON object: seconds and questions/s of each way, the speed ratio, the accuracy of each
and their agreement on the questions where the naive output parses. No timing is asserted anywhere;
logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence

from script import kormedmcqa
from script.cli import setup_logging
from script.data_io import DataError
from script.eval_items import load_eval_items, select_eval_subset
from script.evaluation import extract_answer, generate_texts, score_mcq_letter_mode
from script.mcq_prompts import PROMPT_TYPE3, encode_prompt, render_mcq_prompt
from script.model_loading import load_model_for_eval
from script.training_config import DEFAULT_MODEL, SAMPLE_DATA_DIR

logger = logging.getLogger("bench_eval")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="registry name, model dir or adapter dir (default: %(default)s)")
    parser.add_argument("--n", type=int, default=604, help="questions (seeded subset; default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="letter-mode batch (default %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="naive generation budget (default %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--seed", type=int, default=42, help="seed of the subset draw")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for both ways (default 0: torch's own choice, one per core)")
    return parser.parse_args(argv)


def load_guide604(n: int, seed: int) -> tuple[list[dict], str]:
    """The guide604 items (set file, else built from the sample mirror) and where they came from."""
    try:
        return load_eval_items("guide604", n, seed), "guide604.jsonl"
    except DataError:
        source = kormedmcqa.ItemSource(from_dir=SAMPLE_DATA_DIR)
        items = [item for config, split in kormedmcqa.SET_SPLITS[kormedmcqa.GUIDE604]
                 for item in source.items(config, split)]
        return select_eval_subset(items, n, seed), f"guide604 from {source.description}"


def naive_generate(model, tokenizer, items: list[dict], max_new_tokens: int) -> list[dict]:
    """One generate call per question, unbatched, as the guide's validation loop did."""
    predictions = []
    for item in items:
        ids = encode_prompt(tokenizer, render_mcq_prompt(tokenizer, item, PROMPT_TYPE3), PROMPT_TYPE3)
        text = generate_texts(model, tokenizer, [ids], max_new_tokens, batch_size=1)[0]["text"]
        letter = extract_answer(text, item["options"], PROMPT_TYPE3)
        predictions.append({"prediction": letter, "correct": letter is not None and letter == item["answer"]})
    return predictions


def summarise(predictions: list[dict], seconds: float) -> dict:
    n = len(predictions)
    correct = sum(p["correct"] for p in predictions)
    return {"seconds": round(seconds, 3), "questions_per_s": round(n / seconds, 3) if seconds else None,
            "accuracy": round(correct / n, 4) if n else None, "correct": correct,
            "unparseable": sum(p["prediction"] is None for p in predictions)}


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    import torch


    if args.threads > 0:
        torch.set_num_threads(args.threads)

    items, source = load_guide604(args.n, args.seed)
    loaded = load_model_for_eval(args.model, device=args.device)
    model, tokenizer = loaded.model, loaded.tokenizer
    # warm-up: first-call costs out of both timings
    naive_generate(model, tokenizer, items[:1], args.max_new_tokens)
    score_mcq_letter_mode(model, tokenizer, items[:2], args.batch_size)

    started = time.perf_counter()
    naive = naive_generate(model, tokenizer, items, args.max_new_tokens)
    naive_seconds = time.perf_counter() - started
    started = time.perf_counter()
    letter = score_mcq_letter_mode(model, tokenizer, items, args.batch_size)
    letter_seconds = time.perf_counter() - started

    parsed = [(a, b) for a, b in zip(naive, letter) if a["prediction"] is not None]
    agree = sum(a["prediction"] == b["prediction"] for a, b in parsed)
    result = {
        "bench": "eval: naive per-question generate vs letter mode",
        "model": loaded.info["name"],
        "device": loaded.info["device"],
        "torch_threads": torch.get_num_threads(),
        "items": len(items),
        "source": source,
        "naive_generate": {**summarise(naive, naive_seconds), "max_new_tokens": args.max_new_tokens},
        "letter_mode": {**summarise(letter, letter_seconds), "batch_size": args.batch_size},
        "speed_ratio_letter_over_naive": round(naive_seconds / letter_seconds, 2) if letter_seconds else None,
        "agreement_where_naive_parses": {"parsed": len(parsed), "agree": agree,
                                         "rate": round(agree / len(parsed), 4) if parsed else None},
    }
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
