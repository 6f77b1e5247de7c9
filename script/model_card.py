"""Hub-style model cards for trained adapters and merged exports.

The card is what a user (or the Hub) reads first: YAML front matter that ``huggingface_hub``
parses (``base_model`` as the model the weights apply to, ``library_name: peft``, tags, datasets,
language) and a body with the run's numbers and a load snippet that works as written. A chained
adapter (``adapter_chain.json``: train_02 continues train_01, whose parents were merged under it)
cannot be loaded with ``PeftModel.from_pretrained(base, final)`` alone, which would silently drop
the parents: the snippet merges the parents in order, then loads the adapter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from script.data_io import atomic_write_text
from script.sources import (
    FEED_DICTIONARY,
    FEED_MCQ,
    FEED_PLAIN_TEXT,
    FEED_REASONING,
    FEED_TYPE1,
    SOURCES,
    get_source,
)
from script.training_config import STAGE_00, STAGE_01, STAGE_02

# What each stage trains on, as the sources' feeds (train_02 trains KorMedMCQA's train split only).
STAGE_FEEDS: dict[str, tuple[str, ...]] = {
    STAGE_00: (FEED_PLAIN_TEXT,),
    STAGE_01: (FEED_DICTIONARY,),
    "type1_text": (FEED_TYPE1,),
    "type2_text_reasoning": (FEED_REASONING,),
    "type3_word": (FEED_MCQ,),
    "type4_word_reasoning": (FEED_REASONING,),
}
STAGE_SOURCES: dict[str, tuple[str, ...]] = {STAGE_02: ("kormedmcqa",)}
MEDGEMMA_LICENSE = "health-ai-developer-foundations"  # the MedGemma model cards' terms
TOOLKIT_TAG = "medgemma-korean"  # marks a card this toolkit wrote (and may update)
EVALUATIONS_START = "<!-- evaluations: written by script/validation_kor_med_test.py -->"
EVALUATIONS_END = "<!-- end of evaluations -->"
# The numbers of one evaluation, in the order the card's table shows them (metric_name in model-index).
EVALUATION_METRICS = ("accuracy", "question-blind control", "chance", "majority letter")


def stage_datasets(stage: str) -> list[str]:
    """Hub ids of the datasets a stage trains on (local dictionaries have none); every training
    source for the multi-type trainers."""
    if stage in STAGE_SOURCES:
        chosen = [s for s in SOURCES if s.name in STAGE_SOURCES[stage]]
    elif stage in STAGE_FEEDS:
        chosen = [s for s in SOURCES if s.feeds in STAGE_FEEDS[stage]]
    else:
        chosen = [s for s in SOURCES if s.training_parts()]
    return sorted({s.hub_id for s in chosen if s.hub_id and s.training_parts()})


def load_snippet(base_model: str, adapter_dir: str, parents: Sequence[str], dtype: str, merged: bool = False) -> str:
    """Python that loads what the card describes, with transformers and peft only."""
    lines = ["import torch", "from transformers import AutoModelForCausalLM, AutoTokenizer"]
    if merged:
        lines += ["", f"model = AutoModelForCausalLM.from_pretrained({adapter_dir!r}, dtype=torch.{dtype})",
                  f"tokenizer = AutoTokenizer.from_pretrained({adapter_dir!r})"]
        return "\n".join(lines)
    lines += ["from peft import PeftModel", "",
              f"model = AutoModelForCausalLM.from_pretrained({base_model!r}, dtype=torch.{dtype})"]
    if parents:
        lines += ["# this adapter was trained on top of these, merged into the base in this order",
                  f"for parent in {list(parents)!r}:",
                  "    model = PeftModel.from_pretrained(model, parent).merge_and_unload()"]
    lines += [f"model = PeftModel.from_pretrained(model, {adapter_dir!r})",
              f"tokenizer = AutoTokenizer.from_pretrained({adapter_dir!r})"]
    return "\n".join(lines)


def card_data(base_model: str, stage: str, model_name: str, merged: bool = False):
    from huggingface_hub import ModelCardData

    extra = {"license": "other", "license_name": MEDGEMMA_LICENSE} if base_model.startswith("google/medgemma") else {}
    return ModelCardData(
        base_model=base_model,
        library_name=None if merged else "peft",
        language=["ko"],
        pipeline_tag="text-generation",
        tags=["medical", "korean", "kormedmcqa", TOOLKIT_TAG, stage, model_name,
              *([] if merged else ["lora"])],
        datasets=stage_datasets(stage),
        **extra,
    )


def _value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def render_card(info: Mapping, base_model: str, adapter_dir: str, parents: Sequence[str],
                merged: bool = False) -> str:
    """The card text for a training run record (``training_info.json``) or a merge record."""
    from huggingface_hub import ModelCard

    config = info.get("config", {})
    stage = info.get("stage", config.get("stage", ""))
    what = "Merged model" if merged else "LoRA adapter"
    lines = [
        f"# {info.get('script', 'merge_and_export')} — {info.get('model', '')}",
        "",
        f"{what} for `{base_model}`, trained by MedGemma Korean's `{info.get('script', '')}`"
        f" (git {info.get('git_sha') or 'unknown'}), finished {info.get('finished_at', '-')}.",
    ]
    if parents and merged:
        lines += ["", "These adapters were merged into the base, in this order:", "", *[f"1. `{p}`" for p in parents]]
    elif parents:
        lines += ["", "It was trained on top of these adapters, merged into the base in this order; "
                      "load them first (the snippet below does):", "",
                  *[f"1. `{p}`" for p in parents]]
    lines += ["", "| what | value |", "|---|---|"]
    rows = {
        "training samples": info.get("train_samples", "-"),
        "validation samples": info.get("validation_samples", "-"),
        "epochs": info.get("epochs", "-"),
        "effective batch": info.get("effective_batch", "-"),
        "learning rate": config.get("lr", "-"),
        "LoRA r / alpha": f"{config.get('lora_r', '-')} / {config.get('lora_alpha', '-')}",
        "device / dtype": f"{config.get('device', '-')} / {config.get('dtype', '-')}",
        "quantization": config.get("quantization", "-"),
        "launch": config.get("launch", "-"),
    }
    lines += [f"| {k} | {_value(v)} |" for k, v in rows.items()]
    lines += [f"| {k} | {_value(v)} |" for k, v in info.get("metrics", {}).items()]
    lines += ["", "## Load it", "", "```python",
              load_snippet(base_model, adapter_dir, parents, config.get("dtype", "bfloat16"), merged=merged),
              "```", "",
              "`training_info.json` beside this run has the full configuration, data hashes and metrics." if not merged
              else "`merge_info.json` beside the weights records the merge and its logit check.", ""]
    card = ModelCard(f"---\n{card_data(base_model, stage, info.get('model', ''), merged).to_yaml()}\n---\n"
                     + "\n".join(lines))
    return str(card)


def write_run_cards(output_dir: Path, info: Mapping, base_model: str, parents: Sequence[str]) -> None:
    """The card of a training run, as ``<output>/README.md`` and (replacing PEFT's empty template)
    ``<output>/final/README.md``, the folder a user uploads."""
    final = Path(output_dir) / "final"
    text = render_card(info, base_model, str(final), parents)
    atomic_write_text(Path(output_dir) / "README.md", text)
    if final.is_dir():
        atomic_write_text(final / "README.md", text)


# ---------------------------------------------------------------------------
# Evaluations: the card carries every KorMedMCQA / KMMLU score beside its controls
# ---------------------------------------------------------------------------
def evaluation_results(report: Mapping) -> list:
    """A ``validation_kor_med_test`` report as model-index entries (``huggingface_hub.EvalResult``):
    the accuracy with its clustered 95 % CI, and beside it the question-blind control of the same
    model, chance and the majority letter, all under one ``metric_config`` (mode/prompt)."""
    from huggingface_hub import EvalResult

    block = report.get("controls") or {}
    blind = block.get("question_blind")
    values = {"accuracy": report["accuracy"], "question-blind control": blind["accuracy"] if blind else None,
              "chance": report["chance"], "majority letter": (block.get("majority_letter") or {}).get("accuracy")}
    dataset = report["set"].get("dataset", "kormedmcqa")
    hub_id = get_source(dataset).hub_id
    common = dict(task_type="multiple-choice", dataset_type=hub_id, dataset_name=f"{hub_id.split('/')[-1]} "
                  f"({report['set']['name']})", dataset_split=report["set"]["name"], metric_type="accuracy",
                  metric_config=f"{report['mode']}/{report['prompt']['style']}")
    results = []
    for name in EVALUATION_METRICS:
        if values[name] is None:
            continue
        args = {"items": report["total"]}
        if name == "accuracy":
            args |= {"ci95": [round(float(x), 4) for x in report.get("accuracy_ci95") or ()], "clusters": block.get("clusters"),
                     "scored_by": "script/validation_kor_med_test.py",
                     "evaluated_at": report.get("created_at"), "git_sha": report.get("git_sha")}
        if name == "question-blind control":
            args |= {"how": blind["how"]}
        results.append(EvalResult(metric_value=round(float(values[name]), 4), metric_name=name,
                                  metric_args=args, **common))
    return results


def _evaluation_key(result) -> tuple:
    return result.dataset_type, result.dataset_split, result.metric_config


def evaluations_section(results: Sequence) -> str:
    """The body's table of the card's model-index: one row per set and scoring."""
    rows: dict[tuple, dict] = {}
    for result in results:
        rows.setdefault(_evaluation_key(result), {})[result.metric_name] = result
    lines = [EVALUATIONS_START, "## Evaluations", "",
             "Accuracy with its 95 % confidence interval (clustered over items that share their right answer) "
             "beside its controls: the same model with the questions swapped between items, chance, and the "
             "best constant letter. An accuracy means something only as far as it is above the control.", "",
             "| set | scoring | accuracy (95 % CI) | question-blind control | chance | majority letter | items |",
             "|---|---|---|---|---|---|---|"]
    for (_, split, config), by_name in rows.items():
        accuracy = by_name["accuracy"]
        low, high = (accuracy.metric_args or {}).get("ci95") or (None, None)
        ci = f" ({100 * low:.1f}–{100 * high:.1f})" if low is not None else ""
        cells = [f"{100 * by_name[n].metric_value:.1f} %" if n in by_name else "-" for n in EVALUATION_METRICS[1:]]
        lines.append(f"| {accuracy.dataset_name} | {config} | {100 * accuracy.metric_value:.1f} %{ci} | "
                     + " | ".join(cells) + f" | {(accuracy.metric_args or {}).get('items', '-')} |")
    return "\n".join([*lines, "", EVALUATIONS_END])


def record_evaluation(card_path: Path, report: Mapping, model_name: str | None = None) -> bool:
    """Add (or replace, for the same set and scoring) ``report``'s numbers in a card this toolkit
    wrote: model-index in the front matter and the Evaluations table in the body. A card from
    elsewhere, or none, is left alone (False)."""
    from huggingface_hub import ModelCard

    card_path = Path(card_path)
    if not card_path.is_file():
        return False
    card = ModelCard.load(card_path)
    if TOOLKIT_TAG not in (card.data.tags or []):
        return False
    new = evaluation_results(report)
    replaced = {_evaluation_key(r) for r in new}
    kept = [r for r in (card.data.eval_results or []) if _evaluation_key(r) not in replaced]
    card.data.eval_results = kept + new
    card.data.model_name = card.data.model_name or model_name or card_path.parent.name
    section = evaluations_section(card.data.eval_results)
    text = card.text
    if EVALUATIONS_START in text and EVALUATIONS_END in text:
        head, rest = text.split(EVALUATIONS_START, 1)
        text = head + section + rest.split(EVALUATIONS_END, 1)[1]
    elif "## Load it" in text:
        head, rest = text.split("## Load it", 1)
        text = head + section + "\n\n## Load it" + rest
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    card.text = text
    atomic_write_text(card_path, str(card))
    return True


def record_evaluation_in_cards(model_info: Mapping, report: Mapping) -> list[Path]:
    """The cards of the model an evaluation scored: the last adapter's (``final/README.md`` and its
    run dir's copy) or a merged export's. Returns the cards updated."""
    adapters = list(model_info.get("adapters") or [])
    target = Path(adapters[-1]) if adapters else Path(str(model_info.get("base_model", "")))
    candidates = [target / "README.md"]
    name = target.name
    if target.name == "final":  # model/<stage>/<MODEL>/final
        candidates.append(target.parent / "README.md")
        name = f"{target.parent.parent.name}-{target.parent.name}"
    return [path for path in candidates if record_evaluation(path, report, model_name=name)]
