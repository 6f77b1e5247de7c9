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
)

# What each stage trains on, as the sources' feeds (train_02 trains KorMedMCQA's train split only).
STAGE_FEEDS: dict[str, tuple[str, ...]] = {
    "00_trained": (FEED_PLAIN_TEXT,),
    "01_trained": (FEED_DICTIONARY,),
    "type1_text": (FEED_TYPE1,),
    "type2_text_reasoning": (FEED_REASONING,),
    "type3_word": (FEED_MCQ,),
    "type4_word_reasoning": (FEED_REASONING,),
}
STAGE_SOURCES: dict[str, tuple[str, ...]] = {"02_trained": ("kormedmcqa",)}
MEDGEMMA_LICENSE = "health-ai-developer-foundations"  # the MedGemma model cards' terms


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
        tags=["medical", "korean", "kormedmcqa", "medgemma-korean", stage, model_name,
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
