"""Multi-round training on one in-memory model: the engine of the loop, probe-and-focus and adaptive trainers.

A *round* is N optimizer steps on one refined type. The three multi-round trainers differ only
in which type they train next and when they stop (their *policy*); everything else lives here:

* ``RoundTrainer``   one LoRA model trained round after round. Each round is an ordinary TRL
  SFTTrainer (prompt/completion data from ``training_data.to_sft_dataset``, completion-only loss,
  the SFTConfig of ``training_utils.build_sft_config``), but the torch optimizer and LR scheduler
  are created once for the run and handed to every round, so Adam moments and the warmup/cosine
  schedule continue instead of restarting. Each type is read through a seeded permutation with a
  cursor that continues across rounds (round 2 on a type sees the next records, a new pass
  reshuffles). ``save_round``/``load_round`` persist adapter + optimizer + scheduler + cursors +
  RNG + the policy's state, so ``--resume`` after a kill continues from the last finished round.
* ``Scoreboard``     steering-set accuracy history, the best checkpoint and ``FailureTracker``.
* ``drive``          run a policy round by round, committing the state after every round.
* steering and report evaluation: the stop rules, best checkpoints and type choices steer on the
  KorMedMCQA *steering* set (a held-out slice of KorMedMCQA train). The guide's 604 set and the
  official test are scored once, on the final adapter, for the report. ``--steer-on guide604``
  reproduces the guide literally and is flagged in every report.

The LR schedule is the policy's choice: the loop, whose length is known, uses the SFTConfig's
cosine schedule over all its steps (``--max-steps`` caps them); probe-and-focus and the adaptive
trainer compare the gains of rounds taken at different times, so they use a constant rate after a
short warmup (3 % of their first pass over the types), which keeps those gains comparable.

Under ``accelerate launch`` / ``torchrun`` (DDP) every rank trains every round: the records of a
round are taken for the global batch (batch x grad-accum x processes) and the round's Trainer
shards them and averages the gradients, so each rank's optimizer and scheduler take the same
steps. Between rounds every rank letter-scores its share of the questions and the predictions are
gathered (scoring is then N times faster, and no rank idles at a barrier past the collective
timeout while another scores 600 questions of a 27B model); the result and, after every round,
the policy's state (its decisions: next type, stop) are rank 0's, broadcast to all ranks, which
also check that they trained the same steps on the same data. Only rank 0 writes (checkpoints,
reports, round state, TensorBoard); the other ranks wait at a barrier before reading what it
wrote, so the output dir must be on a filesystem every rank sees (one machine, or shared storage).
FSDP and DeepSpeed launches are refused: one optimizer kept across rounds and scoring on a plain
model copy need every rank to hold the whole model.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from script import formats
from script.controls import noise_floor, paired_change
from script.data_io import (
    atomic_save_figure,
    atomic_write_dir,
    atomic_write_json,
    read_json,
    recover_dir,
    sha256_file,
)
from script.eval_items import SET_ALIASES, read_eval_set
from script.evaluation import mcq_accuracy, score_mcq_cloze_mode, score_mcq_letter_mode
from script.hardware import peak_memory_bytes
from script.launch import (
    all_gather_objects,
    barrier,
    broadcast_from_main,
    global_batch,
    init_distributed,
    is_main_process,
    process_rank,
    world_size,
)
from script.model_loading import write_adapter_chain
from script.steering import GUIDE604_STEERING_WARNING, add_steering_args, load_steering_set
from script.training_config import CLEAN_DIR, KORMEDMCQA_TEST_DIR, TENSORBOARD_DIR, ConfigError
from script.training_data import describe_data_file, load_split_records, to_sft_dataset
from script.training_utils import (
    RunConfig,
    attach_lora,
    build_trainer,
    load_model_and_tokenizer,
    save_final,
    start_run,
    trainer_callback_base,
    write_training_info,
)

logger = logging.getLogger(__name__)

STATE_DIR_NAME = "round_state"
BEST_DIR_NAME = "best_checkpoint"
REPORT_SET_CHOICES = ("guide604", "official")
MCQ_SCORING_CHOICES = ("letter", "cloze")
PREVIEW_CHARS = 80
TOP_FAILURES = 10

Evaluator = Callable[[Any], dict]  # evaluate(model) -> {"accuracy": percent, "predictions": [...], ...}


# ---------------------------------------------------------------------------
# Flags shared by the multi-round trainers
# ---------------------------------------------------------------------------
def add_round_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Data, steering and report options; evaluation happens between rounds, so the common
    ``--eval-samples`` counts steering questions (default 0 = the whole set: a small set cannot tell
    types apart, see ``controls.noise_floor``)."""
    g = parser.add_argument_group(
        "multi-round training",
        "The steering set is scored between rounds: --eval-samples counts its questions (default 0 =\n"
        "the whole set) and --show-samples-every is not used. --resume continues from round_state/ in the\n"
        "output dir, written after every round.")
    g.add_argument("--data-dir", type=Path, default=CLEAN_DIR,
                   help="dir holding <type>/train.jsonl for each type; a type without one is skipped with a "
                        "warning (default: %(default)s)")
    g.add_argument("--types", nargs="+", choices=formats.TRAINING_TYPES, default=list(formats.TRAINING_TYPES),
                   help="types to train, in this order (default: all four)")
    add_steering_args(g)
    g.add_argument("--sets-dir", type=Path, default=KORMEDMCQA_TEST_DIR,
                   help="dir with steer.jsonl, guide604.jsonl, official_test.jsonl "
                        "(python -m script.extract_kormedmcqa_test) (default: %(default)s)")
    g.add_argument("--mcq-scoring", choices=MCQ_SCORING_CHOICES, default=None,
                   help="how the steering and report sets are scored: letter (the option letter's logits) or "
                        "cloze (the option texts as answers to the question alone; evaluation."
                        "score_mcq_cloze_mode) (default: the model's registry entry: cloze for tiny, letter "
                        "for MedGemma)")
    g.add_argument("--report-sets", nargs="*", choices=REPORT_SET_CHOICES, default=list(REPORT_SET_CHOICES),
                   help="test sets scored once on the final adapter for the report, never steered on; "
                        "a missing file is recorded as missing (default: guide604 official)")
    # Evaluation runs between rounds; the mid-round periodic evaluation of the type trainers is off.
    parser.set_defaults(eval_samples=0, show_samples_every=0)
    return parser


