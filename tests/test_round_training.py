"""Multi-round training: the round engine, loop-until-target, probe-and-focus and adaptive policies.

    OMP_NUM_THREADS=1 python -m pytest tests/test_round_training.py -q

Policy logic runs against a fake engine and a scripted evaluator (no model); the engine and the
three trainers run on the tiny model with hand-made records and steering sets in tmp_path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from script import formats
from script.data_io import atomic_write_jsonl
from script.round_training import FailureTracker, RoundTrainer, Scoreboard, drive, rank_types
from script.steering import load_steering_set
from script.train.train_adaptive_types import AdaptivePolicy, type_probabilities
from script.train.train_loop_until_90 import LoopPolicy
from script.train.train_probe_and_focus import ProbeFocusPolicy
from script.training_config import get_model_config
from script.training_utils import attach_lora, build_arg_parser, load_model_and_tokenizer, set_seed, start_run

T1, T2, T3, T4 = formats.TRAINING_TYPES
OPTIONS = {"A": "폐렴", "B": "천식", "C": "위염", "D": "빈혈", "E": "통풍"}


# ---------------------------------------------------------------------------
# Fixtures: records, steering and test sets
# ---------------------------------------------------------------------------
def mcq_question(i: int, place: str) -> str:
    return f"{place} 환자가 {i}일째 증상을 호소한다. 가장 가능한 진단은?"


def type1_record(i: int) -> dict:
    return {"id": f"t1-{i}", "source": "fixture", "type": T1,
            "messages": formats.type_messages(T1, f"질문 {i}: 당뇨병이란?", "당뇨병은 혈당 조절이 안 되는 병입니다.")}


def type3_record(i: int, gold: str) -> dict:
    question = mcq_question(i, "외래")
    return {"id": f"t3-{i}", "source": "fixture", "type": T3, "question": question, "options": OPTIONS,
            "answer": gold, "messages": formats.type_messages(T3, formats.format_mcq(question, OPTIONS), gold)}


def set_item(i: int, place: str, answer: str) -> dict:
    return {"id": f"{place}-{i}", "config": "doctor", "split": "train", "question": mcq_question(i, place),
            "options": OPTIONS, "answer": answer, "meta": {}}


@pytest.fixture(scope="module")
def gold_letter(tiny_models) -> str:
    """A letter the untrained tiny base never answers on the steering questions (D when it can be),
    so reaching the target means the run learned it -- whatever the base's own letter bias is."""
    from script.evaluation import score_mcq_letter_mode
    from script.model_loading import load_model_for_eval

    loaded = load_model_for_eval("tiny", device="cpu")
    predictions = score_mcq_letter_mode(loaded.model, loaded.tokenizer, [set_item(i, "응급실", "A") for i in range(8)])
    answered = {p["prediction"] for p in predictions}
    return next(letter for letter in "DCEBA" if letter not in answered)


@pytest.fixture(scope="module")
def fixture_dirs(tmp_path_factory, gold_letter) -> dict[str, Path]:
    """data/<type>/train.jsonl for types 1 and 3 (2 and 4 missing: skipped), and the set files.

    The steering set's gold answers agree with type 3; the guide604 set's do not, so a run that
    steered on it could not stop where the tests expect.
    """
    root = tmp_path_factory.mktemp("rounds")
    atomic_write_jsonl(root / "data" / T1 / "train.jsonl", [type1_record(i) for i in range(16)])
    atomic_write_jsonl(root / "data" / T3 / "train.jsonl", [type3_record(i, gold_letter) for i in range(24)])
    atomic_write_jsonl(root / "sets" / "steer.jsonl", [set_item(i, "응급실", gold_letter) for i in range(8)])
    other = "B" if gold_letter != "B" else "A"
    atomic_write_jsonl(root / "sets" / "guide604.jsonl", [set_item(i, "병동", other) for i in range(6)])
    return {"data": root / "data", "sets": root / "sets"}


def make_run(tmp_path, *flags):
    args = build_arg_parser(None).parse_args(["--model", "tiny", "--output", str(tmp_path / "out"),
                                              "--batch-size", "4", "--max-length", "96", *flags])
    return start_run(args, stage="test_rounds", script="test")


