"""Validate a model on KorMedMCQA (or KMMLU-medical): accuracy beside chance, per subject, per item.

    python -m script.validation_kor_med_test --model tiny --eval-samples 20
    python -m script.validation_kor_med_test --model model/type3_word/medgemma-4b/final --split test
    python -m script.validation_kor_med_test --model medgemma-4b --adapter A --adapter B --split guide604
    python -m script.validation_kor_med_test --model medgemma-27b --mode generate --prompt lm_eval
    python -m script.validation_kor_med_test --model tiny --kmmlu --from-dir data/sample

What is evaluated (one of):

* ``--split guide604`` (default; the guide's 604 items: doctor dev + test + fewshot), ``test`` (the
  official test split of all four configs), ``steer`` (the held-out train slice loops steer on),
  ``all``: set files written by ``python -m script.extract_kormedmcqa_test --set all`` into
  ``--sets-dir`` (default data/kormedmcqa_test);
* ``--split dev``: the upstream dev split of all four configs, read from the raw dir
  (data/raw/by_source/kormedmcqa) or a hub mirror (``--from-dir``);
* ``--data FILE``: any JSONL of items (set files, refined type-3 records) or upstream rows;
* ``--kmmlu``: the KMMLU-medical subset (script/sources.py KMMLU_MEDICAL_SUBJECTS; KMMLU has no
  medicine subject), 4 options, answers 1-4, from data/raw/by_source/kmmlu/<subject>/test.jsonl
  or a hub mirror (``--from-dir``); with ``--data FILE`` that file is read as KMMLU rows.

Rows without a question, with a missing/empty option or an answer out of range are reported as
``path:line: reason`` and skipped with a count: never a crash, never counted correct.

How it is scored (``--mode``):

* ``letter`` (default): one forward pass per left-padded batch, the logits of the option letters at
  the answer position, argmax over the item's own options. The answer position follows the
  ``--prompt``: ``type3`` (default; the type-3 prompt of formats.py), ``lm_eval`` (after the
  harness's "정답：") or ``train02``: the model first writes its ``<reasoning>…</reasoning>``
  greedily, as train_02 taught it, and the letter is read right after the closing tag (appended
  when the model never closes it; counted as ``reasoning_unclosed``). Never unparseable.
* ``verdict``: train_02's per-choice judgement without generation. The item is written in the
  train02 format with the simple reasoning train_02 teaches (``A) <option>: 정답|오답`` per
  option, every verdict "오답"), and the option whose verdict position gives the highest
  log-odds of "정답" over "오답" is the answer: one forward pass per item, no copying of the
  option texts needed from the model. A diagnostic of what the per-choice lines learned.
* ``cloze``: the question alone is the prompt (no options shown) and each option's text is scored
  as the answer; the most likely option wins (lm-evaluation-harness's ``acc`` of its
  multiple_choice tasks). The measure for small models, which stay near chance when they must
  answer with a letter: the pipeline reports it beside letter mode for the embedded tiny model.
* ``generate``: batched greedy generation, stopped at <end_of_turn>/<eos> or ``--max-new-tokens``,
  in the ``--prompt`` style: ``type3`` (letter only), ``type4`` (``<R>…<R/>`` then the answer),
  ``train02`` (``<reasoning>…</reasoning>`` then the letter) or ``lm_eval`` (the harness's
  kormedmcqa template, no chat template: for cross-checks). Answers are read by
  ``evaluation.extract_answer``; unparseable outputs are wrong, counted and listed.

Model: ``--model`` is a registry name, a model dir or an adapter dir (loaded on the base model its
adapter_config.json names). ``--adapter`` (repeatable) applies adapters in order: all but the last
are merged into the weights, the last stays a PEFT adapter (same function as stacking them).

Controls (``--control``, default ``swap``): an accuracy is read against what needs no question.
The report's ``controls`` block carries chance, the majority-letter baseline (the best constant
answer on the set -- the bar for letter mode), and a question-blind run of the same model scored
the same way: every item's question swapped for another item's (``swap``; never one about the same
fact) or removed (``blank``); options and answers untouched. What the model gets right there it got
from the options alone. ``vs_question_blind`` is the paired, per-item difference with a 95 %
bootstrap CI and a sign-flip p-value, both clustered: items whose right option has the same text
are one cluster (script/controls.py). ``--control none`` skips the extra scoring pass. Cloze mode
reports lm-eval's ``acc`` and its length-normalised ``acc_norm`` side by side.

Output: a JSON report (atomic write; default logs/eval/<set>_<model>_<mode>.json) with every
item's prediction, a PNG bar chart beside it (per-subject accuracy, dashed chance lines) and a
markdown table on stdout. Exit status 0 on success, 1 when no item could be evaluated, 2 on a
configuration or data error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from script import controls, formats, model_card
from script.cli import setup_logging
from script.data_io import DataError, atomic_open, atomic_write_json
from script.eval_items import (
    DEFAULT_SUBSET_SEED,
    EvalSet,
    read_eval_set,
    read_items_file,
    read_kmmlu,
    read_kormedmcqa_split,
    select_eval_subset,
)
from script.evaluation import (
    generate_mcq_answers,
    mcq_accuracy,
    score_mcq_cloze_mode,
    score_mcq_letter_mode,
    score_mcq_verdicts,
)
from script.mcq_prompts import (
    DEFAULT_MAX_NEW_TOKENS,
    PROMPT_STYLES,
    PROMPT_TRAIN02,
    PROMPT_TYPE3,
    PROMPT_TYPE4,
    render_mcq_prompt,
)
from script.model_loading import add_pickle_weights_flag, load_model_for_eval
from script.training_config import DEFAULT_MODEL, KORMEDMCQA_TEST_DIR, LOG_DIR, RAW_DIR, ConfigError, UnknownModelError
from script.training_utils import git_sha, library_versions

logger = logging.getLogger("validation_kor_med_test")

SPLITS = ("guide604", "test", "official", "steer", "dev", "all")
MODES = ("letter", "generate", "verdict", "cloze")
CLOZE_PROMPT = "answer_text"  # formats.answer_text_messages: the question alone, the option text as answer
REPORT_VERSION = 1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="registry name, model dir or adapter dir (default: %(default)s)")
    parser.add_argument("--adapter", action="append", default=[], metavar="DIR",
                        help="LoRA adapter to apply; repeat for a chain (earlier ones are merged in order)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--split", choices=SPLITS, default=None,
                      help="evaluation set (default guide604; test = official test split of all configs)")
    what.add_argument("--data", type=Path, default=None, help="JSONL file of items or upstream rows")
    parser.add_argument("--kmmlu", action="store_true", help="evaluate KMMLU-medical instead of KorMedMCQA")
    parser.add_argument("--sets-dir", type=Path, default=KORMEDMCQA_TEST_DIR,
                        help="where the set files are (default: %(default)s)")
    parser.add_argument("--raw-dir", type=Path, default=RAW_DIR,
                        help="download_all_datasets.py output, for --split dev and --kmmlu (default: %(default)s)")
    parser.add_argument("--from-dir", type=Path, default=None,
                        help="local hub mirror root (e.g. data/sample) for --split dev and --kmmlu")
    parser.add_argument("--mode", choices=MODES, default="letter",
                        help="letter logits, generation, train02's per-option verdicts, or cloze (option "
                             "texts scored as answers to the question alone) (default letter)")
    parser.add_argument("--prompt", choices=PROMPT_STYLES, default=PROMPT_TYPE3,
                        help="prompt style (default type3); letter mode takes type3, train02 "
                             "(letter read after the model's own reasoning) or lm_eval")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help=f"generate mode budget (default per prompt: {DEFAULT_MAX_NEW_TOKENS})")
    parser.add_argument("--batch-size", type=int, default=None, help="default 16 (letter) / 8 (generate)")
    parser.add_argument("--eval-samples", type=int, default=None, metavar="N",
                        help="evaluate a seeded subset of N items (the same N gives the same items)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SUBSET_SEED, help="seed of the subset draw, the control's question swap and the bootstrap (default %(default)s)")
    parser.add_argument("--output", type=Path, default=None, help="report JSON (default logs/eval/<set>_<model>_<mode>.json)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--quantization", choices=("none", "8bit", "4bit"), default="none",
                        help="load the base in 8/4 bit (bitsandbytes) to fit a small card (default none)")
    parser.add_argument("--attn", choices=("eager", "sdpa"), default="eager", help="attention implementation")
    parser.add_argument("--control", choices=controls.CONTROL_HOWS, default=controls.DEFAULT_CONTROL,
                        help="question-blind control scored beside the model: swap each question for another "
                             "item's, blank it, or none (default %(default)s)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    parser.add_argument("--no-card", action="store_true",
                        help="leave the model card alone (default: a whole-set score of a toolkit adapter or merged "
                             "export is recorded in its README.md, beside its controls)")
    add_pickle_weights_flag(parser)
    args = parser.parse_args(argv)
    if args.mode == "verdict":
        args.prompt = PROMPT_TRAIN02  # the verdicts exist in the train02 format only
    if args.mode == "cloze":
        args.prompt = CLOZE_PROMPT  # the question alone; --prompt does not apply
    if args.mode == "letter" and args.prompt == PROMPT_TYPE4:
        parser.error("--prompt type4 answers with a word, not a letter: use --mode generate")
    if args.kmmlu and args.split is not None:
        parser.error("--kmmlu reads the KMMLU-medical test split; --split is for KorMedMCQA")
    if args.eval_samples is not None and args.eval_samples <= 0:
        parser.error("--eval-samples must be positive")
    if args.batch_size is not None and args.batch_size <= 0:
        parser.error("--batch-size must be positive")
    return args


# ---------------------------------------------------------------------------
# Items
# ---------------------------------------------------------------------------
def load_items(args: argparse.Namespace) -> EvalSet:
    """The evaluation set the flags name (see the module docstring)."""
    if args.data is not None:
        return read_items_file(args.data, "kmmlu" if args.kmmlu else "kormedmcqa")
    if args.kmmlu:
        return read_kmmlu(raw_dir=args.raw_dir, from_dir=args.from_dir)
    split = args.split or "guide604"
    if split == "dev":
        raw = None if args.from_dir is not None else args.raw_dir / "by_source" / "kormedmcqa"
        return read_kormedmcqa_split("dev", raw_dir=raw, from_dir=args.from_dir)
    return read_eval_set(split, args.sets_dir)


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "model"


def model_tag(model_info: dict) -> str:
    """Short name for file names: the registry/model name, plus the last adapter's last 3 parts."""
    tag = slug(model_info["name"])
    if model_info["adapters"]:
        tag += "_" + slug("-".join(Path(model_info["adapters"][-1]).resolve().parts[-3:]))
    return tag