def check_launch() -> None:
    """Refuse the multi-process launches that cannot work here; plain DDP (any number of GPUs) can."""
    sharded = [name for name, env in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
               if os.environ.get(env, "false").lower() == "true"]
    if sharded:
        raise ConfigError(f"multi-round trainers do not run under {sharded[0]}: they keep one optimizer across "
                          "rounds and score the model between rounds, which needs the whole model on every rank; "
                          "launch with configs/accelerate/ddp.yaml (or torchrun), or a single process")


# ---------------------------------------------------------------------------
# Data and steering set
# ---------------------------------------------------------------------------
def load_type_records(data_dir: Path, types: Sequence[str], max_samples: int | None, seed: int
                      ) -> dict[str, list[dict]]:
    """``<data_dir>/<type>/train.jsonl`` of each type, in ``types`` order; missing types are skipped."""
    records: dict[str, list[dict]] = {}
    for type_name in types:
        path = Path(data_dir) / type_name / "train.jsonl"
        if not path.is_file():
            logger.warning("%s: missing, %s is skipped (build the data with make data)", path, type_name)
            continue
        records[type_name] = load_split_records(path, max_samples, seed)
        logger.info("%s: %d training records from %s", type_name, len(records[type_name]), path)
    if not records:
        raise ConfigError(f"{data_dir}: none of {', '.join(types)} has a train.jsonl; build the data first (make data)")
    return records


def percent(fraction: float) -> float:
    return round(100.0 * fraction, 2)


def resolve_mcq_scoring(args: argparse.Namespace, run: RunConfig) -> str:
    """``--mcq-scoring``, else the model's registry entry (tiny: cloze; MedGemma: letter)."""
    if getattr(args, "mcq_scoring", None) is None:
        args.mcq_scoring = run.model_config.mcq_scoring
    return args.mcq_scoring


def score_items(model, tokenizer, items: Sequence[dict], batch_size: int, scoring: str = "letter") -> list[dict]:
    """Letter- or cloze-mode predictions of ``items``, in item order. Under a multi-process launch each
    rank scores every N-th item (rank r: items r, r+N, ...) and every rank gets all the predictions."""
    scorer = score_mcq_cloze_mode if scoring == "cloze" else score_mcq_letter_mode
    items = list(items)
    world = world_size()
    if world == 1:
        return scorer(model, tokenizer, items, batch_size)
    shards = all_gather_objects(scorer(model, tokenizer, items[process_rank()::world], batch_size))
    predictions: list = [None] * len(items)
    for rank, shard in enumerate(shards):
        predictions[rank::world] = shard
    return predictions


def make_steering_evaluator(tokenizer, items: Sequence[dict], batch_size: int, scoring: str = "letter") -> Evaluator:
    """``evaluate(model)``: accuracy in percent (letter or cloze mode) with per-item predictions (for
    failure tracking). Every rank must call it; all get rank 0's result, so all take the same decisions."""
    items = list(items)

    def evaluate(model) -> dict:
        predictions = score_items(model, tokenizer, items, batch_size, scoring)
        summary = mcq_accuracy(items, predictions)
        return broadcast_from_main(
            {"accuracy": percent(summary["accuracy"]), "correct": summary["correct"], "total": summary["total"],
             "chance": percent(summary["chance"]),
             "predictions": [{"id": p["id"], "gold": p["gold"], "prediction": p["prediction"],
                              "correct": p["correct"], "question": item["question"]}
                             for item, p in zip(items, predictions)]})

    return evaluate