def tiny_engine(run, records, total_steps=40) -> RoundTrainer:
    set_seed(run.seed)  # the same LoRA initialisation for every engine of a test
    model, tokenizer = load_model_and_tokenizer(run)
    return RoundTrainer(run, attach_lora(model, run), tokenizer, records, total_steps)


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


# ---------------------------------------------------------------------------
# A fake engine and a scripted evaluator for the policy logic
# ---------------------------------------------------------------------------
class FakeEngine:
    """Counts steps; ``model`` is the engine itself so the evaluator can see what was trained."""

    def __init__(self, budget: int = 10_000):
        self.global_step = 0
        self.budget = budget
        self.calls: list[tuple[str, int]] = []
        self.saved: list[Path] = []
        self.model = self

    def train_steps(self, type_name: str, n_steps: int) -> dict | None:
        n_steps = min(n_steps, self.budget - self.global_step)
        if n_steps <= 0:
            return None
        self.calls.append((type_name, n_steps))
        self.global_step += n_steps
        return {"steps": n_steps}

    def save_adapter(self, directory: Path) -> Path:
        self.saved.append(Path(directory))
        return Path(directory)

    def log_scalar(self, tag: str, value: float) -> None:
        pass


def scripted_evaluator(gains: dict[str, list[float]], base: float = 20.0, n_questions: int = 2000):
    """Accuracy = base + the k-th gain of a type for its k-th round (0 once the list runs out).

    Question i is answered correctly iff i < accuracy% of the questions, so high ids fail most. With
    the default 2,000 questions a change of 1 point (20 questions, all one way) is beyond the noise
    (sign test p < 0.05) and one of 0.5 points (10) too; with 15 questions nothing is.
    """

    def evaluate(engine) -> dict:
        seen: dict[str, int] = {}
        accuracy = base
        for type_name, _ in engine.calls:
            k = seen.get(type_name, 0)
            accuracy += gains.get(type_name, [])[k] if k < len(gains.get(type_name, [])) else 0.0
            seen[type_name] = k + 1
        n_correct = int(accuracy / 100 * n_questions)
        predictions = [{"id": i, "gold": "A", "prediction": "A" if i < n_correct else "C", "correct": i < n_correct,
                        "question": f"문항 {i}: " + "가" * 100} for i in range(n_questions)]
        return {"accuracy": round(accuracy, 4), "correct": n_correct, "total": n_questions, "predictions": predictions}

    return evaluate


GAINS = {T1: [2.0, 1.5, 0.5], T2: [-1.0], T3: [5.0, 4.0, 3.0, 0.5], T4: [0.5]}


def probe_focus(target=99.0, budget=10_000, max_focus_rounds=10, gains=GAINS, n_questions=2000):
    engine = FakeEngine(budget)
    policy = ProbeFocusPolicy(list(formats.TRAINING_TYPES), Scoreboard(target, None), probe_steps=3, focus_steps=5,
                              min_improvement=1.0, max_focus_rounds=max_focus_rounds)
    drive(engine, policy, scripted_evaluator(gains, n_questions=n_questions), None)
    return engine, policy


# ---------------------------------------------------------------------------
# Probe and focus (fake engine)
# ---------------------------------------------------------------------------
def test_probe_each_type_then_focus_on_the_best_until_exhausted_then_rotate():
    engine, policy = probe_focus()
    # probe in type order, then T3 (mean 5) until a round gains < 1, then T1, then T4 (0.5) before T2 (-1)
    assert engine.calls == [(T1, 3), (T2, 3), (T3, 3), (T4, 3), (T3, 5), (T3, 5), (T3, 5), (T1, 5), (T1, 5),
                            (T4, 5), (T2, 5)]
    assert policy.stop_reason == "all types exhausted"
    results = policy.type_results
    assert all(r["is_exhausted"] for r in results.values())
    assert results[T3]["improvements"] == [5.0, 4.0, 3.0, 0.5] and results[T3]["total_steps"] == 3 + 3 * 5
    assert results[T3]["focus_rounds"] == 3 and results[T2]["improvements"] == [-1.0, 0.0]
    ranking = rank_types(results)
    assert [(r["rank"], r["type"]) for r in ranking] == [(1, T3), (2, T1), (3, T4), (4, T2)]
    assert ranking[0]["avg_improvement"] == pytest.approx((5 + 4 + 3 + 0.5) / 4)
    assert all(r["distinguishable"] for r in ranking[:3])
    assert "ranked by the changes beyond the noise (2000 steering questions" in policy.report()["ranking_note"]


