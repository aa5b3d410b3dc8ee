"""FiF's evaluation subsets (size rule, class balance, seeds) and the validation split."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clipflux.subsets import class_balanced_subset, evaluation_plan, subset_size, validation_keys


def test_subset_size_follows_fifs_rule():
    assert subset_size(10000, 100, 0.1) == 1000  # 10 % when that is the largest
    assert subset_size(2000, 10, 0.1) == 300  # the 300-sample floor
    assert subset_size(2000, 250, 0.1) == 500  # two per class
    assert subset_size(120, 10, 0.1) == 120  # never more than the dataset
    assert subset_size(5000, 10, 1.0) == 5000


def test_subset_is_class_balanced_sorted_and_seed_stable():
    labels = np.repeat(np.arange(10), 400)  # 4000 samples, 10 classes: 10 % = 400 samples
    picked = class_balanced_subset(labels, 0.1, seed=0, dataset="digits")
    assert len(picked) == 400
    assert np.array_equal(picked, np.unique(picked))
    assert np.bincount(labels[picked]).tolist() == [40] * 10
    assert np.array_equal(picked, class_balanced_subset(labels, 0.1, seed=0, dataset="digits"))
    assert not np.array_equal(picked, class_balanced_subset(labels, 0.1, seed=1, dataset="digits"))
    assert not np.array_equal(picked, class_balanced_subset(labels, 0.1, seed=0, dataset="textures"))


def test_small_classes_are_taken_whole_and_retrieval_sets_are_one_class():
    labels = np.concatenate([np.zeros(5, int), np.ones(1000, int), np.full(1000, 2)])
    picked = class_balanced_subset(labels, 0.1, seed=3, dataset="skewed")
    assert len(picked) == 300
    assert np.bincount(labels[picked]).tolist() == [5, 148, 147] or np.bincount(labels[picked]).tolist() == [5, 147, 148]
    retrieval = np.full(5000, -1)
    assert len(class_balanced_subset(retrieval, 0.1, seed=0, dataset="captions")) == 500
    assert np.array_equal(class_balanced_subset(np.arange(50) % 5, 0.1, 0, "tiny"), np.arange(50))


@given(st.lists(st.integers(1, 300), min_size=1, max_size=12), st.floats(0.01, 1.0), st.integers(0, 2**31 - 1))
def test_subset_rule_and_balance_hold_for_any_class_counts(counts, fraction, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    picked = class_balanced_subset(labels, fraction, seed, "any")
    assert len(picked) == subset_size(len(labels), len(counts), fraction)
    assert len(np.unique(picked)) == len(picked)
    taken = np.bincount(labels[picked], minlength=len(counts))
    # Every class is either taken whole or within one sample of the best-served class.
    assert all(t == c or t >= taken.max() - 1 for t, c in zip(taken, counts))
    assert np.array_equal(picked, class_balanced_subset(labels, fraction, seed, "any"))


def test_evaluation_plan_is_full_at_both_ends():
    assert evaluation_plan(5, 0.1) == [True, False, False, False, True]
    assert evaluation_plan(2, 0.1) == [True, True]
    assert evaluation_plan(4, 1.0) == [True] * 4


def test_validation_keys_are_stratified_seeded_and_order_free():
    keys = [f"d-train-{i:04d}" for i in range(100)]
    labels = [i % 4 for i in range(100)]
    held = validation_keys(0, "digits", keys, labels, split=0.8)
    assert len(held) == 20
    assert sorted(labels[keys.index(k)] for k in held) == sorted([0, 1, 2, 3] * 5)  # 5 of each class's 25
    assert held == validation_keys(0, "digits", keys[::-1], labels[::-1], split=0.8)  # order does not matter
    assert held != validation_keys(1, "digits", keys, labels, split=0.8)
    assert held != validation_keys(0, "textures", keys, labels, split=0.8)
    # Stratifying by class is the same as splitting each class on its own (how build_stream can call it).
    per_class = set().union(*(validation_keys(0, "digits", [k for k, l in zip(keys, labels) if l == c], split=0.8)
                              for c in range(4)))
    assert per_class == held


def test_validation_keeps_a_training_sample_per_class():
    assert validation_keys(0, "d", ["a"], split=0.5) == set()
    assert len(validation_keys(0, "d", ["a", "b", "c", "d"], split=0.8)) == 1
    with pytest.raises(ValueError, match="split"):
        validation_keys(0, "d", ["a"], split=1.0)
