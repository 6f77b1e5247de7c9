"""Loop training until the KorMedMCQA target: types 1 -> 4, one epoch each, then evaluate; repeat.

The guide's "Loop Training Until 90% KorMedMCQA". One LoRA model is trained through every type in
turn (--epochs of each per loop, default 1), then scored on the KorMedMCQA steering set (a held-out
slice of KorMedMCQA train, never a test set); the loop stops when the steering accuracy reaches
--target, after --max-loops, or after --patience loops in a row whose accuracy did not change
beyond the steering set's noise (each loop is compared with the one before on the same questions:
a sign test on the questions that changed, p < 0.05 is a change; loop_history.json states the
noise floor under steering.noise_floor). Optimizer, LR schedule and each type's data position carry over
from loop to loop (script/round_training.py). The guide's 604 set and the official test are scored
once, on the final adapter, for the report.

    python -m script.train.train_loop_until_90 --model tiny --max-loops 2
    python script/train/train_loop_until_90.py --model medgemma-27b --target 90
    python -m script.train.train_loop_until_90 --model medgemma-4b --resume     # after a kill
    accelerate launch --config_file configs/accelerate/ddp.yaml -m script.train.train_loop_until_90 --model medgemma-4b

Output: model/loop_training/<MODEL>/
    loop_N/after_typeK/    adapter + tokenizer after each type of loop N (K = the guide's type number)
    best_checkpoint/       the adapter with the highest steering accuracy so far
    final/                 the best adapter at the end (the one that reached the target, when it was reached)
    loop_history.json      accuracy per loop, rounds, stop reason, test-set scores; loop_history.png the curve
    round_state/           what --resume continues from (adapter, optimizer, scheduler, data positions)
    training_info.json, README.md

--save-steps N splits each type's epoch into rounds of at most N steps, which is how often the
resume state is written (default: once per type per loop). --max-steps caps the whole run; the
LR schedule (the type trainers' cosine with 3 % warmup) spans all loops. --eval-samples steering
questions are scored after each loop (default 0 = all of them).

Under accelerate launch / torchrun (DDP) every process trains every round on its share of the
global batch (batch x grad-accum x processes, so an epoch takes that many fewer steps) and scores
its share of the steering questions; rank 0's decisions hold on all ranks and only rank 0 writes.
FSDP and DeepSpeed launches are refused.
"""

from __future__ import annotations

import logging
import math

from script import formats
from script.cli import run_main
from script.data_io import atomic_write_json
from script.launch import global_batch, init_distributed, is_main_process, world_size
from script.round_training import (
    BEST_DIR_NAME,
    STATE_DIR_NAME,
    Scoreboard,
    add_round_options,
    build_engine,
    check_launch,
    drive,
    finish,
    load_type_records,
    make_steering_evaluator,
    plot_accuracy_curve,
    resolve_mcq_scoring,
    resume_or_start,
    steering_summary,
    training_info,
    worker_result,
)
from script.steering import load_steering_set
from script.training_utils import build_arg_parser, start_run

logger = logging.getLogger(__name__)

STAGE = "loop_training"


