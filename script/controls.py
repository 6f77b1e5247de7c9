"""The controls every multiple-choice accuracy stands beside, and the statistics that compare with them.

An accuracy on its own says little: 27 % on five options is above chance, but a model can get there
without reading the question (some option texts simply look more like answers), and items about one
fact are not independent evidence. So every KorMedMCQA / KMMLU report carries:

* ``chance``            the mean of 1 / number of options (20 % for KorMedMCQA);
* ``majority_letter``   the best constant answer on the set (always "D", say) -- the bar for letter mode;
* ``question_blind``    the same model, scored the same way, on the same items with every question
                        replaced by another item's question (``swap``, the default: the model still
                        sees a real question, just not this one) or removed (``blank``). What it gets
                        right it got from the options alone;
* a 95 % confidence interval that respects clustering: items that share their right answer's text
  (the same fact asked again) are one cluster, resampled together (``cluster_key``).

Comparisons are paired, item by item, and clustered: ``clustered_mean`` takes a per-item value (model
right minus control right, or a difference of such differences) and returns its mean, a cluster
bootstrap CI and a sign-flip permutation p-value over clusters. Both are seeded, so a report is
reproducible, and vectorised (numpy), so ten thousand resamples of a 3,000-item set take well under
a second.

    from script.controls import clustered_mean, question_blind_items
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from script.kormedmcqa import normalise_text

CONTROL_HOWS = ("swap", "blank", "none")
DEFAULT_CONTROL = "swap"
RESAMPLES = 10_000
DEFAULT_SEED = 20_240_601
CONFIDENCE = 0.95
CLUSTER_RULE = "items whose right option has the same normalised text are one cluster (meta.cluster wins)"


# ---------------------------------------------------------------------------
# Baselines that need no model
# ---------------------------------------------------------------------------
def chance_rate(items: Sequence[Mapping[str, Any]]) -> float:
    """Mean of 1 / number of options: what guessing gets on average."""
    return sum(1 / len(item["options"]) for item in items) / len(items) if items else float("nan")


def majority_letter(items: Sequence[Mapping[str, Any]]) -> dict:
    """The best constant answer on these items: the letter that is right most often, and its accuracy.

    It is measured on the evaluated set itself, so it is an upper bound of every "always answer X"
    strategy -- the bar a letter-mode accuracy has to clear before it says anything.
    """
    counts = Counter(str(item["answer"]) for item in items)
    if not counts:
        return {"letter": None, "accuracy": float("nan"), "correct": 0, "total": 0, "gold_letters": {}}
    letter, correct = max(sorted(counts.items()), key=lambda kv: kv[1])
    return {"letter": letter, "accuracy": correct / len(items), "correct": correct, "total": len(items),
            "gold_letters": dict(sorted(counts.items()))}


def gold_text(item: Mapping[str, Any]) -> str:
    return str(item["options"].get(item["answer"], ""))


def cluster_key(item: Mapping[str, Any]) -> str:
    """The cluster an item's evidence belongs to: ``meta.cluster`` where the data says, else the
    normalised text of its right option (items asking for the same fact share it)."""
    meta = item.get("meta") or {}
    if meta.get("cluster"):
        return f"meta:{meta['cluster']}"
    return "gold:" + normalise_text(gold_text(item))


# ---------------------------------------------------------------------------
# The question-blind control
# ---------------------------------------------------------------------------
def _rank(item_id: str, seed: int) -> str:
    return hashlib.sha256(f"question-blind:{seed}:{item_id}".encode()).hexdigest()


def question_blind_items(items: Sequence[Mapping[str, Any]], how: str = DEFAULT_CONTROL,
                         seed: int = DEFAULT_SEED) -> list[dict]:
    """Copies of ``items`` whose question the model must not be able to use; options and answer kept.

    ``swap``: each item gets the question of another item, taken in a seeded order and never from an
    item of its own cluster (a question about the same fact would tell the answer); ``blank``: the
    question is removed. ``control_question_from`` says whose question an item got.
    """
    if how not in ("swap", "blank"):
        raise ValueError(f"question-blind control {how!r}: expected swap or blank")
    out = [dict(item) for item in items]
    if how == "blank" or len(items) < 2:
        for item in out:
            item["question"], item["control_question_from"] = "", None
        return out
    order = sorted(range(len(items)), key=lambda i: _rank(str(items[i].get("id", i)), seed))
    clusters = [cluster_key(item) for item in items]
    n = len(order)
    for position, i in enumerate(order):
        donor = None
        for step in range(1, n):
            candidate = order[(position + step) % n]
            if clusters[candidate] != clusters[i]:
                donor = candidate
                break
        donor = order[(position + 1) % n] if donor is None else donor  # one cluster only: any other item
        out[i]["question"] = items[donor]["question"]
        out[i]["control_question_from"] = items[donor].get("id")
    return out


# ---------------------------------------------------------------------------
# Clustered statistics
# ---------------------------------------------------------------------------
def _cluster_sums(values: Sequence[float], clusters: Sequence[str]):
    import numpy as np

    if len(values) != len(clusters):
        raise ValueError(f"{len(values)} values but {len(clusters)} cluster keys")
    index: dict[str, int] = {}
    ids = np.fromiter((index.setdefault(c, len(index)) for c in clusters), dtype=np.int64, count=len(clusters))
    sums = np.bincount(ids, weights=np.asarray(values, dtype=float), minlength=len(index))
    counts = np.bincount(ids, minlength=len(index)).astype(float)
    return sums, counts


def clustered_mean(values: Sequence[float], clusters: Sequence[str], resamples: int = RESAMPLES,
                   seed: int = DEFAULT_SEED, test: bool = True) -> dict:
    """Mean of per-item ``values`` with a cluster bootstrap CI and (``test``) a sign-flip p-value.

    * CI: clusters are resampled with replacement ``resamples`` times; the mean is the resampled
      sum over the resampled item count; the percentile interval at ``CONFIDENCE``.
    * p-value, for paired differences (values in [-1, 1] whose mean is 0 when the two sides are
      exchangeable): the signs of the cluster sums are flipped at random; ``p_two_sided`` is the share
      of flips whose |sum| reaches the observed one, ``p_greater`` the share whose sum reaches it
      from above (the observed sum counts as one flip, so p is never 0).
    """
    import numpy as np

    if not len(values):
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "items": 0, "clusters": 0}
    sums, counts = _cluster_sums(values, clusters)
    total, n = float(sums.sum()), float(counts.sum())
    rng = np.random.default_rng(seed)
    groups = len(sums)
    means, flips_abs, flips_up = [], 0, 0
    chunk = max(1, 2_000_000 // max(groups, 1))
    done = 0
    while done < resamples:
        rows = min(chunk, resamples - done)
        picks = rng.integers(0, groups, size=(rows, groups))
        means.append(sums[picks].sum(axis=1) / counts[picks].sum(axis=1))
        if test:
            signs = rng.integers(0, 2, size=(rows, groups), dtype=np.int8) * 2 - 1
            flipped = signs @ sums
            flips_abs += int((np.abs(flipped) >= abs(total) - 1e-9).sum())
            flips_up += int((flipped >= total - 1e-9).sum())
        done += rows
    boot = np.concatenate(means)
    alpha = (1 - CONFIDENCE) / 2
    result = {"mean": total / n, "ci_low": float(np.quantile(boot, alpha)), "ci_high": float(np.quantile(boot, 1 - alpha)),
              "items": int(n), "clusters": groups, "resamples": resamples, "seed": seed}
    if test:
        result["p_two_sided"] = (1 + flips_abs) / (resamples + 1)
        result["p_greater"] = (1 + flips_up) / (resamples + 1)
    return result


def accuracy_ci(correct: Sequence[bool], clusters: Sequence[str], seed: int = DEFAULT_SEED) -> dict:
    """Accuracy with its clustered 95 % CI (no test: an accuracy is compared with a control, below)."""
    stats = clustered_mean([float(bool(c)) for c in correct], clusters, seed=seed, test=False)
    return {"accuracy": stats["mean"], "ci_low": stats["ci_low"], "ci_high": stats["ci_high"],
            "items": stats["items"], "clusters": stats["clusters"]}


def paired_difference(first: Sequence[bool], second: Sequence[bool], clusters: Sequence[str],
                      seed: int = DEFAULT_SEED) -> dict:
    """``first`` minus ``second`` (both right/wrong per item, same items): the mean difference in
    points with its clustered CI and p-values, plus the discordant counts."""
    values = [float(bool(a)) - float(bool(b)) for a, b in zip(first, second, strict=True)]
    stats = clustered_mean(values, clusters, seed=seed)
    return points(stats) | {"only_first_right": sum(v > 0 for v in values),
                            "only_second_right": sum(v < 0 for v in values)}


def difference_of_differences(first: Sequence[bool], first_control: Sequence[bool], second: Sequence[bool],
                              second_control: Sequence[bool], clusters: Sequence[str],
                              seed: int = DEFAULT_SEED) -> dict:
    """(first - its control) - (second - its control), per item, clustered: how much more the first
    model gains from reading the question than the second does. A gain that only lifts the control
    too (the model learnt which options look like answers) nets out here."""
    values = [(float(bool(a)) - float(bool(ac))) - (float(bool(b)) - float(bool(bc)))
              for a, ac, b, bc in zip(first, first_control, second, second_control, strict=True)]
    return points(clustered_mean(values, clusters, seed=seed))


def points(stats: Mapping[str, Any]) -> dict:
    """A clustered_mean result in percentage points, rounded for reports."""
    out = {"delta_points": round(100 * stats["mean"], 2), "ci95_points": [round(100 * stats["ci_low"], 2),
                                                                         round(100 * stats["ci_high"], 2)],
           "items": stats["items"], "clusters": stats["clusters"]}
    for key in ("p_two_sided", "p_greater"):
        if key in stats:
            out[key] = stats[key]
    return out


def binomial_tail_at_least(successes: int, trials: int, p: float) -> float:
    """P(X >= successes) for X ~ Binomial(trials, p), exactly (sum in log space, no scipy)."""
    if successes <= 0:
        return 1.0
    if successes > trials:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_terms = [math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1)
                 + k * math.log(p) + (trials - k) * math.log1p(-p) for k in range(successes, trials + 1)]
    top = max(log_terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in log_terms))


def sign_test_two_sided(wins: int, losses: int) -> float:
    """Exact two-sided sign test on discordant pairs (McNemar): P of a split at least this uneven."""
    n = wins + losses
    if n == 0:
        return 1.0
    return min(1.0, 2 * binomial_tail_at_least(max(wins, losses), n, 0.5))


ALPHA = 0.05  # a steering comparison counts as a change when its sign test says p < ALPHA


def paired_change(before: Mapping[str, bool], after: Mapping[str, bool], alpha: float = ALPHA) -> dict:
    """Item-by-item change between two scorings of the same questions (``{id: correct}`` each).

    ``delta_points`` is over the shared items; ``p_sign_test`` the exact two-sided sign test on the
    items that changed; ``beyond_noise`` whether p < ``alpha``. A difference inside the noise is
    "no change": the steering policies act on ``counted_points`` (``delta_points`` or 0).
    """
    shared = [key for key in after if key in before]
    gained = sum(after[k] and not before[k] for k in shared)
    lost = sum(before[k] and not after[k] for k in shared)
    delta = 100 * (gained - lost) / len(shared) if shared else 0.0
    p = sign_test_two_sided(gained, lost)
    beyond = bool(shared) and p < alpha
    return {"items": len(shared), "gained": gained, "lost": lost, "delta_points": round(delta, 4),
            "p_sign_test": p, "beyond_noise": beyond, "counted_points": round(delta, 4) if beyond else 0.0}


def noise_floor(items: int, accuracy_pct: float | None, alpha: float = ALPHA) -> dict:
    """What a steering set of ``items`` questions can tell apart, in points.

    ``ci95_half_width_points``: half the 95 % interval of one accuracy near ``accuracy_pct`` (what
    two unpaired scorings may differ by from noise alone); ``min_detectable_points``: the smallest
    paired gain the sign test can call a change (k gained, none lost, p < ``alpha``).
    """
    if items <= 0:
        return {"items": 0, "ci95_half_width_points": None, "min_detectable_points": None}
    rate = min(max((accuracy_pct if accuracy_pct is not None else 50.0) / 100, 0.0), 1.0)
    low, high = wilson_interval(round(rate * items), items)
    k = next((k for k in range(1, items + 1) if sign_test_two_sided(k, 0) < alpha), None)
    return {"items": items, "ci95_half_width_points": round(100 * (high - low) / 2, 2),
            "min_detectable_points": round(100 * k / items, 2) if k else None, "alpha": alpha}


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """Unclustered 95 % interval of a proportion (what a steering set's size alone allows)."""
    if total == 0:
        return float("nan"), float("nan")
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return centre - half, centre + half


# ---------------------------------------------------------------------------
# The controls block of an evaluation report
# ---------------------------------------------------------------------------
def _accuracy_block(correct: Sequence[bool], clusters: Sequence[str], seed: int) -> dict:
    stats = accuracy_ci(correct, clusters, seed)
    return {"accuracy": stats["accuracy"], "correct": int(sum(bool(c) for c in correct)), "total": len(correct),
            "ci95": [stats["ci_low"], stats["ci_high"]]}


def controls_block(items: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]],
                   control_predictions: Sequence[Mapping[str, Any]] | None = None, how: str = DEFAULT_CONTROL,
                   seed: int = DEFAULT_SEED) -> dict:
    """Everything an accuracy is read against, for one scored set.

    ``predictions`` are the model's on ``items``; ``control_predictions`` the same scorer's on
    ``question_blind_items(items, how, seed)`` (None: no question-blind run). Per-item ``correct``
    is read from each prediction; cloze predictions also carry ``correct_norm`` (acc_norm), which
    gets the same treatment under ``*_norm`` keys.
    """
    clusters = [cluster_key(item) for item in items]
    correct = [bool(p["correct"]) for p in predictions]
    block: dict[str, Any] = {
        "cluster_rule": CLUSTER_RULE,
        "clusters": len(set(clusters)),
        "accuracy": _accuracy_block(correct, clusters, seed),
        "chance": chance_rate(items),
        "majority_letter": majority_letter(items),
        "question_blind": None,
        "vs_question_blind": None,
    }
    with_norm = bool(predictions) and all("correct_norm" in p for p in predictions)
    if with_norm:
        block["accuracy_norm"] = _accuracy_block([bool(p["correct_norm"]) for p in predictions], clusters, seed)
    if control_predictions is None:
        return block
    if len(control_predictions) != len(items):
        raise ValueError(f"{len(items)} items but {len(control_predictions)} control predictions")
    control = [bool(p["correct"]) for p in control_predictions]
    block["question_blind"] = {"how": how, "seed": seed, **_accuracy_block(control, clusters, seed)}
    block["vs_question_blind"] = paired_difference(correct, control, clusters, seed)
    if with_norm and all("correct_norm" in p for p in control_predictions):
        control_norm = [bool(p["correct_norm"]) for p in control_predictions]
        block["question_blind"]["norm"] = _accuracy_block(control_norm, clusters, seed)
        block["vs_question_blind_norm"] = paired_difference([bool(p["correct_norm"]) for p in predictions],
                                                            control_norm, clusters, seed)
    return block


def format_p(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2g}" if value >= 1e-4 else "<1e-4"


def vs_control_text(versus: Mapping[str, Any] | None, what: str = "its question-blind control") -> str:
    """'above its question-blind control by 4.1 points (95 % CI 0.9 to 7.3, p 0.012, 150 clusters)'."""
    if not versus:
        return "not compared with a question-blind control (none was run)"
    delta = versus["delta_points"]
    low, high = versus["ci95_points"]
    detail = (f"95 % CI {low:+.1f} to {high:+.1f}, p {format_p(versus.get('p_two_sided'))} two-sided, "
              f"clustered over {versus['clusters']} clusters")
    if delta == 0:
        return f"level with {what} (0.0 points, {detail})"
    return f"{'above' if delta > 0 else 'below'} {what} by {abs(delta):.1f} points ({detail})"
