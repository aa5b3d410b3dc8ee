"""The study's metrics: FiF's A_KA / A_ZS / GM, TiC's transfer on E[i][j], GEM's BWT / FWT, forgetting."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clipflux.metrics import fif_scores, forgetting, forgetting_per_dataset, headline, tic_scores

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
