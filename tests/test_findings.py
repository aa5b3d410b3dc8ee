"""Findings: rankings order by value, gaps are tested against the seed spread, compute totals follow the steps."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clipflux.findings import Entry, describe, rank, spread, total_gflops


def test_ranking_orders_by_value_and_marks_gaps_against_the_spread():
    # b leads a by 5.0 with stds 1.0 and 0.5: beyond the spread; a leads c by 1.0 with std 2.0: within it
    entries = [Entry("a", 45.0, 0.5), Entry("c", 44.0, 2.0), Entry("b", 50.0, 1.0)]
    ranked = rank(entries, higher_is_better=True)
    assert [(r.entry.name, r.rank) for r in ranked] == [("b", 1), ("a", 2), ("c", 3)]
    assert (ranked[1].gap, ranked[1].spread, ranked[1].beyond) == (5.0, 1.0, True)
    assert (ranked[2].gap, ranked[2].spread, ranked[2].beyond) == (1.0, 2.0, False)
    text = describe("final GM", ranked, True)
    assert text == ("**final GM** (higher is better): b leads a by 5.0 (> spread 1.0); "
                    "a over c by 1.0 (within spread 2.0).")


def test_lower_is_better_ties_and_one_seed():
    ranked = rank([Entry("x", 3.0), Entry("y", 1.0), Entry("z", 1.0)], higher_is_better=False)
    assert [(r.entry.name, r.rank) for r in ranked] == [("y", 1), ("z", 1), ("x", 3)]
    assert ranked[2].beyond is None  # one seed: no std, the spread is unknown
    text = describe("forgetting", ranked, False)
    assert text == "**forgetting** (lower is better): y = z leads x by 2.0 (one seed: spread unknown)."
    assert describe("compute", ranked, False, exact=True) == "**compute** (lower is better): y = z leads x by 2.0."
    tied = rank([Entry("p", 0.1 + 0.2, 0.5), Entry("q", 0.3, 0.5), Entry("r", 1.3, 0.5)], True)
    assert [(r.entry.name, r.rank) for r in tied] == [("r", 1), ("p", 2), ("q", 2)]  # 0.1 + 0.2 != 0.3 in floats
    assert tied[1].beyond is True and tied[2].gap == 0 and tied[2].beyond is False
    edge = rank([Entry("s", 2.0, 0.3), Entry("t", 1.7, 0.3)], True)[1]
    assert edge.beyond is False  # 2.0 - 1.7 = 0.30000000000000004: equal to the spread, so within it


@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 10) | st.none()), min_size=1, max_size=8), st.booleans())
def test_ranks_follow_the_values(pairs, higher):
    ranked = rank([Entry(f"e{i}", v, s) for i, (v, s) in enumerate(pairs)], higher)
    values = [r.entry.value for r in ranked]
    assert values == sorted(values, reverse=higher)
    for above, this in zip(ranked, ranked[1:]):
        assert this.rank >= above.rank and (this.rank == above.rank) == (this.gap == 0)
        if this.beyond is not None:
            width = max(above.entry.std, this.entry.std)
            assert this.spread == width
            assert this.gap > width if this.beyond else this.gap <= width + 1e-9 * max(1.0, width)


def test_spread_reads_the_std_tree():
    e = {"std": {"rows": [{"A_KA": 0.5}], "tic": {"d": {"in_domain": 1.5}}}}
    assert spread(e, "rows", 0, "A_KA") == 0.5 and spread(e, "tic", "d", "in_domain") == 1.5
    assert spread(e, "rows", 3, "A_KA") is None and spread({"rows": []}, "rows", 0, "A_KA") is None


def test_total_compute_follows_the_oracles_growing_steps():
    sequential = {"steps_per_task": 10, "gflops_per_step": 2.0, "samples_per_task": 640, "gflops_per_sample": 20 / 640}
    assert total_gflops(sequential, tasks=3) == 60.0  # no steps_by_task: steps_per_task x tasks
    oracle = sequential | {"steps_by_task": [10, 20, 30], "init": "scratch"}  # TiC: t x C at step t
    assert total_gflops(oracle, tasks=3) == 120.0
    assert total_gflops(None, 3) is None and total_gflops({"steps_per_task": 10, "measure": "samples"}, 3) is None


def test_total_compute_adds_the_methods_extra_work():
    # EWC-like: 2 gradient batches per task at a step's cost; merge-like: 1 weight pass per task of 0.5 GFLOPs,
    # recorded only inside gflops_per_sample (the task's cost amortised over its 10 x 64 samples)
    task = (10 + 2) * 2.0 + 0.5
    budget = {"steps_per_task": 10, "gflops_per_step": 2.0, "samples_per_task": 640, "gflops_per_sample": task / 640,
              "extra_work": {"gradient_batches_per_task": 2, "weight_passes_per_step": 0, "weight_passes_per_task": 1}}
    assert total_gflops(budget, tasks=4) == pytest.approx(4 * task)
    ema = {"steps_per_task": 10, "gflops_per_step": 2.0, "samples_per_task": 640, "gflops_per_sample": 20.1 / 640,
           "extra_work": {"weight_passes_per_step": 1}, "steps_by_task": [10, 20]}  # 0.01 GFLOPs per pass
    assert total_gflops(ema, tasks=2) == pytest.approx(30 * 2.0 + 30 * 0.01)