def evaluate_report_sets(model, tokenizer, batch_size: int, sets_dir: Path, names: Sequence[str],
                         steer_on: str, scoring: str = "letter") -> dict:
    """Score the test sets once, for the report only (every rank scores its share). A missing set
    file is recorded, not an error."""
    results: dict[str, dict] = {}
    for name in names:
        key = Path(SET_ALIASES[name]).stem
        path = Path(sets_dir) / SET_ALIASES[name]
        if not path.is_file():
            logger.warning("%s: missing, not in the report (python -m script.extract_kormedmcqa_test)", path)
            results[key] = {"missing": str(path)}
            continue
        evalset = read_eval_set(path)
        summary = mcq_accuracy(evalset.items, score_items(model, tokenizer, evalset.items, batch_size, scoring))
        results[key] = {"accuracy": percent(summary["accuracy"]), "correct": summary["correct"], "scoring": scoring,
                        "total": summary["total"], "chance": percent(summary["chance"]),
                        "skipped_rows": len(evalset.rejects), "path": str(path), "sha256": sha256_file(path),
                        "steered_on": name == steer_on}
        if name == steer_on:
            results[key]["warning"] = GUIDE604_STEERING_WARNING
        logger.info("%s (report only): %.2f%% (%d/%d, chance %.2f%%)", key, results[key]["accuracy"],
                    summary["correct"], summary["total"], results[key]["chance"])
    return results


# ---------------------------------------------------------------------------
# Failed-question tracking and the accuracy scoreboard
# ---------------------------------------------------------------------------
class FailureTracker:
    """How often each steering question was answered wrongly, with the latest wrong answer."""

    def __init__(self, entries: dict | None = None, evaluations: int = 0):
        self.entries: dict[str, dict] = dict(entries or {})
        self.evaluations = evaluations

    def update(self, predictions: Sequence[dict], step: int) -> None:
        self.evaluations += 1
        for p in predictions:
            if p["correct"]:
                continue
            qid = str(p["id"])
            question = str(p.get("question") or "")
            entry = self.entries.setdefault(qid, {"question_id": p["id"], "fail_count": 0})
            entry.update(fail_count=entry["fail_count"] + 1, expected=p["gold"], last_predicted=p["prediction"],
                         question_preview=question[:PREVIEW_CHARS] + ("..." if len(question) > PREVIEW_CHARS else ""),
                         last_failed_step=step)

    def top(self, n: int = TOP_FAILURES) -> list[dict]:
        """The ``n`` most persistent failures: most failures first, then the most recent, then by id."""
        ranked = sorted(self.entries.items(), key=lambda kv: (-kv[1]["fail_count"], -kv[1]["last_failed_step"], kv[0]))
        return [{**entry, "evaluations": self.evaluations} for _, entry in ranked[:n]]

    def to_dict(self) -> dict:
        return {"entries": self.entries, "evaluations": self.evaluations}

    @classmethod
    def from_dict(cls, data: dict) -> FailureTracker:
        return cls(data.get("entries"), int(data.get("evaluations", 0)))