def test_changes_inside_the_steering_sets_noise_count_as_no_change():
    """15 questions: no round moves more than a question or two, so no gain is beyond the noise --
    the types are focused on in probe order, each round counted as 0, and the report says so."""
    engine, policy = probe_focus(n_questions=15)
    assert engine.calls == [(T1, 3), (T2, 3), (T3, 3), (T4, 3), (T1, 5), (T2, 5), (T3, 5), (T4, 5)]
    history = policy.board.history
    assert all(not entry["vs_previous"]["beyond_noise"] for entry in history[1:])
    assert history[3]["improvement"] == 5.0 and history[3]["vs_previous"]["counted_points"] == 0.0
    report = policy.report()
    assert report["noise_floor"]["items"] == 15 and report["noise_floor"]["ci95_half_width_points"] > 15
    assert not any(r["distinguishable"] for r in report["recommendations"])
    assert "the order of the types is not a finding" in report["ranking_note"]


@pytest.mark.parametrize("target, calls, reason", [
    (25.0, [(T1, 3), (T2, 3), (T3, 3)], "target 25% reached"),  # during the probe: T4 is never probed
    (30.0, [(T1, 3), (T2, 3), (T3, 3), (T4, 3), (T3, 5)], "target 30% reached"),  # 26.5 + 4 in the first focus
    (15.0, [], "target 15% reached before training"),
])
def test_probe_focus_stops_when_the_target_is_reached(target, calls, reason):
    engine, policy = probe_focus(target=target)
    assert engine.calls == calls
    assert policy.stop_reason == reason and policy.board.reached


def test_max_focus_rounds_exhausts_a_type_that_still_improves_and_budget_stops_the_run():
    engine, policy = probe_focus(max_focus_rounds=2, gains={T1: [1.0] * 20, T2: [], T3: [5.0] * 20, T4: []})
    assert engine.calls[4:7] == [(T3, 5), (T3, 5), (T1, 5)]  # two focus rounds on T3 despite +5 each
    assert policy.type_results[T3]["is_exhausted"] and policy.type_results[T3]["focus_rounds"] == 2

    engine, policy = probe_focus(budget=14)
    assert sum(n for _, n in engine.calls) == 14 and engine.calls[-1] == (T3, 2)
    assert policy.stop_reason == "step budget (--max-steps) spent"


def test_failed_questions_are_the_ten_most_persistent_and_report_has_the_guide_fields():
    engine, policy = probe_focus(n_questions=15)
    report = policy.report()
    for key in ("initial_accuracy", "final_best_accuracy", "type_results", "recommendations",
                "persistent_failures", "target_reached", "stop_reason", "history"):
        assert key in report, key
    assert report["initial_accuracy"] == 20.0
    # the path of test_changes_inside_the_steering_sets_noise_count_as_no_change: probes, then T1's and T3's 2nd gains
    assert report["final_best_accuracy"] == pytest.approx(20 + 2 - 1 + 5 + 0.5 + 1.5 + 4)
    failures = report["persistent_failures"]
    assert len(failures) == 10
    evaluations = len(policy.board.history)
    # accuracy stays at or below 32% (at most 4 of 15 right), so questions 4..14 fail at every
    # evaluation; 0..3 were answered right at least once and rank below them
    assert {f["question_id"] for f in failures} < set(range(4, 15))
    assert all(f["fail_count"] == evaluations == 9 for f in failures)
    assert policy.board.failures.entries["3"]["fail_count"] < evaluations
    first = failures[0]
    assert set(first) == {"question_id", "fail_count", "expected", "last_predicted", "question_preview",
                          "last_failed_step", "evaluations"}
    assert first["expected"] == "A" and first["last_predicted"] == "C"
    assert first["last_failed_step"] == engine.global_step
    assert first["question_preview"].endswith("...") and len(first["question_preview"]) == 83


