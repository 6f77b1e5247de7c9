"""Talk to a trained adapter (or a merged model): one question from the command line, or a session.

    python -m script.chat --model model/02_trained/tiny/final "고혈압의 1차 치료는?"
    python -m script.chat --model model/merged/medgemma-4b --reasoning "흉통 환자의 감별 진단은?"
    python -m script.chat --model model/type1_text/medgemma-4b/final          # interactive session
    echo "당뇨병의 진단 기준은?" | python -m script.chat --model tiny --json -  # one question from stdin

``--model``/``--adapter`` are read as by validation_kor_med_test.py (a registry name, a model dir,
an adapter dir; an adapter chain is merged in order). The system prompt is the one the model was
trained with (formats.py): type 1 ("답변하세요") by default, type 2 ("추론한 후 답변하세요") with
``--reasoning``, or ``--system TEXT``. Answers stream token by token as they are generated; with
``--reasoning`` the ``<R>…<R/>`` part is then shown apart from the answer. Greedy decoding unless
``--temperature`` > 0.

Interactive: the conversation is kept across turns; ``/reset`` starts over, ``/exit`` (or Ctrl-D)
ends. One-shot (a question argument, or ``-`` to read it from stdin) prints the answer, or one
JSON object with ``--json`` (``reasoning``, ``answer``, ``raw``, ``new_tokens``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from script import formats
from script.cli import setup_logging
from script.evaluation import stop_token_ids
from script.model_loading import add_pickle_weights_flag, load_model_for_eval
from script.training_config import DEFAULT_MODEL, ConfigError

logger = logging.getLogger("chat")


def system_prompt(args: argparse.Namespace) -> str:
    if args.system:
        return args.system
    return formats.SYSTEM_PROMPTS[formats.TYPE2_TEXT_REASONING if args.reasoning else formats.TYPE1_TEXT]


def conversation(system: str, turns: Sequence[tuple[str, str]], question: str) -> list[dict]:
    """Messages of the session so far plus the new question; the system prompt leads the first turn."""
    messages = [{"role": "system", "content": system}]
    for user, answer in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": question})
    return messages


def reply(model, tokenizer, messages: list[dict], max_new_tokens: int, temperature: float,
          stream: bool) -> dict:
    """Generate the model's turn; ``{"raw", "reasoning", "answer", "new_tokens"}``."""
    import torch
    from transformers import GenerationConfig, TextStreamer


    prompt = formats.render_prompt(tokenizer, messages)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    device = next(model.parameters()).device
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                              temperature=temperature if temperature > 0 else None, top_p=None, top_k=None,
                              eos_token_id=stop_token_ids(tokenizer, model), pad_token_id=tokenizer.pad_token_id)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=False) if stream else None
    with torch.no_grad():
        output = model.generate(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                                generation_config=config, streamer=streamer)
    new = output[0, ids.shape[1]:].tolist()
    stops = set(stop_token_ids(tokenizer, model))
    new = new[: next((k for k, t in enumerate(new) if t in stops), len(new))]
    raw = tokenizer.decode(new, skip_special_tokens=False)
    reasoning, answer = formats.split_reasoning(raw)
    return {"raw": raw, "reasoning": reasoning, "answer": answer, "new_tokens": len(new)}


def show(result: dict, reasoning_mode: bool, streamed: bool) -> None:
    if streamed:
        print()
    if reasoning_mode:
        print(f"\n[reasoning]\n{result['reasoning'] if result['reasoning'] is not None else '(none)'}")
        print(f"[answer]\n{result['answer']}")
    elif not streamed:
        print(result["answer"])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("question", nargs="?", default=None, help="ask once and exit ('-' reads it from stdin)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="registry name, model dir or adapter dir (default: %(default)s)")
    parser.add_argument("--adapter", action="append", default=[], metavar="DIR", help="adapter(s) to apply, in order")
    parser.add_argument("--reasoning", action="store_true", help="type-2 system prompt: reason in <R>…<R/> first")
    parser.add_argument("--system", default=None, help="a system prompt of your own instead")
    parser.add_argument("--max-new-tokens", type=int, default=384, help="answer length limit (default %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--no-stream", action="store_true", help="print the answer when it is complete")
    parser.add_argument("--json", action="store_true", help="one-shot: print one JSON object")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--quantization", choices=("none", "8bit", "4bit"), default="none",
                        help="load the base in 8/4 bit to fit a small card (single adapter only)")
    add_pickle_weights_flag(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging(level=logging.WARNING)
    args = parse_args(argv)

    try:
        loaded = load_model_for_eval(args.model, args.adapter, args.device, args.quantization,
                                     allow_pickle_weights=args.allow_pickle_weights)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model, tokenizer = loaded.model, loaded.tokenizer
    system = system_prompt(args)
    stream = not args.no_stream and not args.json

    if args.question is not None:  # one-shot
        question = sys.stdin.read().strip() if args.question == "-" else args.question
        if not question:
            print("error: empty question", file=sys.stderr)
            return 2
        result = reply(model, tokenizer, conversation(system, [], question), args.max_new_tokens,
                       args.temperature, stream)
        if args.json:
            print(json.dumps({"model": loaded.info["name"], "adapters": loaded.info["adapters"], "system": system,
                              "question": question, **result}, ensure_ascii=False))
        else:
            show(result, args.reasoning, stream)
        return 0

    turns: list[tuple[str, str]] = []
    print(f"{loaded.info['name']} ({len(loaded.info['adapters'])} adapter(s)); /reset starts over, /exit ends",
          file=sys.stderr)
    while True:
        try:
            question = input("\n> ").strip()
        except EOFError:
            print()
            return 0
        if question in ("/exit", "/quit"):
            return 0
        if question == "/reset":
            turns = []
            print("(conversation cleared)")
            continue
        if not question:
            continue
        result = reply(model, tokenizer, conversation(system, turns, question), args.max_new_tokens,
                       args.temperature, stream)
        show(result, args.reasoning, stream)
        turns.append((question, result["raw"]))


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