def default_output(set_name: str, model_info: dict, mode: str, prompt: str) -> Path:
    suffix = f"_{prompt}" if mode == "generate" or prompt != PROMPT_TYPE3 else ""
    return LOG_DIR / "eval" / f"{slug(set_name)}_{model_tag(model_info)}_{mode}{suffix}.json"


def item_row(item: dict, prediction: dict, control: dict | None = None, control_item: dict | None = None) -> dict:
    row = {"id": item["id"], "subject": item.get("config"), "cluster": controls.cluster_key(item),
           "prediction": prediction["prediction"], "gold": prediction["gold"], "correct": bool(prediction["correct"])}
    for key in ("prediction_norm", "correct_norm", "letter_logprobs", "verdict_log_odds", "raw_output",
                "reasoning_closed", "stopped", "new_tokens"):
        if key in prediction:
            row[key] = prediction[key]
    if control is not None:
        row["control_prediction"] = control["prediction"]
        row["control_correct"] = bool(control["correct"])
        if "correct_norm" in control:
            row["control_correct_norm"] = bool(control["correct_norm"])
        if control_item is not None:
            row["control_question_from"] = control_item.get("control_question_from")
    return row


def build_report(args: argparse.Namespace, evalset: EvalSet, items: list[dict], predictions: list[dict],
                 model_info: dict, prompt_example: str, timing: dict,
                 control_items: list[dict] | None = None, control_predictions: list[dict] | None = None) -> dict:
    summary = mcq_accuracy(items, predictions)
    block = controls.controls_block(items, predictions, control_predictions, args.control, args.seed)
    if control_predictions is not None:
        control_summary = mcq_accuracy(control_items, control_predictions)
        block["question_blind"]["per_subject"] = {name: {k: row[k] for k in ("accuracy", "correct", "total")}
                                                  for name, row in control_summary["per_subject"].items()}
    norm = block.get("accuracy_norm")
    single = evalset.files[0] if len(evalset.files) == 1 else None
    return {
        "report_version": REPORT_VERSION,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "git_sha": git_sha(),
        "versions": library_versions(),
        "set": {
            "name": evalset.name,
            "dataset": "kmmlu" if args.kmmlu else "kormedmcqa",
            "source": evalset.source,
            "file": single["path"] if single else evalset.source,
            "sha256": single["sha256"] if single else None,
            "files": evalset.files,
            "rows_read": evalset.rows,
            "skipped": len(evalset.rejects),
            "usable": len(evalset.items),
            "evaluated": len(items),
            "eval_samples": args.eval_samples,
            "subset_seed": args.seed if args.eval_samples else None,
            "items_sha256": EvalSet(evalset.name, items).items_sha256(),
        },
        "model": model_info,
        "mode": args.mode,
        "prompt": {"style": args.prompt,
                   "example_item": items[0]["id"], "template": prompt_example},
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "accuracy": summary["accuracy"],
        "accuracy_pct": round(100 * summary["accuracy"], 2),
        "correct": summary["correct"],
        "total": summary["total"],
        "chance": round(summary["chance"], 6),
        "chance_pct": round(100 * summary["chance"], 2),
        "accuracy_ci95": [round(x, 6) for x in block["accuracy"]["ci95"]],
        "acc_norm": norm["accuracy"] if norm else None,
        "acc_norm_pct": round(100 * norm["accuracy"], 2) if norm else None,
        "controls": block,
        "unparseable": summary["unparseable"],
        "reasoning_unclosed": sum(1 for p in predictions if p.get("reasoning_closed") is False),
        "avg_loss": summary["avg_loss"],
        "per_subject": summary["per_subject"],
        "per_division": summary["per_division"],
        "timing": timing,
        "skipped": [{"where": f"{r.path}:{r.line}", "reason": r.reason} for r in evalset.rejects],
        "items": [item_row(item, pred, control_predictions[k] if control_predictions else None,
                           control_items[k] if control_items else None)
                  for k, (item, pred) in enumerate(zip(items, predictions))],
    }


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _table_row(name: str, row: dict, with_loss: bool = False) -> str:
    cells = [name, _pct(row["accuracy"]), f"chance {_pct(row['chance'])}", f"{row['correct']}/{row['total']}"]
    if with_loss:
        cells.append("-" if row["avg_loss"] is None else f"{row['avg_loss']:.4f}")
    return "| " + " | ".join(cells) + " |"


