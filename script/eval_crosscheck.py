"""Cross-check our KorMedMCQA scoring against lm-evaluation-harness on the same model and items.

    python -m script.eval_crosscheck                          # tiny, the guide's 604 set
    python -m script.eval_crosscheck --model tiny --n 50 --only letter
    python -m script.eval_crosscheck --model model/type3_word/medgemma-4b/final --device cuda

Needs lm_eval (``pip install -e .[crosscheck]``; ``make eval-crosscheck`` installs it).
Runs offline and reads the items from a JSONL this script writes, never the hub. Where it can,
the harness loads the same local model dir itself (``hf`` model type, ``pretrained=<dir>``, one
adapter as ``peft=<dir>``): two independent loaders, so a loading difference shows up too. A chain
of adapters, or an adapter that saved embeddings, it cannot load (see ``harness_model_args``): then,
or with ``--in-memory``, the harness is handed the model this script loaded (``HFLM(pretrained=
model)``) and the comparison is of the scoring alone. Two comparisons, each item by item (matched
on the item id):

(a) ``letter``: configs/lm_eval/kormedmcqa_letter_mode.yaml, a ``multiple_choice`` task over the
    item's letters whose prompt the harness renders itself with the chat template and our type-3
    system prompt, against ``evaluation.score_mcq_letter_mode``. The harness scores each letter by
    its log-likelihood after the prompt, we by the letter logits at the answer position: the same
    quantity, computed by two implementations. Goal: agreement >= 0.99 (``--min-agreement``).
(b) ``generate``: the harness's stock kormedmcqa task (configs/lm_eval/kormedmcqa_local.yaml
    includes it; prompt ending "정답：", greedy generate_until, its answer-extraction filter) against
    ``evaluation.generate_mcq_answers(style="lm_eval")``, the same prompt and generation budget
    (``--max-new-tokens``; the stock budget is 1024). Each disagreement is classed: same text but
    the two extraction rules read it differently (the harness falls back to any bare A-E in the
    text; ``extract_answer`` refuses a letter that is part of a word), or different text.

Prints ONE JSON object with an ``agreement`` figure per comparison and writes it, with every item's
pair of answers, under ``--out-dir`` (default logs/eval_crosscheck/): crosscheck.json,
items_letter.jsonl, items_generate.jsonl, the data file and the task yamls the harness ran (which
also work with its CLI: ``lm-eval run --include_path <out-dir>/tasks --tasks kormedmcqa_local ...``).
Exit status 0 when (a) meets ``--min-agreement`` (or was not run), 1 when it does not, 2 on a
configuration or data error (lm_eval missing, no model, bad items).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from script import formats
from script.cli import setup_logging
from script.data_io import DataError, atomic_write_json, atomic_write_jsonl, atomic_write_text
from script.eval_items import DEFAULT_SUBSET_SEED, item_letters, load_eval_items
from script.evaluation import generate_mcq_answers, score_mcq_letter_mode
from script.mcq_prompts import (
    DEFAULT_MAX_NEW_TOKENS,
    LM_EVAL_STOP_STRINGS,
    PROMPT_LM_EVAL,
    PROMPT_TYPE3,
    mcq_prompt_messages,
)
from script.model_loading import add_pickle_weights_flag, load_model_for_eval
from script.training_config import DEFAULT_MODEL, LOG_DIR, PROJECT_ROOT, ConfigError

logger = logging.getLogger("eval_crosscheck")

CONFIG_DIR = PROJECT_ROOT / "configs" / "lm_eval"
LETTER_TASK_YAML = CONFIG_DIR / "kormedmcqa_letter_mode.yaml"
GENERATE_TASK_YAML = CONFIG_DIR / "kormedmcqa_local.yaml"
DATA_FILE_NAME = "kormedmcqa_items.jsonl"
COMPARISONS = ("letter", "generate")
EXAMPLES = 10  # disagreements listed in the JSON; every item is in the per-item files
INSTALL_HINT = ("install it with `make eval-crosscheck` or `pip install -e '.[crosscheck]'`"
                " (requirements-crosscheck.txt)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="registry name, model dir or adapter dir (default: %(default)s)")
    parser.add_argument("--set", default="guide604",
                        help="evaluation set name (guide604, test, steer, all) or a JSONL of items (default %(default)s)")
    parser.add_argument("--n", type=int, default=None, help="seeded subset of the set (default: all items)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SUBSET_SEED, help="seed of the subset draw")
    parser.add_argument("--only", choices=COMPARISONS, default=None, help="run one comparison (default: both)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size of both sides (default %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS[PROMPT_LM_EVAL],
                        help="generation budget of (b), both sides (default %(default)s; the stock task has 1024)")
    parser.add_argument("--min-agreement", type=float, default=0.99,
                        help="letter-mode agreement below this exits 1 (default %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default %(default)s)")
    parser.add_argument("--out-dir", type=Path, default=LOG_DIR / "eval_crosscheck",
                        help="data, task yamls and results (default %(default)s)")
    parser.add_argument("--in-memory", action="store_true",
                        help="hand the harness the model loaded here instead of letting it load the dir itself "
                             "(automatic for adapter chains and adapters with saved embeddings)")
    add_pickle_weights_flag(parser)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------
# What the harness reads: the items in upstream columns, and the task yamls
# ---------------------------------------------------------------------------
def type3_system_prompt(items: Sequence[Mapping[str, Any]]) -> str:
    """The type-3 system prompt (formats.py), handed to the harness as its system_instruction."""
    prompts = {mcq_prompt_messages(item, PROMPT_TYPE3)[0]["content"] for item in items}
    if len(prompts) != 1:
        raise ValueError(f"expected one type-3 system prompt for every item, found {len(prompts)}")
    return prompts.pop()


def lm_eval_row(item: Mapping[str, Any]) -> dict:
    """An item as the harness's kormedmcqa yaml expects it: upstream columns ``question``, ``A``-``E``,
    ``answer`` 1-based; plus ``id`` (to match predictions), ``choices`` (the item's letters) and
    ``user`` (our type-3 user turn, from formats.py) for the letter-mode task."""
    letters = item_letters(item)
    messages = mcq_prompt_messages(item, PROMPT_TYPE3)
    if messages[0]["role"] != "system" or messages[-1]["role"] != "user":
        raise ValueError(f"item {item.get('id')}: type-3 messages should be [system, user]")
    return {"id": str(item["id"]), "question": item["question"],
            **{letter: item["options"][letter] for letter in letters},
            "answer": letters.index(item["answer"]) + 1, "choices": letters, "user": messages[-1]["content"]}


def write_lm_eval_data(items: Sequence[Mapping[str, Any]], path: Path, need_five_options: bool) -> int:
    """Write the rows (atomic). The stock generate template prints options A-E: every item needs five."""
    if need_five_options:
        short = [str(item.get("id")) for item in items if item_letters(item) != list(formats.OPTION_LETTERS)]
        if short:
            raise DataError(f"{len(short)} item(s) lack five options A-E, which the harness's kormedmcqa "
                            f"template prints (first: {short[0]}); run --only letter for such sets")
    ids = [str(item["id"]) for item in items]
    if len(set(ids)) != len(ids):
        raise DataError("item ids are not unique: predictions could not be matched item by item")
    return atomic_write_jsonl(path, (lm_eval_row(item) for item in items))


def stock_tasks_dir() -> Path:
    """The installed lm_eval/tasks/ directory (where the stock kormedmcqa yamls live)."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def write_task_yaml(template: Path, out_dir: Path, data_file: Path, cache_dir: Path) -> str:
    """The template yaml with absolute data paths (and the stock include resolved) into
    ``out_dir``; returns the task name. Runtime copies keep configs/ free of machine paths.
    ``cache_dir`` is where ``datasets`` caches the data file (beside the results, not in ~/.cache)."""
    config = yaml.safe_load(template.read_text(encoding="utf-8"))
    if not isinstance(config, dict) or "task" not in config:
        raise DataError(f"{template}: expected a task yaml with a 'task' key")
    splits = config.get("dataset_kwargs", {}).get("data_files", {})
    if not splits:
        raise DataError(f"{template}: expected dataset_kwargs.data_files")
    config["dataset_kwargs"]["data_files"] = {split: str(data_file.resolve()) for split in splits}
    config["dataset_kwargs"]["cache_dir"] = str(cache_dir.resolve())
    include = config.get("include")
    if include and not Path(include).is_absolute():
        stock = stock_tasks_dir() / include
        if not stock.is_file():
            raise DataError(f"{template}: include {include!r} not found in {stock_tasks_dir()} "
                            "(another lm_eval version? requirements-crosscheck.txt pins the one checked)")
        config["include"] = str(stock)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / template.name, yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
    return str(config["task"])


# ---------------------------------------------------------------------------
# Running the harness
# ---------------------------------------------------------------------------
def harness_model_args(info: Mapping[str, Any]) -> dict:
    """``hf`` model args that make the harness load, by itself, the weights we loaded (``info`` of
    ``load_model_for_eval``): the base dir, plus one adapter as ``peft=``.

    Refused (ConfigError): a chain of adapters (the harness applies one), and an adapter that saved
    embeddings (``modules_to_save``): the harness resizes the embeddings to the tokenizer's length
    before loading an adapter (Gemma has padding rows: 262,208 vs 262,145; tiny 8,064 vs 8,000), so
    saved embedding rows no longer fit.
    """
    args = {"pretrained": str(info["base_model"]), "dtype": str(info["dtype"]), "device": str(info["device"])}
    adapters = list(info["adapters"])
    if len(adapters) > 1:
        raise ConfigError(f"the harness applies one adapter; {len(adapters)} given ({', '.join(adapters)})")
    if adapters:
        config = json.loads(Path(adapters[0], "adapter_config.json").read_text(encoding="utf-8"))
        if config.get("modules_to_save"):
            raise ConfigError(f"{adapters[0]}: the adapter saves {', '.join(config['modules_to_save'])}, which the "
                              "harness cannot load (it resizes the embeddings first); cross-check the base model "
                              "or an adapter without modules_to_save")
        args["peft"] = adapters[0]
    if str(info.get("tokenizer") or args["pretrained"]) != args["pretrained"]:
        args["tokenizer"] = str(info["tokenizer"])  # the adapter's own tokenizer, as we load it
    return args


def harness_model(loaded, batch_size: int, in_memory: bool = False) -> tuple[Any, dict]:
    """(what ``simple_evaluate`` gets as ``model``, a record of it): ``"hf"`` with the model args the
    harness loads from, or, when it cannot load those weights (``harness_model_args`` says why) or
    ``in_memory`` is asked, an ``HFLM`` around the model loaded here, chain merged and embeddings in
    place, so the harness resizes nothing."""
    if not in_memory:
        try:
            model_args = harness_model_args(loaded.info)
            return "hf", {"loads": "harness (hf)", "model_args": model_args}
        except ConfigError as exc:
            logger.info("the harness cannot load these weights itself (%s): handing it the loaded model", exc)
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size)
    return lm, {"loads": "in-memory (HFLM(pretrained=model))", "base_model": str(loaded.info["base_model"]),
                "adapters": list(loaded.info["adapters"])}


