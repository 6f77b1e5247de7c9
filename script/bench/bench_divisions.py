"""Benchmark: division annotation -- lexical stage, model stage, and the guide's generate-and-parse way.

    python -m script.bench.bench_divisions                                  # tiny, data/refined_clean
    python -m script.bench.bench_divisions --model tiny --subset 200 --threads 1
    python -m script.bench.bench_divisions --model medgemma-4b --device cuda --subset 500

Records: ``--data-dir/<type>/{train,validation}.jsonl`` of the four training types (default
data/refined_clean, built by ``make data``). The sample data is rendered from the knowledge table
of ``script/embedded/sample_knowledge.py``, so each record's gold division is that of the condition it was
generated from: the condition whose name (or treatment, test, finding) is the record's answer, else
the first condition named in its answer, else in its question (``gold_condition``). The gold is
kept here, apart; the annotator never reads it and never imports the knowledge table (its keywords
come from med_division.json only). Records with no recognisable condition are counted, not scored.

Ways measured, in one run on one model:

* lexical stage on every record (the default annotator, no model);
* model stage (``--model``) on a seeded subset of ``--subset`` records: the model alone ranking the
  ten division names by calibrated log-likelihood, and the full annotator with the model stage
  (the model consulted only where the keywords are not conclusive);
* the guide's generate-and-parse baseline on the same subset: the chat model is asked to write the
  division (``BASELINE_PROMPT``, greedy, ``--max-new-tokens``, batched ``--baseline-batch-size``)
  and the text is parsed for a division id or name; nothing parseable is malformed -> UNKNOWN.

Printed as ONE JSON object: samples/s of each way, UNKNOWN and GENERAL shares, primary-division
accuracy against gold (major division, and the id cut to the gold's depth), malformed outputs, the
speed ratios, UNKNOWN on everyday (non-medical) sentences, and how much of the sample's vocabulary
the taxonomy's keywords overlap. Goals (issue 7): UNKNOWN <= 5 %, accuracy >= 85 %, lexical >= 10x
the baseline, no malformed output. No timing is asserted anywhere; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from phase5_subject_training.divisions import (
    GENERAL,
    UNKNOWN,
    DivisionAnnotator,
    ModelScorer,
    division_problems,
    load_taxonomy,
    model_text,
    normalize_term,
    record_fields,
)
from script import formats
from script.cli import setup_logging
from script.data_io import DataError, iter_jsonl
from script.embedded.sample_knowledge import CONDITIONS, DIVISIONS, GENERAL_TOPICS
from script.evaluation import generate_texts
from script.model_loading import load_model_for_eval
from script.training_config import CLEAN_DIR, DEFAULT_MODEL

logger = logging.getLogger("bench_divisions")

# The guide's approach, reproduced ONLY as the baseline of this benchmark (the annotator never
# generates): list the divisions, ask for one, parse what comes back.
BASELINE_PROMPT = ("다음 의료 텍스트가 속하는 진료 분야를 아래 목록에서 하나 골라 번호와 이름으로 답하세요.\n"
                   "{listing}\n\n텍스트: {text}\n\n분야:")
GOALS = {"unknown_share_max": 0.05, "primary_accuracy_min": 0.85, "speedup_min": 10.0}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=CLEAN_DIR, help="refined data (default: %(default)s)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="model of the model stage and the baseline (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--subset", type=int, default=200,
                        help="records for the model stage and the baseline (seeded; default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="model-stage batch (default %(default)s)")
    parser.add_argument("--baseline-batch-size", type=int, default=8, help="baseline generation batch (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="baseline generation budget (default 16)")
    parser.add_argument("--max-text-tokens", type=int, default=256, help="sample tokens either model reads")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's own choice)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the subset draw")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------
# Gold labels from the sample generator's knowledge table
# ---------------------------------------------------------------------------
class GoldIndex:
    """Which condition of ``sample_knowledge.CONDITIONS`` a refined sample record was generated from."""

    def __init__(self):
        self.conditions = CONDITIONS
        by_id = {c.id: c for c in CONDITIONS}
        self.by_name = {}
        owners: dict[str, set[str]] = {}
        for c in CONDITIONS:
            self.by_name[c.ko] = c
            self.by_name[c.en.lower()] = c
            for text in (c.treatment, c.key_test, *c.symptoms):
                owners.setdefault(text, set()).add(c.id)
        self.by_owned = {text: by_id[next(iter(ids))] for text, ids in owners.items() if len(ids) == 1}
        names = sorted({c.ko for c in CONDITIONS}, key=len, reverse=True)
        # a name starts a word: 옴 (scabies) is not the end of 튀어나옴
        self.name_re = re.compile(r"(?<![가-힣A-Za-z])(?:" + "|".join(re.escape(n) for n in names) + ")")

    def first_named(self, text: str):
        match = self.name_re.search(text)
        return self.by_name[match.group()] if match else None

    def gold_condition(self, record: dict):
        """(condition, how) or (None, "none")."""
        options = record.get("options")
        if isinstance(options, dict) and record.get("answer") in options:
            question, answer = record.get("question", ""), options[record["answer"]]
        else:
            turns = {m.get("role"): m.get("content", "") for m in record.get("messages", [])}
            question = turns.get("user", "")
            answer = formats.split_reasoning(turns.get("assistant", ""))[1]
        answer = answer.strip()
        for how, found in (("exact", self.by_name.get(answer) or self.by_name.get(answer.lower())),
                           ("owned", self.by_owned.get(answer)),
                           ("answer-name", self.first_named(answer)),
                           ("question-name", self.first_named(question))):
            if found is not None:
                return found, how
        return None, "none"


# ---------------------------------------------------------------------------
# The generate-and-parse baseline
# ---------------------------------------------------------------------------
def parse_generated_division(text: str, taxonomy) -> str | None:
    """A valid id or a division/specialty name in free text (the earliest), else None (malformed)."""
    for match in re.finditer(r"(?<![\d.])\d+(?:\.\d+)*", text):
        if taxonomy.is_valid(match.group()):
            return match.group()
    lowered = text.lower()
    found = []
    for division_id, node in taxonomy.divisions.items():
        for name in (node.name_ko, node.name_en, *((division_id,) if division_id in (GENERAL, UNKNOWN) else ())):
            position = lowered.find(name.lower())
            if position >= 0:
                found.append((position, division_id))
    for specialty in taxonomy.specialties:
        if len(specialty.divisions) == 1:
            for name in (specialty.name_ko, *specialty.aliases):
                position = text.find(name)
                if position >= 0:
                    found.append((position, specialty.divisions[0]))
    return min(found)[1] if found else None


def baseline_annotate(model, tokenizer, taxonomy, texts: Sequence[str], batch_size: int, max_new_tokens: int,
                      max_text_tokens: int) -> list[dict]:
    listing = "\n".join(f"{d}. {taxonomy.divisions[d].name_ko} ({taxonomy.divisions[d].name_en})"
                        for d in taxonomy.top_level)
    prompts = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_text_tokens]
        user = BASELINE_PROMPT.format(listing=listing, text=tokenizer.decode(ids) if ids else "")
        rendered = formats.render_prompt(tokenizer, formats.build_messages(None, user))
        prompts.append(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    outputs = generate_texts(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size)
    return [{"raw": out["text"], "division": parse_generated_division(out["text"], taxonomy)} for out in outputs]


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------
def score(predictions: Sequence[str | None], golds: Sequence, taxonomy, seconds: float) -> dict:
    """Shares over all predictions; accuracy over the records with a gold condition."""
    n = len(predictions)
    labelled = [(p, g) for p, g in zip(predictions, golds) if g is not None]
    top = sum(p is not None and taxonomy.top(p) == g.top_division for p, g in labelled)
    deep = sum(p is not None and ".".join(p.split(".")[: len(g.division.split("."))]) == g.division
               for p, g in labelled)
    return {
        "samples": n,
        "seconds": round(seconds, 3),
        "samples_per_s": round(n / seconds, 2) if seconds else None,
        "unknown_share": round(sum(p in (None, UNKNOWN) for p in predictions) / n, 4) if n else None,
        "general_share": round(sum(p == GENERAL for p in predictions) / n, 4) if n else None,
        "primary_accuracy": round(top / len(labelled), 4) if labelled else None,
        "sub_division_accuracy": round(deep / len(labelled), 4) if labelled else None,
        "scored": len(labelled),
    }


def vocabulary_overlap(taxonomy, scorer, records: Sequence[dict], gold: GoldIndex) -> dict:
    """How much of the generator's vocabulary the taxonomy's keywords already contain."""
    keyword_home = {}
    for division_id, node in taxonomy.divisions.items():
        for words in node.keywords.values():
            for word in words:
                keyword_home[normalize_term(word)] = division_id
    conditions = gold.conditions
    exact = [c for c in conditions if normalize_term(c.ko) in keyword_home]
    exact_right = [c for c in exact if taxonomy.top(keyword_home[normalize_term(c.ko)]) == c.top_division]
    with_keyword = sum(any(k.key in keyword_home and taxonomy.top(keyword_home[k.key]) == c.top_division
                           for k in scorer.matches(c.ko)) for c in conditions)
    corpus = "".join(normalize_term(t) for r in records for _, t in record_fields(r))
    used = sum(key in corpus for key in keyword_home)
    labels = [label for _, label in DIVISIONS.values()]
    naming_label = sum(any(label in t for _, t in record_fields(r) for label in labels) for r in records)
    return {
        "conditions": len(conditions),
        "condition_names_that_are_keywords": len(exact),
        "of_which_in_the_gold_division": len(exact_right),
        "condition_names_containing_a_gold_division_keyword": with_keyword,
        "taxonomy_keywords": len(keyword_home),
        "taxonomy_keywords_found_in_the_sample": used,
        "records_naming_the_generator_division_label": naming_label,
        "records": len(records),
    }


def load_records(data_dir: Path) -> list[dict]:
    records = []
    for type_name in formats.TRAINING_TYPES:
        for split in ("train", "validation"):
            path = data_dir / type_name / f"{split}.jsonl"
            if not path.is_file():
                raise DataError(f"{path} not found: build the data first (make data)")
            records.extend(r for _, r in iter_jsonl(path, on_reject=lambda r: logger.warning("%s", r)))
    return records


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    import torch


    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        records = load_records(args.data_dir)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    gold = GoldIndex()
    golds_how = [gold.gold_condition(r) for r in records]
    golds = [g for g, _ in golds_how]
    taxonomy = load_taxonomy()

    # ---- lexical stage, every record -------------------------------------------------------
    started = time.perf_counter()
    annotator = DivisionAnnotator(taxonomy)
    annotator.annotate(records[0])  # kiwipiepy's model loads on first use
    load_seconds = time.perf_counter() - started
    started = time.perf_counter()
    lexical = annotator.annotate_many(records)
    lexical_seconds = time.perf_counter() - started
    lexical_result = score([a.primary_division for a in lexical], golds, taxonomy, lexical_seconds)
    lexical_result["malformed"] = sum(bool(division_problems(a.fields(), taxonomy)) for a in lexical)
    lexical_result["load_seconds"] = round(load_seconds, 3)
    lexical_result["rules"] = dict(Counter(a.rule for a in lexical))


    everyday = [{"text": s} for sentences in GENERAL_TOPICS.values() for s in sentences]
    everyday_out = annotator.annotate_many(everyday)

    # ---- model stage and baseline, same subset -----------------------------------------------
    subset = sorted(random.Random(args.seed).sample(range(len(records)), min(args.subset, len(records))))
    sub_records = [records[i] for i in subset]
    sub_golds = [golds[i] for i in subset]
    texts = [model_text(record_fields(r)) for r in sub_records]
    loaded = load_model_for_eval(args.model, device=args.device)
    model, tokenizer = loaded.model, loaded.tokenizer
    model_scorer = ModelScorer(model, tokenizer, taxonomy, args.batch_size, args.max_text_tokens)
    model_scorer.score(texts[:2])  # warm-up, and the calibration prompt
    started = time.perf_counter()
    probabilities = model_scorer.score(texts)
    model_seconds = time.perf_counter() - started
    model_only = score([max(p, key=p.get) for p in probabilities], sub_golds, taxonomy, model_seconds)

    combined_annotator = DivisionAnnotator(taxonomy, model_scorer, model_name=str(args.model))
    started = time.perf_counter()
    combined = combined_annotator.annotate_many(sub_records)
    combined_result = score([a.primary_division for a in combined], sub_golds, taxonomy, time.perf_counter() - started)
    combined_result["malformed"] = sum(bool(division_problems(a.fields(), taxonomy)) for a in combined)
    combined_result["model_consulted"] = sum(" Model: " in a.division_reasoning for a in combined)
    combined_result["rules"] = dict(Counter(a.rule for a in combined))
    lexical_subset = score([lexical[i].primary_division for i in subset], sub_golds, taxonomy, 0.0)
    for key in ("seconds", "samples_per_s"):  # timed on all records above
        lexical_subset.pop(key)

    baseline_annotate(model, tokenizer, taxonomy, texts[:2], args.baseline_batch_size, args.max_new_tokens,
                      args.max_text_tokens)  # warm-up
    started = time.perf_counter()
    baseline = baseline_annotate(model, tokenizer, taxonomy, texts, args.baseline_batch_size, args.max_new_tokens,
                                 args.max_text_tokens)
    baseline_result = score([b["division"] for b in baseline], sub_golds, taxonomy, time.perf_counter() - started)
    baseline_result["malformed"] = sum(b["division"] is None for b in baseline)
    baseline_result["malformed_share"] = round(baseline_result["malformed"] / len(baseline), 4) if baseline else None
    baseline_result["examples"] = [b["raw"][:80] for b in baseline[:3]]

    def ratio(a: dict, b: dict) -> float | None:
        return round(a["samples_per_s"] / b["samples_per_s"], 1) if a["samples_per_s"] and b["samples_per_s"] else None

    result = {
        "bench": "divisions: lexical stage vs model stage vs generate-and-parse baseline",
        "model": loaded.info["name"],
        "device": loaded.info["device"],
        "torch_threads": torch.get_num_threads(),
        "records": len(records),
        "gold": dict(Counter(how for _, how in golds_how)),
        "lexical": lexical_result,
        "subset": {"records": len(subset), "seed": args.seed, "lexical_on_subset": lexical_subset,
                   "model_only": model_only, "lexical_plus_model": combined_result,
                   "baseline_generate_parse": {**baseline_result, "batch_size": args.baseline_batch_size,
                                               "max_new_tokens": args.max_new_tokens}},
        "speed_ratio_lexical_over_baseline": ratio(lexical_result, baseline_result),
        "speed_ratio_model_stage_over_baseline": ratio(model_only, baseline_result),
        "everyday_sentences": {"sentences": len(everyday),
                               "unknown_share": round(sum(a.primary_division == "UNKNOWN" for a in everyday_out)
                                                      / len(everyday), 4),
                               "assigned": dict(Counter(a.primary_division for a in everyday_out))},
        "vocabulary_overlap": vocabulary_overlap(taxonomy, annotator.lexical, records, gold),
    }
    result["goals"] = {
        "unknown_share<=5%": lexical_result["unknown_share"] <= GOALS["unknown_share_max"],
        "primary_accuracy>=85%": (lexical_result["primary_accuracy"] or 0) >= GOALS["primary_accuracy_min"],
        "lexical>=10x_baseline": (result["speed_ratio_lexical_over_baseline"] or 0) >= GOALS["speedup_min"],
        "no_malformed_output": lexical_result["malformed"] == 0 and combined_result["malformed"] == 0,
    }
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
