"""Evaluation library and CLI: letter mode against a slow reference, answer extraction, the guide's
metrics, item loading with skipped rows, reports, generate-mode accounting, adapters.

    python -m pytest tests/test_evaluation.py -q
"""

import json
import math
import shutil

import pytest
import torch

from script import eval_items, formats, mcq_prompts
from script import evaluation as ev
from script.data_io import atomic_write_jsonl
from script.model_loading import load_model_for_eval
from script.training_config import SAMPLE_DATA_DIR

KORMEDMCQA_SAMPLE = SAMPLE_DATA_DIR / "sean0042" / "KorMedMCQA" / "data"
KMMLU_SAMPLE = SAMPLE_DATA_DIR / "HAERAE-HUB" / "KMMLU" / "data"


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded(tiny_models):
    return load_model_for_eval(str(tiny_models["tiny"]), device="cpu")


@pytest.fixture(scope="module")
def sample_items():
    """Upstream KorMedMCQA rows of two configs, normalised by the project's own loader."""
    doctor = eval_items.read_items_file(KORMEDMCQA_SAMPLE / "doctor" / "test.jsonl")
    nurse = eval_items.read_items_file(KORMEDMCQA_SAMPLE / "nurse" / "test.jsonl")
    assert not doctor.rejects and not nurse.rejects
    return doctor.items[:14] + nurse.items[:8]


def good_item(i=0, answer="B", config="doctor", **extra):
    return {"id": f"t/{i}", "config": config, "question": f"질문 {i}: 다음 중 옳은 것은?",
            "options": {"A": "협심증", "B": "급성 심근경색", "C": "폐렴", "D": "기흉", "E": "A형 간염"},
            "answer": answer, **extra}


def write_lines(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)
                              for line in lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------
# Letter mode
# ---------------------------------------------------------------------------
def test_train02_letter_mode_reads_the_letter_after_the_models_own_reasoning(loaded, monkeypatch):
    """The reasoning is generated (here: fixed outputs), cut after </reasoning> or closed when the
    model never closes it; the letter is then scored exactly where train_02 puts the answer."""
    items = [good_item(0, "A"), good_item(1, "C")]
    outputs = [{"text": "<reasoning>\nA) 협심증: 아님\n</reasoning>B 이후 텍스트", "new_tokens": 9, "stopped": True},
               {"text": "끝나지 않는 추론", "new_tokens": 5, "stopped": False}]
    monkeypatch.setattr(ev, "generate_texts", lambda *a, **k: outputs)
    preds = ev.score_mcq_letter_mode(loaded.model, loaded.tokenizer, items, batch_size=2, style=mcq_prompts.PROMPT_TRAIN02)
    assert preds[0]["raw_output"] == "<reasoning>\nA) 협심증: 아님\n</reasoning>"
    assert preds[0]["reasoning_closed"] is True
    assert preds[1]["raw_output"] == "<reasoning>\n끝나지 않는 추론\n</reasoning>"
    assert preds[1]["reasoning_closed"] is False
    for item, pred in zip(items, preds):
        text = mcq_prompts.render_mcq_prompt(loaded.tokenizer, item, mcq_prompts.PROMPT_TRAIN02) + pred["raw_output"]
        ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
        letter_ids = ev.letter_token_ids(loaded.tokenizer, text)
        with torch.no_grad():
            logits = loaded.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        expected = max(eval_items.item_letters(item), key=lambda letter: logits[letter_ids[letter]].item())
        assert pred["prediction"] == expected
    with pytest.raises(ValueError, match="generate mode"):
        ev.score_mcq_letter_mode(loaded.model, loaded.tokenizer, items, style=mcq_prompts.PROMPT_TYPE4)


def test_verdict_mode_reads_each_options_verdict_log_odds(loaded, sample_items):
    """Batched one-pass verdict scoring equals a slow reference: for each option its own unpadded
    sequence up to ``X) <option>:`` (earlier lines written 오답), log-odds of 정답 over 오답."""
    items = sample_items[:5]
    batched = ev.score_mcq_verdicts(loaded.model, loaded.tokenizer, items, batch_size=3)
    tok = loaded.tokenizer
    for item, pred in zip(items, batched):
        prompt = mcq_prompts.render_mcq_prompt(tok, item, mcq_prompts.PROMPT_TRAIN02) + formats.MCQ_REASONING_START + "\n"
        earlier = ""
        for letter in eval_items.item_letters(item):
            head = formats.mcq_verdict_head(letter, item["options"][letter])
            ids = tok(prompt + earlier + head, add_special_tokens=False)["input_ids"]
            yes, no = ev.verdict_token_ids(tok, head)
            with torch.no_grad():
                logits = loaded.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            assert pred["verdict_log_odds"][letter] == pytest.approx(float(logits[yes] - logits[no]), abs=2e-3)
            earlier += formats.mcq_verdict_line(letter, item["options"][letter], False) + "\n"
        assert pred["prediction"] == max(pred["verdict_log_odds"], key=pred["verdict_log_odds"].get)