def run_lm_eval(task: str, tasks_dir: Path, model: Any, batch_size: int, **kwargs) -> list[dict]:
    """The harness's per-item samples of ``task`` (``simple_evaluate`` with ``log_samples``);
    ``model`` is ``harness_model``'s pair."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    lm, record = model
    manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    model_args = record.get("model_args") if lm == "hf" else None
    results = lm_eval.simple_evaluate(model=lm, model_args=model_args, tasks=[task], task_manager=manager,
                                      batch_size=batch_size, log_samples=True, **kwargs)
    return list(results["samples"][task])


# ---------------------------------------------------------------------------
# Comparing, item by item
# ---------------------------------------------------------------------------
def _by_id(samples: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    by_id = {str(sample["doc"]["id"]): sample for sample in samples}
    if len(by_id) != len(samples):
        raise ValueError("the harness returned several samples for one item id")
    return by_id


def _matched(ours: Sequence[Mapping[str, Any]], samples: Sequence[Mapping[str, Any]]) -> list[tuple]:
    theirs = _by_id(samples)
    missing = [str(p["id"]) for p in ours if str(p["id"]) not in theirs]
    if missing or len(theirs) != len(ours):
        raise ValueError(f"the harness scored {len(theirs)} items, we scored {len(ours)} "
                         f"(first of ours missing there: {missing[0] if missing else '-'})")
    return [(p, theirs[str(p["id"])]) for p in ours]


def _loglikelihood(response: Any) -> float:
    """One choice's filtered response: ``(loglikelihood, is_greedy)`` or a bare float."""
    return float(response[0] if isinstance(response, (list, tuple)) else response)


