"""Render the synthetic local hub mirror under ``data/sample``.

Run from the repository root::

    python -m script.embedded.make_sample_data [--out data/sample] [--seed 0]

Every file is rendered from the hand-written table in
``script/embedded/sample_knowledge.py``: one directory per hub id
(``data/sample/<owner>/<name>/``) with a ``README.md`` whose YAML front matter
declares the configs and splits, so that
``datasets.load_dataset("data/sample/<owner>/<name>", "<config>", split=...)``
works offline.  Column names follow the upstream schemas.

The output is deterministic: each source draws from its own
``random.Random("<seed>:<source>")`` and rows are built in a fixed order, so two
runs with the same seed give byte-identical files.  The whole tree is built in
memory, written to a temporary sibling directory and swapped into place.

ALL content is synthetic and simplified.  It is not medical advice and not the
upstream data.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from script import kormedmcqa
from script.data_io import atomic_write_dir
from script.embedded.sample_knowledge import (
    CONDITIONS,
    DIVISIONS,
    GENERAL_TOPICS,
    GROUP_EVAL,
    GROUP_STEER,
    GROUP_TRAIN,
    SPECIALTIES,
    SYMBOLS,
    VET_TERMS,
    Condition,
    conditions_in,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "data" / "sample"
LETTERS = "ABCDE"

Rows = list[dict]
Splits = dict[str, Rows]  # split name -> rows


@dataclass
class HubDataset:
    """One rendered dataset: hub id, configs -> splits -> rows, file layout.

    ``provenance`` is the generator's own record of what each row of an MCQ-shaped split asks:
    (config, split) -> one ``{"condition", "kind", "gold"}`` per row, in row order (None for a
    text-form row of a mixed split, such as a long answer of a reasoning source). Text-form
    splits have none. Tests read it to prove that no evaluation question shares its condition
    with an MCQ training row; it is never written to disk (the files keep the upstream schema).
    """

    hub_id: str
    configs: dict[str, Splits]
    # (config, split) -> path inside the dataset dir; default data/<config>/<split>.jsonl
    paths: dict[tuple[str, str], str] | None = None
    provenance: dict[tuple[str, str], list[dict | None]] = field(default_factory=dict)

    def path_for(self, config: str, split: str) -> str:
        if self.paths and (config, split) in self.paths:
            return self.paths[(config, split)]
        return f"data/{config}/{split}.jsonl"


# --------------------------------------------------------------------------- Korean text helpers

_DIGIT_HAS_FINAL = {"0": True, "1": True, "2": False, "3": True, "4": False,
                    "5": False, "6": True, "7": True, "8": True, "9": False}
_PARTICLES = {"은": ("은", "는"), "이": ("이", "가"), "을": ("을", "를"),
              "과": ("과", "와"), "으로": ("으로", "로")}


def _strip_trailing_parens(w: str) -> str:
    """Drop trailing (possibly nested) parentheticals: the particle agrees with the word
    before them, e.g. 메살라민(5-ASA)을."""
    while w.endswith(")"):
        depth = 0
        for i in range(len(w) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(w[i], 0)
            if depth == 0:
                break
        if depth != 0 or i == 0:
            return w
        w = w[:i].rstrip()
    return w


def _final_sound(word: str) -> tuple[bool, bool]:
    """(ends in a final consonant, that consonant is ㄹ) for choosing particles."""
    w = _strip_trailing_parens(word.rstrip().rstrip("'\""))
    ch = w[-1]
    if "가" <= ch <= "힣":
        final = (ord(ch) - 0xAC00) % 28
        return final != 0, final == 8
    if ch.isdigit():
        return _DIGIT_HAS_FINAL[ch], ch in "178"
    if ch.upper() in "LMNR":  # read 엘, 엠, 엔, 알
        return True, ch.upper() in "LR"
    return False, False


def josa(word: str, particle: str) -> str:
    """Attach a Korean particle ("은", "이", "을", "과", "으로") in its right form."""
    with_final, final_rieul = _final_sound(word)
    after_consonant, after_vowel = _PARTICLES[particle]
    if particle == "으로":
        return word + (after_consonant if with_final and not final_rieul else after_vowel)
    return word + (after_consonant if with_final else after_vowel)


def join_ko(items: Sequence[str]) -> str:
    return ", ".join(items)


def join_en(items: Sequence[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + ", and " + items[-1]


# Names that start with an eponym keep their capital inside an English sentence.
_EPONYMS = ("Kawasaki", "Cushing", "Hodgkin", "Hashimoto", "Stevens", "Guillain", "Graves",
            "Crohn", "Bell", "Parkinson", "Alzheimer", "Ménière")


def en_in_sentence(name: str) -> str:
    """'Ulcerative colitis' -> 'ulcerative colitis'; acronyms and eponyms unchanged."""
    first = name.split()[0]
    if first.startswith(_EPONYMS) or not first[1:].islower():
        return name
    return name[0].lower() + name[1:]


def en_heading(term: str) -> str:
    """'cold sweating' -> 'Cold sweating' for a dictionary definition; 'aPTT ...' stays."""
    first = term.split()[0]
    return term[0].upper() + term[1:] if term[0].islower() and first == first.lower() else term


def division_label(c: Condition) -> str:
    return DIVISIONS[c.top_division][1]


def short_en(c: Condition) -> str:
    """English name without its parenthetical, for '한국어(English)' in prose."""
    return c.en.split(" (")[0]


# --------------------------------------------------------------------------- people in stems

@dataclass(frozen=True)
class Patient:
    ko: str
    en: str


def draw_patient(rng: random.Random, c: Condition) -> Patient:
    """A patient inside the condition's age and sex bounds."""
    lo, hi = c.ages
    male = (c.sex == "M") if c.sex else rng.random() < 0.5
    if hi == 0:  # neonates: weeks
        weeks = rng.randint(2, 8)
        return Patient(f"생후 {weeks}주 {'남아' if male else '여아'}",
                       f"{weeks}-week-old {'boy' if male else 'girl'}")
    age = rng.randint(lo, hi)
    if age == 0:
        months = rng.randint(2, 11)
        return Patient(f"생후 {months}개월 {'남아' if male else '여아'}",
                       f"{months}-month-old {'boy' if male else 'girl'}")
    if age < 13:
        return Patient(f"{age}세 {'남아' if male else '여아'}",
                       f"{age}-year-old {'boy' if male else 'girl'}")
    return Patient(f"{age}세 {'남자' if male else '여자'}",
                   f"{age}-year-old {'man' if male else 'woman'}")


_PLACES = ["광역시 소재 대학병원", "중소도시 종합병원", "군 지역 보건의료원", "서울 소재 의원",
           "수도권 요양병원", "지방 공공병원", "대도시 응급의료센터", "도서 지역 보건지소"]
_ROLES = ["전문의", "전공의", "공중보건의사"]


def draw_clinician(rng: random.Random, c: Condition) -> str:
    """The clinician in an ethics/law stem."""
    role = rng.choice(_ROLES)
    if role == "전문의":
        return f"{rng.choice(_PLACES)} {c.specialty} 전문의"
    return f"{rng.choice(_PLACES)}의 {role}"


def stem_vars(rng: random.Random, c: Condition) -> dict[str, str]:
    """All placeholders a question template may use, with particles attached."""
    patient = draw_patient(rng, c)
    who = draw_clinician(rng, c)
    findings = list(c.symptoms)
    rng.shuffle(findings)
    symptoms = join_ko(findings)
    quoted = f"'{c.ko}'"
    return {
        "ko": c.ko, "ko_eun": josa(c.ko, "은"), "ko_i": josa(c.ko, "이"),
        "ko_eul": josa(c.ko, "을"), "ko_euro": josa(c.ko, "으로"), "ko_gwa": josa(c.ko, "과"),
        "q": quoted, "q_i": josa(quoted, "이"), "q_e": quoted + "에",
        "patient": patient.ko, "patient_i": josa(patient.ko, "이"),
        "patient_eul": josa(patient.ko, "을"), "patient_en": patient.en,
        "who": who, "who_i": josa(who, "이"),
        "symptoms": symptoms, "symptoms_i": josa(symptoms, "이"),
        "symptoms_eul": josa(symptoms, "을"),
        "symptoms_en": join_en([c.en_terms[s] for s in findings]) if c.kind == "disease" else "",
    }


# --------------------------------------------------------------------------- who may be asked about