def test_failure_tracker_orders_ties_by_recency_and_round_trips():
    tracker = FailureTracker()
    tracker.update([{"id": "a", "gold": "A", "prediction": "B", "correct": False, "question": "q"},
                    {"id": "b", "gold": "A", "prediction": "B", "correct": False, "question": "q"}], step=10)
    tracker.update([{"id": "b", "gold": "A", "prediction": "C", "correct": False, "question": "q"},
                    {"id": "a", "gold": "A", "prediction": "A", "correct": True, "question": "q"},
                    {"id": "c", "gold": "E", "prediction": "D", "correct": False, "question": "q"}], step=20)
    top = tracker.top()
    assert [(f["question_id"], f["fail_count"]) for f in top] == [("b", 2), ("c", 1), ("a", 1)]
    assert top[0]["last_predicted"] == "C" and top[0]["last_failed_step"] == 20 and top[0]["evaluations"] == 2
    assert FailureTracker.from_dict(json.loads(json.dumps(tracker.to_dict()))).top() == top


# ---------------------------------------------------------------------------
# Loop and adaptive policies (fake engine)
# ---------------------------------------------------------------------------
def test_loop_policy_trains_every_type_per_loop_and_stops_at_target_or_max_loops(tmp_path):
    gains = {T1: [1.0] * 10, T3: [4.5] * 20}  # per round: T3's two rounds a loop add 9
    engine = FakeEngine()
    board = Scoreboard(45.0, tmp_path / "best")
    policy = LoopPolicy({T1: 2, T3: 3}, max_loops=5, board=board, output_dir=tmp_path, chunk_steps=2)
    drive(engine, policy, scripted_evaluator(gains), None)
    # rounds of at most 2 steps (the resume granularity); accuracy 20 -> 30 -> 40 -> 50: stop after loop 3
    assert engine.calls == [(T1, 2), (T3, 2), (T3, 1)] * 3
    assert [h["loop"] for h in board.history] == [0, 1, 2, 3] and policy.loops_done == 3
    assert policy.stop_reason == "target 45% reached after loop 3"
    assert tmp_path / "loop_3" / "after_type3" in engine.saved and tmp_path / "loop_1" / "after_type1" in engine.saved
    assert engine.saved.count(tmp_path / "best") == 4  # every evaluation was a new best

    engine = FakeEngine()
    policy = LoopPolicy({T1: 2, T3: 3}, max_loops=2, board=Scoreboard(90.0, None), output_dir=tmp_path)
    drive(engine, policy, scripted_evaluator(gains), None)
    assert engine.calls == [(T1, 2), (T3, 3)] * 2 and policy.loops_done == 2
    assert policy.stop_reason == "--max-loops 2 done without reaching 90%"


def test_loop_stops_after_patience_loops_without_a_change_beyond_the_noise(tmp_path):
    engine = FakeEngine()
    board = Scoreboard(90.0, None)
    policy = LoopPolicy({T1: 2}, max_loops=10, board=board, output_dir=tmp_path, patience=2)
    drive(engine, policy, scripted_evaluator({T1: [5.0, 0.1, 0.0, 4.0]}), None)  # +0.1 = 2 of 2000: noise
    assert policy.loops_done == 3 and len(engine.calls) == 3
    assert policy.stop_reason == "2 loops in a row without a change beyond the steering set's noise (--patience 2)"
    assert [e["vs_previous"]["beyond_noise"] for e in board.history[1:]] == [True, False, False]
    assert board.history[-1]["vs_initial"]["beyond_noise"] and board.noise_floor()["items"] == 2000


def test_adaptive_probabilities_favour_recent_gain_with_an_exploration_floor():
    p = type_probabilities({T1: 0.0, T2: 3.0, T3: -2.0}, temperature=1.0, exploration=0.3)
    assert sum(p.values()) == pytest.approx(1.0)
    assert p[T2] > p[T1] > p[T3] >= 0.3 / 3
    assert type_probabilities({T1: 1.0, T2: 1.0}, 1.0, 0.0) == {T1: 0.5, T2: 0.5}

    def run(seed):
        engine = FakeEngine()
        policy = AdaptivePolicy([T1, T3], Scoreboard(99.0, None), seed=seed, round_steps=2, max_rounds=12,
                                exploration=0.1, patience=0)
        drive(engine, policy, scripted_evaluator({T1: [-1.0] * 20, T3: [3.0] * 20}), None)
        return engine, policy

    engine, policy = run(seed=7)
    assert engine.calls[:2] == [(T1, 2), (T3, 2)]  # warm-up: each type once, in order
    assert len(engine.calls) == 12 and policy.stop_reason == "--max-rounds 12 done"
    assert [t for t, _ in engine.calls[2:]].count(T3) >= 7  # the gaining type dominates the draws
    assert run(seed=7)[0].calls == engine.calls  # seeded: a rerun (or a resume) draws the same types
    assert policy.report()["recommendations"][0]["type"] == T3


