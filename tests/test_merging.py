"""The merging operators on hand-made state dicts, and their properties (hypothesis)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from clipflux.methods import merging


def sd(*values: float, name: str = "w") -> dict[str, torch.Tensor]:
    return {name: torch.tensor(values, dtype=torch.float64)}


# -- hand-made cases --------------------------------------------------------------------------------------


def test_ties_trims_each_task_vector_to_its_largest_entries():
    base = sd(0, 0, 0, 0)
    one = sd(4, -3, 0.5, 0.1)
    # density 0.5 keeps the two largest magnitudes (4 and -3) and zeroes the rest.
    assert torch.equal(merging.trim(merging.task_vectors([one], base), 0.5),
                       torch.tensor([[4, -3, 0, 0]], dtype=torch.float64))
    assert torch.equal(merging.ties([one], base, density=0.5, scale=1.0)["w"], torch.tensor([4.0, -3, 0, 0]).double())


def test_ties_elects_the_sign_of_the_larger_mass_and_averages_only_agreeing_entries():
    base = sd(1, 1, 1)
    a = sd(1 + 3, 1 - 1, 1 + 2)  # task vector (3, -1, 2)
    b = sd(1 - 1, 1 - 2, 1 + 4)  # task vector (-1, -2, 4)
    c = sd(1 + 1, 1 + 4, 1 - 1)  # task vector (1, 4, -1)
    merged = merging.ties([a, b, c], base, density=1.0, scale=1.0)["w"]
    # entry 0: mass 3 - 1 + 1 = 3 > 0 -> mean of (3, 1) = 2; entry 1: mass -1 - 2 + 4 = 1 > 0 -> only 4;
    # entry 2: mass 2 + 4 - 1 = 5 > 0 -> mean of (2, 4) = 3.
    assert torch.allclose(merged, torch.tensor([1 + 2, 1 + 4, 1 + 3], dtype=torch.float64))


def test_ties_trims_before_electing_and_scales_the_merged_vector():
    base = sd(0, 0)
    a = sd(5, -0.1)
    b = sd(-1, 2)
    # density 0.5: a keeps 5, b keeps 2 -> no conflict left: (5, 2); scale 0.5 halves it.
    assert torch.allclose(merging.ties([a, b], base, 0.5, 0.5)["w"], torch.tensor([2.5, 1.0], dtype=torch.float64))


def test_elect_sign_breaks_ties_by_the_total_mass():
    vectors = torch.tensor([[1.0, 2.0, -1.0], [-1.0, 1.0, -1.5]])
    assert torch.equal(merging.elect_sign(vectors), torch.tensor([1.0, 1.0, -1.0]))


def test_task_arithmetic_adds_scaled_task_vectors():
    base, a, b = sd(1, 2), sd(2, 2), sd(1, 5)
    assert torch.allclose(merging.task_arithmetic([a, b], base, 1.0)["w"], torch.tensor([2.0, 5.0]).double())
    assert torch.allclose(merging.task_arithmetic([a, b], base, 0.5)["w"], torch.tensor([1.5, 3.5]).double())


def test_dare_drops_with_the_seeded_generator_and_rescales():
    vectors = torch.ones(1, 10_000, dtype=torch.float64)
    first = merging.dare(vectors, 0.25, torch.Generator().manual_seed(1))
    again = merging.dare(vectors, 0.25, torch.Generator().manual_seed(1))
    assert torch.equal(first, again)
    assert set(first.unique().tolist()) == {0.0, 4.0}  # kept entries are divided by the density
    assert abs((first != 0).double().mean().item() - 0.25) < 0.02
    assert not torch.equal(first, merging.dare(vectors, 0.25, torch.Generator().manual_seed(2)))


def test_slerp_of_orthogonal_unit_vectors_stays_on_the_circle():
    a, b = sd(1, 0), sd(0, 1)
    mid = merging.slerp(a, b, 0.5)["w"]
    assert torch.allclose(mid, torch.tensor([math.sqrt(0.5)] * 2, dtype=torch.float64))
    assert torch.allclose(merging.interpolate(a, b, 0.5)["w"], torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_slerp_of_parallel_tensors_is_linear():
    a, b = sd(1, 2), sd(2, 4)
    assert torch.allclose(merging.slerp(a, b, 0.25)["w"], merging.interpolate(a, b, 0.25)["w"])


def test_integer_entries_are_copied_and_keys_must_match():
    a = {"w": torch.tensor([1.0]), "n": torch.tensor([3])}
    b = {"w": torch.tensor([2.0]), "n": torch.tensor([7])}
    for merged in (merging.interpolate(a, b, 0.5), merging.ties([b], a, 1.0, 1.0), merging.slerp(a, b, 0.3)):
        assert merged["n"].item() == 3
    with pytest.raises(ValueError, match="different keys"):
        merging.interpolate(a, {"w": torch.tensor([1.0])}, 0.5)


# -- properties -------------------------------------------------------------------------------------------

values = st.floats(-10, 10, allow_nan=False, width=32)


@st.composite
def states(draw, count: int = 2):
    """`count` state dicts with the same two entries of random shapes."""
    shapes = [(draw(st.integers(1, 6)),), (draw(st.integers(1, 3)), draw(st.integers(1, 3)))]
    out = []
    for _ in range(count):
        out.append({f"p{i}": torch.tensor(draw(st.lists(values, min_size=math.prod(s), max_size=math.prod(s))),
                                          dtype=torch.float64).reshape(s) for i, s in enumerate(shapes)})
    return out


def close(a: dict, b: dict, atol: float = 1e-9) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol) for k in a)


@given(states(3))
def test_task_arithmetic_with_scale_zero_is_the_base(s):
    base, *models = s
    assert close(merging.task_arithmetic(models, base, 0.0), base)


@given(states(2), st.floats(0, 1))
def test_interpolation_endpoints_and_bounds(s, alpha):
    a, b = s
    assert close(merging.interpolate(a, b, 0.0), a) and close(merging.interpolate(a, b, 1.0), b)
    merged = merging.interpolate(a, b, alpha)
    for k in a:
        lo, hi = torch.minimum(a[k], b[k]), torch.maximum(a[k], b[k])
        assert ((merged[k] >= lo - 1e-9) & (merged[k] <= hi + 1e-9)).all()


@given(states(2))
def test_slerp_endpoints(s):
    a, b = s
    assert close(merging.slerp(a, b, 0.0), a, atol=1e-6) and close(merging.slerp(a, b, 1.0), b, atol=1e-6)


@given(states(2), st.floats(0.05, 1.0))
def test_ties_of_one_model_is_its_trimmed_task_vector(s, density):
    base, model = s
    merged = merging.ties([model], base, density, 1.0)
    delta = merging.task_vectors([merged], base)[0]
    original = merging.task_vectors([model], base)[0]
    kept = delta != 0
    assert torch.allclose(delta[kept], original[kept])  # kept entries are unchanged
    assert kept.sum() <= math.ceil(density * original.numel())
    if kept.any() and (~kept).any():  # nothing dropped is larger than what was kept
        assert original[~kept].abs().max() <= original[kept].abs().min() + 1e-12
    assert close(merging.ties([model], base, 1.0, 1.0), model)


@given(states(4), st.floats(0.05, 1.0))
def test_ties_is_order_free_and_each_entry_lies_within_the_agreeing_values(s, density):
    base, *models = s
    merged = merging.ties(models, base, density, 1.0)
    assert close(merged, merging.ties(models[::-1], base, density, 1.0))
    tv = merging.trim(merging.task_vectors(models, base), density)
    delta = merging.task_vectors([merged], base)[0]
    assert (delta.abs() <= tv.abs().max(dim=0).values + 1e-9).all()
    assert (delta * merging.elect_sign(tv) >= -1e-12).all()  # never against the elected sign


@given(states(3), st.integers(0, 2**31 - 1))
def test_dare_ties_is_deterministic_per_seed_and_without_drops_equals_ties(s, seed):
    base, *models = s
    run = lambda: merging.dare_ties(models, base, 0.5, 1.0, torch.Generator().manual_seed(seed))  # noqa: E731
    assert close(run(), run())
    no_drop = merging.dare_ties(models, base, 1.0, 1.0, torch.Generator().manual_seed(seed))
    assert close(no_drop, merging.ties(models, base, 1.0, 1.0))


# -- FiF's other operators (Breadcrumbs-TIES, MagMax, Model Stock, TALL masks, random) and LiNeS -----------------


def test_breadcrumbs_drops_both_magnitude_tails():
    base = sd(*[0.0] * 10)
    one = sd(10, -9, 8, 7, -6, 5, 4, -3, 2, 1)
    # density 0.6 drops the 4 smallest magnitudes (4, 3, 2, 1), top_drop 0.2 the 2 largest (10, 9).
    kept = merging.breadcrumbs(merging.task_vectors([one], base), density=0.6, top_drop=0.2)
    assert torch.equal(kept, torch.tensor([[0, 0, 8, 7, -6, 5, 0, 0, 0, 0]], dtype=torch.float64))
    # Merged alone with TIES's sign election and disjoint mean, the survivors are the merged task vector.
    merged = merging.breadcrumbs_ties([one], base, density=0.6, top_drop=0.2, scale=0.5)["w"]
    assert torch.equal(merged, 0.5 * kept[0])
    with pytest.raises(ValueError, match="leaves none"):
        merging.breadcrumbs(kept, density=0.2, top_drop=0.2)


def test_magmax_takes_the_largest_magnitude_update_of_each_entry():
    base = sd(1, 1, 1, 1)
    a = sd(1 + 3, 1 - 5, 1 + 0.5, 1 + 2)  # task vector (3, -5, 0.5, 2)
    b = sd(1 - 4, 1 + 1, 1 + 0.25, 1 - 2)  # task vector (-4, 1, 0.25, -2): a tie in the last entry
    merged = merging.magmax([a, b], base, scale=1.0)["w"]
    assert torch.equal(merged, torch.tensor([1 - 4, 1 - 5, 1 + 0.5, 1 + 2], dtype=torch.float64))  # tie: a's
    assert torch.equal(merging.magmax([a, b], base, scale=0.5)["w"], torch.tensor([-1, -1.5, 1.25, 2]).double())


def test_model_stock_ratio_comes_from_the_angle_between_the_task_vectors():
    base = {"w": torch.tensor([1.0, 1.0], dtype=torch.float64), "v": torch.zeros(2, dtype=torch.float64)}
    # w: task vectors (2, 0) and (1, 1), 45 degrees apart: cos = 1/sqrt(2), ratio = 2 cos / (1 + cos).
    a = {"w": torch.tensor([3.0, 1.0], dtype=torch.float64), "v": torch.tensor([1.0, 0.0], dtype=torch.float64)}
    b = {"w": torch.tensor([2.0, 2.0], dtype=torch.float64), "v": torch.tensor([0.0, 1.0], dtype=torch.float64)}
    merged = merging.model_stock(a, b, base)
    cos = 1 / math.sqrt(2)
    ratio = 2 * cos / (1 + cos)
    assert torch.allclose(merged["w"], ratio * torch.tensor([2.5, 1.5]).double() + (1 - ratio) * base["w"])
    # v: orthogonal task vectors, cos = 0: ratio 0, the base itself.
    assert torch.allclose(merged["v"], base["v"])
    # The same direction (cos = 1): ratio 1, the plain average.
    assert torch.allclose(merging.model_stock(a, a, base)["w"], a["w"])


def test_tall_masks_keep_the_summed_task_vector_where_enough_tasks_agree():
    base = sd(0, 0, 0)
    a = sd(2, 0.1, 1)  # task vectors tau_a, tau_b; tau = (2, 2.1, 2)
    b = sd(0, 2, 1)
    # |tau_t| > 0.4 |tau - tau_t|: a (2 > 0, 0.1 > 0.8? no, 1 > 0.4), b (0 > 0.8? no, 2 > 0.04, 1 > 0.4)
    both = merging.tall_masks([a, b], base, scale=1.0, lam=0.4, min_tasks=2)["w"]
    assert torch.equal(both, torch.tensor([0, 0, 2], dtype=torch.float64))
    one = merging.tall_masks([a, b], base, scale=1.0, lam=0.4, min_tasks=1)["w"]
    assert torch.equal(one, torch.tensor([2, 2.1, 2], dtype=torch.float64))
    # FiF's default threshold 0 keeps everything: task arithmetic.
    assert torch.equal(merging.tall_masks([a, b], base, 1.0, 0.4, 0)["w"],
                       merging.task_arithmetic([a, b], base, 1.0)["w"])


def test_random_merge_takes_each_entry_from_one_model_drawn_with_the_generator():
    base = sd(*[0.0] * 64)
    a, b = sd(*[1.0] * 64), sd(*[-1.0] * 64)
    merged = merging.random_merge([a, b], base, 1.0, torch.Generator().manual_seed(3))["w"]
    assert set(merged.tolist()) == {1.0, -1.0}  # every entry from a or b, both drawn
    again = merging.random_merge([a, b], base, 1.0, torch.Generator().manual_seed(3))["w"]
    assert torch.equal(merged, again)


def test_lines_scales_the_first_block_by_alpha_and_the_last_by_alpha_plus_beta():
    base = {f"transformer.resblocks.{i}.w": torch.zeros(2) for i in range(5)} | {"ln_final.weight": torch.zeros(1)}
    for shape, expected in [("linear", [0.1, 0.3, 0.5, 0.7, 0.9]), ("quadratic", [0.1, 0.15, 0.3, 0.55, 0.9]),
                            ("sqrt", [0.1, 0.1 + 0.8 * 0.5, 0.1 + 0.8 * 0.5 ** 0.5, 0.1 + 0.8 * 0.75 ** 0.5, 0.9])]:
        factors = merging.lines_scaling(base, alpha=0.1, beta=0.8, shape=shape)
        per_key = factors.reshape(-1)[[0, 2, 4, 6, 8, 10]].tolist()
        assert per_key == pytest.approx(expected + [0.1]), shape  # outside the blocks: alpha
    # As the scale of task arithmetic: block l's update times its factor.
    model = {k: torch.ones_like(v) for k, v in base.items()}
    merged = merging.task_arithmetic([model], base, merging.lines_scaling(base, 0.1, 0.8, "linear"))
    assert merged["transformer.resblocks.4.w"].tolist() == pytest.approx([0.9, 0.9])
    with pytest.raises(ValueError, match="resblocks"):
        merging.lines_scaling({"conv.weight": torch.zeros(1)}, 0.5, 0.5, "linear")


@given(states(3), st.floats(0.3, 1.0), st.floats(0.0, 0.2))
def test_breadcrumbs_keeps_a_middle_band_of_each_task_vector(s, density, top_drop):
    base, *models = s
    vectors = merging.task_vectors(models, base)
    if int((1 - density) * vectors.shape[1]) + int(top_drop * vectors.shape[1]) >= vectors.shape[1]:
        return
    kept = merging.breadcrumbs(vectors, density, top_drop)
    for row, out in zip(vectors, kept):
        on = out != 0
        assert torch.equal(out[on], row[on])  # survivors unchanged
        if on.any() and (~on & (row != 0)).any():  # each dropped entry lies outside the survivors' band
            dropped = row[~on & (row != 0)].abs()
            lo, hi = row[on].abs().min(), row[on].abs().max()
            assert ((dropped <= lo) | (dropped >= hi)).all()


@given(states(3))
def test_magmax_picks_per_entry_a_model_update_of_largest_magnitude(s):
    base, *models = s
    delta = merging.task_vectors([merging.magmax(models, base, 1.0)], base)[0]
    vectors = merging.task_vectors(models, base)
    assert torch.allclose(delta.abs(), vectors.abs().max(dim=0).values)
    assert ((delta.unsqueeze(0) - vectors).abs().min(dim=0).values < 1e-9).all()  # one of the models' values


# -- many models at once: the weighted average and FiF's weightings -----------------------------------------


def test_weights_of_are_fifs_hand_computed_lists():
    assert merging.weights_of("uniform", 4) == [0.25] * 4
    assert merging.weights_of("linear", 3) == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert merging.weights_of("exp", 3) == pytest.approx([1 / 7, 2 / 7, 4 / 7])
    assert merging.weights_of("reverse_exp", 3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert merging.weights_of("quadratic", 2) == pytest.approx([1 / 5, 4 / 5])
    assert merging.weights_of("log", 2) == pytest.approx([math.log(2) / math.log(6), math.log(3) / math.log(6)])


@given(kind=st.sampled_from(["linear", "sqrt", "quadratic", "cubic", "fifth", "tenth", "exp", "log"]),
       n=st.integers(1, 30))
def test_weightings_sum_to_one_favour_the_newest_and_reverse(kind, n):
    weights = merging.weights_of(kind, n)
    assert len(weights) == n and math.isclose(sum(weights), 1.0, rel_tol=1e-9)
    assert all(a < b for a, b in zip(weights, weights[1:]))
    assert merging.weights_of(f"reverse_{kind}", n) == weights[::-1]


def test_weighted_average_sums_each_model_times_its_weight():
    a, b, c = ({"w": torch.full((2,), v), "n": torch.tensor(v, dtype=torch.long)} for v in (1.0, 2.0, 4.0))
    merged = merging.weighted_average([a, b, c], [0.5, 0.25, 0.25])
    assert torch.equal(merged["w"], torch.full((2,), 0.5 * 1 + 0.25 * 2 + 0.25 * 4))
    assert merged["n"] == 1  # non-floating entries from the first model
    with pytest.raises(ValueError, match="3 models need 3 weights summing to 1"):
        merging.weighted_average([a, b, c], [0.5, 0.5])