def _normalised(logliks: Sequence[float]) -> list[float]:
    top = max(logliks)
    log_total = top + math.log(sum(math.exp(x - top) for x in logliks))
    return [x - log_total for x in logliks]


def compare_letter_mode(ours: Sequence[Mapping[str, Any]], samples: Sequence[Mapping[str, Any]]) -> dict:
    """Agreement of our letter-mode answers with the harness's argmax log-likelihood choice.

    Also the largest difference of the letter log-probabilities (normalised over the options on
    both sides) and the per-item rows; a disagreement lists both answers and our margin.
    """
    rows, max_diff = [], 0.0
    for pred, sample in _matched(ours, samples):
        letters = list(sample["doc"]["choices"])
        logliks = [_loglikelihood(r) for r in sample["filtered_resps"]]
        if len(logliks) != len(letters):
            raise ValueError(f"item {pred['id']}: {len(logliks)} harness scores for {len(letters)} choices")
        theirs = _normalised(logliks)
        their_letter = letters[max(range(len(letters)), key=lambda k: logliks[k])]
        diff = max(abs(theirs[k] - pred["letter_logprobs"][letter]) for k, letter in enumerate(letters))
        max_diff = max(max_diff, diff)
        ranked = sorted(pred["letter_logprobs"].values(), reverse=True)
        rows.append({"id": pred["id"], "gold": pred["gold"], "ours": pred["prediction"], "lm_eval": their_letter,
                     "agree": pred["prediction"] == their_letter, "max_logprob_diff": round(diff, 6),
                     "our_margin": round(ranked[0] - ranked[1], 6) if len(ranked) > 1 else None})
    summary = _agreement(rows)
    summary["max_abs_logprob_diff"] = round(max_diff, 6)
    return {"summary": summary, "rows": rows}