class Scoreboard:
    """Steering accuracy after each evaluation, the best one (saved to ``best_dir``) and the failures.

    Every evaluation is also compared item by item with the one before (``vs_previous``) and with
    the untrained start (``vs_initial``): ``controls.paired_change``, a sign test on the questions
    that changed. A change whose p is not below ``controls.ALPHA`` is inside the steering set's
    noise and counts as none (``counted_points`` 0): that is what the policies act on.
    """

    def __init__(self, target: float, best_dir: Path | None):
        self.target = target
        self.best_dir = best_dir
        self.history: list[dict] = []
        self.best: dict | None = None
        self.failures = FailureTracker()
        self.initial_correct: dict[str, bool] = {}
        self.last_correct: dict[str, bool] = {}

    def record(self, engine, result: dict, **fields) -> dict:
        entry = {**fields, "step": engine.global_step, "accuracy": float(result["accuracy"]),
                 **{k: result[k] for k in ("correct", "total", "chance") if k in result}}
        correct = {str(p["id"]): bool(p["correct"]) for p in result.get("predictions", [])}
        if correct and self.history:
            entry["vs_previous"] = paired_change(self.last_correct, correct)
            entry["vs_initial"] = paired_change(self.initial_correct, correct)
        if correct:
            self.last_correct = correct
            if not self.history:
                self.initial_correct = correct
        self.history.append(entry)
        self.failures.update(result.get("predictions", []), engine.global_step)
        engine.log_scalar("eval/steer_accuracy", entry["accuracy"])
        if self.best is None or entry["accuracy"] > self.best["accuracy"]:
            self.best = entry
            if self.best_dir is not None:
                engine.save_adapter(self.best_dir)
        logger.info("steering accuracy %.2f%% at step %d (%s); best %.2f%% at step %d", entry["accuracy"],
                    entry["step"], ", ".join(f"{k}={v}" for k, v in fields.items()), self.best["accuracy"],
                    self.best["step"])
        return entry

    @property
    def initial(self) -> float | None:
        return self.history[0]["accuracy"] if self.history else None

    @property
    def last(self) -> float | None:
        return self.history[-1]["accuracy"] if self.history else None

    @property
    def reached(self) -> bool:
        return self.best is not None and self.best["accuracy"] >= self.target

    def noise_floor(self) -> dict:
        """What the steering set can tell apart (controls.noise_floor at the starting accuracy)."""
        first = self.history[0] if self.history else {}
        return noise_floor(int(first.get("total") or len(self.initial_correct)), first.get("accuracy"))

    def outcome(self) -> dict:
        """The accuracies of a run's report: where it started, its best and last, and the target."""
        return {"initial_accuracy": self.initial, "final_best_accuracy": self.best["accuracy"] if self.best else None,
                "last_accuracy": self.last, "target_accuracy": self.target, "target_reached": self.reached}

    def ranking(self, type_results: dict[str, dict]) -> dict:
        """The types ranked by their counted gains, what the ranking is worth, the failures and the history."""
        ranking, floor = rank_types(type_results), self.noise_floor()
        return {"recommendations": ranking, "noise_floor": floor, "ranking_note": ranking_note(ranking, floor),
                "persistent_failures": self.failures.top(), "history": self.history}

    def to_dict(self) -> dict:
        return {"history": self.history, "best": self.best, "failures": self.failures.to_dict(),
                "initial_correct": self.initial_correct, "last_correct": self.last_correct}

    def load(self, data: dict) -> None:
        self.history = list(data.get("history", []))
        self.best = data.get("best")
        self.failures = FailureTracker.from_dict(data.get("failures", {}))
        self.initial_correct = dict(data.get("initial_correct", {}))
        self.last_correct = dict(data.get("last_correct", {}))


def counted(improvements: Sequence[float], beyond_noise: Sequence[bool] | None) -> list[float]:
    """The improvements that count: each one beyond the steering set's noise, else 0 (no change)."""
    if beyond_noise is None:  # a state written before the noise floor was kept: every change counts
        return list(improvements)
    return [gain if beyond else 0.0 for gain, beyond in zip(improvements, beyond_noise)]


def rank_types(type_results: dict[str, dict]) -> list[dict]:
    """Types by mean counted improvement (changes inside the noise count as 0), best first: the
    report's ``recommendations``. ``distinguishable`` says whether any of the type's rounds changed
    the steering accuracy beyond the noise; when none did, the order is no finding."""
    rows = []
    for t, r in type_results.items():
        if not r["improvements"]:
            continue
        kept = counted(r["improvements"], r.get("beyond_noise"))
        rows.append({"type": t, "avg_improvement": round(sum(r["improvements"]) / len(r["improvements"]), 4),
                     "avg_counted_improvement": round(sum(kept) / len(kept), 4),
                     "rounds_beyond_noise": sum(bool(x) for x in r.get("beyond_noise", [])),
                     "distinguishable": any(r.get("beyond_noise", [True])), "total_steps": r["total_steps"]})
    rows.sort(key=lambda row: -row["avg_counted_improvement"])
    return [{"rank": i, **row} for i, row in enumerate(rows, 1)]


def ranking_note(ranking: Sequence[dict], floor: dict) -> str:
    """One line on what the ranking is worth, with the noise floor in points."""
    width = floor.get("ci95_half_width_points")
    where = (f"{floor['items']} steering questions: one accuracy is ±{width} points (95 %), a paired change "
             f"needs about {floor['min_detectable_points']} points to pass the sign test") if width else "no steering set"
    if not ranking:
        return f"no type was measured ({where})"
    if not any(row["distinguishable"] for row in ranking):
        return (f"no type changed the steering accuracy beyond the noise ({where}): the order of the types is "
                "not a finding; use more steering questions (--eval-samples 0) or longer rounds")
    return f"ranked by the changes beyond the noise ({where}); changes inside it count as 0"


# ---------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------
def _rng_state() -> dict:
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def write_dir_on_main(directory: Path, write: Callable[[Path], None]) -> Path:
    """``atomic_write_dir`` on rank 0; every rank returns once the directory is there."""
    if is_main_process():
        atomic_write_dir(directory, write)
    barrier()
    return Path(directory)