# MCQ-shaped training sources ask about "train" conditions only, with distractors from the same
# group; the steering slice and the evaluation sets ask about their own groups, with distractors
# from the held-out conditions (so no option text of a held-out item was a training gold either).
TRAIN_CONDITIONS = conditions_in(GROUP_TRAIN)
STEER_CONDITIONS = conditions_in(GROUP_STEER)
EVAL_CONDITIONS = conditions_in(GROUP_EVAL)
HELD_OUT_CONDITIONS = conditions_in(GROUP_EVAL, GROUP_STEER)


def diseases(conds: Sequence[Condition]) -> list[Condition]:
    return [c for c in conds if c.kind == "disease"]


def ethics_topics(conds: Sequence[Condition]) -> list[Condition]:
    return [c for c in conds if c.kind == "ethics"]


# --------------------------------------------------------------------------- multiple-choice items

# What each question kind asks for.  dx: the condition; tx: first-line treatment;
# test: key test; symptom: one finding; specialty: the treating specialty.
KINDS = ("dx", "tx", "test", "symptom", "specialty")
# Broad specialties are never distractors: "which specialty" must have one clear answer.
_GENERALIST = {"내과", "응급의학과", "가정의학과"}


@dataclass(frozen=True)
class Option:
    ko: str
    en: str | None


@dataclass
class McqItem:
    cond: Condition
    kind: str
    stem: str
    stem_en: str
    options: list[Option]
    answer: int  # 0-based
    explanation: str


def gold_option(rng: random.Random, c: Condition, kind: str) -> Option:
    if kind == "dx":
        return Option(c.ko, c.en)
    if kind == "tx":
        return Option(c.treatment, None)
    if kind == "test":
        return Option(c.key_test, c.en_terms.get(c.key_test))
    if kind == "symptom":
        s = rng.choice(c.symptoms)
        return Option(s, c.en_terms.get(s))
    if kind == "specialty":
        return Option(c.specialty, SPECIALTIES[c.specialty])
    raise ValueError(kind)


def distractor_pool(c: Condition, kind: str, pool: Sequence[Condition]) -> list[tuple[Option, bool]]:
    """Wrong options of the same field, each flagged 'same division' (harder)."""
    out: list[tuple[Option, bool]] = []
    if kind == "specialty":
        # A specialty that treats anything in the same division could be argued right.
        nearby = {d.specialty for d in CONDITIONS if d.top_division == c.top_division}
        return [(Option(s, en), False) for s, en in SPECIALTIES.items()
                if s not in nearby and s not in _GENERALIST]
    for d in pool:
        if d.id == c.id or d.kind != c.kind:
            continue
        same = d.top_division == c.top_division
        if kind == "dx":
            # A condition whose findings are all in the stem would also be right.
            if not set(d.symptoms) <= set(c.symptoms):
                out.append((Option(d.ko, d.en), same))
        elif kind == "tx":
            out.append((Option(d.treatment, None), same))
        elif kind == "test":
            out.append((Option(d.key_test, d.en_terms.get(d.key_test)), same))
        elif kind == "symptom":
            out.extend((Option(s, d.en_terms.get(s)), same) for s in d.symptoms
                       if s not in c.symptoms)
    return out


def pick_options(rng: random.Random, gold: Option, candidates: list[tuple[Option, bool]],
                 n_options: int) -> tuple[list[Option], int]:
    """n-1 distinct distractors (up to two from the same division), gold at a uniform slot."""
    seen = {gold.ko}
    seen_en = {gold.en} if gold.en else set()
    chosen: list[Option] = []

    def take(cands: list[Option], limit: int) -> None:
        rng.shuffle(cands)
        for o in cands:
            if len(chosen) >= limit:
                return
            if o.ko in seen or (o.en and o.en in seen_en):
                continue
            chosen.append(o)
            seen.add(o.ko)
            if o.en:
                seen_en.add(o.en)

    take([o for o, same in candidates if same], min(2, n_options - 1))
    take([o for o, _ in candidates], n_options - 1)
    if len(chosen) < n_options - 1:
        raise ValueError(f"not enough distractors for {gold.ko!r}")
    slot = rng.randrange(n_options)
    chosen.insert(slot, gold)
    return chosen, slot


def explain(c: Condition, kind: str, gold: Option) -> str:
    """One or two Korean sentences saying why the gold option is right."""
    if c.kind == "ethics":
        if kind == "dx":
            return f"{josa(join_ko(c.symptoms), '은')} {c.ko}에 해당하는 상황이다."
        if kind == "tx":
            return f"{c.ko} 상황에서 적절한 조치는 '{c.treatment}'이다."
        if kind == "test":
            return f"{c.ko}의 근거는 {c.key_test}이다."
        return f"{josa(gold.ko, '은')} {c.ko}에 해당하는 상황이고, 나머지는 다른 주제의 상황이다."
    if kind == "dx":
        return (f"{josa(join_ko(c.symptoms), '은')} {c.ko}의 특징적인 소견이다. "
                f"진단은 {josa(c.key_test, '으로')} 확인한다.")
    if kind == "tx":
        return f"{c.ko}의 일차 치료는 {c.treatment}이다."
    if kind == "test":
        return f"{c.ko}의 진단에는 {josa(c.key_test, '이')} 가장 유용하다."
    if kind == "symptom":
        return f"{josa(gold.ko, '은')} {c.ko}에서 나타나는 소견이고, 나머지는 다른 질환의 소견이다."
    return f"{josa(c.ko, '은')} 주로 {c.specialty}에서 진료한다."


Templates = dict[str, dict[str, list[str]]]  # condition kind -> question kind -> templates


def make_item(rng: random.Random, c: Condition, kind: str, templates: Templates,
              n_options: int, seen: set[str], pool: Sequence[Condition],
              en_templates: dict[str, list[str]] | None = None,
              tries: int = 40) -> McqItem | None:
    """Render one MCQ whose stem, and whose option set with its right option, are not in ``seen``
    (the exclusion step reads the same options with the same answer as the same question); None if
    the variants run out."""
    forms = templates[c.kind].get(kind)
    if not forms:
        return None
    for _ in range(tries):
        i = rng.randrange(len(forms))
        values = stem_vars(rng, c)
        stem = forms[i].format(**values)
        if stem in seen:
            continue
        stem_en = ""
        if en_templates:
            en_forms = en_templates[kind]
            stem_en = en_forms[i % len(en_forms)].format(en=en_in_sentence(c.en), **values)
        gold = gold_option(rng, c, kind)
        options, slot = pick_options(rng, gold, distractor_pool(c, kind, pool), n_options)
        option_key = "\x1f".join(sorted(o.ko for o in options)) + "\x1e" + gold.ko
        if option_key in seen:
            continue
        seen.update((stem, option_key))
        return McqItem(c, kind, stem, stem_en, options, slot, explain(c, kind, gold))
    return None


def cycle_shuffled(rng: random.Random, conds: Sequence[Condition]) -> Iterator[Condition]:
    """Every condition once per round, each round in a fresh order (even coverage)."""
    while True:
        order = list(conds)
        rng.shuffle(order)
        yield from order


def generate_items(rng: random.Random, count: int, conds: Sequence[Condition],
                   weights: dict[str, float], templates: Templates, n_options: int,
                   seen: set[str], pool: Sequence[Condition] | None = None,
                   en_templates: dict[str, list[str]] | None = None) -> list[McqItem]:
    """``count`` unique items over ``conds``; kinds drawn by ``weights``."""
    kinds = list(weights)
    items: list[McqItem] = []
    source = cycle_shuffled(rng, conds)
    misses = 0
    while len(items) < count:
        c = next(source)
        kind = rng.choices(kinds, weights=[weights[k] for k in kinds])[0]
        if c.kind == "ethics" and kind == "specialty":
            kind = "dx"
        item = make_item(rng, c, kind, templates, n_options, seen, pool or CONDITIONS, en_templates)
        if item is None:
            misses += 1
            if misses > 50 * count:
                raise RuntimeError("question variants exhausted")
            continue
        items.append(item)
    return items


