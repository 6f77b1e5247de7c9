"""The controls beside every accuracy (script/controls.py): baselines, the question-blind items and
the clustered statistics that compare a model with them."""

import pytest

from script import controls


def item(i, answer="A", gold_text=None, question=None, n_options=5, cluster=None):
    options = {letter: f"선택지 {i}-{letter}" for letter in "ABCDE"[:n_options]}
    if gold_text is not None:
        options[answer] = gold_text
    row = {"id": f"q{i}", "question": question or f"질문 {i}: 가장 알맞은 것은?", "options": options, "answer": answer}
    if cluster is not None:
        row["meta"] = {"cluster": cluster}
    return row


def test_chance_and_majority_letter():
    items = [item(0, "A"), item(1, "D"), item(2, "D"), item(3, "B", n_options=4)]
    assert controls.chance_rate(items) == pytest.approx((3 * 0.2 + 0.25) / 4)
    majority = controls.majority_letter(items)
    assert majority["letter"] == "D" and majority["accuracy"] == 0.5 and majority["gold_letters"] == {"A": 1, "B": 1, "D": 2}
    assert controls.majority_letter([item(0, "B"), item(1, "A")])["letter"] == "A"  # ties: the first letter


def test_clusters_follow_the_right_answers_text_unless_the_data_says():
    same_fact = [item(0, "A", "폐렴"), item(1, "C", " 폐렴. ")]
    assert controls.cluster_key(same_fact[0]) == controls.cluster_key(same_fact[1])
    assert controls.cluster_key(item(2, "A", "천식")) != controls.cluster_key(same_fact[0])
    assert controls.cluster_key(item(3, "A", "폐렴", cluster="c1")) == "meta:c1"


def test_swap_gives_every_item_another_clusters_question_and_keeps_options():
    items = [item(i, "ABCDE"[i % 5], gold_text=f"답{i % 4}") for i in range(12)]
    swapped = controls.question_blind_items(items, "swap", seed=7)
    by_id = {row["id"]: row for row in items}
    for original, blind in zip(items, swapped):
        assert blind["options"] == original["options"] and blind["answer"] == original["answer"]
        donor = by_id[blind["control_question_from"]]
        assert donor["id"] != original["id"] and blind["question"] == donor["question"]
        assert controls.cluster_key(donor) != controls.cluster_key(original)
    assert items[0]["question"].startswith("질문 0")  # the input is not changed
    assert controls.question_blind_items(items, "swap", seed=7) == swapped  # seeded
    assert controls.question_blind_items(items, "swap", seed=8) != swapped
    assert all(row["question"] == "" for row in controls.question_blind_items(items, "blank"))
    with pytest.raises(ValueError):
        controls.question_blind_items(items, "none")


def test_clustered_mean_of_a_clear_effect_and_of_noise():
    clusters = [f"c{i // 2}" for i in range(200)]
    clear = controls.clustered_mean([1.0 if i % 4 else 0.0 for i in range(200)], clusters, resamples=2000)
    assert clear["mean"] == pytest.approx(0.75) and clear["ci_low"] < 0.75 < clear["ci_high"]
    assert clear["clusters"] == 100 and clear["p_two_sided"] < 0.001
    balanced = controls.clustered_mean([(-1.0) ** i for i in range(200)], [f"c{i}" for i in range(200)],
                                       resamples=2000)
    assert balanced["mean"] == 0 and balanced["p_two_sided"] > 0.5
    assert balanced["ci_low"] < 0 < balanced["ci_high"]


def test_clustering_widens_the_interval_of_correlated_items():
    values = [1.0] * 50 + [0.0] * 50
    independent = controls.accuracy_ci([bool(v) for v in values], [f"c{i}" for i in range(100)])
    lumped = controls.accuracy_ci([bool(v) for v in values], [f"c{i // 10}" for i in range(100)])
    assert independent["accuracy"] == lumped["accuracy"] == 0.5
    assert lumped["clusters"] == 10
    assert (lumped["ci_high"] - lumped["ci_low"]) > 1.5 * (independent["ci_high"] - independent["ci_low"])


def test_paired_difference_counts_discordant_items_and_nets_out_the_control():
    first = [True, True, True, False, True, False]
    second = [True, False, False, False, True, True]
    diff = controls.paired_difference(first, second, [str(i) for i in range(6)], seed=1)
    assert diff["delta_points"] == pytest.approx(100 * 1 / 6, abs=0.01)
    assert diff["only_first_right"] == 2 and diff["only_second_right"] == 1
    # a gain that only lifts the control as much as the model nets out to zero
    model, model_blind = [True, True, False, False], [True, False, False, False]
    base, base_blind = [True, False, False, False], [False, False, False, False]
    assert controls.difference_of_differences(model, model_blind, base, base_blind, list("abcd"))["delta_points"] == 0


def test_controls_block_of_a_cloze_run():
    items = [item(i, "ABCDE"[i % 5], gold_text=f"답{i}") for i in range(10)]
    predictions = [{"correct": i < 6, "correct_norm": i < 5} for i in range(10)]
    blind = [{"correct": i < 2, "correct_norm": i < 3} for i in range(10)]
    block = controls.controls_block(items, predictions, blind, "swap", seed=3)
    assert block["accuracy"]["accuracy"] == 0.6 and block["question_blind"]["accuracy"] == 0.2
    assert block["vs_question_blind"]["delta_points"] == pytest.approx(40.0)
    assert block["accuracy_norm"]["accuracy"] == 0.5 and block["question_blind"]["norm"]["accuracy"] == 0.3
    assert block["vs_question_blind_norm"]["delta_points"] == pytest.approx(20.0)
    assert block["clusters"] == 10 and block["chance"] == pytest.approx(0.2)
    text = controls.vs_control_text(block["vs_question_blind"])
    assert text.startswith("above its question-blind control by 40.0 points (95 % CI")
    alone = controls.controls_block(items, predictions)
    assert alone["question_blind"] is None and "none was run" in controls.vs_control_text(None)
    with pytest.raises(ValueError):
        controls.controls_block(items, predictions, blind[:3])
