"""Probe-and-focus training: find the type that moves KorMedMCQA most, train it until it stops helping, rotate.

The guide's "Probe-and-Focus Training", on one LoRA model:

1. PROBE   --probe-steps steps on each type in turn; the improvement of each is the change in
           steering accuracy it caused;
2. FOCUS   the type with the highest mean improvement is trained --focus-steps at a time while
           each focus round still improves accuracy by at least --min-improvement points (the
           first focus round always runs: a probe is short and noisy), at most --max-focus-rounds
           rounds; then the type is exhausted;
3. ROTATE  to the next best type that is not exhausted;
4. STOP    when the steering accuracy reaches --target-accuracy or every type is exhausted.

Every improvement is a paired comparison on the same steering questions: a change that the sign
test on the questions that changed does not put beyond noise (p >= 0.05) counts as 0, both in
the ranking and in the focus rule, and final_report.json states the steering set's noise floor
(``noise_floor``: the 95 % half-width of one accuracy, the smallest detectable paired gain) and
whether the ranking is a finding (``ranking_note``). Accuracy is measured on --eval-samples
questions of the KorMedMCQA steering set (default: all of them; a held-out slice of KorMedMCQA
train), never on a test set; the guide's 604 set and the official test are
scored once, on the final adapter, for the report. Optimizer, LR schedule and each type's data
position carry over from round to round (script/round_training.py); the learning rate is constant
after a short warmup, so improvements measured early and late are comparable. --resume continues
after a kill from the last finished round. --epochs and --save-steps are not used: rounds are
sized in steps and the state is saved after each.
Under accelerate launch / torchrun (DDP) every process trains every round (a step is one global
batch: batch x grad-accum x processes) and scores its share of the steering questions; rank 0's
decisions hold on all ranks and only rank 0 writes. FSDP and DeepSpeed launches are refused.

    python -m script.train.train_probe_and_focus --model tiny --probe-steps 5 --focus-steps 5
    bash script/run_probe_focus.sh --model medgemma-27b --target-accuracy 90 --device cuda:0
    torchrun --nproc_per_node 4 -m script.train.train_probe_and_focus --model medgemma-4b   # 4 GPUs, DDP

Output: model/probe_focus_training/<MODEL>/
    final/                 the adapter with the best steering accuracy
    final_report.json      initial/final accuracy, type_results, recommendations, persistent failures
    failed_questions.json  the 10 steering questions failed most often
    best_checkpoint/, round_state/ (for --resume), accuracy_curve.png, training_info.json, README.md
"""

from __future__ import annotations

import logging

from script.cli import run_main
from script.round_training import (
    Scoreboard,
    add_round_options,
    counted,
    run_type_policy,
)
from script.training_utils import build_arg_parser

logger = logging.getLogger(__name__)

STAGE = "probe_focus_training"