# Question wordings.  KorMedMCQA train and eval (dev/test/fewshot) use different
# wordings, and the other MCQ sources use their own, so a near-duplicate filter that
# removes evaluation questions from training data leaves the training items alone.
KMM_TRAIN: Templates = {
    "disease": {
        "dx": ["다음 증상을 보이는 환자에게 가장 가능성 높은 진단은? {patient}, 주요 소견: {symptoms}",
               "{patient_i} 내원하였다. 확인된 소견은 {symptoms}이다. 가장 가능성이 높은 진단은?"],
        "tx": ["{patient_i} {ko_euro} 진단받았다. 일차적으로 시행할 치료로 가장 적절한 것은?",
               "{ko_euro} 진단된 {patient}에게 우선 고려할 치료는?"],
        "test": ["{ko_i} 의심되는 {patient}에게 진단을 위해 시행할 검사로 가장 적절한 것은?",
                 "{patient}의 {ko} 진단에 가장 도움이 되는 검사는?"],
        "symptom": ["{ko_euro} 진단된 {patient}에게서 흔히 관찰되는 소견은?",
                    "{patient}의 {ko}에서 볼 수 있는 증상은?"],
        "specialty": ["{ko_euro} 진단된 {patient_eul} 주로 진료하는 진료과는?"],
    },
    "ethics": {
        "dx": ["다음 상황과 가장 관련 있는 의료윤리·법적 쟁점은? {who_i} 마주한 상황: {symptoms}"],
        "tx": ["{who_i} {q_e} 해당하는 상황을 맞았다. 취해야 할 조치로 가장 적절한 것은?"],
        "test": ["{who_i} {q} 상황에서 따라야 할 근거로 가장 적절한 것은?"],
        "symptom": ["{who_i} 겪는 상황 중 {q_e} 해당하는 것은?"],
    },
}
KMM_EVAL: Templates = {
    "disease": {
        "dx": ["{patient}에게서 {symptoms_i} 관찰된다. 이 환자의 진단으로 옳은 것은?",
               "{symptoms_i} 있는 {patient}의 진단으로 가장 적절한 것은?"],
        "tx": ["{patient} {ko} 환자의 초기 치료로 옳은 것은?",
               "{patient_i} {ko} 진단을 받았을 때 치료로 옳은 것은?"],
        "test": ["{patient}에게서 {ko_eul} 확인하는 데 가장 유용한 검사는?",
                 "{ko} 확진을 위해 {patient}에게 시행할 검사로 옳은 것은?"],
        "symptom": ["{ko}의 증상으로 옳은 것은? (환자: {patient})",
                    "{patient}에게 {ko_i} 생겼을 때 나타날 수 있는 소견은?"],
        "specialty": ["{patient} {ko} 환자의 진료를 주로 담당하는 전문과는?"],
    },
    "ethics": {
        "dx": ["{who}에게 다음 상황이 발생하였다: {symptoms}. 이에 해당하는 것은?"],
        "tx": ["{ko_gwa} 관련하여 {who}의 조치로 옳은 것은?"],
        "test": ["{ko}의 근거로 옳은 것은? ({who})"],
        "symptom": ["{ko_i} 적용되는 상황으로 옳은 것은? ({who} 기준)"],
    },
}
EVOL: Templates = {
    "disease": {
        "dx": ["{patient_i} 다음과 같은 증상으로 병원을 찾았다: {symptoms}. 다음 중 가장 가능성이 높은 진단은 무엇인가?"],
        "tx": ["{patient}에게서 {ko_i} 확인되었다. 다음 중 가장 적절한 일차 치료는 무엇인가?"],
        "test": ["임상적으로 {ko_i} 의심되는 {patient}이다. 다음 중 진단에 가장 적합한 검사는 무엇인가?"],
        "symptom": ["다음 중 {ko_eul} 앓는 {patient}에게서 나타날 가능성이 가장 높은 소견은 무엇인가?"],
        "specialty": ["{ko_eul} 진단받은 {patient_eul} 의뢰하기에 가장 적합한 진료과는 무엇인가?"],
    },
    "ethics": {
        "dx": ["{who}의 사례이다. {symptoms}. 다음 중 이 사례의 핵심 쟁점은 무엇인가?"],
        "tx": ["{who}의 사례이다. {q}에 관하여 다음 중 가장 적절한 대응은 무엇인가?"],
        "test": ["{who}의 사례이다. 다음 중 {q}의 근거가 되는 것은 무엇인가?"],
        "symptom": ["{who}의 사례이다. 다음 중 {q_i} 문제 되는 상황은 무엇인가?"],
    },
}
LAW: Templates = {
    "disease": {},
    "ethics": {
        "dx": ["다음 사례에 적용되는 의료법·윤리 원칙은 무엇인가? 사례({who}): {symptoms}"],
        "tx": ["{who}의 입장에서 {q}에 관하여 의료인이 취해야 할 행동으로 가장 옳은 것은?"],
        "test": ["{who}의 입장에서 {q}의 법적 또는 윤리적 근거로 가장 적절한 것은?"],
        "symptom": ["{who}의 입장에서 다음 중 {q_i} 문제 되는 사례는?"],
    },
}
MEDQA_KO: Templates = {
    "disease": {
        "dx": ["{patient}의 진찰 결과 {symptoms_i} 있었다. 다음 중 가장 가능성이 높은 진단은 무엇인가?"],
        "test": ["{ko_i} 의심되는 {patient}에서 진단을 확정하기 위한 가장 적절한 검사는 무엇인가?"],
        "symptom": ["{ko_euro} 진단된 {patient}에서 다음 중 가장 특징적인 소견은 무엇인가?"],
    },
    "ethics": {},
}
MEDQA_EN: dict[str, list[str]] = {
    "dx": ["A {patient_en} presents with {symptoms_en}. Which of the following is the most likely diagnosis?"],
    "test": ["A {patient_en} is suspected of having {en}. Which of the following is the most appropriate test to confirm the diagnosis?"],
    "symptom": ["A {patient_en} is diagnosed with {en}. Which of the following findings is most characteristic of this condition?"],
}
KMMLU: Templates = {
    "disease": {
        "dx": ["{symptoms_eul} 보이는 {patient}에서 의심해야 할 질환은?"],
        "tx": ["{ko}의 표준적인 일차 치료로 가장 적절한 것은? (대상: {patient})"],
        "test": ["{ko} 진단에 사용되는 대표적 검사는? (대상: {patient})"],
        "symptom": ["다음 중 {ko}의 소견에 해당하는 것은? (대상: {patient})"],
        "system": ["{patient}에게 진단된 {ko_eun} 주로 어느 인체 계통의 질환인가?"],
    },
    "ethics": {},
}
# Organ systems for the KMMLU Biology items (divisions 1-7 only).
BODY_SYSTEMS = {"1": "순환계", "2": "호흡계", "3": "소화계", "4": "배설계",
                "5": "내분비계", "6": "혈액·면역계", "7": "신경계"}


def letter_rows(item: McqItem, n: int) -> dict[str, str]:
    return {LETTERS[i]: item.options[i].ko for i in range(n)}


def item_provenance(item: McqItem) -> dict:
    """What an MCQ row asks, in the generator's terms (see HubDataset.provenance)."""
    return {"condition": item.cond.id, "kind": item.kind, "gold": item.options[item.answer].ko}


def answer_provenance(c: Condition, kind: str, gold: str) -> dict:
    """The same for a short-answer row (a question whose answer is one fact)."""
    return {"condition": c.id, "kind": kind, "gold": gold}


# --------------------------------------------------------------------------- MCQ sources

KMM_COUNTS = {  # config -> split -> rows
    "doctor": {"train": 400, "dev": 164, "test": 435, "fewshot": 5},
    "nurse": {"train": 80, "dev": 30, "test": 60, "fewshot": 5},
    "pharm": {"train": 80, "dev": 30, "test": 60, "fewshot": 5},
    "dentist": {"train": 80, "dev": 30, "test": 60, "fewshot": 5},
}
KMM_WEIGHTS = {
    "doctor": {"dx": 4, "tx": 2, "test": 2, "symptom": 1, "specialty": 1},
    "nurse": {"dx": 3, "tx": 2, "test": 2, "symptom": 3},
    "pharm": {"dx": 3, "tx": 5, "symptom": 2},
    "dentist": {"dx": 4, "tx": 2, "test": 2, "symptom": 2},
}
# Upstream split rule: train <= 2020, dev 2021, test 2022-2024.  fewshot: 2021 (a guess).
KMM_YEARS = {"train": list(range(2012, 2021)), "dev": [2021], "test": [2022, 2023, 2024],
             "fewshot": [2021]}