class RoundTrainer:
    """Rounds of SFT on one in-memory PEFT model with one optimizer and scheduler for the whole run.

    ``type_records`` maps a type to its training records (``messages``). ``total_steps`` is the
    most optimizer steps the run may take: the LR schedule spans it and no round goes past it.
    ``schedule = (lr_scheduler_type, warmup_basis)``: the scheduler, and the steps whose 3 % (the
    SFTConfig's warmup fraction) warm up; ``(None, None)`` = the SFTConfig's scheduler over ``total_steps``.
    """

    def __init__(self, run: RunConfig, model, tokenizer, type_records: dict[str, list[dict]], total_steps: int,
                 schedule: tuple[str | None, int | None] = (None, None)):
        if not type_records or not all(type_records.values()):
            raise ConfigError("every type to train needs at least one record")
        self.run = run
        self.model = model
        self.tokenizer = tokenizer
        self.type_records = type_records
        self.total_steps = max(1, total_steps if run.max_steps <= 0 else min(total_steps, run.max_steps))
        self.records_per_step = global_batch(run)  # every rank takes them all; the round's Trainer shards them
        self.schedule = schedule
        self.global_step = 0
        self.rounds: list[dict] = []
        self.cursors = {t: [0, 0] for t in type_records}  # [pass, position] in the type's permutation
        self.optimizer = None
        self.scheduler = None
        self._pending_optimizer: tuple[dict, dict] | None = None
        self._orders: dict[tuple[str, int], list[int]] = {}
        self._writer = None

    # -- data ---------------------------------------------------------------
    def _order(self, type_name: str, pass_index: int) -> list[int]:
        key = (type_name, pass_index)
        if key not in self._orders:
            order = list(range(len(self.type_records[type_name])))
            random.Random(f"{self.run.seed}:{type_name}:{pass_index}").shuffle(order)  # str seeds are stable
            self._orders = {k: v for k, v in self._orders.items() if k[0] != type_name}
            self._orders[key] = order
        return self._orders[key]

    def take(self, type_name: str, n: int) -> list[dict]:
        """The next ``n`` records of a type; a finished pass continues with a fresh permutation."""
        records = self.type_records[type_name]
        pass_index, position = self.cursors[type_name]
        taken: list[dict] = []
        while len(taken) < n:
            order = self._order(type_name, pass_index)
            chunk = order[position: position + n - len(taken)]
            taken.extend(records[i] for i in chunk)
            position += len(chunk)
            if position >= len(order):
                pass_index, position = pass_index + 1, 0
        self.cursors[type_name] = [pass_index, position]
        return taken

    def weights_checksum(self) -> float:
        """Sum of the trainable weights: equal on every rank of a DDP run, as its replicas are."""
        import torch

        params = [p.detach().double().sum() for p in self.model.parameters() if p.requires_grad]
        return float(torch.stack(params).sum()) if params else 0.0

    @property
    def steps_left(self) -> int:
        return self.total_steps - self.global_step

    # -- training -----------------------------------------------------------
    def train_steps(self, type_name: str, n_steps: int) -> dict | None:
        """One round: ``n_steps`` optimizer steps on the next records of ``type_name``.

        Returns the round's record, or None when the step budget is spent.
        """
        n_steps = min(n_steps, self.steps_left)
        if n_steps <= 0:
            return None

        start = self.global_step
        records = self.take(type_name, n_steps * self.records_per_step)
        seed = self.run.seed + start  # a distinct, reproducible seed per round (dropout), also after --resume
        callback = self._step_callback(type_name, start)
        trainer = build_trainer(self.run, self.model, self.tokenizer, to_sft_dataset(records), callbacks=[callback],
                                max_steps=n_steps, save_strategy="no", report_to="none", logging_steps=1,
                                train_sampling_strategy="sequential",  # records are already in permutation order
                                seed=seed, data_seed=seed)
        self._share_optimizer(trainer)
        logger.info("round %d: %d steps on %s (run steps %d-%d of %d)", len(self.rounds) + 1, n_steps, type_name,
                    start + 1, start + n_steps, self.total_steps)
        output = trainer.train()
        if int(trainer.state.global_step) == 0:
            # TRL drops records whose prompt alone fills --max-length; a round of only such records trains
            # nothing, and without this stop the policy would ask for the same round forever.
            raise ConfigError(f"round {len(self.rounds) + 1}: none of the {len(records)} {type_name} records could be "
                              f"trained (each prompt fills --max-length {self.run.max_length} and leaves no answer "
                              "token); raise --max-length")
        self.global_step += int(trainer.state.global_step)
        entry = {"round": len(self.rounds) + 1, "type": type_name, "start_step": start, "end_step": self.global_step,
                 "steps": self.global_step - start, "records": len(records), "loss": round(float(output.training_loss), 6),
                 "learning_rate": float(self.scheduler.get_last_lr()[0]), "cursor": list(self.cursors[type_name])}
        self.rounds.append(entry)
        del trainer
        self._release_memory()
        return entry

    def _share_optimizer(self, trainer) -> None:
        """Give the round's trainer the run's optimizer and scheduler (created from the first round's SFTConfig)."""
        if self.optimizer is None:
            from transformers import get_scheduler

            self.optimizer = trainer.create_optimizer()  # the optimizer class and groups the SFTConfig selects
            args = trainer.args
            name, warmup_basis = self.schedule
            self.scheduler = get_scheduler(name or args.lr_scheduler_type, optimizer=self.optimizer,
                                           num_warmup_steps=args.get_warmup_steps(warmup_basis or self.total_steps),
                                           num_training_steps=self.total_steps,
                                           scheduler_specific_kwargs=args.lr_scheduler_kwargs)
            if self._pending_optimizer is not None:
                optimizer_state, scheduler_state = self._pending_optimizer
                self.optimizer.load_state_dict(optimizer_state)
                self.scheduler.load_state_dict(scheduler_state)
                self._pending_optimizer = None
        trainer.optimizer = self.optimizer
        trainer.lr_scheduler = self.scheduler

    def _release_memory(self) -> None:
        gc.collect()
        if self.run.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _step_callback(self, type_name: str, offset: int):
        """Per-step loss/LR to TensorBoard at run-wide step numbers (each round's trainer counts from 0)."""
        engine = self

        class RunStepCallback(trainer_callback_base()):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if not logs or not state.is_world_process_zero:
                    return
                writer = engine._tensorboard()
                for key in ("loss", "learning_rate", "grad_norm"):
                    if isinstance(logs.get(key), (int, float)):
                        writer.add_scalar(f"train/{key}", logs[key], offset + state.global_step)
                if "loss" in logs:
                    writer.add_scalar(f"train_loss_by_type/{type_name}", logs["loss"], offset + state.global_step)

        return RunStepCallback()

    def _tensorboard(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(TENSORBOARD_DIR / f"{self.run.stage}_{self.run.model_name}"))
        return self._writer

    def log_scalar(self, tag: str, value: float) -> None:
        """A run-level value (e.g. steering accuracy) to TensorBoard at the current run step (rank 0)."""
        if not is_main_process():
            return
        self._tensorboard().add_scalar(tag, value, self.global_step)
        self._writer.flush()

    # -- saving and resuming ------------------------------------------------
    def save_adapter(self, directory: Path) -> Path:
        """Adapter + tokenizer (a loadable model dir, with the adapter chain it was trained on), atomically.

        Every rank calls it; rank 0 writes (``self.model`` is the plain PEFT model, never the DDP
        wrapper of a round) and the others wait until the directory is there.
        """
        def write(tmp: Path) -> None:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            write_adapter_chain(tmp, self.run.adapter_parents)

        return write_dir_on_main(directory, write)

    def load_adapter_weights(self, directory: Path) -> None:
        """Copy a saved adapter's weights into the in-memory model (same LoRA layout)."""
        from peft.utils import load_peft_weights, set_peft_model_state_dict

        weights = load_peft_weights(str(directory), device=str(next(self.model.parameters()).device))
        result = set_peft_model_state_dict(self.model, weights)
        unknown = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if unknown:
            raise ConfigError(f"{directory}: adapter does not match the model ({len(unknown)} unknown LoRA weights, "
                              f"e.g. {unknown[0]}); was it trained with other --lora-r/--model?")

    def state_dict(self) -> dict:
        return {"global_step": self.global_step, "total_steps": self.total_steps, "rounds": self.rounds,
                "cursors": self.cursors, "records_per_step": self.records_per_step,
                "type_sizes": {t: len(r) for t, r in self.type_records.items()}}

    def save_round(self, directory: Path, extra: dict | None = None) -> Path:
        """The commit point of a round: adapter, optimizer.pt, scheduler.pt and state.json, atomically.
        Rank 0 writes; under DDP every rank's optimizer holds the same state, so each resumes from it."""
        import torch

        state = {"engine": self.state_dict(), "policy": extra or {}, "rng": _rng_state()}

        def write(tmp: Path) -> None:
            self.model.save_pretrained(tmp)
            if self.optimizer is not None:
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            atomic_write_json(tmp / "state.json", state)

        return write_dir_on_main(directory, write)

    def load_round(self, directory: Path) -> dict:
        """Restore a ``save_round`` dir; returns the policy's state. The optimizer state is applied when
        the next round creates the optimizer (it needs that round's trainer for the SFTConfig's class)."""
        import torch

        state = read_json(Path(directory) / "state.json")
        engine = state["engine"]
        sizes = {t: len(r) for t, r in self.type_records.items()}
        if engine.get("type_sizes") != sizes or engine.get("records_per_step") != self.records_per_step:
            raise ConfigError(f"{directory}: saved with types/records {engine.get('type_sizes')} and "
                              f"{engine.get('records_per_step')} records per step, this run has {sizes} and "
                              f"{self.records_per_step}; resume with the same --data-dir, --types, --max-samples, "
                              "--batch-size, --grad-accum and number of processes (or start afresh without --resume)")
        if engine["total_steps"] != self.total_steps:
            logger.warning("%s: LR schedule planned over %d steps, now %d (changed limits); the schedule "
                           "continues with the new length", directory, engine["total_steps"], self.total_steps)
        self.load_adapter_weights(directory)
        if (Path(directory) / "optimizer.pt").is_file():
            # Our own files; weights_only=True still refuses anything but tensors and plain containers.
            self._pending_optimizer = (torch.load(Path(directory) / "optimizer.pt", weights_only=True),
                                       torch.load(Path(directory) / "scheduler.pt", weights_only=True))
        self.global_step = int(engine["global_step"])
        self.rounds = list(engine["rounds"])
        self.cursors = {t: list(c) for t, c in engine["cursors"].items()}
        _set_rng_state(state["rng"])
        logger.info("resumed from %s: step %d, %d rounds done", directory, self.global_step, len(self.rounds))
        return state["policy"]


