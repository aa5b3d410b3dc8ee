"""The study's metrics: FiF's A_KA / A_ZS / GM, TiC's transfer on E[i][j], GEM's BWT / FWT, forgetting."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clipflux.metrics import (aggregate_metrics, display_decimals, headline_metrics, fif_scores, forgetting, forgetting_per_dataset, headline,
                              sample_std, seed_mean, seed_std, tic_scores)

score = st.floats(0, 100, allow_nan=False)


def test_known_values():
    scores = {"a1": 80.0, "a2": 40.0, "e1": 50.0}
    roles = {"a1": "adaptation", "a2": "adaptation", "e1": "evaluation"}
    out = fif_scores(scores, roles)
    assert out["A_KA"] == 60.0 and out["A_ZS"] == 50.0
    assert math.isclose(out["GM"], math.sqrt(3000.0))


def test_retrieval_datasets_count_their_recall_at_5_once_each():
    """FiF's results script: KA = (40 acc + 1 R@5) / 41, i.e. every dataset weighs the same."""
    metrics = {
        "cls_a": ("classification", {"acc": 90.0}),
        "cls_b": ("classification", {"acc": 30.0}),
        "ret_a": ("retrieval", {"R@1": 10.0, "R@5": 45.0, "R@10": 60.0}),
        "cls_e": ("classification", {"acc": 70.0}),
        "ret_e": ("retrieval", {"R@1": 5.0, "R@5": 20.0, "R@10": 50.0}),
    }
    roles = {"cls_a": "adaptation", "cls_b": "adaptation", "ret_a": "adaptation",
             "cls_e": "evaluation", "ret_e": "evaluation"}
    scores = {name: headline(task, m) for name, (task, m) in metrics.items()}
    out = fif_scores(scores, roles)
    assert out["A_KA"] == pytest.approx((2 * 60.0 + 1 * 45.0) / 3)  # 55
    assert out["A_ZS"] == pytest.approx((70.0 + 20.0) / 2)  # 45
    assert out["GM"] == pytest.approx(math.sqrt(55.0 * 45.0))


def test_a_group_without_datasets_has_no_mean_and_no_gm():
    assert fif_scores({"a": 40.0}, {"a": "adaptation"}) == {"A_KA": 40.0}
    assert fif_scores({"e": 70.0}, {"e": "evaluation"}) == {"A_ZS": 70.0}
    with pytest.raises(ValueError, match="no headline metric"):
        headline("captions", {})


def test_tic_on_a_hand_made_matrix_with_negative_forward_transfer():
    # E[i][j]: score on time step j after training on step i. Before the stream the model scored 30 on every
    # step; training on step i helps step i, is forgotten a little later, and *hurts* later steps.
    e = [[50, 20, 10],
         [45, 60, 25],
         [40, 55, 70]]
    out = tic_scores(e, base=[30, 30, 30])
    assert out["in_domain"] == pytest.approx((50 + 60 + 70) / 3)
    assert out["backward"] == pytest.approx((45 + 40 + 55) / 3)
    assert out["forward"] == pytest.approx((20 + 10 + 25) / 3)
    assert out["bwt"] == pytest.approx(((40 - 50) + (55 - 60)) / 2)  # -7.5: forgetting
    assert out["fwt"] == pytest.approx(((20 - 30) + (25 - 30)) / 2)  # -7.5: negative forward transfer


def test_tic_positive_transfer_lists_of_lists_and_edge_cases():
    e = [[40.0, 35.0], [45.0, 50.0]]
    out = tic_scores(e, base=[20.0, 25.0])
    assert out == pytest.approx({"in_domain": 45.0, "backward": 45.0, "forward": 35.0, "bwt": 5.0, "fwt": 10.0})
    assert tic_scores([[30.0]]) == {"in_domain": 30.0}  # one step: nothing before or after it
    assert "fwt" not in tic_scores(e)  # FWT needs the scores before the stream
    with pytest.raises(ValueError, match="square"):
        tic_scores([[1.0, 2.0]])
    with pytest.raises(ValueError, match="base has 1 scores"):
        tic_scores(e, base=[1.0])


