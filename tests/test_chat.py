"""chat.py: one-shot answers on tiny with the type-1 and type-2 (reasoning) prompts, the <R> split,
and an interactive session that keeps and resets its history.

    python -m pytest tests/test_chat.py -q
"""

import json

from script import chat, formats


def run_json(capsys, *args):
    assert chat.main(["--model", "tiny", "--device", "cpu", "--max-new-tokens", "6", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_one_shot_answers_with_the_trained_system_prompts(tiny_models, capsys):
    plain = run_json(capsys, "고혈압의 1차 치료는?")
    assert plain["system"] == formats.SYSTEM_PROMPTS[formats.TYPE1_TEXT]
    assert plain["new_tokens"] > 0 and plain["raw"]
    reasoning = run_json(capsys, "--reasoning", "고혈압의 1차 치료는?")
    assert reasoning["system"] == formats.SYSTEM_PROMPTS[formats.TYPE2_TEXT_REASONING]
    assert set(reasoning) >= {"reasoning", "answer", "raw", "new_tokens"}


def test_reasoning_is_shown_apart_from_the_answer(capsys):
    chat.show({"raw": "<R>혈압을 낮춘다<R/>생활 습관 교정", "reasoning": "혈압을 낮춘다", "answer": "생활 습관 교정"},
              reasoning_mode=True, streamed=False)
    out = capsys.readouterr().out
    assert "[reasoning]\n혈압을 낮춘다" in out and "[answer]\n생활 습관 교정" in out


def test_a_session_keeps_its_history_until_reset(tiny_models, monkeypatch, capsys):
    lines = iter(["첫 질문", "둘째 질문", "/reset", "셋째 질문", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    seen = []

    def fake_reply(model, tokenizer, messages, *args, **kwargs):
        seen.append([m["content"] for m in messages if m["role"] == "user"])
        return {"raw": "답", "reasoning": None, "answer": "답", "new_tokens": 1}

    monkeypatch.setattr(chat, "reply", fake_reply)
    assert chat.main(["--model", "tiny", "--device", "cpu", "--no-stream"]) == 0
    assert seen == [["첫 질문"], ["첫 질문", "둘째 질문"], ["셋째 질문"]]