# ---------------------------------------------------------------------------
# Running a policy
# ---------------------------------------------------------------------------
def build_engine(run: RunConfig, type_records: dict[str, list[dict]], total_steps: int,
                 schedule: tuple[str | None, int | None] = (None, None)) -> RoundTrainer:
    """Base model (+ adapter from --base-model) with LoRA, wrapped in a RoundTrainer."""
    model, tokenizer = load_model_and_tokenizer(run)
    model = attach_lora(model, run)
    return RoundTrainer(run, model, tokenizer, type_records, total_steps, schedule)


def resume_or_start(run: RunConfig, engine: RoundTrainer, policy) -> bool:
    """With --resume, restore engine and policy from ``<output>/round_state``; else start afresh.
    Returns whether a saved state was restored."""
    state_dir = run.output_dir / STATE_DIR_NAME
    if is_main_process():
        recover_dir(state_dir)  # a kill between the two renames of a save leaves it aside
    barrier()  # every rank reads the repaired dir
    saved = (state_dir / "state.json").is_file()
    if run.resume and saved:
        policy.load_state_dict(engine.load_round(state_dir))
        return True
    if run.resume:
        logger.info("--resume: no round state in %s, starting fresh", state_dir)
    elif saved:
        logger.warning("%s holds the state of an earlier run; training from scratch (pass --resume to continue)",
                       state_dir)
    return False


