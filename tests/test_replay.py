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
    fif = MixtureConfig(update=0.34, buffer=0.33, pretraining=0.33)
    assert split_batch(512, fif, 10, 10) == {"update": 174, "buffer": 169, "pretraining": 169}
    assert split_batch(512, fif, 0, 10) == {"update": 343, "buffer": 0, "pretraining": 169}


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
    assert buffer.items().tolist() == [[0, 1], [0, 2], [1, 5]]
    restored = Buffer()
    restored.load_state_dict(buffer.state_dict())
    assert np.array_equal(restored.items(), buffer.items())