def harness_extract(text: str) -> str:
    """The harness's own kormedmcqa answer extraction, applied to OUR text (to class differences)."""
    from lm_eval.tasks.kormedmcqa.utils import extract_choice

    return extract_choice(text)


def cut_at_stop_strings(text: str) -> str:
    """Our generation as the harness keeps it: up to the first of its stop strings."""
    for stop in LM_EVAL_STOP_STRINGS:
        text = text.split(stop, 1)[0]
    return text


def compare_generate(ours: Sequence[Mapping[str, Any]], samples: Sequence[Mapping[str, Any]],
                     their_extraction=harness_extract) -> dict:
    """Agreement of the answers read from each side's generation ("no answer" equals "no answer").

    Each disagreement gets a ``reason``: ``extraction`` when both generated the same text (the two
    extraction rules differ), ``text`` when the generations differ; ``same_text`` counts items
    whose texts are equal. ``their_extraction`` is the harness's rule (a parameter for tests).
    """
    rows = []
    for pred, sample in _matched(ours, samples):
        their_text = str(sample["resps"][0][0] if isinstance(sample["resps"][0], (list, tuple)) else sample["resps"][0])
        filtered = sample["filtered_resps"]
        their_answer = str(filtered[0] if isinstance(filtered, (list, tuple)) else filtered) or None
        our_text = cut_at_stop_strings(pred.get("raw_output") or "")
        same_text = our_text.strip() == their_text.strip()
        agree = pred["prediction"] == their_answer
        reason = None
        if not agree:
            reason = "extraction" if same_text else "text"
        rows.append({"id": pred["id"], "gold": pred["gold"], "ours": pred["prediction"], "lm_eval": their_answer,
                     "agree": agree, "same_text": same_text, "reason": reason, "our_text": our_text,
                     "lm_eval_text": their_text, "harness_rule_on_our_text": their_extraction(our_text) or None})
    summary = _agreement(rows)
    summary["same_text"] = sum(r["same_text"] for r in rows)
    summary["disagreements_by_reason"] = {reason: sum(r["reason"] == reason for r in rows)
                                          for reason in ("extraction", "text")}
    return {"summary": summary, "rows": rows}