def test_forgetting_is_best_earlier_minus_final():
    assert forgetting([10.0, 50.0, 40.0, 45.0]) == 5.0
    assert forgetting([10.0, 20.0]) == -10.0  # the end is the best: negative forgetting
    assert forgetting([33.0]) == 0.0
    rows = [{"a": 10.0, "e": 80.0}, {"a": 60.0, "e": 70.0}, {"a": 50.0, "e": 75.0}]
    assert forgetting_per_dataset(rows) == {"a": 10.0, "e": 5.0}


@given(st.lists(score, min_size=1, max_size=6), st.lists(score, min_size=1, max_size=6), st.randoms())
def test_range_gm_bound_and_permutation_invariance(ka, zs, rnd):
    scores = {f"a{i}": s for i, s in enumerate(ka)} | {f"e{i}": s for i, s in enumerate(zs)}
    roles = {k: "adaptation" if k[0] == "a" else "evaluation" for k in scores}
    out = fif_scores(scores, roles)
    for value in out.values():
        assert 0 <= value <= 100 + 1e-9
    assert min(out["A_KA"], out["A_ZS"]) - 1e-9 <= out["GM"] <= max(out["A_KA"], out["A_ZS"]) + 1e-9
    keys = list(scores)
    rnd.shuffle(keys)
    shuffled = fif_scores({k: scores[k] for k in keys}, roles)
    assert all(math.isclose(out[k], shuffled[k], abs_tol=1e-9) for k in out)


@given(st.integers(1, 6).flatmap(lambda t: st.tuples(
    st.lists(st.lists(score, min_size=t, max_size=t), min_size=t, max_size=t), st.lists(score, min_size=t, max_size=t))))
def test_tic_scores_stay_in_range(matrix_and_base):
    matrix, base = matrix_and_base
    out = tic_scores(matrix, base)
    for key in ("in_domain", "backward", "forward"):
        if key in out:
            assert -1e-9 <= out[key] <= 100 + 1e-9
    for key in ("bwt", "fwt"):
        if key in out:
            assert -100 - 1e-9 <= out[key] <= 100 + 1e-9
    history = [row[0] for row in matrix]
    assert -100 <= forgetting(history) <= 100


# -- several seeds -------------------------------------------------------------------------------------

def _metrics(ka: float, zs: float, forget: float, in_domain: float) -> dict:
    """A metrics.json as `summarize` writes it, FiF and TiC sections both (rounded to 4 decimals)."""
    gm = round(math.sqrt(ka * zs), 4)
    return {"task_00": {"A_KA": 19.0, "A_ZS": 60.0, "GM": 33.7639},
            "task_01": {"A_KA": ka, "A_ZS": zs, "GM": gm},
            "final": {"A_KA": ka, "A_ZS": zs, "GM": gm},
            "forgetting": {"mean_adaptation": -1.0, "mean_evaluation": forget, "shapes": 2 * forget},
            "tic": {"tic_cls": {"in_domain": in_domain, "backward": 40.0}}}


def test_one_seed_is_the_identity_down_to_the_bytes():
    one = _metrics(40.1865, 49.7583, 15.1111, 61.8638)
    assert json.dumps(aggregate_metrics([one]), indent=1) == json.dumps(one, indent=1)


def test_three_seeds_mean_and_sample_std_next_to_each_final_number():
    out = aggregate_metrics([_metrics(30.0, 50.0, 1.0, 60.0), _metrics(40.0, 50.0, 2.0, 62.0),
                             _metrics(50.0, 50.0, 6.0, 70.0)])
    assert list(out) == ["task_00", "task_01", "final", "forgetting", "tic", "seeds"] and out["seeds"] == 3
    assert list(out["final"]) == ["A_KA", "A_KA_std", "A_ZS", "A_ZS_std", "GM", "GM_std"]
    assert out["final"]["A_KA"] == 40.0 and out["final"]["A_KA_std"] == 10.0  # sqrt((100 + 0 + 100) / 2)
    assert out["final"]["A_ZS"] == 50.0 and out["final"]["A_ZS_std"] == 0.0
    assert out["task_00"] == {"A_KA": 19.0, "A_ZS": 60.0, "GM": 33.7639}  # no std per task: the file stays small
    assert "A_KA_std" not in out["task_01"] and out["task_01"]["A_KA"] == 40.0
    assert out["forgetting"] == {"mean_adaptation": -1.0, "mean_adaptation_std": 0.0, "mean_evaluation": 3.0,
                                 "mean_evaluation_std": round(math.sqrt(7.0), 4), "shapes": 6.0}
    assert out["tic"]["tic_cls"] == {"in_domain": 64.0, "in_domain_std": round(math.sqrt(28.0), 4),
                                     "backward": 40.0, "backward_std": 0.0}