def controls_lines(report: dict) -> list[str]:
    """The accuracy read against its controls, in a few lines (see script/controls.py)."""
    block = report.get("controls")
    if not block:
        return []
    low, high = block["accuracy"]["ci95"]
    majority = block["majority_letter"]
    lines = [f"- accuracy {_pct(report['accuracy'])} (95 % CI {_pct(low)}–{_pct(high)}, clustered over "
             f"{block['clusters']} clusters of items sharing their right answer)",
             f"- chance {_pct(block['chance'])}; majority letter {majority['letter']} {_pct(majority['accuracy'])} "
             f"(the best constant answer on this set)"]
    blind = block.get("question_blind")
    if blind:
        lines.append(f"- question-blind control ({blind['how']}: same model, same scoring, questions "
                     f"{'swapped between items' if blind['how'] == 'swap' else 'removed'}): {_pct(blind['accuracy'])} "
                     f"({blind['correct']}/{blind['total']})")
        lines.append(f"- the model is {controls.vs_control_text(block['vs_question_blind'])}")
    else:
        lines.append("- no question-blind control run (--control none)")
    if "accuracy_norm" in block:
        text = f"- acc_norm (log-probability per character): {_pct(block['accuracy_norm']['accuracy'])}"
        if block.get("vs_question_blind_norm"):
            text += (f"; control {_pct(blind['norm']['accuracy'])}; "
                     f"{controls.vs_control_text(block['vs_question_blind_norm'], 'the control')}")
        lines.append(text)
    return lines