def _agreement(rows: Sequence[Mapping[str, Any]]) -> dict:
    n = len(rows)
    agree = sum(r["agree"] for r in rows)
    return {"items": n, "agree": agree, "agreement": round(agree / n, 4) if n else None,
            "accuracy_ours": round(sum(r["ours"] == r["gold"] for r in rows) / n, 4) if n else None,
            "accuracy_lm_eval": round(sum(r["lm_eval"] == r["gold"] for r in rows) / n, 4) if n else None,
            "disagreements": [{k: v for k, v in r.items() if k != "agree"} for r in rows if not r["agree"]][:EXAMPLES]}


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)

    try:
        return crosscheck(args)
    except ImportError as exc:
        print(f"error: lm_eval is not importable ({exc}); {INSTALL_HINT}", file=sys.stderr)
        return 2
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def crosscheck(args: argparse.Namespace) -> int:
    import lm_eval  # fail early, before a model is loaded, when the harness is missing


    comparisons = [args.only] if args.only else list(COMPARISONS)
    items = load_eval_items(args.set, args.n, args.seed)
    if not items:
        raise DataError(f"{args.set}: no items to evaluate")
    out_dir: Path = args.out_dir
    data_file = out_dir / DATA_FILE_NAME
    write_lm_eval_data(items, data_file, need_five_options="generate" in comparisons)
    tasks_dir = out_dir / "tasks"
    tasks = {template_name: write_task_yaml(template, tasks_dir, data_file, out_dir / "datasets_cache")
             for template_name, template in (("letter", LETTER_TASK_YAML), ("generate", GENERATE_TASK_YAML))}

    loaded = load_model_for_eval(args.model, device=args.device, allow_pickle_weights=args.allow_pickle_weights)
    harness = harness_model(loaded, args.batch_size, in_memory=args.in_memory)
    result: dict[str, Any] = {"crosscheck": "lm-evaluation-harness vs our KorMedMCQA scoring, item by item",
                              "lm_eval_version": lm_eval.__version__, "model": loaded.info["name"],
                              "lm_eval_model": harness[1], "set": args.set, "items": len(items),
                              "data_file": str(data_file), "tasks_dir": str(tasks_dir), "seconds": {}}
    if "letter" in comparisons:
        started = time.perf_counter()
        ours = score_mcq_letter_mode(loaded.model, loaded.tokenizer, items, args.batch_size, style=PROMPT_TYPE3)
        result["seconds"]["ours_letter"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        samples = run_lm_eval(tasks["letter"], tasks_dir, harness, args.batch_size, apply_chat_template=True,
                              system_instruction=type3_system_prompt(items))
        result["seconds"]["lm_eval_letter"] = round(time.perf_counter() - started, 2)
        compared = compare_letter_mode(ours, samples)
        atomic_write_jsonl(out_dir / "items_letter.jsonl", compared["rows"])
        result["letter_mode"] = {"task": tasks["letter"], "ours": "score_mcq_letter_mode(style='type3')",
                                 "goal": args.min_agreement, **compared["summary"]}
        result["letter_mode"]["goal_met"] = (compared["summary"]["agreement"] or 0) >= args.min_agreement
    if "generate" in comparisons:
        started = time.perf_counter()
        ours = generate_mcq_answers(loaded.model, loaded.tokenizer, items, style=PROMPT_LM_EVAL,
                                    batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
        result["seconds"]["ours_generate"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        samples = run_lm_eval(tasks["generate"], tasks_dir, harness, args.batch_size,
                              gen_kwargs={"max_gen_toks": args.max_new_tokens})
        result["seconds"]["lm_eval_generate"] = round(time.perf_counter() - started, 2)
        compared = compare_generate(ours, samples)
        atomic_write_jsonl(out_dir / "items_generate.jsonl", compared["rows"])
        result["generate"] = {"task": tasks["generate"], "ours": "generate_mcq_answers(style='lm_eval')",
                              "max_new_tokens": args.max_new_tokens, **compared["summary"]}
    atomic_write_json(out_dir / "crosscheck.json", result)
    print(json.dumps(result, ensure_ascii=False))
    letter = result.get("letter_mode")
    return 1 if letter is not None and not letter["goal_met"] else 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