def test_seed_trees_keep_what_all_seeds_share():
    trees = [{"after_task": 2, "name": "a", "subset": True, "m": [[1.0, 2.0]], "only": 5.0},
             {"after_task": 2, "name": "a", "subset": True, "m": [[3.0, 2.0]]}]
    mean, std = seed_mean(trees), seed_std(trees)
    assert mean == {"after_task": 2, "name": "a", "subset": True, "m": [[2.0, 2.0]], "only": 5.0}
    assert isinstance(mean["after_task"], int)
    assert std == {"after_task": 0.0, "m": [[math.sqrt(2.0), 0.0]]}  # names, flags and a one-seed key: no spread
    with pytest.raises(ValueError, match="length"):
        seed_mean([{"m": [1.0]}, {"m": [1.0, 2.0]}])
    with pytest.raises(ValueError, match="two"):
        sample_std([1.0])


@given(st.lists(st.tuples(score, score, score, score), min_size=1, max_size=5))
def test_aggregate_mean_within_the_seeds_std_non_negative(seeds):
    per_seed = [_metrics(*(round(v, 4) for v in s)) for s in seeds]
    out = aggregate_metrics(per_seed)
    if len(per_seed) == 1:
        assert out == per_seed[0]
        return
    assert out["seeds"] == len(per_seed)
    for section, key in (("final", "A_KA"), ("final", "GM"), ("forgetting", "mean_evaluation")):
        values = [m[section][key] for m in per_seed]
        assert min(values) - 1e-4 <= out[section][key] <= max(values) + 1e-4
        assert out[section][f"{key}_std"] >= 0
        assert out[section][f"{key}_std"] <= (max(values) - min(values)) + 1e-4  # never wider than the range
    values = [m["tic"]["tic_cls"]["in_domain"] for m in per_seed]
    assert min(values) - 1e-4 <= out["tic"]["tic_cls"]["in_domain"] <= max(values) + 1e-4


# -- the headline: DVC's metrics, and what a runs table shows ------------------------------------------

def test_headline_keeps_the_final_numbers_under_the_experiments_name():
    three = aggregate_metrics([_metrics(30.0, 50.0, 1.0, 60.0), _metrics(40.0, 50.0, 2.0, 62.0),
                               _metrics(50.0, 50.0, 6.0, 70.0)])
    out = headline_metrics("lora", three)
    assert list(out) == ["lora"]
    assert list(out["lora"]) == ["A_KA", "A_KA_std", "A_ZS", "A_ZS_std", "GM", "GM_std", "forgetting",
                                 "forgetting_std", "tic_cls.in_domain", "tic_cls.in_domain_std", "tic_cls.backward",
                                 "tic_cls.backward_std", "seeds"]
    assert out["lora"]["A_KA"] == 40.0 and out["lora"]["forgetting"] == -1.0 and out["lora"]["seeds"] == 3
    one = headline_metrics("finetune", _metrics(40.1865, 49.7583, 15.1111, 61.8638))["finetune"]
    assert one == {"A_KA": 40.1865, "A_ZS": 49.7583, "GM": _metrics(40.1865, 49.7583, 0, 0)["final"]["GM"],
                   "forgetting": -1.0, "tic_cls.in_domain": 61.8638, "tic_cls.backward": 40.0}


@given(st.lists(st.integers(1, 10**6), min_size=1, max_size=50), st.integers(1, 10**6))
def test_display_decimals_resolve_one_sample_and_grow_with_the_sets(sizes, more):
    decimals = display_decimals(sizes)
    assert 0 <= decimals <= 4
    step = 100.0 / (len(sizes) * max(sizes))  # one sample more in the largest set
    if decimals < 4:
        assert 10.0 ** -decimals <= step * 10 + 1e-9  # enough digits to show what one sample moves
    if decimals > 0:
        assert 10.0 ** -decimals > step / 10 - 1e-12  # and no digit below it
    assert round(step, decimals) > 0 or decimals == 4  # the step shows
    assert display_decimals(sizes + [max(sizes) + more]) >= decimals
