"""The registry of every data source: where it comes from, what it looks like, what it feeds.

One table (``SOURCES``) and a few accessors. ``download_all_datasets.py`` reads it to know what
to fetch and which columns to expect; ``refine_4types.py`` and the other refiners read it to know
which raw files to open and which column holds what. A wrong guess about an upstream schema is
fixed here, in one place.

    python -m script.sources            # print the table

Column names are the upstream ones. Where upstream spellings differ between versions, a column
is written ``"Complex_Cot|Complex_CoT"``: any spelling is accepted, the first one is canonical.
Raw files keep the upstream spelling; readers use ``get_field`` to find whichever is present.

Raw layout: ``<raw dir>/by_source/<name>/<config>/<split>.jsonl`` (``raw_path``). ``config`` is
``"default"`` for datasets with one unnamed configuration.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = "default"

# What a source feeds (which refiner reads it).
FEED_TYPE1 = "type1"  # refine_4types.py -> type1_text
FEED_REASONING = "reasoning"  # refine_4types.py -> type2 (long answer) or type4 (short answer)
FEED_MCQ = "mcq"  # refine_4types.py -> type3_word
FEED_EVALUATION = "evaluation"  # evaluation only, never training data
FEED_PLAIN_TEXT = "plain_text"  # refined/00_plain_text (train_00)
FEED_DICTIONARY = "dictionary"  # refined/01_medical_dict.json, 02_char_dict.json (train_01)

# KMMLU has 45 subjects and none of them is medicine, nursing or pharmacy (see UPSTREAM_FACTS.md).
# "KMMLU-medical" is therefore a chosen subset: the only health subject plus its two nearest
# neighbours for clinical questions. Results on it are reported under this name, not as "medicine".
KMMLU_MEDICAL_SUBJECTS = ["Health", "Biology", "Psychology"]

KORMEDMCQA_CONFIGS = ("doctor", "nurse", "pharm", "dentist")
PLAIN_TEXT_MB_PER_SOURCE = 500  # three corpora: the guide's ~1.5 GB of refined plain text
KORMEDMCQA_SPLITS = ("train", "dev", "test", "fewshot")
KORMEDCONCEPTSQA_CONFIGS = ("kcd8_easy", "kcd8_medium", "kcd8_hard", "kcd8_merged", "atc_easy", "atc_medium",
                            "atc_hard")


@dataclass(frozen=True)
class Source:
    """One registry row.

    ``roles`` names the column that plays each part for the generic refiners (type 1: ``user``,
    ``input``, ``assistant``; reasoning: ``question``, ``reasoning``, ``answer``). MCQ sources have
    one parser each in refine_4types.py, so they need no roles.
    """

    name: str  # short snake_case name: directory under raw/by_source and "source" of every record
    hub_id: str | None  # None for local (non-hub) files
    configs: tuple[str, ...]
    splits: tuple[str, ...]  # every split of every config, unless config_splits narrows it per config
    columns: tuple[str, ...]  # expected columns; "a|b" accepts either spelling
    feeds: str  # one of the FEED_* values
    roles: Mapping[str, str] = field(default_factory=dict)
    # Hub repositories holding several file families: split -> file (load_dataset data_files).
    data_files: Mapping[str, str] | None = None
    # Configs that do not all have the same splits: config -> its splits (each one of ``splits``).
    config_splits: Mapping[str, tuple[str, ...]] | None = None
    # Local sources: config -> file path relative to the local directory (<mirror>/local).
    local_files: Mapping[str, str] | None = None
    # Splits that are evaluation material (a benchmark's dev/test/fewshot): downloaded, never refined
    # into training data. A source that feeds FEED_EVALUATION is evaluation material as a whole.
    evaluation_splits: tuple[str, ...] = ()
    note: str = ""
    # Default cap of the download, in MB of raw JSON Lines per part (None: every row). The large text
    # corpora are capped at the guide's volume (~1.5 GB of plain text over the three of them) and
    # streamed, so neither the hub cache nor data/raw holds a whole dump; --max-mb overrides.
    max_mb: float | None = None
    # A stage cannot run without it (KorMedMCQA: train_02 and every evaluation; the dictionaries:
    # train_01). A failed optional source is skipped and the run goes on without it.
    required: bool = False

    @property
    def is_local(self) -> bool:
        return self.hub_id is None

    def parts(self) -> list[tuple[str, str]]:
        """Every (config, split) pair this source has, in a fixed order."""
        return [(config, split) for config in self.configs
                for split in (self.config_splits or {}).get(config, self.splits)]

    def is_evaluation_split(self, split: str) -> bool:
        return self.feeds == FEED_EVALUATION or split in self.evaluation_splits

    def training_parts(self) -> list[tuple[str, str]]:
        """The (config, split) pairs that may become training data: ``parts`` minus evaluation splits."""
        return [(config, split) for config, split in self.parts() if not self.is_evaluation_split(split)]

    def origin_label(self) -> str:
        return self.hub_id or f"local:{', '.join((self.local_files or {}).values())}"


_INSTRUCTION_COLUMNS = ("instruction", "input", "output")
_INSTRUCTION_ROLES = {"user": "instruction", "input": "input", "assistant": "output"}

SOURCES: tuple[Source, ...] = (
    # ---- Type 1: instruction / QA text ------------------------------------------------------
    Source("asan_amc_healthinfo", "ChuGyouk/Asan-AMC-Healthinfo", (DEFAULT_CONFIG,), ("train",),
           _INSTRUCTION_COLUMNS, FEED_TYPE1, _INSTRUCTION_ROLES),
    Source("healthsearchqa_ko", "ChuGyouk/HealthSearchQA-ko", (DEFAULT_CONFIG,), ("train",),
           ("question_ko", "answer_ko"), FEED_TYPE1, {"user": "question_ko", "assistant": "answer_ko"}),
    Source("ai_healthcare_qa", "ChuGyouk/AI_healthcare_QA", (DEFAULT_CONFIG,), ("train",),
           ("question", "answer"), FEED_TYPE1, {"user": "question", "assistant": "answer"}),
    Source("komedinstruct_52k", "ChuGyouk/KoMedInstruct-52k", (DEFAULT_CONFIG,), ("train",),
           _INSTRUCTION_COLUMNS, FEED_TYPE1, _INSTRUCTION_ROLES),
    Source("genmedgpt_5k_ko", "ChuGyouk/GenMedGPT-5k-ko", (DEFAULT_CONFIG,), ("train",),
           _INSTRUCTION_COLUMNS, FEED_TYPE1, _INSTRUCTION_ROLES),
    # ---- Reasoning: type 2 (long answer) or type 4 (short answer) ---------------------------
    Source("medical_o1_reasoning_ko", "ChuGyouk/medical-o1-reasoning-SFT-Ko", (DEFAULT_CONFIG,), ("train",),
           ("Question", "Complex_Cot|Complex_CoT", "Response"), FEED_REASONING,
           {"question": "Question", "reasoning": "Complex_Cot|Complex_CoT", "answer": "Response"},
           note="the English original spells the column Complex_CoT"),
    Source("chainofdiagnosis_ko", "ChuGyouk/ChainofDiagnosis-Ko", (DEFAULT_CONFIG,), ("train",),
           ("question", "chain", "diagnosis"), FEED_REASONING,
           {"question": "question", "reasoning": "chain", "answer": "diagnosis"}),
    # ---- Multiple choice: type 3 ------------------------------------------------------------
    Source("kormedmcqa", "sean0042/KorMedMCQA", KORMEDMCQA_CONFIGS, KORMEDMCQA_SPLITS,
           ("subject", "year", "period", "q_number", "question", "A", "B", "C", "D", "E", "answer", "cot"), FEED_MCQ,
           evaluation_splits=("dev", "test", "fewshot"), required=True,
           note="answer is 1-5; cot is filled in fewshot only; the fewshot rows are drawn from dev; "
                "dev/test/fewshot of every config are evaluation items: never refined"),
    Source("medqa", "ChuGyouk/MedQA", (DEFAULT_CONFIG,), ("train", "test"),
           ("question_ko", "A_ko", "B_ko", "C_ko", "D_ko", "answer_idx"), FEED_MCQ,
           data_files={"train": "medqa_edited_train.jsonl", "test": "medqa_edited_test.jsonl"},
           evaluation_splits=("test",),
           note="test is MedQA's benchmark split: never refined; the repository also holds medqa_*_trans.jsonl "
                "with another schema; only the edited files are read"),
    Source("medqa_evol_ko", "ChuGyouk/MedQA-Evol-Korean", (DEFAULT_CONFIG,), ("train",),
           ("input", "output"), FEED_MCQ, note="options are lines 'A. ...' inside input; answer is '정답: X' in output"),
    # The hub's current layout (no default config, no train split): KCD-8 disease codes in four
    # configs with a test split, ATC drug codes in three with dev and test. None of them is an
    # evaluation set of ours, so every split is training material; kcd8_merged repeats questions of
    # the other kcd8 configs, which refine's exact-duplicate check drops.
    Source("kormedconceptsqa", "ChuGyouk/KorMedConceptsQA", KORMEDCONCEPTSQA_CONFIGS, ("dev", "test"),
           ("question", "option1", "option2", "option3", "option4", "answer_id"), FEED_MCQ,
           config_splits={config: ("test",) if config.startswith("kcd8") else ("dev", "test")
                          for config in KORMEDCONCEPTSQA_CONFIGS},
           note="four options option1-option4; answer_id is the letter A-D"),
    Source("kormedlawqa", "snuh/KorMedLawQA", (DEFAULT_CONFIG,), ("train",),
           ("question", "options", "answer"), FEED_MCQ, note="options is a list of 5 strings; answer is a letter"),
    # ---- Evaluation only ----------------------------------------------------------------------
    Source("kmmlu", "HAERAE-HUB/KMMLU", tuple(KMMLU_MEDICAL_SUBJECTS), ("train", "dev", "test"),
           ("question", "answer", "A", "B", "C", "D", "Category", "Human Accuracy"), FEED_EVALUATION,
           note="answer is 1-4; chosen subset KMMLU_MEDICAL_SUBJECTS; never training data"),
    # ---- Korean plain text (train_00) ---------------------------------------------------------
    Source("c4_ko", "allenai/c4", ("ko",), ("train",), ("text", "timestamp", "url"), FEED_PLAIN_TEXT,
           max_mb=PLAIN_TEXT_MB_PER_SOURCE, note="whole: ~3 GB in the guide's copy"),
    Source("namuwiki", "heegyu/namuwiki", (DEFAULT_CONFIG,), ("train",),
           ("title", "text", "contributors", "namespace"), FEED_PLAIN_TEXT,
           max_mb=PLAIN_TEXT_MB_PER_SOURCE, note="whole: ~18 GB in the guide's copy"),
    Source("wikipedia_ko", "wikimedia/wikipedia", ("20231101.ko",), ("train",),
           ("id", "url", "title", "text"), FEED_PLAIN_TEXT,
           max_mb=PLAIN_TEXT_MB_PER_SOURCE, note="whole: ~3 GB in the guide's copy"),
    # ---- Local dictionaries (train_01); not on the hub -----------------------------------------
    Source("medical_dict", None, ("korean_medical_dict", "korean_animal_medical_dict"), ("train",),
           ("term", "definition"), FEED_DICTIONARY,
           local_files={"korean_medical_dict": "01_medical_dict/korean_medical_dict.jsonl",
                        "korean_animal_medical_dict": "01_medical_dict/korean_animal_medical_dict.jsonl"},
           required=True),
    Source("char_dict", None, (DEFAULT_CONFIG,), ("train",), ("term", "definition"), FEED_DICTIONARY,
           local_files={DEFAULT_CONFIG: "01_medical_dict/char_dict.jsonl"}, required=True),
)

_BY_NAME = {source.name: source for source in SOURCES}


# ---------------------------------------------------------------------------
# Accessors
# ---------------------------------------------------------------------------
def source_names() -> list[str]:
    return [source.name for source in SOURCES]


def get_source(name: str) -> Source:
    """Registry lookup; an unknown name lists the valid ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown source {name!r}; valid names: {', '.join(_BY_NAME)}") from None