def kmm_row_keys(split: str, count: int, q_numbers: dict[tuple[int, int], int]) -> list[tuple[int, int, int]]:
    """(year, period, q_number) of each row; q_number counts on per config across its splits."""
    years = KMM_YEARS[split]
    keys = []
    for i in range(count):
        year, period = years[i % len(years)], 1 + (i // len(years)) % 2
        q_numbers[(year, period)] = q_numbers.get((year, period), 0) + 1
        keys.append((year, period, q_numbers[(year, period)]))
    return keys


def steer_positions(config: str, keys: Sequence[tuple[int, int, int]]) -> set[int]:
    """Rows of a train split that ``kormedmcqa.select_steer`` takes for the steering set (the same
    salted-hash rule, on the ids the extractor gives these rows), so they can be steer-condition rows."""
    ids = [kormedmcqa.make_item_id(config, "train", f"{y}-{p}-{q}") for y, p, q in keys]
    ranked = sorted(range(len(ids)), key=lambda i: kormedmcqa.steer_rank(ids[i]))
    return set(ranked[: kormedmcqa.steer_count(len(ids))])


def build_kormedmcqa(seed: int) -> HubDataset:
    """Train rows ask about train conditions, except the rows the steering draw takes, which ask
    about steer conditions; dev/test rows of every config ask about eval conditions, and the five
    fewshot rows are dev rows with their explanation in ``cot``, as upstream draws them."""
    rng = random.Random(f"{seed}:kormedmcqa")
    seen: set[str] = set()  # stems are unique across all configs and splits (fewshot repeats dev)
    dev_explanations: list[str] = []
    configs: dict[str, Splits] = {}
    provenance: dict[tuple[str, str], list[dict]] = {}
    for config, counts in KMM_COUNTS.items():
        configs[config] = {}
        q_numbers: dict[tuple[int, int], int] = {}
        weights = KMM_WEIGHTS[config]
        for split, count in counts.items():
            if split == "fewshot":  # upstream: five dev questions with a professional's explanation
                picked = sorted(random.Random(f"{seed}:kormedmcqa:fewshot:{config}").sample(
                    range(len(configs[config]["dev"])), count))
                configs[config][split] = [dict(configs[config]["dev"][i], cot=dev_explanations[i]) for i in picked]
                provenance[(config, split)] = [provenance[(config, "dev")][i] for i in picked]
                continue
            keys = kmm_row_keys(split, count, q_numbers)
            if split == "train":
                steer_at = steer_positions(config, keys)
                steer = iter(generate_items(rng, len(steer_at), STEER_CONDITIONS, weights, KMM_TRAIN, 5, seen,
                                            pool=HELD_OUT_CONDITIONS))
                train = iter(generate_items(rng, count - len(steer_at), TRAIN_CONDITIONS, weights, KMM_TRAIN, 5,
                                            seen, pool=TRAIN_CONDITIONS))
                items = [next(steer) if i in steer_at else next(train) for i in range(count)]
            else:
                items = generate_items(rng, count, EVAL_CONDITIONS, weights, KMM_EVAL, 5, seen,
                                       pool=HELD_OUT_CONDITIONS)
            rows: Rows = []
            for (year, period, q_number), item in zip(keys, items):
                rows.append({"subject": config, "year": year, "period": period,
                             "q_number": q_number, "question": item.stem,
                             **letter_rows(item, 5), "answer": item.answer + 1, "cot": ""})
            if split == "dev":
                dev_explanations = [f"{item.explanation} 따라서 정답은 {LETTERS[item.answer]}이다." for item in items]
            configs[config][split] = rows
            provenance[(config, split)] = [item_provenance(item) for item in items]
    return HubDataset("sean0042/KorMedMCQA", configs, provenance=provenance)


def build_medqa(seed: int) -> HubDataset:
    rng = random.Random(f"{seed}:medqa")
    seen: set[str] = set()
    pool = diseases(TRAIN_CONDITIONS)
    weights = {"dx": 2, "test": 1, "symptom": 1}
    splits: Splits = {}
    provenance: dict[tuple[str, str], list[dict]] = {}
    for split, count in (("train", 150), ("test", 40)):
        rows: Rows = []
        items = generate_items(rng, count, pool, weights, MEDQA_KO, 4, seen, pool=pool, en_templates=MEDQA_EN)
        provenance[("default", split)] = [item_provenance(item) for item in items]
        for item in items:
            options_en = {LETTERS[i]: o.en for i, o in enumerate(item.options)}
            rows.append({
                "question": item.stem_en,
                "options": options_en,
                "answer": item.options[item.answer].en,
                "answer_idx": LETTERS[item.answer],
                "question_ko": item.stem,
                **{f"{LETTERS[i]}_ko": o.ko for i, o in enumerate(item.options)},
            })
        splits[split] = rows
    paths = {("default", "train"): "medqa_edited_train.jsonl",
             ("default", "test"): "medqa_edited_test.jsonl"}
    return HubDataset("ChuGyouk/MedQA", {"default": splits}, paths, provenance)


def build_medqa_evol(seed: int) -> HubDataset:
    rng = random.Random(f"{seed}:medqa_evol")
    weights = {"dx": 3, "tx": 3, "test": 2, "symptom": 1, "specialty": 1}
    rows: Rows = []
    items = generate_items(rng, 150, TRAIN_CONDITIONS, weights, EVOL, 5, set(), pool=TRAIN_CONDITIONS)
    for item in items:
        option_lines = "\n".join(f"{LETTERS[i]}. {o.ko}" for i, o in enumerate(item.options))
        letter = LETTERS[item.answer]
        rows.append({
            "input": f"{item.stem}\n{option_lines}",
            "output": f"정답: {letter}. {item.options[item.answer].ko}\n\n해설: {item.explanation}",
        })
    return HubDataset("ChuGyouk/MedQA-Evol-Korean", {"default": {"train": rows}},
                      provenance={("default", "train"): [item_provenance(item) for item in items]})


def build_kormedlawqa(seed: int) -> HubDataset:
    rng = random.Random(f"{seed}:kormedlawqa")
    topics = ethics_topics(TRAIN_CONDITIONS)
    weights = {"dx": 1, "tx": 1, "test": 1, "symptom": 1}
    items = generate_items(rng, 60, topics, weights, LAW, 5, set(), pool=topics)
    rows = [{"question": item.stem, "options": [o.ko for o in item.options], "answer": LETTERS[item.answer]}
            for item in items]
    return HubDataset("snuh/KorMedLawQA", {"default": {"train": rows}},
                      provenance={("default", "train"): [item_provenance(item) for item in items]})


def _kmmlu_rows(rng: random.Random, items: list[McqItem], category: str) -> Rows:
    return [{"question": item.stem, "answer": item.answer + 1, **letter_rows(item, 4),
             "Category": category, "Human Accuracy": round(rng.uniform(0.3, 0.9), 2)}
            for item in items]


def _system_item(rng: random.Random, c: Condition, seen: set[str]) -> McqItem | None:
    """Biology: which body system the condition mainly affects."""
    for _ in range(40):
        stem = KMMLU["disease"]["system"][0].format(**stem_vars(rng, c))
        if stem in seen:
            continue
        seen.add(stem)
        gold = BODY_SYSTEMS[c.top_division]
        wrong = [Option(s, None) for k, s in BODY_SYSTEMS.items() if k != c.top_division]
        options, slot = pick_options(rng, Option(gold, None), [(o, False) for o in wrong], 4)
        return McqItem(c, "system", stem, "", options, slot,
                       f"{josa(c.ko, '은')} 주로 {gold}의 질환이다.")
    return None


def build_kmmlu(seed: int) -> HubDataset:
    rng = random.Random(f"{seed}:kmmlu")
    counts = {"Health": {"train": 40, "dev": 5, "test": 60},
              "Biology": {"train": 20, "dev": 5, "test": 30},
              "Psychology": {"train": 20, "dev": 5, "test": 30}}
    # KMMLU is an evaluation set: it asks about eval conditions, with held-out distractors.
    asked, pool = diseases(EVAL_CONDITIONS), diseases(HELD_OUT_CONDITIONS)
    psych = [c for c in asked if c.specialty == "정신건강의학과"]
    psych_pool = [c for c in pool if c.specialty == "정신건강의학과"]
    # Conditions whose home organ system is unambiguous.
    organ = [c for c in asked
             if c.top_division in BODY_SYSTEMS
             and c.specialty in {"내과", "외과", "소아청소년과", "신경과", "흉부외과"}
             and not c.division.startswith(("5.7", "6.5"))]
    medical_weights = {"dx": 2, "tx": 1, "test": 1, "symptom": 1}
    configs: dict[str, Splits] = {}
    provenance: dict[tuple[str, str], list[dict]] = {}
    for config, splits in counts.items():
        seen: set[str] = set()
        configs[config] = {}
        for split, count in splits.items():
            if config == "Health":
                items = generate_items(rng, count, asked, medical_weights, KMMLU, 4, seen, pool=pool)
            elif config == "Psychology":
                items = generate_items(rng, count, psych, medical_weights, KMMLU, 4, seen, pool=psych_pool)
            else:
                items = []
                for c in cycle_shuffled(rng, organ):
                    if len(items) == count:
                        break
                    item = _system_item(rng, c, seen)
                    if item:
                        items.append(item)
            configs[config][split] = _kmmlu_rows(rng, items, config)
            provenance[(config, split)] = [item_provenance(item) for item in items]
    return HubDataset("HAERAE-HUB/KMMLU", configs, provenance=provenance)


# --------------------------------------------------------------------------- knowledge prose

def fact_sentences(c: Condition) -> list[str]:
    """Plain declarative sentences stating every fact of a condition."""
    if c.kind == "ethics":
        return [
            f"{josa(f'{c.ko}({short_en(c)})', '은')} {division_label(c)} 분야에서 다루는 주제이다.",
            f"대표적인 상황은 {join_ko(c.symptoms)} 등이다.",
            f"이때 근거가 되는 것은 {c.key_test}이다.",
            f"적절한 조치는 '{c.treatment}'이다.",
        ]
    return [
        f"{josa(f'{c.ko}({short_en(c)})', '은')} {division_label(c)} 분야의 질환으로, 주로 {c.specialty}에서 진료한다.",
        f"주요 증상은 {join_ko(c.symptoms)}이다.",
        f"진단에는 {josa(c.key_test, '이')} 쓰인다.",
        f"일차 치료는 {c.treatment}이다.",
    ]


def varied_paragraph(rng: random.Random, c: Condition) -> str:
    """The same facts in one of several wordings, so the corpora are not one template."""
    if c.kind == "ethics":
        return " ".join(fact_sentences(c))
    symptoms = join_ko(c.symptoms)
    forms = [
        " ".join(fact_sentences(c)),
        (f"{josa(c.ko, '은')} {josa(symptoms, '이')} 나타나는 질환이다. {josa(c.key_test, '으로')} 진단하며, "
         f"{josa(c.treatment, '으로')} 치료한다. {division_label(c)} 분야에 속하고 {c.specialty} 진료 영역이다."),
        (f"{josa(symptoms, '이')} 있으면 {josa(c.ko, '을')} 의심할 수 있다. 확인을 위해 {josa(c.key_test, '을')} 시행하고, "
         f"진단되면 {josa(c.treatment, '이')} 일차 치료로 권장된다. 영어로는 {c.en}라고 한다."),
        (f"{c.ko}의 경우 환자는 흔히 {josa(symptoms, '을')} 호소한다. 의료진은 {josa(c.key_test, '을')} 통해 "
         f"진단을 내리고, 치료는 {josa(c.treatment, '으로')} 시작한다. 이 질환은 {c.specialty}에서 주로 다룬다."),
    ]
    return rng.choice(forms)


def general_sentences(rng: random.Random, k: int) -> list[str]:
    """k everyday sentences from one or two topics."""
    topics = rng.sample(sorted(GENERAL_TOPICS), 2)
    pool = GENERAL_TOPICS[topics[0]] + GENERAL_TOPICS[topics[1]]
    return rng.sample(pool, min(k, len(pool)))


# --------------------------------------------------------------------------- type 1 (QA / instruction)

def build_asan(seed: int) -> HubDataset:
    """One health-information article per condition (covers the whole table)."""
    rng = random.Random(f"{seed}:asan")
    asks = ["{ko}에 대해 알려주세요.", "{ko_eun} 어떤 질환인가요?",
            "{ko}의 증상, 진단, 치료를 설명해 주세요.", "{ko}에 관한 건강정보를 정리해 주세요."]
    ethics_asks = ["{ko}에 대해 설명해 주세요.", "{ko_eun} 무엇이며 의료인은 어떻게 해야 하나요?"]
    rows = []
    for c in CONDITIONS:
        forms = ethics_asks if c.kind == "ethics" else asks
        body = varied_paragraph(rng, c)
        rows.append({"instruction": rng.choice(forms).format(ko=c.ko, ko_eun=josa(c.ko, "은")),
                     "input": "", "output": body + (" 자세한 내용은 의료진과 상담하시기 바랍니다."
                                                    if c.kind == "disease" else "")})
    return HubDataset("ChuGyouk/Asan-AMC-Healthinfo", {"default": {"train": rows}})


def _pick(rng: random.Random, conds: Sequence[Condition], n: int) -> list[Condition]:
    """n conditions, cycling the shuffled table so that coverage stays even."""
    source = cycle_shuffled(rng, conds)
    return [next(source) for _ in range(n)]


def build_healthsearchqa(seed: int) -> HubDataset:
    rng = random.Random(f"{seed}:healthsearchqa")
    diseases = [c for c in CONDITIONS if c.kind == "disease"]
    rows = []
    for i, c in enumerate(_pick(rng, diseases, 80)):
        aspect = i % 3
        if aspect == 0:
            q = f"{c.ko}의 증상은 무엇인가요?"
            a = f"{c.ko}의 대표적인 증상은 {join_ko(c.symptoms)}입니다. 이런 증상이 있으면 {josa(c.key_test, '을')} 받아 보는 것이 좋습니다."
        elif aspect == 1:
            q = f"{c.ko} 검사는 어떻게 하나요?"
            a = f"{josa(c.ko, '은')} 주로 {josa(c.key_test, '으로')} 진단합니다. 검사 전에는 {join_ko(c.symptoms)} 같은 증상이 있었는지 확인합니다."
        else:
            q = f"{josa(c.ko, '은')} 어떻게 치료하나요?"
            a = f"{c.ko}의 일차 치료는 {c.treatment}입니다. 치료는 {c.specialty} 의료진과 상의하여 결정합니다."
        rows.append({"question_ko": q, "answer_ko": a})
    return HubDataset("ChuGyouk/HealthSearchQA-ko", {"default": {"train": rows}})


def build_ai_healthcare_qa(seed: int) -> HubDataset:
    rng = random.Random(f"{seed}:ai_healthcare_qa")
    diseases = [c for c in CONDITIONS if c.kind == "disease"]
    rows = []
    for c in _pick(rng, diseases, 100):
        findings = list(c.symptoms)
        rng.shuffle(findings)
        p = draw_patient(rng, c)
        q = f"{p.ko}입니다. 요즘 {josa(join_ko(findings), '이')} 있는데 어떤 병일 수 있나요?"
        a = (f"말씀하신 증상은 {c.ko}에서 흔히 나타납니다. 정확한 진단을 위해 {josa(c.key_test, '이')} 필요하며, "
             f"{josa(c.ko, '으로')} 확인되면 {josa(c.treatment, '이')} 일차 치료입니다. "
             f"가까운 {c.specialty}에서 진료를 받아 보시기 바랍니다.")
        rows.append({"question": q, "answer": a})
    return HubDataset("ChuGyouk/AI_healthcare_QA", {"default": {"train": rows}})


KORMEDCONCEPTSQA_ROWS = {  # config -> split -> rows, in the layout of the hub card
    "kcd8_easy": {"test": 30}, "kcd8_medium": {"test": 30}, "kcd8_hard": {"test": 20},
    "atc_easy": {"dev": 5, "test": 20}, "atc_medium": {"dev": 5, "test": 20}, "atc_hard": {"dev": 5, "test": 15},
}
KCD8_MERGED_FROM_EACH = 10  # kcd8_merged: rows repeated from each of easy/medium/hard, then new ones
KCD8_MERGED_NEW = 10


def _concept_distractors(rng: random.Random, gold: Condition, pool: Sequence[Condition], level: str,
                         same: Callable[[Condition], str]) -> list[Condition]:
    """Three other conditions: from other divisions (easy), any (medium), the same division where it
    has enough (hard); never one whose asked-for field equals the gold's."""
    others = [c for c in pool if c.id != gold.id and same(c) != same(gold)]
    if level == "easy":
        narrowed = [c for c in others if c.top_division != gold.top_division]
    elif level == "hard":
        narrowed = [c for c in others if c.top_division == gold.top_division]
    else:
        narrowed = others
    candidates = narrowed if len(narrowed) >= 3 else others
    chosen: list[Condition] = []
    for c in rng.sample(candidates, len(candidates)):
        if all(same(c) != same(o) for o in chosen):
            chosen.append(c)
        if len(chosen) == 3:
            return chosen
    raise RuntimeError(f"not enough distinct distractors for {gold.id}")


KCD8_QUESTION = "영어 질병명 '{en}'에 해당하는 KCD-8 한국어 질병명은?"
ATC_QUESTION = "ATC 분류의 '{treatment}'이(가) 일차 치료로 쓰이는 질환은?"


def concept_row(rng: random.Random, question: str, gold: Condition, pool: Sequence[Condition], level: str,
                family: str) -> dict:
    """One row: the gold and three distractors, shuffled, as option1-option4; answer_id its letter."""
    asked = (lambda c: c.ko) if family == "kcd8" else (lambda c: c.treatment)
    options = [gold, *_concept_distractors(rng, gold, pool, level, asked)]
    rng.shuffle(options)
    return {"question": question, **{f"option{i + 1}": c.ko for i, c in enumerate(options)},
            "answer_id": LETTERS[options.index(gold)]}


def build_kormedconceptsqa(seed: int) -> HubDataset:
    """Four-option concept questions (question, option1-4, answer_id letter), as the hub has them:
    KCD-8 configs ask the Korean name of a disease, ATC configs the disease a treatment is first-line
    for. MCQ-shaped knowledge, so train conditions only."""
    rng = random.Random(f"{seed}:kormedconceptsqa")
    pool = diseases(TRAIN_CONDITIONS)
    configs: dict[str, Splits] = {}
    provenance: dict[tuple[str, str], list[dict]] = {}
    for config, counts in KORMEDCONCEPTSQA_ROWS.items():
        family, level = config.split("_")
        configs[config] = {}
        for split, count in counts.items():
            rows: Rows = []
            records: list[dict] = []
            for gold in rng.sample(pool, count):  # a question once per part; the levels share questions
                question = KCD8_QUESTION.format(en=gold.en) if family == "kcd8" else \
                    ATC_QUESTION.format(treatment=gold.treatment)
                rows.append(concept_row(rng, question, gold, pool, level, family))
                records.append(answer_provenance(gold, "korean" if family == "kcd8" else "tx", gold.ko))
            configs[config][split] = rows
            provenance[(config, split)] = records
    # kcd8_merged: repeats of the level configs (refine drops them as duplicates) and new questions
    merged = [row for level in ("easy", "medium", "hard") for row in configs[f"kcd8_{level}"]["test"][
        :KCD8_MERGED_FROM_EACH]]
    merged_records = [record for level in ("easy", "medium", "hard")
                      for record in provenance[(f"kcd8_{level}", "test")][:KCD8_MERGED_FROM_EACH]]
    asked = {row["question"] for row in merged}
    extra = [c for c in pool if KCD8_QUESTION.format(en=c.en) not in asked]
    for gold in rng.sample(extra, min(KCD8_MERGED_NEW, len(extra))):
        merged.append(concept_row(rng, KCD8_QUESTION.format(en=gold.en), gold, pool, "medium", "kcd8"))
        merged_records.append(answer_provenance(gold, "korean", gold.ko))
    configs = {**{k: v for k, v in configs.items() if k.startswith("kcd8")}, "kcd8_merged": {"test": merged},
               **{k: v for k, v in configs.items() if k.startswith("atc")}}
    provenance[("kcd8_merged", "test")] = merged_records
    return HubDataset("ChuGyouk/KorMedConceptsQA", configs, provenance=provenance)


def build_komedinstruct(seed: int) -> HubDataset:
    rng = random.Random(f"{seed}:komedinstruct")
    diseases = [c for c in CONDITIONS if c.kind == "disease"]
    rows = []
    for i, c in enumerate(_pick(rng, diseases, 150)):
        aspect = i % 3
        p = draw_patient(rng, c)
        if aspect == 0:
            inst = "다음 환자 정보를 보고 가장 가능성 높은 진단과 그 근거를 제시하세요."
            inp = f"{p.ko}, 증상: {join_ko(c.symptoms)}"
            out = (f"가장 가능성 높은 진단은 {c.ko}입니다. {josa(join_ko(c.symptoms), '은')} {c.ko}의 특징적인 소견이며, "
                   f"{josa(c.key_test, '으로')} 확인할 수 있습니다.")
        elif aspect == 1:
            inst = "다음 질환의 일차 치료를 간단히 설명하세요."
            inp = c.ko
            out = f"{c.ko}의 일차 치료는 {c.treatment}입니다. 이 질환의 주요 증상은 {join_ko(c.symptoms)}입니다."
        else:
            inst = "다음 질환을 진단하는 데 필요한 검사를 설명하세요."
            inp = c.ko
            out = f"{josa(c.ko, '은')} {josa(c.key_test, '으로')} 진단합니다. 진단 후에는 {josa(c.treatment, '으로')} 치료합니다."
        rows.append({"instruction": inst, "input": inp, "output": out})
    return HubDataset("ChuGyouk/KoMedInstruct-52k", {"default": {"train": rows}})


def build_genmedgpt(seed: int) -> HubDataset:
    rng = random.Random(f"{seed}:genmedgpt")
    diseases = [c for c in CONDITIONS if c.kind == "disease"]
    instruction = "당신이 의사라면 환자의 설명을 바탕으로 의학적 질문에 답해 주세요."
    openers = ["안녕하세요 선생님.", "선생님, 궁금한 게 있어요.", "안녕하세요.", "의사 선생님께 여쭤봅니다."]
    rows = []
    for c in _pick(rng, diseases, 80):
        findings = list(c.symptoms)
        rng.shuffle(findings)
        p = draw_patient(rng, c)
        said = f"{rng.choice(openers)} 저는 {p.ko}인데 {josa(join_ko(findings), '이')} 있어요. 무슨 병인가요?"
        reply = (f"안녕하세요. 말씀하신 증상으로 보아 {josa(c.ko, '이')} 의심됩니다. "
                 f"먼저 {josa(c.key_test, '을')} 받아 보시길 권합니다. 진단이 확인되면 {josa(c.treatment, '이')} 필요할 수 있습니다. "
                 f"{c.specialty} 진료를 받으세요.")
        rows.append({"instruction": instruction, "input": said, "output": reply})
    return HubDataset("ChuGyouk/GenMedGPT-5k-ko", {"default": {"train": rows}})


# --------------------------------------------------------------------------- reasoning sources

def differential(rng: random.Random, c: Condition, k: int = 2) -> list[Condition]:
    """k plausible alternatives: same division and specialty, else same specialty,
    else same division, else any condition of the same kind."""
    others = [d for d in CONDITIONS if d.kind == c.kind and d.id != c.id]
    tiers = [
        [d for d in others if d.top_division == c.top_division and d.specialty == c.specialty],
        [d for d in others if d.specialty == c.specialty],
        [d for d in others if d.top_division == c.top_division],
        others,
    ]
    return rng.sample(next(t for t in tiers if len(t) >= k), k)


def reasoning_steps(rng: random.Random, c: Condition) -> list[str]:
    """A short chain: findings -> differential -> why not the others -> test -> treatment."""
    others = differential(rng, c)
    if c.kind == "ethics":
        return [
            f"상황을 정리하면 {join_ko(c.symptoms)}이다.",
            f"관련될 수 있는 주제로 {c.ko}, {others[0].ko}, {josa(others[1].ko, '을')} 떠올릴 수 있다.",
            f"{josa(others[0].ko, '은')} {others[0].symptoms[0]} 같은 상황에 해당하므로 이 사례와 다르다.",
            f"근거는 {c.key_test}이고, 따라서 '{c.treatment}'의 방향으로 대응한다.",
        ]
    return [
        f"환자의 주요 소견은 {join_ko(c.symptoms)}이다.",
        f"감별 진단으로 {c.ko}, {others[0].ko}, {josa(others[1].ko, '을')} 생각할 수 있다.",
        f"{josa(others[0].ko, '은')} 보통 {josa(others[0].symptoms[0], '이')} 특징이고, "
        f"{josa(others[1].ko, '은')} {josa(others[1].symptoms[0], '을')} 보이므로 이 환자와 맞지 않는다.",
        f"이 소견의 조합은 {josa(c.ko, '을')} 시사하며, {josa(c.key_test, '으로')} 확인한다.",
        f"{c.ko}의 일차 치료는 {c.treatment}이다.",
    ]


def long_answer(c: Condition) -> str:
    if c.kind == "ethics":
        return (f"이 상황은 {c.ko}에 해당합니다. {josa(join_ko(c.symptoms), '은')} {c.ko}의 전형적인 상황입니다. "
                f"근거는 {c.key_test}이며, 의료인은 '{c.treatment}'의 원칙에 따라 대응해야 합니다. "
                f"판단이 어려우면 기관의 법무·윤리 담당 부서와 상의하고 모든 과정을 기록으로 남깁니다.")
    return (f"가장 가능성 높은 진단은 {c.ko}입니다. {josa(join_ko(c.symptoms), '은')} {c.ko}의 전형적인 소견입니다. "
            f"진단을 확인하려면 {josa(c.key_test, '을')} 시행합니다. 치료로는 {josa(c.treatment, '이')} 일차적으로 권장됩니다. "
            f"{josa(c.ko, '은')} {division_label(c)} 분야의 질환으로 주로 {c.specialty}에서 진료하며, "
            f"증상이 악화되면 즉시 의료진과 상의해야 합니다.")


def reasoning_question(rng: random.Random, c: Condition, short: bool) -> str:
    if c.kind == "ethics":
        who = draw_clinician(rng, c)
        tail = "이 상황에 해당하는 주제를 한 단어로 답하시오." if short else "이 상황에서 의료인이 취해야 할 조치와 근거를 설명하시오."
        return f"{josa(who, '이')} 다음 상황을 겪었다: {join_ko(c.symptoms)}. {tail}"
    p = draw_patient(rng, c)
    findings = list(c.symptoms)
    rng.shuffle(findings)
    tail = "가장 가능성 높은 진단명은 무엇인가?" if short else "가장 가능성 높은 진단과 필요한 검사, 치료 방침을 설명하시오."
    return f"{josa(p.ko, '이')} {josa(join_ko(findings), '을')} 보인다. {tail}"


def long_and_short(rng: random.Random, n: int, short_first: bool) -> list[tuple[Condition, bool]]:
    """n (condition, short answer?) pairs alternating long and short. Long answers (type 2: text
    with reasoning) may be about any condition; short answers (type 4: the diagnosis as the answer
    to a question, which is MCQ-shaped) are about train conditions only."""
    long_answers, short_answers = iter(_pick(rng, CONDITIONS, n)), iter(_pick(rng, TRAIN_CONDITIONS, n))
    pairs = []
    for i in range(n):
        short = (i % 2 == 0) == short_first
        pairs.append((next(short_answers) if short else next(long_answers), short))
    return pairs


def build_o1_reasoning(seed: int) -> HubDataset:
    """Half long answers (type 2) and half short diagnosis-only answers (type 4)."""
    rng = random.Random(f"{seed}:o1")
    rows, provenance = [], []
    for c, short in long_and_short(rng, 200, short_first=False):
        rows.append({"Question": reasoning_question(rng, c, short),
                     "Complex_Cot": " ".join(reasoning_steps(rng, c)),
                     "Response": c.ko if short else long_answer(c)})
        provenance.append(answer_provenance(c, "dx", c.ko) if short else None)
    return HubDataset("ChuGyouk/medical-o1-reasoning-SFT-Ko", {"default": {"train": rows}},
                      provenance={("default", "train"): provenance})


def build_chain_of_diagnosis(seed: int) -> HubDataset:
    rng = random.Random(f"{seed}:cod")
    rows, provenance = [], []
    for c, short in long_and_short(rng, 200, short_first=True):
        steps = reasoning_steps(rng, c)
        chain = "\n".join(f"{n}단계: {s}" for n, s in enumerate(steps, 1))
        if c.kind == "ethics":
            question = f"상황: {join_ko(c.symptoms)}. 해당하는 의료윤리·법 주제는?"
        else:
            p = draw_patient(rng, c)
            question = f"환자: {p.ko}. 주 증상: {join_ko(c.symptoms)}. 진단은?"
        rows.append({"question": question, "chain": chain,
                     "diagnosis": c.ko if short else long_answer(c)})
        provenance.append(answer_provenance(c, "dx", c.ko) if short else None)
    return HubDataset("ChuGyouk/ChainofDiagnosis-Ko", {"default": {"train": rows}},
                      provenance={("default", "train"): provenance})


# --------------------------------------------------------------------------- plain Korean text

def _timestamp(rng: random.Random) -> str:
    return (f"{rng.randint(2019, 2021)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            f"T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z")


def build_c4(seed: int) -> HubDataset:
    """Web-like documents: a health post per condition plus everyday posts (200 total)."""
    rng = random.Random(f"{seed}:c4")
    sites = ["blog.example.kr", "news.example.co.kr", "cafe.example.net", "health.example.org"]
    intros = ["오늘은 {ko}에 대해 정리해 보려고 합니다.", "주변에서 {ko} 이야기를 들어서 찾아본 내용을 적어 둡니다.",
              "{ko}, 어떤 병인지 알고 계신가요?", "건강 상식 시리즈, 이번 주제는 {ko}입니다."]
    outros = ["궁금한 점은 가까운 병원에서 상담해 보세요.", "모두 건강 잘 챙기시길 바랍니다.",
              "이 글은 일반적인 정보이며 진료를 대신하지 않습니다."]
    docs: list[tuple[str, str]] = []
    for c in CONDITIONS:
        parts = [rng.choice(general_sentences(rng, 2)),
                 rng.choice(intros).format(ko=c.ko), varied_paragraph(rng, c), rng.choice(outros)]
        docs.append((" ".join(parts), "health"))
    while len(docs) < 200:
        docs.append((" ".join(general_sentences(rng, rng.randint(3, 6))), "life"))
    rng.shuffle(docs)
    rows = [{"text": text, "timestamp": _timestamp(rng),
             "url": f"https://{rng.choice(sites)}/{kind}/{10000 + i * 7}"}
            for i, (text, kind) in enumerate(docs)]
    return HubDataset("allenai/c4", {"ko": {"train": rows}})


def _overviews() -> list[tuple[str, list[Condition]]]:
    """(title, conditions) for each division and each specialty used."""
    out = [(f"{label} 분야", [c for c in CONDITIONS if c.top_division == d])
           for d, (_, label) in DIVISIONS.items()]
    for sp in SPECIALTIES:
        members = [c for c in CONDITIONS if c.specialty == sp]
        if members:
            out.append((f"{sp} (진료과)", members))
    return out


def wiki_article(rng: random.Random, c: Condition) -> str:
    paras = [" ".join(fact_sentences(c))]
    if c.kind == "disease":
        paras.append(f"증상\n{c.ko} 환자에게서는 {josa(join_ko(c.symptoms), '이')} 관찰된다.")
        paras.append(f"진단\n{josa(c.key_test, '이')} 진단의 핵심이다.")
        paras.append(f"치료\n{josa(c.treatment, '이')} 일차 치료로 쓰인다.")
    else:
        paras.append(f"적용 상황\n{join_ko(c.symptoms)}.")
        paras.append(f"근거와 조치\n{c.key_test}에 따라 '{c.treatment}'의 원칙으로 대응한다.")
    return "\n\n".join(paras)


def build_wikipedia(seed: int) -> HubDataset:
    rng = random.Random(f"{seed}:wikipedia")
    articles: list[tuple[str, str]] = []
    for title, members in _overviews():
        names = join_ko([m.ko for m in members])
        articles.append((title, f"{josa(title, '은')} 의학의 한 영역이다. 이 문서에서 다루는 주요 항목은 {names} 등이다."))
    for topic, sentences in GENERAL_TOPICS.items():
        articles.append((topic, " ".join(rng.sample(sentences, len(sentences)))))
    n_conditions = 150 - len(articles)
    for c in sorted(rng.sample(CONDITIONS, n_conditions), key=CONDITIONS.index):
        articles.append((c.ko, wiki_article(rng, c)))
    rows = []
    for i, (title, text) in enumerate(articles):
        page_id = str(100000 + i * 13)
        rows.append({"id": page_id, "url": f"https://ko.wikipedia.example/wiki?curid={page_id}",
                     "title": title, "text": text})
    return HubDataset("wikimedia/wikipedia", {"20231101.ko": {"train": rows}})


def namu_article(rng: random.Random, c: Condition) -> str:
    related = differential(rng, c)
    bullets = "\n".join(f" * {s}" for s in c.symptoms)
    if c.kind == "ethics":
        body = [f"[목차]\n== 개요 ==\n{josa(c.ko, '은')} 의료 현장의 {division_label(c)} 관련 주제이다.",
                f"== 해당 상황 ==\n{bullets}",
                f"== 근거 ==\n{c.key_test}.",
                f"== 의료인의 조치 ==\n{c.treatment}."]
    else:
        body = [f"[목차]\n== 개요 ==\n{varied_paragraph(rng, c)}",
                f"== 증상 ==\n{bullets}",
                f"== 진단 ==\n{josa(c.key_test, '으로')} 진단한다.",
                f"== 치료 ==\n{josa(c.treatment, '이')} 기본이다."]
    body.append("== 관련 문서 ==\n" + "\n".join(f" * [[{d.ko}]]" for d in related))
    return "\n".join(body)


def build_namuwiki(seed: int) -> HubDataset:
    rng = random.Random(f"{seed}:namuwiki")
    articles: list[tuple[str, str]] = []
    for topic, sentences in GENERAL_TOPICS.items():
        picked = rng.sample(sentences, len(sentences))
        articles.append((topic, f"[목차]\n== 개요 ==\n{' '.join(picked[:3])}\n== 여담 ==\n{' '.join(picked[3:])}"))
    for c in sorted(rng.sample(CONDITIONS, 150 - len(articles)), key=CONDITIONS.index):
        articles.append((c.ko, namu_article(rng, c)))
    rows = []
    for title, text in articles:
        editors = [f"editor{rng.randint(100, 999)}" for _ in range(rng.randint(1, 3))]
        editors.append(f"192.0.2.{rng.randint(1, 254)}")  # documentation address range
        rows.append({"title": title, "text": text, "contributors": ",".join(editors), "namespace": ""})
    return HubDataset("heegyu/namuwiki", {"default": {"train": rows}})


# --------------------------------------------------------------------------- local dictionaries

def medical_dict_rows() -> Rows:
    rows: Rows = []
    for c in CONDITIONS:
        kind_word = "주제" if c.kind == "ethics" else "질환"
        rows.append({"term": c.ko, "definition": (
            f"{c.en}. {josa(c.ko, '은')} {division_label(c)} 분야의 {kind_word}이다. "
            f"{'관련 상황' if c.kind == 'ethics' else '주요 증상'}은 {join_ko(c.symptoms)}이며, "
            f"{'근거' if c.kind == 'ethics' else '진단 검사'}는 {c.key_test}, "
            f"{'적절한 조치' if c.kind == 'ethics' else '일차 치료'}는 {c.treatment}이다.")})
    for c in CONDITIONS:
        if c.kind != "disease":
            continue
        for s in c.symptoms:
            rows.append({"term": s, "definition": f"{en_heading(c.en_terms[s])}. {josa(s, '은')} {c.ko}에서 볼 수 있는 소견이다."})
    for c in CONDITIONS:
        en = en_heading(c.en_terms[c.key_test])
        what = "근거가 되는 규정 또는 원칙" if c.kind == "ethics" else "진단에 주로 쓰이는 검사"
        rows.append({"term": c.key_test, "definition": f"{en}. {c.ko}의 {what}이다."})
    return rows


def animal_dict_rows() -> Rows:
    return [{"term": ko, "definition": f"{en}. {text}"} for ko, en, text in VET_TERMS]


def char_dict_rows() -> Rows:
    return [{"term": sym, "definition": f"{en}. {josa(ko, '을')} 뜻하는 기호이다."}
            for sym, en, ko in SYMBOLS]


def build_local_dicts() -> HubDataset:
    files = {"medical": "korean_medical_dict.jsonl", "animal": "korean_animal_medical_dict.jsonl",
             "char": "char_dict.jsonl"}
    configs = {"medical": {"train": medical_dict_rows()},
               "animal": {"train": animal_dict_rows()},
               "char": {"train": char_dict_rows()}}
    return HubDataset("local/01_medical_dict", configs,
                      {(cfg, "train"): name for cfg, name in files.items()})


# --------------------------------------------------------------------------- rendering

BUILDERS: list[Callable[[int], HubDataset]] = [
    build_asan, build_healthsearchqa, build_ai_healthcare_qa, build_kormedconceptsqa,
    build_komedinstruct, build_genmedgpt, build_o1_reasoning, build_chain_of_diagnosis,
    build_kormedmcqa, build_medqa, build_medqa_evol, build_kormedlawqa, build_kmmlu,
    build_c4, build_namuwiki, build_wikipedia,
]

SYNTHETIC_NOTE = ("Synthetic sample data in the upstream column schema, generated by "
                  "script/embedded/make_sample_data.py from the hand-written table in script/embedded/sample_knowledge.py; "
                  "not the upstream data and not medical advice.")


def jsonl(rows: Rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def dataset_readme(ds: HubDataset) -> str:
    lines = ["---", "configs:"]
    for config, splits in ds.configs.items():
        lines += [f"- config_name: {config}", "  data_files:"]
        for split in splits:
            lines += [f"  - split: {split}", f"    path: {ds.path_for(config, split)}"]
    lines += ["---", "", f"# {ds.hub_id} (synthetic sample)", "", SYNTHETIC_NOTE, ""]
    return "\n".join(lines)


def top_readme(datasets: list[HubDataset]) -> str:
    lines = [
        "# data/sample: synthetic local hub mirror",
        "",
        "ALL content in this directory is SYNTHETIC: machine-rendered by `script/embedded/make_sample_data.py` "
        "from a small hand-written table (`script/embedded/sample_knowledge.py`). It is NOT medical advice and "
        "NOT the upstream data; only the column schemas follow the upstream datasets.",
        "",
        "Each `<owner>/<name>/` directory mirrors one hub dataset: its `README.md` declares the configs "
        "and splits, so `datasets.load_dataset(\"data/sample/<owner>/<name>\", \"<config>\", split=...)` "
        "works offline. `local/01_medical_dict/` holds the local dictionaries (not on the hub).",
        "",
        "The layouts are the hub's as the public dataset cards describe them, quirks included, so the "
        "offline pipeline parses what a hub run parses: KorMedConceptsQA has no default config (kcd8_* "
        "configs with a test split, atc_* with dev and test; four options `option1`-`option4`, "
        "`answer_id` a letter; kcd8_merged repeats rows of the other kcd8 configs), and each KorMedMCQA "
        "fewshot split is five rows of its dev split with `cot` filled in.",
        "",
        "Regenerate with `python -m script.embedded.make_sample_data` (deterministic; byte-identical output).",
        "",
        "Evaluation knowledge is held out the way real exams hold it out: every condition of the table "
        "is in one group, and the multiple-choice and short-answer sources ask only about their group's "
        "conditions. The facts of held-out conditions appear only in text (plain-text corpora, dictionary "
        "definitions, the long answers of the QA and reasoning sources).",
        "",
        "| group | conditions | asked about by |",
        "|---|---|---|",
        f"| eval | {len(EVAL_CONDITIONS)} | KorMedMCQA dev, test and fewshot (every config), KMMLU |",
        f"| steer | {len(STEER_CONDITIONS)} | the KorMedMCQA train rows that the steering draw takes |",
        f"| train | {len(TRAIN_CONDITIONS)} | the other KorMedMCQA train rows, MedQA, MedQA-Evol-Korean, "
        "KorMedLawQA, KorMedConceptsQA, the short answers of the reasoning sources |",
        "",
        "| dataset | config | rows per split |",
        "|---|---|---|",
    ]
    for ds in datasets:
        for config, splits in ds.configs.items():
            counts = ", ".join(f"{split} {len(rows)}" for split, rows in splits.items())
            lines.append(f"| `{ds.hub_id}` | {config} | {counts} |")
    return "\n".join(lines) + "\n"


def build_datasets(seed: int) -> list[HubDataset]:
    """Every dataset of the sample mirror, with the generator's provenance records."""
    return [build(seed) for build in BUILDERS] + [build_local_dicts()]


def render(seed: int) -> dict[str, str]:
    """All output files: relative path -> text."""
    datasets = build_datasets(seed)
    files: dict[str, str] = {"README.md": top_readme(datasets)}
    for ds in datasets:
        files[f"{ds.hub_id}/README.md"] = dataset_readme(ds)
        for config, splits in ds.configs.items():
            for split, rows in splits.items():
                files[f"{ds.hub_id}/{ds.path_for(config, split)}"] = jsonl(rows)
    return files


def write_tree(files: dict[str, str], out: Path) -> None:
    """Write into a temporary sibling directory, then swap it in (data_io.atomic_write_dir), so
    readers never see a half-written tree."""
    def fill(tmp: Path) -> None:
        for rel, text in sorted(files.items()):
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text.encode("utf-8"))

    atomic_write_dir(out.resolve(), fill)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Render the synthetic local hub mirror (data/sample) from script/embedded/sample_knowledge.py.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output directory, replaced as a whole (default: data/sample)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    files = render(args.seed)
    write_tree(files, args.out)
    total = sum(len(t.encode("utf-8")) for t in files.values())
    print(f"wrote {len(files)} files ({total / 1e6:.2f} MB) to {args.out}")
    return 0


if __name__ == "__main__":
    from script.cli import run_main

    run_main(main)