# ---------------------------------------------------------------------------
# Steering set
# ---------------------------------------------------------------------------
def test_steering_on_guide604_is_allowed_but_flagged(fixture_dirs):
    items, info = load_steering_set("steer", 0, 42, fixture_dirs["sets"])
    assert len(items) == 8 and info["set"] == "steer" and "warning" not in info
    items, info = load_steering_set("guide604", 4, 42, fixture_dirs["sets"])
    assert len(items) == 4 and "optimistic" in info["warning"]


# ---------------------------------------------------------------------------
# The engine on tiny
# ---------------------------------------------------------------------------
def test_type_cursor_continues_across_rounds_through_seeded_permutations(tmp_path):
    run = make_run(tmp_path)
    records = {T1: [type1_record(i) for i in range(10)]}
    engine = RoundTrainer(run, None, None, records, total_steps=10)
    first, second = engine.take(T1, 6), engine.take(T1, 6)
    ids = [r["id"] for r in first + second]
    assert sorted(ids[:10]) == sorted(r["id"] for r in records[T1])  # one full pass, nothing repeated
    assert ids[:10] != [r["id"] for r in records[T1]]  # shuffled
    assert engine.cursors[T1] == [1, 2]
    again = RoundTrainer(run, None, None, records, total_steps=10)
    assert [r["id"] for r in again.take(T1, 12)] == ids  # seeded
    second_pass = [r["id"] for r in again.take(T1, 8)]
    assert sorted(ids[10:] + second_pass) == sorted(ids[:10]) and ids[10:] + second_pass != ids[:10]


def test_optimizer_and_schedule_carry_over_between_rounds(tiny_models, tmp_path):
    run = make_run(tmp_path)
    records = {T1: [type1_record(i) for i in range(12)], T3: [type3_record(i, "D") for i in range(12)]}
    engine = tiny_engine(run, records, total_steps=8)
    first = engine.train_steps(T1, 2)
    optimizer, scheduler = engine.optimizer, engine.scheduler
    param = next(p for n, p in engine.model.named_parameters() if "lora_B" in n)
    assert optimizer.state[param]["step"] == 2 and scheduler.last_epoch == 2
    moment = optimizer.state[param]["exp_avg"].clone()
    second = engine.train_steps(T3, 2)
    assert engine.optimizer is optimizer and engine.scheduler is scheduler  # not recreated per round
    assert optimizer.state[param]["step"] == 4 and scheduler.last_epoch == 4  # Adam and warmup/cosine go on
    assert not torch.equal(optimizer.state[param]["exp_avg"], moment)
    # one cosine schedule over the run's 8 steps (1 warmup step), not a fresh warmup per round
    from transformers import get_cosine_schedule_with_warmup

    sgd = torch.optim.SGD([torch.zeros(1)], lr=run.lr)
    reference = get_cosine_schedule_with_warmup(sgd, 1, 8)
    for _ in range(4):
        sgd.step()
        reference.step()
    assert second["learning_rate"] == pytest.approx(reference.get_last_lr()[0])
    assert (first["start_step"], first["end_step"], second["start_step"], second["end_step"]) == (0, 2, 2, 4)
    assert engine.cursors == {T1: [0, 8], T3: [0, 8]}
    third = engine.train_steps(T1, 2)  # 4 records left in the pass, then the next permutation
    assert third["cursor"] == [1, 4] and engine.global_step == 6
    assert engine.train_steps(T1, 100)["steps"] == 2 and engine.train_steps(T1, 1) is None  # total_steps caps


