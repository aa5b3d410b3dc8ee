"""The data mixture: batch counts and pure, cycling per-source sampling."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from clipflux.config import MixtureConfig
from clipflux.replay import Buffer, draw, split_batch

shares = st.tuples(st.floats(0.05, 1.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0)).map(
    lambda t: MixtureConfig(t[0] / sum(t), t[1] / sum(t), 1 - t[0] / sum(t) - t[1] / sum(t)))


@given(st.integers(2, 1024), shares, st.integers(0, 100), st.integers(0, 100))
def test_mixture_sums_to_the_batch(batch, mixture, buffer_size, pool_size):
    counts = split_batch(batch, mixture, buffer_size, pool_size)
    assert sum(counts.values()) == batch
    assert counts["update"] >= 1
    if buffer_size == 0:
        assert counts["buffer"] == 0
    if pool_size == 0:
        assert counts["pretraining"] == 0


def test_fif_default_mixture_and_first_task():
    """FiF's numbers (main.py `calculate_individual_batch_sizes`, utils/training.py's first task) at 512 and 64."""
    fif = MixtureConfig(update=0.34, buffer=0.33, pretraining=0.33)
    # floor(512 x share) = 168 / 174 / 168, the 2 left over to pretraining then update
    assert split_batch(512, fif, 10, 10) == {"update": 175, "buffer": 168, "pretraining": 169}
    # first task: the empty buffer's 168 split between update (84) and pretraining (84)
    assert split_batch(512, fif, 0, 10) == {"update": 259, "buffer": 0, "pretraining": 253}
    assert split_batch(64, fif, 10, 10) == {"update": 21, "buffer": 21, "pretraining": 22}
    assert split_batch(64, fif, 0, 10) == {"update": 32, "buffer": 0, "pretraining": 32}
    # no pretraining pool: its share and the empty buffer's go to update data
    assert split_batch(64, fif, 0, 0) == {"update": 64, "buffer": 0, "pretraining": 0}
    assert split_batch(64, MixtureConfig(update=1.0, buffer=0.0, pretraining=0.0), 10, 10)["update"] == 64


@given(st.integers(1, 50), st.integers(1, 20), st.integers(0, 5), st.integers(0, 2**16))
def test_draw_is_pure_and_covers_every_item_each_pass(n, count, task, seed):
    items = np.stack([np.zeros(n, dtype=np.int64), np.arange(n)], axis=1)
    steps = (3 * n) // count + 1
    seq = np.concatenate([draw(items, count, s, seed, task, 0) for s in range(steps)])
    again = np.concatenate([draw(items, count, s, seed, task, 0) for s in range(steps)])
    assert np.array_equal(seq, again)
    for p in range(len(seq) // n):  # every full pass is a permutation of the items
        assert sorted(seq[p * n:(p + 1) * n, 1]) == list(range(n))


def test_buffer_keeps_every_earlier_sample():
    buffer = Buffer()
    buffer.add_task(np.array([[0, 1], [0, 2]]))
    buffer.add_task(np.array([[1, 5]]))
    assert sorted(buffer.items().tolist()) == [[0, 1], [0, 2], [1, 5]]
    restored = Buffer()
    restored.load_state_dict(buffer.state_dict())
    assert np.array_equal(restored.items(), buffer.items())


def _filled(policy: str, capacity: int, sizes: list[int]) -> Buffer:
    buffer = Buffer(policy, capacity, seed=1)
    for t, n in enumerate(sizes):
        buffer.add_task(np.stack([np.full(n, t), np.arange(n)], axis=1))
    return buffer


def test_cumulative_exp_halves_old_data_every_step():
    held = _filled("exp", 800, [1000, 1000, 1000, 1000]).held()
    assert [len(h) for h in held] == [100, 100, 200, 400]  # newest D/2, then D/4, D/8, the rest
    assert [len(h) for h in _filled("exp", 800, [1000]).held()] == [800]


def test_cumulative_equal_splits_the_buffer_over_past_steps():
    assert [len(h) for h in _filled("equal", 900, [1000, 1000, 1000]).held()] == [300, 300, 300]
    assert [len(h) for h in _filled("equal", 10, [1000, 2, 1000]).held()] == [3, 2, 4]  # capped by size


def test_none_and_all():
    assert len(_filled("none", 0, [5, 5]).items()) == 0
    assert len(_filled("all", 0, [5, 7]).items()) == 12


@given(st.sampled_from(["reservoir", "exp", "equal"]), st.integers(1, 300), st.lists(st.integers(0, 200), max_size=6))
def test_bounded_buffers_never_exceed_capacity_and_keep_subsets(policy, capacity, sizes):
    buffer = _filled(policy, capacity, sizes)
    items = buffer.items()
    assert len(items) <= capacity
    assert len({tuple(i) for i in items.tolist()}) == len(items)  # no sample twice
    if sum(sizes) >= capacity and policy in ("reservoir", "exp"):
        assert len(items) == capacity or policy == "exp"
    for t, held in enumerate(buffer.held()):
        assert (held[:, 0] == t).all()


def test_shrinking_shares_keep_a_subset_of_what_was_kept():
    two = {tuple(i) for i in _filled("exp", 100, [500, 500]).held()[0].tolist()}
    three = {tuple(i) for i in _filled("exp", 100, [500, 500, 500]).held()[0].tolist()}
    assert three <= two and len(three) < len(two)


@given(st.sampled_from(["all", "none", "reservoir", "exp", "equal"]), st.integers(1, 300),
       st.lists(st.integers(0, 200), max_size=5), st.integers(0, 200))
def test_items_with_a_task_are_what_the_buffer_holds_once_it_is_added(policy, capacity, sizes, more):
    """GDumb's memory during a task (`items_with`) is the buffer after `add_task`, and reading it changes nothing."""
    buffer = _filled(policy, capacity, sizes)
    before = buffer.items().copy()
    task = np.stack([np.full(more, len(sizes)), np.arange(more)], axis=1)
    ahead = buffer.items_with(task)
    assert np.array_equal(buffer.items(), before)
    buffer.add_task(task)
    assert np.array_equal(ahead, buffer.items())
