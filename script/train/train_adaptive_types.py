"""Adaptive type mixing: each round trains a type drawn in proportion to its recent measured gain.

An alternative to probe-and-focus (train_probe_and_focus.py) on the same engine and steering set.
Where probe-and-focus commits to one type until its gain drops below a threshold and then retires
it for good, this trainer keeps every type in play:

1. warm-up: one round (--round-steps steps) on each type, measuring the change in steering accuracy;
2. then every round draws a type with probability
       p(type) = (1 - exploration) * softmax(ema_gain / temperature) + exploration / n_types
   where ema_gain is an exponential moving average (--ema) of the accuracy changes measured after
   that type's rounds, each a paired comparison on the same steering questions that counts as 0
   unless the sign test puts it beyond noise (p < 0.05; final_report.json states the noise floor); the exploration floor keeps every type sampled now and then, so a type that
   becomes useful later (or stops being useful) is noticed;
3. stop at --target-accuracy, after --max-rounds rounds, or when the best accuracy has not
   improved for --patience rounds.

The draw is seeded by --seed and the round number, so a resumed run draws what the uninterrupted
run would have. Accuracy is measured on the KorMedMCQA steering set (a held-out slice of KorMedMCQA
train), never on a test set; the guide's 604 set and the official test are scored once, on the
final adapter, for the report. The learning rate is constant after a short warmup, and
optimizer state and data positions carry over between rounds (script/round_training.py).
--epochs and --save-steps are not used: rounds are sized in steps and the state is saved after each.
Under accelerate launch / torchrun (DDP) every process trains every round (a step is one global
batch: batch x grad-accum x processes) and scores its share of the steering questions; rank 0's
decisions hold on all ranks and only rank 0 writes. FSDP and DeepSpeed launches are refused.

    python -m script.train.train_adaptive_types --model tiny --round-steps 5 --max-rounds 12
    torchrun --nproc_per_node 4 -m script.train.train_adaptive_types --model medgemma-4b   # 4 GPUs, DDP

Output: model/adaptive_types/<MODEL>/
    final/ (the best adapter by steering accuracy), final_report.json, failed_questions.json,
    best_checkpoint/, round_state/ (for --resume), accuracy_curve.png, training_info.json, README.md
"""

from __future__ import annotations

import logging
import math
import random

from script.cli import run_main
from script.round_training import (
    Scoreboard,
    add_round_options,
    run_type_policy,
)
from script.training_utils import build_arg_parser

logger = logging.getLogger(__name__)

STAGE = "adaptive_types"


def type_probabilities(ema: dict[str, float], temperature: float, exploration: float) -> dict[str, float]:
    """Softmax of the EMA gains at ``temperature``, mixed with a uniform floor of weight ``exploration``."""
    top = max(ema.values())
    weights = {t: math.exp((g - top) / temperature) for t, g in ema.items()}  # shifted: no overflow
    total = sum(weights.values())
    return {t: (1 - exploration) * w / total + exploration / len(ema) for t, w in weights.items()}