class LoopPolicy:
    """Loop over the types, ``steps[type]`` steps each (in rounds of at most ``chunk_steps``), then evaluate."""

    def __init__(self, steps: dict[str, int], max_loops: int, board: Scoreboard, output_dir, chunk_steps: int = 0,
                 patience: int = 0):
        self.patience = patience
        self.types = list(steps)
        self.steps = steps
        self.max_loops = max_loops
        self.board = board
        self.output_dir = output_dir
        self.chunk_steps = chunk_steps
        self.loop = 1
        self.type_index = 0
        self.type_steps_done = 0
        self.budget_spent = False

    def planned_steps(self) -> int:
        return self.max_loops * sum(self.steps.values())

    @property
    def loops_done(self) -> int:
        return self.loop - 1

    @property
    def loops_without_change(self) -> int:
        """Loops in a row, counted from the last, whose steering accuracy did not change beyond the
        noise of the steering set (a paired sign test on the same questions, p >= 0.05)."""
        count = 0
        for entry in reversed(self.board.history[1:]):
            if (entry.get("vs_previous") or {}).get("beyond_noise", True):
                break
            count += 1
        return count

    @property
    def stalled(self) -> bool:
        return self.patience > 0 and self.loops_without_change >= self.patience

    @property
    def finished(self) -> bool:
        return bool(self.board.history) and (
            self.board.reached or self.loops_done >= self.max_loops or self.budget_spent or self.stalled)

    @property
    def stop_reason(self) -> str:
        if self.board.reached:
            return f"target {self.board.target:g}% reached after loop {self.board.best['loop']}"
        if self.budget_spent:
            return "step budget (--max-steps) spent"
        if self.stalled:
            return (f"{self.patience} loops in a row without a change beyond the steering set's noise "
                    f"(--patience {self.patience})")
        return f"--max-loops {self.max_loops} done without reaching {self.board.target:g}%"

    def step(self, engine, evaluate) -> None:
        if not self.board.history:  # the untrained starting point, loop 0
            self.board.record(engine, evaluate(engine.model), loop=0)
            return
        type_name = self.types[self.type_index]
        left = self.steps[type_name] - self.type_steps_done
        result = engine.train_steps(type_name, min(left, self.chunk_steps) if self.chunk_steps > 0 else left)
        if result is None:
            self.budget_spent = True
            return
        self.type_steps_done += result["steps"]
        if self.type_steps_done >= self.steps[type_name]:
            k = formats.TRAINING_TYPES.index(type_name) + 1  # the guide's numbering, also when a type is skipped
            engine.save_adapter(self.output_dir / f"loop_{self.loop}" / f"after_type{k}")
            self.type_index, self.type_steps_done = self.type_index + 1, 0
        if self.type_index == len(self.types):
            self.board.record(engine, evaluate(engine.model), loop=self.loop)
            self.loop, self.type_index = self.loop + 1, 0

    def state_dict(self) -> dict:
        return {"loop": self.loop, "type_index": self.type_index, "type_steps_done": self.type_steps_done,
                "budget_spent": self.budget_spent, "board": self.board.to_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.loop, self.type_index = state["loop"], state["type_index"]
        self.type_steps_done, self.budget_spent = state["type_steps_done"], state["budget_spent"]
        self.board.load(state["board"])


def build_parser():
    parser = build_arg_parser(__doc__, epochs=1)
    parser.add_argument("--target", type=float, default=90.0,
                        help="stop when the steering accuracy reaches this percent (default: %(default)s)")
    parser.add_argument("--max-loops", type=int, default=10, help="most loops over the types (default: %(default)s)")
    parser.add_argument("--patience", type=int, default=3,
                        help="stop after this many loops in a row whose steering accuracy did not change beyond "
                             "the noise (paired sign test on the same questions, p >= 0.05); 0 = never "
                             "(default: %(default)s)")
    return add_round_options(parser)


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_loops < 1 or args.epochs <= 0 or args.patience < 0:
        parser.error("--max-loops must be >= 1, --epochs > 0 and --patience >= 0")
    check_launch()
    run = start_run(args, stage=STAGE, script="train_loop_until_90")
    init_distributed(run)
    type_records = load_type_records(args.data_dir, args.types, run.max_samples, run.seed)
    items, steering = load_steering_set(args.steer_on, run.eval_samples, run.seed, args.sets_dir)
    steering["scoring"] = resolve_mcq_scoring(args, run)

    per_step = global_batch(run)  # an epoch is shared by all processes of a multi-process launch
    steps = {t: max(1, math.ceil(run.epochs * len(r) / per_step)) for t, r in type_records.items()}
    board = Scoreboard(args.target, run.output_dir / BEST_DIR_NAME)
    policy = LoopPolicy(steps, args.max_loops, board, run.output_dir, chunk_steps=run.save_steps or 0,
                        patience=args.patience)
    engine = build_engine(run, type_records, policy.planned_steps())
    resumed = resume_or_start(run, engine, policy)
    drive(engine, policy, make_steering_evaluator(engine.tokenizer, items, run.batch, steering["scoring"]),
          run.output_dir / STATE_DIR_NAME)

    outcome = finish(run, engine, board, args)
    if not is_main_process():
        return worker_result(engine)
    report = {
        "target": args.target, "max_loops": args.max_loops, "target_reached": board.reached,
        "stopped_at_loop": policy.loops_done, "stop_reason": policy.stop_reason,
        "best_loop": board.best["loop"], "best_accuracy": board.best["accuracy"],
        "initial_accuracy": board.initial, "steps_per_type_per_loop": steps, "global_step": engine.global_step,
        "world_size": world_size(), "global_batch": per_step,
        "steering": steering_summary(steering, board), "history": board.history, "rounds": engine.rounds,
        "persistent_failures": board.failures.top(), "test_sets": outcome["test_sets"], "final_dir": outcome["final_dir"],
    }
    atomic_write_json(run.output_dir / "loop_history.json", report)
    plot_accuracy_curve(board.history, run.output_dir / "loop_history.png", args.target, "loop",
                        f"loop training — {run.model_name} (steering set: {steering['set']})")
    logger.info("%s; best %.2f%% (loop %d); history in %s", policy.stop_reason, board.best["accuracy"],
                board.best["loop"], run.output_dir / "loop_history.json")
    return training_info(run, engine, board, steering, outcome,
                         {"loop_history": report["history"], "stop_reason": policy.stop_reason,
                          "loops": policy.loops_done, "resumed": resumed})


if __name__ == "__main__":
    run_main(main)
