"""FiF's headline metrics."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from clipflux.metrics import fif_scores

score = st.floats(0, 100, allow_nan=False)


def test_known_values():
    scores = {"a1": 80.0, "a2": 40.0, "e1": 50.0}
    roles = {"a1": "adaptation", "a2": "adaptation", "e1": "evaluation"}
    out = fif_scores(scores, roles)
    assert out["A_KA"] == 60.0 and out["A_ZS"] == 50.0
    assert math.isclose(out["GM"], math.sqrt(3000.0))


@given(st.lists(score, min_size=1, max_size=6), st.lists(score, min_size=1, max_size=6), st.randoms())
def test_range_gm_bound_and_permutation_invariance(ka, zs, rnd):
    scores = {f"a{i}": s for i, s in enumerate(ka)} | {f"e{i}": s for i, s in enumerate(zs)}
    roles = {k: "adaptation" if k[0] == "a" else "evaluation" for k in scores}
    out = fif_scores(scores, roles)
    for value in out.values():
        assert 0 <= value <= 100 + 1e-9
    assert out["GM"] <= max(out["A_KA"], out["A_ZS"]) + 1e-9
    keys = list(scores)
    rnd.shuffle(keys)
    shuffled = fif_scores({k: scores[k] for k in keys}, roles)
    assert all(math.isclose(out[k], shuffled[k], abs_tol=1e-9) for k in out)