class AdaptivePolicy:
    def __init__(self, types: list[str], board: Scoreboard, seed: int, round_steps: int = 30, max_rounds: int = 40,
                 ema: float = 0.5, temperature: float = 1.0, exploration: float = 0.1, patience: int = 10):
        self.types = list(types)
        self.board = board
        self.seed = seed
        self.round_steps = round_steps
        self.max_rounds = max_rounds
        self.ema_weight = ema
        self.temperature = temperature
        self.exploration = exploration
        self.patience = patience
        self.rounds = 0
        self.stop_reason = ""
        self.ema = {t: 0.0 for t in self.types}
        self.type_results = {t: {"total_steps": 0, "improvements": [], "beyond_noise": [], "rounds": 0}
                             for t in self.types}
        self.choices: list[dict] = []

    def planned_steps(self) -> int:
        return self.max_rounds * self.round_steps

    @property
    def finished(self) -> bool:
        return bool(self.stop_reason)

    def next_type(self) -> tuple[str, dict[str, float]]:
        probabilities = type_probabilities(self.ema, self.temperature, self.exploration)
        if self.rounds < len(self.types):  # warm-up: measure every type once, in order
            return self.types[self.rounds], probabilities
        rng = random.Random(f"{self.seed}:adaptive:{self.rounds}")
        return rng.choices(self.types, weights=[probabilities[t] for t in self.types])[0], probabilities

    def step(self, engine, evaluate) -> None:
        if not self.board.history:
            self.board.record(engine, evaluate(engine.model), round=0, type=None)
            if self.board.reached:
                self.stop_reason = f"target {self.board.target:g}% reached before training"
            return
        type_name, probabilities = self.next_type()
        result = engine.train_steps(type_name, self.round_steps)
        if result is None:
            self.stop_reason = "step budget (--max-steps) spent"
            return
        before = self.board.last
        self.rounds += 1
        entry = self.board.record(engine, evaluate(engine.model), round=self.rounds, type=type_name)
        gain = round(entry["accuracy"] - before, 4)
        entry["improvement"] = gain
        beyond = bool((entry.get("vs_previous") or {"beyond_noise": True})["beyond_noise"])
        # a change inside the steering set's noise is no change: it moves the EMA towards 0
        self.ema[type_name] = self.ema_weight * (gain if beyond else 0.0) + (1 - self.ema_weight) * self.ema[type_name]
        results = self.type_results[type_name]
        results["total_steps"] += result["steps"]
        results["rounds"] += 1
        results["improvements"].append(gain)
        results.setdefault("beyond_noise", []).append(beyond)
        self.choices.append({"round": self.rounds, "type": type_name,
                             "probabilities": {t: round(p, 4) for t, p in probabilities.items()}})
        since_best = self.rounds - (self.board.best.get("round") or 0)
        if self.board.reached:
            self.stop_reason = f"target {self.board.target:g}% reached"
        elif self.rounds >= self.max_rounds:
            self.stop_reason = f"--max-rounds {self.max_rounds} done"
        elif self.patience > 0 and since_best >= self.patience:
            self.stop_reason = f"no better accuracy for {self.patience} rounds (--patience)"

    def state_dict(self) -> dict:
        return {"rounds": self.rounds, "stop_reason": self.stop_reason, "ema": self.ema,
                "type_results": self.type_results, "choices": self.choices, "board": self.board.to_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.rounds, self.stop_reason, self.ema = state["rounds"], state["stop_reason"], state["ema"]
        self.type_results, self.choices = state["type_results"], state["choices"]
        self.board.load(state["board"])

    def report(self) -> dict:
        return {
            **self.board.outcome(),
            "stop_reason": self.stop_reason,
            "type_results": {t: {**r, "ema_gain": round(self.ema[t], 4)} for t, r in self.type_results.items()},
            "final_probabilities": {t: round(p, 4) for t, p in
                                    type_probabilities(self.ema, self.temperature, self.exploration).items()},
            "choices": self.choices,
            **self.board.ranking(self.type_results),
        }


def build_parser():
    parser = build_arg_parser(__doc__, epochs=1)
    g = parser.add_argument_group("adaptive type sampling")
    g.add_argument("--round-steps", type=int, default=30, help="optimizer steps per round (default: %(default)s)")
    g.add_argument("--max-rounds", type=int, default=40, help="most rounds (default: %(default)s)")
    g.add_argument("--ema", type=float, default=0.5,
                   help="weight of the newest gain in a type's moving average, 0-1 (default: %(default)s)")
    g.add_argument("--temperature", type=float, default=1.0,
                   help="softmax temperature in accuracy points; higher = more even sampling (default: %(default)s)")
    g.add_argument("--exploration", type=float, default=0.1,
                   help="share of the probability spread evenly over all types, 0-1 (default: %(default)s)")
    g.add_argument("--patience", type=int, default=10,
                   help="stop after this many rounds without a better accuracy; 0 = never (default: %(default)s)")
    g.add_argument("--target-accuracy", "--target", dest="target_accuracy", type=float, default=90.0,
                   help="target KorMedMCQA steering accuracy in percent (default: %(default)s)")
    return add_round_options(parser)


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.round_steps < 1 or args.max_rounds < 1 or args.temperature <= 0:
        parser.error("--round-steps and --max-rounds must be >= 1 and --temperature > 0")
    if not 0 < args.ema <= 1 or not 0 <= args.exploration <= 1:
        parser.error("--ema must be in (0, 1] and --exploration in [0, 1]")
    return run_type_policy(
        args, STAGE, "train_adaptive_types",
        lambda types, board, run: AdaptivePolicy(types, board, run.seed, args.round_steps, args.max_rounds,
                                                 args.ema, args.temperature, args.exploration, args.patience),
        warmup_steps_per_type=args.round_steps,
        parameters=("round_steps", "max_rounds", "ema", "temperature", "exploration", "patience",
                    "target_accuracy", "eval_samples"),
        title="adaptive types")


if __name__ == "__main__":
    run_main(main)
