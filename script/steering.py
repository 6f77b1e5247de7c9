"""The KorMedMCQA steering set: the questions a trainer measures itself on while it trains.

Every trainer's ``--steer-on`` flag and every steering-set load come from here, so the
stop rules, best checkpoints, periodic evaluations and reports agree on what was steered on.

* ``steer``     a held-out slice of KorMedMCQA *train* (script/extract_kormedmcqa_test.py): the default,
                and the only choice whose accuracies stay held-out measures;
* ``guide604``  the guide's 604-question test set, as the guide does it: allowed, warned, and flagged
                in every report (its accuracy is then optimistic).

A trainer whose stop rule or checkpoint choice rests on the set loads it ``required=True`` (a
missing file stops the run with the command that writes it); a trainer that only monitors
(periodic evaluation of train_00/01/02 and the type trainers) loads it ``required=False`` and
trains on without it, loudly.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from script.data_io import sha256_file
from script.eval_items import SET_ALIASES, load_eval_items, resolve_set_path
from script.training_config import KORMEDMCQA_TEST_DIR, ConfigError

logger = logging.getLogger(__name__)

STEER_SET_CHOICES = ("steer", "guide604")
GUIDE604_STEERING_WARNING = (
    "steered on the guide's 604 set (--steer-on guide604): the stop rule, best checkpoint and type "
    "choices saw that test set, so its accuracy here is optimistic and is not a held-out result")
EXTRACT_COMMAND = "python -m script.extract_kormedmcqa_test --set all"


def add_steering_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--steer-on``, the same flag with the same choices in every trainer."""
    parser.add_argument("--steer-on", choices=STEER_SET_CHOICES, default="steer",
                        help="KorMedMCQA set the run measures itself on (periodic evaluation, stop rule, best "
                             "checkpoint, type choice): steer = a held-out slice of KorMedMCQA train; guide604 = "
                             "the guide's test set, as the guide does it (optimistic, warned and flagged in every "
                             "report) (default: %(default)s)")


def load_steering_set(steer_on: str, eval_samples: int, seed: int, sets_dir: str | Path | None = None,
                      required: bool = True) -> tuple[list[dict], dict | None]:
    """(items, description) of ``eval_samples`` seeded questions (0 = all) of the steering set.

    The description (set, path, sha256, items, seed, and a ``warning`` for guide604) goes into the
    run's reports. A missing set raises when ``required``, else logs why and returns ``([], None)``.
    """
    if steer_on not in STEER_SET_CHOICES:
        raise ConfigError(f"--steer-on {steer_on!r}: expected one of {', '.join(STEER_SET_CHOICES)}")
    directory = Path(sets_dir) if sets_dir is not None else KORMEDMCQA_TEST_DIR
    expected = directory / SET_ALIASES[steer_on]
    if not required and not expected.is_file():
        logger.warning("no %s set at %s (%s): KorMedMCQA evaluation is off for this run",
                       steer_on, expected, EXTRACT_COMMAND)
        return [], None
    name, path = resolve_set_path(steer_on, directory)
    items = load_eval_items(path, eval_samples if eval_samples > 0 else None, seed)
    if not items and required:
        raise ConfigError(f"{path}: no usable question to steer on")
    info = {"set": name, "path": str(path), "sha256": sha256_file(path), "items": len(items), "seed": seed}
    if steer_on == "guide604":
        info["warning"] = GUIDE604_STEERING_WARNING
        logger.warning("%s", GUIDE604_STEERING_WARNING)
    logger.info("steering on %d questions of %s", len(items), path)
    return items, info