def test_save_and_load_round_then_continue_equals_an_uninterrupted_run(tiny_models, tmp_path):
    run = make_run(tmp_path)
    records = {T1: [type1_record(i) for i in range(12)], T3: [type3_record(i, "D") for i in range(12)]}
    plan = [(T1, 2), (T3, 2), (T1, 2)]

    straight = tiny_engine(run, records)
    for type_name, steps in plan:
        straight.train_steps(type_name, steps)

    interrupted = tiny_engine(run, records)
    for type_name, steps in plan[:2]:
        interrupted.train_steps(type_name, steps)
    interrupted.save_round(tmp_path / "state", {"policy": "state"})
    assert {"optimizer.pt", "scheduler.pt", "state.json", "adapter_model.safetensors"} <= \
        {p.name for p in (tmp_path / "state").iterdir()}

    resumed = tiny_engine(run, records)
    assert resumed.load_round(tmp_path / "state") == {"policy": "state"}
    resumed.train_steps(*plan[2])
    assert resumed.global_step == straight.global_step == 6
    assert resumed.cursors == straight.cursors
    assert [r["records"] for r in resumed.rounds] == [r["records"] for r in straight.rounds]
    param = next(n for n, _ in resumed.model.named_parameters() if "lora_B" in n)
    steps = {e.optimizer.state[dict(e.model.named_parameters())[param]]["step"].item() for e in (straight, resumed)}
    assert steps == {6}
    assert resumed.scheduler.last_epoch == straight.scheduler.last_epoch == 6
    expected, actual = lora_weights(straight.model), lora_weights(resumed.model)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.allclose(actual[name], expected[name], atol=1e-6), name


# ---------------------------------------------------------------------------
# The trainers end to end on tiny
# ---------------------------------------------------------------------------
def loop_flags(fixture_dirs, out: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(fixture_dirs["data"]), "--sets-dir", str(fixture_dirs["sets"]), "--output", str(out),
            "--max-length", "96", "--max-samples", "16", *extra]


def test_loop_until_target_stops_at_loop_1_and_writes_final(tiny_models, fixture_dirs, tmp_path):
    from script.train import train_loop_until_90

    out = tmp_path / "loop"
    # type 3 teaches the letter D, so this run is steered in letter form (tiny's default is cloze)
    info = train_loop_until_90.main(loop_flags(fixture_dirs, out, "--target", "75", "--max-loops", "3",
                                               "--mcq-scoring", "letter"))
    history = json.loads((out / "loop_history.json").read_text(encoding="utf-8"))
    assert history["initial_accuracy"] < 75 <= history["history"][-1]["accuracy"]  # learned, on the steering set
    assert history["stopped_at_loop"] == 1 and history["target_reached"] and info["target"]["met"]
    assert [h["loop"] for h in history["history"]] == [0, 1]
    assert (out / "final" / "adapter_model.safetensors").is_file() and (out / "best_checkpoint").is_dir()
    assert (out / "loop_1" / "after_type1").is_dir() and (out / "loop_1" / "after_type3").is_dir()
    assert not (out / "loop_1" / "after_type2").exists() and not (out / "loop_2").exists()  # type 2 has no data
    assert (out / "loop_history.png").stat().st_size > 0
    # the test sets are scored for the report only: guide604's answers disagree with what was learned
    assert history["test_sets"]["guide604"]["accuracy"] == 0.0 and not history["test_sets"]["guide604"]["steered_on"]
    assert "missing" in history["test_sets"]["official_test"]
    assert history["steering"]["set"] == "steer" and "warning" not in history["steering"]
    assert history["steering"]["scoring"] == "letter" == history["test_sets"]["guide604"]["scoring"]
    assert info["metrics"]["guide604_accuracy"] == 0.0 and info["types"] == [T1, T3]


