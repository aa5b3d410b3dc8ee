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