def drive(engine, policy, evaluate: Evaluator, state_dir: Path | None) -> None:
    """Run ``policy.step`` until it is finished, committing engine + policy state after every step.

    A kill between commits loses only the unfinished round, which the next --resume trains again
    from the committed adapter, optimizer and data position: nothing is trained twice or skipped.
    """
    while not policy.finished:
        policy.step(engine, evaluate)
        sync_ranks(engine, policy)
        if state_dir is not None:
            engine.save_round(state_dir, policy.state_dict())
    logger.info("stopped: %s", policy.stop_reason)


def sync_ranks(engine, policy) -> None:
    """Under a multi-process launch, after a step: check that every rank trained the same steps on
    the same data, then give every rank rank 0's policy state, so that the next type and the stop
    are rank 0's decisions and never a float that came out differently on another rank."""
    if world_size() == 1:
        return
    trained = all_gather_objects({"global_step": engine.global_step, "cursors": engine.cursors,
                                  "weights": engine.weights_checksum()})
    positions = [{k: t[k] for k in ("global_step", "cursors")} for t in trained]
    if any(p != positions[0] for p in positions[1:]):
        # Every rank sees the same gathered list, so all stop here together.
        raise RuntimeError("the ranks trained different rounds (step and data position per rank: "
                           f"{positions}); their policies diverged")
    if len({t["weights"] for t in trained}) > 1 and is_main_process():
        # DDP keeps the replicas identical (same start, averaged gradients); a difference means it did not.
        logger.warning("the ranks' trainable weights differ after step %d (checksums %s)", engine.global_step,
                       [t["weights"] for t in trained])
    state = broadcast_from_main(policy.state_dict())
    if not is_main_process():
        policy.load_state_dict(state)


def worker_result(engine: RoundTrainer) -> dict:
    """What a rank other than 0 returns: it trained and scored, rank 0 wrote the outputs."""
    return {"metrics": {"global_step": engine.global_step}, "rank": process_rank()}


def finish(run: RunConfig, engine: RoundTrainer, board: Scoreboard, args: argparse.Namespace) -> dict:
    """``final/`` = the best adapter by steering accuracy; then the report-only test-set scores."""
    # Every rank loads the best weights (rank 0 wrote them before a barrier): all score the report sets.
    if board.best_dir is not None and (board.best_dir / "adapter_config.json").is_file():
        engine.load_adapter_weights(board.best_dir)
    final = None
    if is_main_process():
        final = save_final(engine.model, engine.tokenizer, run.output_dir, parents=run.adapter_parents)
        logger.info("final adapter (best steering accuracy %.2f%% at step %d) -> %s", board.best["accuracy"],
                    board.best["step"], final)
    test_sets = evaluate_report_sets(engine.model, engine.tokenizer, run.batch, args.sets_dir, args.report_sets,
                                     args.steer_on, resolve_mcq_scoring(args, run))
    return {"final_dir": str(final) if final else None, "test_sets": test_sets}