def test_loop_resumes_after_kill_9_without_training_anything_twice(tiny_models, fixture_dirs, tmp_path):
    """A real SIGKILL in the middle of the second round, then --resume: every round exactly once, in order."""
    from script.train import train_loop_until_90
    from script.training_utils import FAULT_KILL_ENV

    out = tmp_path / "loop"
    flags = loop_flags(fixture_dirs, out, "--target", "101", "--max-loops", "2", "--max-samples", "24")
    env = {**os.environ, FAULT_KILL_ENV: "3", "OMP_NUM_THREADS": "1"}  # type 1 rounds have 2 steps, type 3 rounds 3
    killed = subprocess.run([sys.executable, "-m", "script.train.train_loop_until_90", *flags], env=env,
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, check=False)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    state = json.loads((out / "round_state" / "state.json").read_text(encoding="utf-8"))
    assert state["engine"]["global_step"] == 2 and [r["type"] for r in state["engine"]["rounds"]] == [T1]
    assert state["policy"]["type_index"] == 1 and (out / "round_state" / "optimizer.pt").is_file()

    info = train_loop_until_90.main([*flags, "--resume"])
    assert info["resumed"] and info["metrics"]["global_step"] == 10
    history = json.loads((out / "loop_history.json").read_text(encoding="utf-8"))
    rounds = [(r["type"], r["start_step"], r["end_step"], r["cursor"]) for r in history["rounds"]]
    # the killed type-3 round is trained once, from the committed state; data positions run on
    assert rounds == [(T1, 0, 2, [1, 0]), (T3, 2, 5, [1, 0]), (T1, 5, 7, [2, 0]), (T3, 7, 10, [2, 0])]
    assert [h["loop"] for h in history["history"]] == [0, 1, 2] and history["stopped_at_loop"] == 2
    assert (out / "loop_2" / "after_type3" / "adapter_model.safetensors").is_file()


def test_probe_and_focus_end_to_end_with_guide604_steering_flagged(tiny_models, fixture_dirs, tmp_path):
    from script.train import train_probe_and_focus

    out = tmp_path / "probe"
    info = train_probe_and_focus.main(loop_flags(
        fixture_dirs, out, "--probe-steps", "1", "--focus-steps", "1", "--max-focus-rounds", "1",
        "--target-accuracy", "101", "--steer-on", "guide604", "--report-sets", "guide604"))
    report = json.loads((out / "final_report.json").read_text(encoding="utf-8"))
    assert report["stop_reason"] == "all types exhausted" and report["total_steps"] == 4
    assert [h["phase"] for h in report["history"]] == ["initial", "probe", "probe", "focus", "focus"]
    assert {r["type"] for r in report["recommendations"]} == {T1, T3}
    assert all(r["is_exhausted"] and r["total_steps"] == 2 for r in report["type_results"].values())
    assert "optimistic" in report["steering"]["warning"] and "optimistic" in info["steering"]["warning"]
    # no --mcq-scoring: tiny's registry entry scores in cloze form, steering and report sets alike
    assert report["steering"]["scoring"] == "cloze" == report["test_sets"]["guide604"]["scoring"]
    assert report["test_sets"]["guide604"]["steered_on"] and "warning" in report["test_sets"]["guide604"]
    failed = json.loads((out / "failed_questions.json").read_text(encoding="utf-8"))
    assert failed == report["persistent_failures"] and 0 < len(failed) <= 10
    assert (out / "final" / "adapter_model.safetensors").is_file()
    # constant after one warmup step: the focus rounds train at the same rate as the second probe
    assert [r["learning_rate"] for r in report["rounds"]] == [pytest.approx(get_model_config("tiny").lr)] * 4


def test_adaptive_types_end_to_end(tiny_models, fixture_dirs, tmp_path):
    from script.train import train_adaptive_types

    out = tmp_path / "adaptive"
    train_adaptive_types.main(loop_flags(fixture_dirs, out, "--round-steps", "1", "--max-rounds", "3",
                                         "--target-accuracy", "101", "--report-sets"))
    report = json.loads((out / "final_report.json").read_text(encoding="utf-8"))
    assert report["stop_reason"] == "--max-rounds 3 done" and report["total_steps"] == 3
    assert [c["type"] for c in report["choices"]][:2] == [T1, T3]
    assert report["test_sets"] == {} and (out / "final" / "adapter_config.json").is_file()
    assert (out / "failed_questions.json").is_file()


def test_help_of_every_multi_round_script():
    root = Path(__file__).resolve().parents[1]
    for module in ("train_loop_until_90", "train_probe_and_focus", "train_adaptive_types"):
        result = subprocess.run([sys.executable, "-m", f"script.train.{module}", "--help"], cwd=root,
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0 and "--steer-on" in result.stdout and "--resume" in result.stdout, module
    result = subprocess.run(["bash", "script/run_probe_focus.sh", "--help"], cwd=root, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0
    for flag in ("--probe-steps", "--focus-steps", "--min-improvement", "--target-accuracy", "--max-focus-rounds",
                 "--eval-samples"):
        assert flag in result.stdout, flag
    assert "default: 0" in result.stdout.split("\n  --eval-samples", 1)[1][:300]  # the whole steering set