class ProbeFocusPolicy:
    """The probe -> focus -> rotate state machine; one ``step`` = one evaluation (and its round)."""

    def __init__(self, types: list[str], board: Scoreboard, probe_steps: int = 30, focus_steps: int = 50,
                 min_improvement: float = 1.0, max_focus_rounds: int = 10):
        self.types = list(types)
        self.board = board
        self.probe_steps = probe_steps
        self.focus_steps = focus_steps
        self.min_improvement = min_improvement
        self.max_focus_rounds = max_focus_rounds
        self.phase = "initial"  # initial -> probe -> focus -> done
        self.probe_index = 0
        self.focus_type: str | None = None
        self.focus_rounds = 0
        self.stop_reason = ""
        self.type_results = {t: {"total_steps": 0, "improvements": [], "beyond_noise": [], "is_exhausted": False,
                                 "focus_rounds": 0} for t in self.types}

    def planned_steps(self) -> int:
        return len(self.types) * (self.probe_steps + self.max_focus_rounds * self.focus_steps)

    @property
    def finished(self) -> bool:
        return self.phase == "done"

    def _stop(self, reason: str) -> None:
        self.phase, self.stop_reason, self.focus_type = "done", reason, None

    def mean_counted(self, type_name: str) -> float:
        results = self.type_results[type_name]
        return mean(counted(results["improvements"], results.get("beyond_noise")))

    def best_type(self) -> str | None:
        """The type not yet exhausted with the highest mean counted improvement (changes inside the
        steering set's noise count as 0; ties: the earlier type)."""
        candidates = [t for t in self.types if not self.type_results[t]["is_exhausted"]]
        if not candidates:
            return None
        return max(candidates, key=lambda t: (self.mean_counted(t), -self.types.index(t)))

    def _train_and_measure(self, engine, evaluate, type_name: str, n_steps: int, phase: str) -> float | None:
        result = engine.train_steps(type_name, n_steps)
        if result is None:
            self._stop("step budget (--max-steps) spent")
            return None
        before = self.board.last
        entry = self.board.record(engine, evaluate(engine.model), phase=phase, type=type_name)
        improvement = round(entry["accuracy"] - before, 4)
        entry["improvement"] = improvement
        beyond = bool((entry.get("vs_previous") or {"beyond_noise": True})["beyond_noise"])
        results = self.type_results[type_name]
        results["total_steps"] += result["steps"]
        results["improvements"].append(improvement)
        results.setdefault("beyond_noise", []).append(beyond)
        if self.board.reached:
            self._stop(f"target {self.board.target:g}% reached")
        return improvement if beyond else 0.0

    def step(self, engine, evaluate) -> None:
        if self.phase == "initial":
            self.board.record(engine, evaluate(engine.model), phase="initial", type=None)
            self.phase = "probe"
            if self.board.reached:
                self._stop(f"target {self.board.target:g}% reached before training")
            return
        if self.phase == "probe":
            type_name = self.types[self.probe_index]
            self.probe_index += 1
            if self._train_and_measure(engine, evaluate, type_name, self.probe_steps, "probe") is not None \
                    and self.probe_index == len(self.types) and self.phase == "probe":
                self.phase = "focus"
            return
        if self.focus_type is None:
            self.focus_type, self.focus_rounds = self.best_type(), 0
            if self.focus_type is None:
                self._stop("all types exhausted")
                return
            logger.info("focus on %s (mean counted improvement %.2f points)", self.focus_type,
                        self.mean_counted(self.focus_type))
        type_name = self.focus_type
        improvement = self._train_and_measure(engine, evaluate, type_name, self.focus_steps, "focus")
        if improvement is None:
            return
        self.focus_rounds += 1
        self.type_results[type_name]["focus_rounds"] = self.focus_rounds
        if self.phase == "focus" and (improvement < self.min_improvement or self.focus_rounds >= self.max_focus_rounds):
            self.type_results[type_name]["is_exhausted"] = True
            logger.info("%s exhausted (last improvement %.2f, %d focus rounds); rotating", type_name, improvement,
                        self.focus_rounds)
            self.focus_type = None

    def state_dict(self) -> dict:
        return {"phase": self.phase, "probe_index": self.probe_index, "focus_type": self.focus_type,
                "focus_rounds": self.focus_rounds, "stop_reason": self.stop_reason, "type_results": self.type_results,
                "board": self.board.to_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.phase, self.probe_index = state["phase"], state["probe_index"]
        self.focus_type, self.focus_rounds = state["focus_type"], state["focus_rounds"]
        self.stop_reason, self.type_results = state["stop_reason"], state["type_results"]
        self.board.load(state["board"])

    def report(self) -> dict:
        """The guide's final_report.json fields (test-set scores and run details are added by main)."""
        return {
            **self.board.outcome(),
            "stop_reason": self.stop_reason,
            "type_results": self.type_results,
            **self.board.ranking(self.type_results),
        }


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("-inf")


def build_parser():
    parser = build_arg_parser(__doc__, epochs=1)
    g = parser.add_argument_group("probe and focus")
    g.add_argument("--probe-steps", type=int, default=30, help="steps for probing each type (default: %(default)s)")
    g.add_argument("--focus-steps", type=int, default=50, help="steps per focus round (default: %(default)s)")
    g.add_argument("--min-improvement", type=float, default=1.0,
                   help="min improvement in accuracy points to keep focusing on a type (default: %(default)s)")
    g.add_argument("--target-accuracy", "--target", dest="target_accuracy", type=float, default=90.0,
                   help="target KorMedMCQA steering accuracy in percent (default: %(default)s)")
    g.add_argument("--max-focus-rounds", type=int, default=10,
                   help="max focus rounds per type (default: %(default)s)")
    add_round_options(parser)
    # The guide's table says 200 steering questions; the whole steering set is the default here, since
    # a 200-question accuracy is +-7 points (95 %) and most probe differences would be noise.
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.probe_steps, args.focus_steps, args.max_focus_rounds) < 1:
        parser.error("--probe-steps, --focus-steps and --max-focus-rounds must be >= 1")
    return run_type_policy(
        args, STAGE, "train_probe_and_focus",
        lambda types, board, run: ProbeFocusPolicy(types, board, args.probe_steps, args.focus_steps,
                                                   args.min_improvement, args.max_focus_rounds),
        warmup_steps_per_type=args.probe_steps,
        parameters=("probe_steps", "focus_steps", "min_improvement", "target_accuracy", "max_focus_rounds",
                    "eval_samples"),
        title="probe and focus")


if __name__ == "__main__":
    run_main(main)