def run_type_policy(args: argparse.Namespace, stage: str, script: str, make_policy: Callable[[list, Scoreboard, RunConfig], Any],
                    warmup_steps_per_type: int, parameters: Sequence[str], title: str) -> dict:
    """The body of a policy-driven trainer (probe-and-focus, adaptive): data, steering set, engine,
    resume, rounds until the policy stops, ``final/``, ``final_report.json`` (``policy.report()``
    plus run details), ``failed_questions.json``, the accuracy curve and training_info.json.

    The LR is constant after a short warmup, so gains of early and late rounds are measured alike.
    """
    check_launch()
    run = start_run(args, stage=stage, script=script)
    init_distributed(run)
    type_records = load_type_records(args.data_dir, args.types, run.max_samples, run.seed)
    items, steering = load_steering_set(args.steer_on, run.eval_samples, run.seed, args.sets_dir)
    steering["scoring"] = resolve_mcq_scoring(args, run)
    board = Scoreboard(args.target_accuracy, run.output_dir / BEST_DIR_NAME)
    policy = make_policy(list(type_records), board, run)
    engine = build_engine(run, type_records, policy.planned_steps(),
                          schedule=("constant_with_warmup", len(type_records) * warmup_steps_per_type))
    resumed = resume_or_start(run, engine, policy)
    drive(engine, policy, make_steering_evaluator(engine.tokenizer, items, run.batch, steering["scoring"]),
          run.output_dir / STATE_DIR_NAME)

    outcome = finish(run, engine, board, args)
    if not is_main_process():
        return worker_result(engine)
    report = {**policy.report(), "total_steps": engine.global_step, "world_size": world_size(),
              "global_batch": engine.records_per_step, "rounds": engine.rounds,
              "steering": steering_summary(steering, board), "test_sets": outcome["test_sets"],
              "final_dir": outcome["final_dir"], "parameters": {k: getattr(args, k) for k in parameters}}
    atomic_write_json(run.output_dir / "final_report.json", report)
    atomic_write_json(run.output_dir / "failed_questions.json", report["persistent_failures"])
    plot_accuracy_curve(board.history, run.output_dir / "accuracy_curve.png", args.target_accuracy, "step",
                        f"{title} — {run.model_name} (steering set: {steering['set']})")
    for row in report["recommendations"]:
        logger.info("rank %d: %s (mean improvement %.2f over %d steps)", row["rank"], row["type"],
                    row["avg_improvement"], row["total_steps"])
    return training_info(run, engine, board, steering, outcome,
                         {"stop_reason": policy.stop_reason, "type_results": report["type_results"],
                          "recommendations": report["recommendations"], "resumed": resumed})


def steering_summary(steering: dict, board: Scoreboard) -> dict:
    """The ``steering`` block of every report, with the guide604 warning when it applies."""
    best = board.best or {}
    best_entry = next((e for e in board.history if e is not board.history[0] and e.get("step") == best.get("step")
                       and e.get("accuracy") == best.get("accuracy")), None)
    return {**steering, "initial_accuracy": board.initial, "best_accuracy": best.get("accuracy"),
            "target": board.target, "target_reached": board.reached, "noise_floor": board.noise_floor(),
            "best_vs_initial": (best_entry or {}).get("vs_initial")}


def training_info(run: RunConfig, engine: RoundTrainer, board: Scoreboard, steering: dict, outcome: dict,
                  extra: dict) -> dict:
    """training_info.json + README.md in the output dir, in the layout of the type trainers."""
    metrics = {"steer_accuracy_initial": board.initial, "steer_accuracy_best": board.best["accuracy"],
               "steer_accuracy_last": board.last, "best_step": board.best["step"], "global_step": engine.global_step,
               "rounds": len(engine.rounds), "peak_memory_bytes": peak_memory_bytes(run.device)}
    for name, result in outcome["test_sets"].items():
        if "accuracy" in result:
            metrics[f"{name}_accuracy"] = result["accuracy"]
    data_files = [describe_data_file(Path(run.args["data_dir"]) / t / "train.jsonl") for t in engine.type_records]
    info = {"train_samples": sum(len(r) for r in engine.type_records.values()), "types": list(engine.type_records),
            "data_files": data_files, "metrics": metrics, "final_dir": outcome["final_dir"],
            "steering": steering, "test_sets": outcome["test_sets"],
            "target": {"metric": "steer_accuracy_best", "op": ">=", "value": board.target, "met": board.reached},
            **extra}
    return write_training_info(run, info)


def plot_accuracy_curve(history: Sequence[dict], path: Path, target: float, x_key: str, title: str) -> Path:
    """Steering accuracy against ``x_key`` (loop or step) with the target line, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([h[x_key] for h in history], [h["accuracy"] for h in history], marker="o", label="steering accuracy")
    ax.axhline(target, color="tab:red", linestyle="--", label=f"target {target:g}%")
    ax.set_xlabel(x_key)
    ax.set_ylabel("KorMedMCQA accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path