def sources_feeding(*feeds: str) -> list[Source]:
    """Sources that feed any of ``feeds``, in registry order."""
    return [source for source in SOURCES if source.feeds in feeds]


def spellings(column: str) -> list[str]:
    """``"Complex_Cot|Complex_CoT"`` -> ``["Complex_Cot", "Complex_CoT"]``."""
    return column.split("|")


def missing_columns(source: Source, found: Iterable[str]) -> list[str]:
    """Expected columns (as written in the registry) of which no accepted spelling is in ``found``."""
    present = set(found)
    return [column for column in source.columns if not any(name in present for name in spellings(column))]


def get_field(record: Mapping[str, Any], column: str) -> Any:
    """Value of ``column`` under whichever accepted spelling the record has (None when absent)."""
    for name in spellings(column):
        if name in record:
            return record[name]
    return None


def raw_path(raw_dir: str | os.PathLike, name: str, config: str, split: str) -> Path:
    """``<raw dir>/by_source/<name>/<config>/<split>.jsonl``: where download writes and refiners read."""
    return Path(raw_dir) / "by_source" / name / config / f"{split}.jsonl"


def check_registry() -> list[str]:
    """Consistency problems of the table itself (tests assert there are none)."""
    problems = []
    for source in SOURCES:
        if not source.name.isidentifier() or source.name != source.name.lower():
            problems.append(f"{source.name}: name is not snake_case")
        for role, column in source.roles.items():
            if column not in source.columns:
                problems.append(f"{source.name}: role {role!r} uses {column!r}, which is not an expected column")
        if source.is_local and set(source.local_files or {}) != set(source.configs):
            problems.append(f"{source.name}: local_files must name a file for every config")
        if source.config_splits is not None and (set(source.config_splits) != set(source.configs) or any(
                not set(splits) <= set(source.splits) for splits in source.config_splits.values())):
            problems.append(f"{source.name}: config_splits must give every config splits among {source.splits}")
        if source.data_files is not None and set(source.data_files) != set(source.splits):
            problems.append(f"{source.name}: data_files must name a file for every split")
        if source.max_mb is not None and source.max_mb <= 0:
            problems.append(f"{source.name}: max_mb must be positive (None: no cap)")
        unknown = set(source.evaluation_splits) - set(source.splits)
        if unknown:
            problems.append(f"{source.name}: evaluation_splits {sorted(unknown)} are not among its splits")
    if len(_BY_NAME) != len(SOURCES):
        problems.append("duplicate source names")
    return problems


if __name__ == "__main__":
    for source in SOURCES:
        held_out = [split for split in source.splits if source.is_evaluation_split(split)]
        print(f"{source.name:26} {source.feeds:11} {source.origin_label():45} "
              f"parts={','.join(f'{c}/{s}' for c, s in source.parts())}"
              + (f" evaluation={','.join(held_out)}" if held_out else "")
              + (f" cap={source.max_mb:g}MB" if source.max_mb else ""))