def markdown_table(report: dict) -> str:
    """Overall and per-subject accuracy with the chance baseline beside each number, then the controls."""
    lines = ["| subset | accuracy | chance | correct/total |", "|---|---|---|---|", _table_row("overall", report)]
    lines += [_table_row(name, row) for name, row in report["per_subject"].items()]
    if report.get("controls"):
        lines += ["", *controls_lines(report)]
    if report["per_division"]:  # the guide's division table: count, accuracy, average loss
        lines += ["", "| division | accuracy | chance | correct/total | avg loss |", "|---|---|---|---|---|"]
        lines += [_table_row(name, row, with_loss=True) for name, row in report["per_division"].items()]
    return "\n".join(lines)


def plot_report(report: dict, path: Path) -> Path:
    """Bar chart of overall and per-subject accuracy, a dashed chance line over each bar."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    rows = [("overall", report["accuracy"], report["chance"], report["correct"], report["total"])]
    rows += [(name, r["accuracy"], r["chance"], r["correct"], r["total"]) for name, r in report["per_subject"].items()]
    blind = (report.get("controls") or {}).get("question_blind")
    blind_rates = [blind["accuracy"], *(blind["per_subject"].get(name, {}).get("accuracy")
                                        for name in report["per_subject"])] if blind else []
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(rows) + 2), 4.2))
    positions = list(range(len(rows)))
    colors = ["#4c72b0" if k else "#2f4b7c" for k in positions]
    ax.bar(positions, [100 * r[1] for r in rows], color=colors, width=0.7)
    for k, (_, acc, chance, correct, total) in enumerate(rows):
        ax.hlines(100 * chance, k - 0.4, k + 0.4, colors="#c44e52", linestyles="dashed",
                  label="chance" if k == 0 else None)
        if blind_rates and blind_rates[k] is not None:
            ax.hlines(100 * blind_rates[k], k - 0.4, k + 0.4, colors="#dd8452", linestyles="dotted", linewidth=2,
                      label=f"question-blind ({blind['how']})" if k == 0 else None)
        ax.text(k, 100 * acc + 1.5, f"{100 * acc:.1f}%\n{correct}/{total}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(positions, [r[0] for r in rows])
    ax.set_ylim(0, 110)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{report['set']['name']}: {report['model']['name']} ({report['mode']})", fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
def score(args: argparse.Namespace, loaded, items: list[dict]) -> list[dict]:
    if args.mode == "cloze":
        return score_mcq_cloze_mode(loaded.model, loaded.tokenizer, items, args.batch_size, args.progress)
    if args.mode == "verdict":
        return score_mcq_verdicts(loaded.model, loaded.tokenizer, items, args.batch_size, args.progress)
    if args.mode == "letter":
        return score_mcq_letter_mode(loaded.model, loaded.tokenizer, items, args.batch_size, args.progress,
                                     style=args.prompt, max_new_tokens=args.max_new_tokens)
    return generate_mcq_answers(loaded.model, loaded.tokenizer, items, args.prompt, args.batch_size,
                                args.max_new_tokens, args.progress)


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    args.batch_size = args.batch_size or (8 if args.mode == "generate" else 16)
    if args.mode == "generate" or (args.mode == "letter" and args.prompt == PROMPT_TRAIN02):
        args.max_new_tokens = args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[args.prompt]
    try:
        evalset = load_items(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for reject in evalset.rejects:
        print(f"skipped {reject}", file=sys.stderr)
    if evalset.rejects:
        print(f"{len(evalset.rejects)} of {evalset.rows} rows skipped (listed above and in the report)", file=sys.stderr)
    items = select_eval_subset(evalset.items, args.eval_samples, args.seed)
    if not items:
        print(f"error: no usable item in {evalset.source}", file=sys.stderr)
        return 1


    started = time.perf_counter()
    try:
        loaded = load_model_for_eval(args.model, args.adapter, args.device, args.quantization, args.attn,
                                     allow_pickle_weights=args.allow_pickle_weights)
    except (ConfigError, UnknownModelError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    load_seconds = time.perf_counter() - started
    style = args.prompt
    if args.mode == "cloze":
        example = formats.render_prompt(loaded.tokenizer, formats.answer_text_messages(items[0]["question"]))
    else:
        example = render_mcq_prompt(loaded.tokenizer, items[0], style)  # exactly what the model is shown
    logger.info("%s: %d items (%d skipped), %s mode%s, model %s", evalset.name, len(items), len(evalset.rejects),
                args.mode, f" ({args.prompt})", loaded.info["name"])
    started = time.perf_counter()
    predictions = score(args, loaded, items)
    seconds = time.perf_counter() - started
    control_items = control_predictions = None
    control_seconds = 0.0
    if args.control != "none":
        started = time.perf_counter()
        control_items = controls.question_blind_items(items, args.control, args.seed)
        control_predictions = score(args, loaded, control_items)
        control_seconds = time.perf_counter() - started
    timing = {"load_seconds": round(load_seconds, 3), "seconds": round(seconds, 3),
              "items_per_second": round(len(items) / seconds, 3) if seconds > 0 else None,
              "control_seconds": round(control_seconds, 3)}
    report = build_report(args, evalset, items, predictions, loaded.info, example, timing,
                          control_items, control_predictions)
    output = args.output or default_output(evalset.name, loaded.info, args.mode, args.prompt)
    atomic_write_json(output, report)
    chart = plot_report(report, output.with_suffix(".png"))
    # A seeded subset is a quick look, not the model's score: only whole sets go on the card.
    cards = [] if args.no_card or args.eval_samples else model_card.record_evaluation_in_cards(loaded.info, report)

    print(f"## {report['set']['name']} — {loaded.info['name']} ({args.mode}"
          f", {args.prompt})\n")
    print(markdown_table(report))
    print()
    unclosed = sum(1 for p in predictions if p.get("reasoning_closed") is False)
    if args.prompt == PROMPT_TRAIN02 and args.mode == "letter":
        print(f"reasoning_unclosed: {unclosed}/{len(predictions)} (closing tag appended before the letter)")
    if args.mode == "generate":
        print(f"unparseable: {report['unparseable']}/{report['total']} (counted wrong; raw outputs in the report)")
    if evalset.rejects:
        print(f"skipped: {len(evalset.rejects)} bad rows (not evaluated; see the report)")
    print(f"time: {seconds:.1f} s, {timing['items_per_second']} items/s (model load {load_seconds:.1f} s"
          + (f", question-blind control {control_seconds:.1f} s)" if control_predictions else ")"))
    print(f"report: {output}\nchart: {chart}")
    for card in cards:
        print(f"card: {card} (Evaluations table and model-index updated)")
    return 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