def reference_letter_logprobs(model, tokenizer, item):
    """Slow reference: the whole prompt + letter as one unpadded sequence per option, no position
    ids, log P(letter | prompt) from the full-sequence logits; normalised over the options."""
    prompt = formats.render_prompt(tokenizer, mcq_prompts.mcq_messages(item))
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    scores = {}
    for letter in eval_items.item_letters(item):
        ids = tokenizer(prompt + letter, add_special_tokens=False)["input_ids"]
        assert ids[: len(prompt_ids)] == prompt_ids and len(ids) > len(prompt_ids)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        scores[letter] = float(torch.log_softmax(logits[len(prompt_ids) - 1], -1)[ids[len(prompt_ids)]])
    norm = torch.logsumexp(torch.tensor(list(scores.values())), 0).item()
    return {letter: value - norm for letter, value in scores.items()}


def test_letter_mode_equals_unbatched_full_sequence_reference(loaded, sample_items):
    items = sample_items[:20]
    predictions = ev.score_mcq_letter_mode(loaded.model, loaded.tokenizer, items, batch_size=8)
    for item, pred in zip(items, predictions):
        reference = reference_letter_logprobs(loaded.model, loaded.tokenizer, item)
        assert pred["prediction"] == max(reference, key=reference.get), item["id"]
        for letter, value in reference.items():
            assert pred["letter_logprobs"][letter] == pytest.approx(value, abs=2e-4)
        assert pred["correct"] == (pred["prediction"] == item["answer"])


def test_batched_letter_mode_equals_batch_size_one(loaded, sample_items):
    lengths = {len(formats.render_prompt(loaded.tokenizer, mcq_prompts.mcq_messages(i))) for i in sample_items}
    assert len(lengths) > 3  # rows really differ in length, so left padding is exercised
    one = ev.score_mcq_letter_mode(loaded.model, loaded.tokenizer, sample_items, batch_size=1)
    many = ev.score_mcq_letter_mode(loaded.model, loaded.tokenizer, sample_items, batch_size=7)
    assert [p["prediction"] for p in one] == [p["prediction"] for p in many]
    for a, b in zip(one, many):
        for letter in a["letter_logprobs"]:
            assert a["letter_logprobs"][letter] == pytest.approx(b["letter_logprobs"][letter], abs=2e-4)


def test_cloze_mode_scores_each_option_as_the_answer_to_the_question_alone(loaded, sample_items):
    """Each option's score is the summed log-probability of its answer turn, computed one sequence at
    a time here; batching (right padding, mixed lengths) does not change it."""
    tok, model = loaded.tokenizer, loaded.model
    items = sample_items[:6]
    batched = ev.score_mcq_cloze_mode(model, tok, items, batch_size=7)  # batches cut across items
    for item, pred in zip(items, batched):
        reference = {}
        for letter, text in item["options"].items():
            messages = formats.answer_text_messages(item["question"], text)
            prompt = tok(formats.render_prompt(tok, messages[:-1]), add_special_tokens=False)["input_ids"]
            full = tok(formats.render_conversation(tok, messages), add_special_tokens=False)["input_ids"]
            assert text not in formats.render_prompt(tok, messages[:-1])  # options are never shown
            with torch.no_grad():
                logprobs = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0].float(), -1)
            reference[letter] = sum(float(logprobs[k - 1, full[k]]) for k in range(len(prompt), len(full)))
        for letter, value in reference.items():
            assert pred["option_logprobs"][letter] == pytest.approx(value, abs=2e-3)
        assert pred["prediction"] == max(reference, key=reference.get)
        assert pred["correct"] == (pred["prediction"] == item["answer"])
        assert math.fsum(math.exp(v) for v in pred["letter_logprobs"].values()) == pytest.approx(1.0, abs=1e-4)
    one = ev.score_mcq_cloze_mode(model, tok, items, batch_size=1)
    assert [p["prediction"] for p in one] == [p["prediction"] for p in batched]


def test_cloze_mode_follows_what_training_on_the_answer_text_teaches(tiny_models):
    """A few steps on one item's cloze-form record make its right option the cloze answer."""
    loaded = load_model_for_eval(str(tiny_models["tiny"]), device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    item = good_item(answer="D")
    before = ev.score_mcq_cloze_mode(model, tok, [item])[0]["option_logprobs"]["D"]
    ids, start = ev.tokenize_for_completion(tok, formats.answer_text_messages(item["question"], "기흉"), 10**6)
    labels = [-100] * start + ids[start:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(8):
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = ev.score_mcq_cloze_mode(model, tok, [item])[0]
    assert after["option_logprobs"]["D"] > before
    assert after["prediction"] == "D" and after["correct"]


def test_letter_mode_answers_only_the_items_own_options(loaded):
    item = good_item()
    del item["options"]["E"]
    (pred,) = ev.score_mcq_letter_mode(loaded.model, loaded.tokenizer, [item])
    assert set(pred["letter_logprobs"]) == {"A", "B", "C", "D"}
    assert pred["prediction"] in "ABCD"
    assert sum(math.exp(v) for v in pred["letter_logprobs"].values()) == pytest.approx(1.0, abs=1e-3)


def test_multimodal_class_scores_like_the_text_model(tiny_models, loaded, sample_items):
    """tiny-mm wraps the same language-model weights in Gemma3ForConditionalGeneration."""
    mm = load_model_for_eval(str(tiny_models["tiny-mm"]), device="cpu")
    a = ev.score_mcq_letter_mode(loaded.model, loaded.tokenizer, sample_items[:6], batch_size=3)
    b = ev.score_mcq_letter_mode(mm.model, mm.tokenizer, sample_items[:6], batch_size=3)
    assert [p["prediction"] for p in a] == [p["prediction"] for p in b]


def test_periodic_eval_fn_reports_percent(loaded, sample_items):
    fn = ev.make_mcq_eval_fn(loaded.tokenizer, sample_items[:10], batch_size=4)
    result = fn(loaded.model, 100)
    assert set(result) == {"accuracy", "correct", "total"}
    assert result["total"] == 10
    assert result["accuracy"] == pytest.approx(100.0 * result["correct"] / 10)


# ---------------------------------------------------------------------------
# Answer extraction
# ---------------------------------------------------------------------------
OPTIONS = {"A": "협심증", "B": "급성 심근경색", "C": "A형 간염", "D": "폐렴", "E": "E. coli 요로감염"}
EXTRACTION_CASES = [
    ("B", "type3", "B"),
    ("B)", "type3", "B"),
    ("B.", "type3", "B"),
    ("(B)", "type3", "B"),
    ("**D**", "type3", "D"),
    ("Ｂ", "type3", "B"),  # fullwidth letter
    ("정답: B", "type3", "B"),
    ("정답은 C 입니다", "type3", "C"),
    ("정답은 C입니다.", "type3", "C"),
    ("답: D", "type3", "D"),
    ("최종 정답: (E)", "type3", "E"),
    ("The answer is E.", "type3", "E"),
    ("B 입니다. ST 분절 상승과 트로포닌 상승이 있으므로", "type3", "B"),  # extra text after the answer
    ("D) 폐렴\n\n해설: 정답이 A가 아닌 이유는 …", "type3", "D"),  # the leading answer wins over the explanation
    ("급성 심근경색", "type4", "B"),  # the option text itself
    ("A형 간염", "type3", "C"),  # option text starting with a capital letter: not "A"
    ("E. coli 요로감염", "type4", "E"),
    ("정답: 폐렴", "type3", "D"),
    ("<R>ST 상승, 트로포닌 상승. 협심증(A)보다 B가 맞다<R/>급성 심근경색", "type4", "B"),
    ("<R>A) 가능성 10%, C) 가능성 5%<R/>\nB", "type4", "B"),
    ("<reasoning>\n첫째: 흉통 환자\n넷째: A) 낮음 10%, B) 높음 80%, C) 낮음 5%\n</reasoning>B", "train02", "B"),
    ("<reasoning>\n넷째: A) 낮음 10%, B) 높음 80%\n", "train02", None),  # never closed: no answer
    ("<R>환자는 A) 협심증이 아니라", "type4", None),
    ("A patient with chest pain and ST elevation", "type3", None),  # English words are not letters
    ("ECG shows ST elevation; Diagnosis: MI", "type3", None),
    ("Based on the ECG, I think it is A", "type3", None),
    ("B12 결핍", "type3", None),
    ("정답: F", "type3", None),  # not one of the item's letters
    ("", "type3", None),
    ("모르겠습니다", "type3", None),
    ("<R>추론만 하고 답이 없다<R/>", "type4", None),
    (" B", "lm_eval", "B"),
    (" B. 급성 심근경색", "lm_eval", "B"),
    (" 정답은 C 입니다.\n\n다음 문제", "lm_eval", "C"),
]


@pytest.mark.parametrize(("text", "style", "expected"), EXTRACTION_CASES)
def test_extract_answer(text, style, expected):
    assert ev.extract_answer(text, OPTIONS, style) == expected


def test_extract_answer_with_letters_only_and_four_options():
    assert ev.extract_answer("정답: B", ["A", "B", "C", "D"], "type3") == "B"
    assert ev.extract_answer("E", ["A", "B", "C", "D"], "type3") is None
    assert ev.extract_answer("급성 심근경색", ["A", "B", "C", "D", "E"], "type4") is None  # no texts given
    with pytest.raises(ValueError):
        ev.extract_answer("B", OPTIONS, "nonsense")


# ---------------------------------------------------------------------------
# Type 4 score
# ---------------------------------------------------------------------------
LEXICON = frozenset({"갑상선기능저하증", "갑상선", "갑상선염", "하시모토 갑상선염", "TSH", "T4", "레보티록신",
                     "부종", "서맥", "체중 증가", "피로감", "변비"})
REF_REASONING = ("TSH 상승과 T4 감소는 일차성 갑상선기능저하증을 뜻한다. 중년 여성에서 흔한 원인은 하시모토 "
                 "갑상선염이며 피로감, 체중 증가, 변비, 서맥, 부종이 동반되고 치료는 레보티록신이다")


def test_type4_score_parts():
    gen = "<R>TSH 상승과 T4 감소로 일차성 갑상선기능저하증이 의심되며 원인은 하시모토 갑상선염이다<R/>갑상선기능저하증"
    score = ev.type4_score(gen, "갑상선기능저하증", REF_REASONING, LEXICON)
    # exactly 10 words of reasoning; terms TSH, T4, 갑상선기능저하증, 하시모토 갑상선염 (갑상선 and 갑상선염
    # match too but lie inside longer matches, so they do not count again)
    assert score.answer_match and score.reasoning_tokens == 10 and score.reasoning_bonus == 0.1
    assert set(score.key_terms) == {"TSH", "T4", "갑상선기능저하증", "하시모토 갑상선염"}
    assert score.score == pytest.approx(1.0 + 0.1 + 4 * 0.05)
    assert float(score) == score.score
    nine = ev.type4_score(gen.replace("일차성 ", ""), "갑상선기능저하증", REF_REASONING, LEXICON)
    assert nine.reasoning_tokens == 9 and nine.score == pytest.approx(1.0 + 4 * 0.05)


def test_type4_score_cap_wrong_answer_short_reasoning_and_normalisation():
    everything = "<R>" + REF_REASONING + "<R/>갑상선 기능저하증."  # spaces and punctuation ignored
    capped = ev.type4_score(everything, "갑상선기능저하증", REF_REASONING, LEXICON)
    assert len(capped.key_terms) > 6
    assert capped.score == pytest.approx(ev.TYPE4_MAX_SCORE) == pytest.approx(1.4)
    wrong = ev.type4_score("<R>TSH 상승<R/>갑상선염", "갑상선기능저하증", REF_REASONING, LEXICON)
    assert not wrong.answer_match and wrong.reasoning_bonus == 0.0
    assert wrong.score == pytest.approx(0.05)  # TSH only
    bare = ev.type4_score("갑상선기능저하증", "갑상선기능저하증", REF_REASONING, LEXICON)
    assert bare.score == pytest.approx(1.0) and bare.key_terms == ()
    assert ev.type4_score("<R>x<R/>", "", "", LEXICON).score == 0.0  # empty answers never match


def test_medical_lexicon_from_sample_dictionary():
    lexicon = ev.load_medical_lexicon(SAMPLE_DATA_DIR / "local" / "01_medical_dict" / "korean_medical_dict.jsonl")
    assert "급성 심근경색" in lexicon and "심근경색" in lexicon  # headword and its kiwipiepy noun run
    assert "급성" not in lexicon and "혈압" in lexicon  # generic noun dropped, curated term kept
    assert ev.key_terms("급성 심근경색이 의심된다", "심근경색 때문이다", lexicon) == ["심근경색"]


# ---------------------------------------------------------------------------
# train_02 score
# ---------------------------------------------------------------------------
GOOD_REASONING = (
    "<reasoning>\n"
    "첫째: 문제는 급성 흉통 환자의 진단을 묻는다.\n"
    "둘째: ST 분절 상승과 트로포닌 상승이 단서이다.\n"
    "셋째: 심근 괴사를 뜻하는 소견을 적용한다.\n"
    "넷째: A) 협심증은 효소가 오르지 않음 5%, B) 심근경색이 모든 소견에 부합 85%, C) 간염과 흉통은 무관 2%, "
    "D) 폐렴은 발열이 없어 3%, E) 요로감염은 관련이 없음 5%\n"
    "</reasoning>")


@pytest.mark.parametrize(("generated", "expected", "format_ok"), [
    (GOOD_REASONING + "B", 1.0, True),
    ("<reasoning>\n첫째: 흉통\n</reasoning>B", 2 / 3, False),
    (GOOD_REASONING + "A", 1 / 4, True),
    ("<reasoning>\n첫째: 흉통\n</reasoning>A", 0.0, False),
    (GOOD_REASONING, 1 / 4, True),  # no answer at all: wrong, good reasoning
])
def test_train02_score(generated, expected, format_ok):
    score = ev.train02_score(generated, "B", OPTIONS)
    assert score.score == pytest.approx(expected)
    assert score.format_ok is format_ok


def test_train02_format_checks_components():
    missing_close = ev.train02_format_checks(GOOD_REASONING.replace("</reasoning>", ""), list("ABCDE"))
    assert not missing_close["tags"] and not missing_close["ok"]
    no_percent = ev.train02_format_checks(GOOD_REASONING.replace("85%", "높음"), list("ABCDE"))
    assert no_percent["options"]["B"] is False and no_percent["options"]["A"] is True
    short = ev.train02_format_checks(GOOD_REASONING.replace("셋째: 심근 괴사를 뜻하는 소견을 적용한다.", "셋째: 적용"),
                                     list("ABCDE"))
    assert short["ordinals"] == {"첫째": True, "둘째": True, "셋째": False, "넷째": True}
    four = ev.train02_score(GOOD_REASONING.replace(", E) 요로감염은 관련이 없음 5%", "") + "B", "B", list("ABCD"))
    assert four.score == pytest.approx(1.0) and set(four.options) == set("ABCD")


# ---------------------------------------------------------------------------
# Perplexity and accuracy bookkeeping
# ---------------------------------------------------------------------------
def test_completion_perplexity_matches_manual_computation(loaded):
    tok, model = loaded.tokenizer, loaded.model
    records = [{"messages": formats.type_messages(formats.TYPE1_TEXT, "당뇨병 환자의 식이요법은?",
                                                  "탄수화물 섭취를 조절하고 규칙적으로 식사합니다.")},
               {"messages": formats.type_messages(formats.TYPE1_TEXT, "고혈압이란?", "혈압이 높은 상태입니다.")}]
    nll, count = 0.0, 0
    for record in records:
        prompt = tok(formats.render_prompt(tok, record["messages"][:-1]), add_special_tokens=False)["input_ids"]
        full = tok(formats.render_conversation(tok, record["messages"]), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0].float(), -1)
        for position in range(len(prompt), len(full)):
            nll -= float(logprobs[position - 1, full[position]])
            count += 1
    result = ev.completion_perplexity(model, tok, records, batch_size=2)
    assert result["completion_tokens"] == count
    assert result["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)


def test_mcq_accuracy_chance_unparseable_subjects_and_divisions():
    items = [good_item(0, config="doctor", primary_division="1"), good_item(1, config="doctor", divisions=["2", "3"]),
             {**good_item(2, config="kmmlu"), "options": {k: "x" for k in "ABCD"}}]
    predictions = [{"prediction": "B", "correct": True}, {"prediction": None, "correct": False},
                   {"prediction": "A", "correct": False}]
    result = ev.mcq_accuracy(items, predictions)
    assert result["accuracy"] == pytest.approx(1 / 3) and result["unparseable"] == 1
    assert result["chance"] == pytest.approx((0.2 + 0.2 + 0.25) / 3)
    assert result["per_subject"]["doctor"] == {"accuracy": 0.5, "correct": 1, "total": 2, "chance": 0.2,
                                               "unparseable": 1, "avg_loss": None}
    assert set(result["per_division"]) == {"1", "2", "3"}
    assert result["avg_loss"] is None  # generated answers have no letter logprobs
    letter = [{"prediction": "B", "gold": "B", "correct": True, "letter_logprobs": {"A": -2.0, "B": -0.2}},
              {"prediction": "A", "gold": "B", "correct": False, "letter_logprobs": {"A": -0.1, "B": -1.8}}]
    scored = ev.mcq_accuracy(items[:2], letter)
    assert scored["avg_loss"] == pytest.approx(1.0) and scored["per_division"]["1"]["avg_loss"] == pytest.approx(0.2)


def test_type3_accuracy_on_refined_records(loaded, sample_items):
    records = [{"id": f"r{i}", "source": "kormedmcqa", "type": formats.TYPE3_WORD,
                "messages": mcq_prompts.mcq_messages(item) + [{"role": "assistant", "content": item["answer"]}],
                "question": item["question"], "options": item["options"], "answer": item["answer"]}
               for i, item in enumerate(sample_items[:8])]
    result = ev.type3_accuracy(loaded.model, loaded.tokenizer, records, batch_size=4)
    predictions = ev.score_mcq_letter_mode(loaded.model, loaded.tokenizer, sample_items[:8])
    assert result["correct"] == sum(p["correct"] for p in predictions) and result["total"] == 8
    assert set(result["per_subject"]) == {"kormedmcqa"}  # records have a source, not a config


# ---------------------------------------------------------------------------
# Items: bad rows, KMMLU, subsets, sets
# ---------------------------------------------------------------------------
def bad_rows_file(path):
    upstream = {"subject": "doctor", "year": 2022, "period": 1, "q_number": 9, "question": "업스트림 문항?",
                "A": "가", "B": "나", "C": "다", "D": "라", "E": "마", "answer": 3}
    missing_option = good_item(90)
    del missing_option["options"]["C"]
    return write_lines(path, [
        good_item(1),
        missing_option,                                   # line 2
        good_item(91, answer="F"),                        # line 3
        {**good_item(92), "question": "  "},              # line 4
        "{not json",                                      # line 5
        {**upstream, "answer": 7},                        # line 6
        upstream,
        {**good_item(93), "options": {**good_item(93)["options"], "D": ""}},  # line 8
    ])


def test_bad_rows_are_skipped_with_path_line_and_reason(tmp_path):
    path = bad_rows_file(tmp_path / "items.jsonl")
    evalset = eval_items.read_items_file(path)
    assert [item["id"] for item in evalset.items] == ["t/1", "kormedmcqa/doctor/items/2022-1-9"]
    assert evalset.items[1]["answer"] == "C"  # upstream 1-5 converted once, by KorMedMCQA's convention
    where = {r.line: r.reason for r in evalset.rejects}
    assert sorted(where) == [2, 3, 4, 5, 6, 8]
    assert "missing option 'C'" in where[2] and "out of range" in where[3] and "empty 'question'" in where[4]
    assert "invalid JSON" in where[5] and "out of range" in where[6] and "empty option 'D'" in where[8]
    assert str(evalset.rejects[0]).startswith(f"{path}:2: ")


def test_the_guides_refined_layout_with_letter_answers_is_read(tmp_path):
    """data/refined/02_kor_med_test: columns A-E and a letter answer (the guide's KorMedMCQA format)."""
    rows = [{"id": "r1", "subject": "doctor", "question": "질문?", "A": "가", "B": "나", "C": "다", "D": "라",
             "E": "마", "answer": "D"},
            {"id": "r2", "question": "질문?", "A": "가", "B": "나", "C": "다", "D": "라", "E": "마", "answer": "F"}]
    evalset = eval_items.read_items_file(write_lines(tmp_path / "train.jsonl", rows))
    assert [item["id"] for item in evalset.items] == ["r1"]
    assert evalset.items[0]["options"]["D"] == "라" and evalset.items[0]["answer"] == "D"
    assert len(evalset.rejects) == 1 and evalset.rejects[0].line == 2


def test_kmmlu_rows_use_their_own_answer_convention(tmp_path):
    raw = tmp_path / "raw"
    for subject in ("Health", "Biology", "Psychology"):
        target = raw / "by_source" / "kmmlu" / subject
        target.mkdir(parents=True)
        shutil.copy(KMMLU_SAMPLE / subject / "test.jsonl", target / "test.jsonl")
    bad = raw / "by_source" / "kmmlu" / "Health" / "test.jsonl"
    with bad.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"question": "다섯 번째?", "A": "a", "B": "b", "C": "c", "D": "d", "answer": 5,
                                 "Category": "Health", "Human Accuracy": 0.5}, ensure_ascii=False) + "\n")
    evalset = eval_items.read_kmmlu(raw_dir=raw)
    assert len(evalset.items) == 120 and len(evalset.rejects) == 1
    assert "KMMLU answers are 1-4" in evalset.rejects[0].reason
    assert all(set(item["options"]) == set("ABCD") and item["answer"] in "ABCD" for item in evalset.items)
    first = json.loads((KMMLU_SAMPLE / "Health" / "test.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert evalset.items[0]["answer"] == "ABCD"[first["answer"] - 1]
    assert eval_items.normalise_kmmlu_row({**first, "answer": 4}, "Health", "test", 0)["answer"] == "D"


def test_seeded_subset_is_stable_nested_and_order_free(sample_items):
    a = eval_items.select_eval_subset(sample_items, 10, seed=1)
    assert [i["id"] for i in a] == [i["id"] for i in eval_items.select_eval_subset(list(reversed(sample_items)), 10, 1)[::-1]]
    assert {i["id"] for i in eval_items.select_eval_subset(sample_items, 5, 1)} <= {i["id"] for i in a}
    assert [i["id"] for i in a] != [i["id"] for i in eval_items.select_eval_subset(sample_items, 10, seed=2)]
    assert eval_items.select_eval_subset(sample_items, None) == sample_items


def test_set_names_and_dev_split(tmp_path, sample_items):
    atomic_write_jsonl(tmp_path / "official_test.jsonl", sample_items)
    assert len(eval_items.load_eval_items("test", sets_dir=tmp_path)) == len(sample_items)
    assert len(eval_items.load_eval_items("test", n=5, sets_dir=tmp_path)) == 5
    with pytest.raises(ev.DataError, match="extract_kormedmcqa_test"):
        eval_items.load_eval_items("steer", sets_dir=tmp_path)
    dev = eval_items.read_kormedmcqa_split("dev", raw_dir=KORMEDMCQA_SAMPLE)
    assert {item["config"] for item in dev.items} == {"doctor", "nurse", "pharm", "dentist"}
    assert all(item["split"] == "dev" for item in dev.items) and len(dev.files) == 4


def test_lm_eval_prompt_is_the_harness_template(tiny_tokenizer):
    item = good_item()
    text = mcq_prompts.render_mcq_prompt(tiny_tokenizer, item, "lm_eval")
    assert text == ("질문 0: 다음 중 옳은 것은?\nA. 협심증\nB. 급성 심근경색\nC. 폐렴\nD. 기흉\nE. A형 간염\n정답\uff1a")
    ids = mcq_prompts.encode_prompt(tiny_tokenizer, text, "lm_eval")
    assert ids[0] == tiny_tokenizer.bos_token_id and ids[1] != tiny_tokenizer.bos_token_id


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------
def test_batched_generation_equals_one_by_one(loaded, sample_items):
    prompts = [mcq_prompts.encode_prompt(loaded.tokenizer, mcq_prompts.render_mcq_prompt(loaded.tokenizer, item, "type3"), "type3")
               for item in sample_items[:4]]
    one = [ev.generate_texts(loaded.model, loaded.tokenizer, [p], 6, batch_size=1)[0]["text"] for p in prompts]
    many = [out["text"] for out in ev.generate_texts(loaded.model, loaded.tokenizer, prompts, 6, batch_size=4)]
    assert one == many


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def test_cli_letter_mode_writes_report_chart_and_table(tiny_models, tmp_path, sample_items, capsys):
    from script import validation_kor_med_test as cli

    sets = tmp_path / "sets"
    sets.mkdir()
    path = bad_rows_file(sets / "guide604.jsonl")
    with path.open("a", encoding="utf-8") as handle:
        for item in sample_items:
            handle.write(json.dumps(item, ensure_ascii=False) + "\n")
    output = tmp_path / "report.json"
    rc = cli.main(["--model", str(tiny_models["tiny"]), "--split", "guide604", "--sets-dir", str(sets),
                   "--eval-samples", "20", "--output", str(output), "--device", "cpu", "--batch-size", "8"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "| overall |" in stdout and "chance 20.0%" in stdout and "| doctor |" in stdout
    report = json.loads(output.read_text(encoding="utf-8"))
    assert output.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["total"] == 20 == len(report["items"])
    assert report["correct"] == sum(row["correct"] for row in report["items"])
    assert report["accuracy"] == pytest.approx(report["correct"] / report["total"])
    assert all(row["correct"] == (row["prediction"] == row["gold"]) for row in report["items"])
    assert report["set"]["skipped"] == 6 and report["set"]["sha256"] and report["set"]["name"] == "guide604"
    assert report["skipped"][0]["where"] == f"{path}:2"
    assert report["prompt"]["template"].startswith("<bos><start_of_turn>user\n" + formats.SYSTEM_PROMPTS["type3_word"])
    assert sum(row["total"] for row in report["per_subject"].values()) == 20
    # the controls: majority letter, a question-blind run of the same model, the paired difference
    block = report["controls"]
    blind = block["question_blind"]
    assert blind["how"] == "swap" and blind["total"] == 20
    assert blind["correct"] == sum(row["control_correct"] for row in report["items"])
    assert all(row["control_question_from"] not in (None, row["id"]) for row in report["items"])
    assert block["vs_question_blind"]["delta_points"] == pytest.approx(
        100 * (report["accuracy"] - blind["accuracy"]), abs=0.01)
    golds = [row["gold"] for row in report["items"]]
    assert block["majority_letter"]["correct"] == max(golds.count(x) for x in set(golds))
    low, high = report["accuracy_ci95"]
    assert low <= report["accuracy"] <= high
    assert "question-blind control (swap" in stdout and "majority letter" in stdout
    again = tmp_path / "again.json"
    cli.main(["--model", str(tiny_models["tiny"]), "--data", str(path), "--eval-samples", "20",
              "--output", str(again), "--device", "cpu"])
    assert [r["id"] for r in json.loads(again.read_text())["items"]] == [r["id"] for r in report["items"]]


def test_cloze_reports_acc_and_length_normalised_acc_norm(loaded, sample_items):
    predictions = ev.score_mcq_cloze_mode(loaded.model, loaded.tokenizer, sample_items[:8])
    for item, prediction in zip(sample_items, predictions):
        scores = prediction["option_logprobs"]
        assert prediction["prediction"] == max(scores, key=scores.get)
        per_char = {x: scores[x] / len(item["options"][x]) for x in scores}
        assert prediction["prediction_norm"] == max(per_char, key=per_char.get)
        assert prediction["correct_norm"] == (prediction["prediction_norm"] == item["answer"])


def test_cli_cloze_blank_control_and_no_control(tiny_models, tmp_path, sample_items):
    from script import validation_kor_med_test as cli

    data = tmp_path / "items.jsonl"
    atomic_write_jsonl(data, sample_items)
    output = tmp_path / "cloze.json"
    assert cli.main(["--model", str(tiny_models["tiny"]), "--data", str(data), "--mode", "cloze", "--control", "blank",
                     "--eval-samples", "6", "--output", str(output), "--device", "cpu"]) == 0
    report = json.loads(output.read_text(encoding="utf-8"))
    assert report["controls"]["question_blind"]["how"] == "blank"
    assert report["acc_norm"] == sum(row["correct_norm"] for row in report["items"]) / 6
    assert report["controls"]["question_blind"]["norm"]["total"] == 6 and "vs_question_blind_norm" in report["controls"]
    none = tmp_path / "none.json"
    assert cli.main(["--model", str(tiny_models["tiny"]), "--data", str(data), "--control", "none",
                     "--eval-samples", "6", "--output", str(none), "--device", "cpu"]) == 0
    plain = json.loads(none.read_text(encoding="utf-8"))
    assert plain["controls"]["question_blind"] is None and plain["controls"]["majority_letter"]["total"] == 6
    assert "control_correct" not in plain["items"][0]


def test_cli_generate_mode_accounts_for_unparseable_outputs(tiny_models, tmp_path, sample_items, capsys):
    from script import validation_kor_med_test as cli

    data = tmp_path / "items.jsonl"
    atomic_write_jsonl(data, sample_items)
    output = tmp_path / "gen.json"
    rc = cli.main(["--model", str(tiny_models["tiny"]), "--data", str(data), "--mode", "generate",
                   "--prompt", "type4", "--max-new-tokens", "12", "--eval-samples", "6",
                   "--output", str(output), "--device", "cpu"])
    assert rc == 0
    report = json.loads(output.read_text(encoding="utf-8"))
    rows = report["items"]
    unparseable = [r for r in rows if r["prediction"] is None]
    wrong_parsed = [r for r in rows if r["prediction"] is not None and not r["correct"]]
    assert report["correct"] + len(wrong_parsed) + len(unparseable) == report["total"] == 6
    assert report["unparseable"] == len(unparseable)
    assert not any(r["correct"] for r in unparseable)
    assert all(isinstance(r["raw_output"], str) for r in rows)
    assert all(r["prediction"] == ev.extract_answer(r["raw_output"], item["options"], "type4")
               for r, item in zip(rows, eval_items.select_eval_subset(sample_items, 6)))
    assert f"unparseable: {len(unparseable)}/6" in capsys.readouterr().out
    assert formats.SYSTEM_PROMPTS["type4_word_reasoning"] in report["prompt"]["template"]


def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys):
    from script import validation_kor_med_test as cli

    assert cli.main(["--data", str(tmp_path / "missing.jsonl")]) == 2
    empty = write_lines(tmp_path / "bad.jsonl", [good_item(1, answer="Z")])
    assert cli.main(["--data", str(empty)]) == 1
    assert "no usable item" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------
def test_adapter_dir_as_model_and_adapter_chain(tiny_models, tmp_path, sample_items):
    from peft import LoraConfig, get_peft_model

    from script.model_loading import load_base_model

    dirs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        base = load_base_model(str(tiny_models["tiny"]), "cpu", torch.float32)
        peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                               init_lora_weights=False))
        peft.save_pretrained(tmp_path / f"adapter{seed}")
        dirs.append(str(tmp_path / f"adapter{seed}"))
    items = sample_items[:6]

    def logprobs(loaded_model):
        preds = ev.score_mcq_letter_mode(loaded_model.model, loaded_model.tokenizer, items)
        return [p["letter_logprobs"] for p in preds]

    via_model = load_model_for_eval(dirs[0], device="cpu")
    via_flag = load_model_for_eval(str(tiny_models["tiny"]), [dirs[0]], device="cpu")
    assert via_model.info["adapters"] == [dirs[0]] and via_model.info["base_model"] == str(tiny_models["tiny"])
    assert logprobs(via_model) == logprobs(via_flag)
    chain = load_model_for_eval(dirs[0], [dirs[1]], device="cpu")
    assert chain.info["merged_adapters"] == [dirs[0]] and chain.info["adapters"] == dirs
    base = load_model_for_eval(str(tiny_models["tiny"]), device="cpu")
    assert logprobs(chain) != logprobs(via_model) != logprobs(base)
