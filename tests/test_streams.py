"""Streams: FiF chunking and resolution into sample keys."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clipflux.streams import StreamError, chunk, load_stream_file, random_order, resolve

from conftest import REPO


@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n))))
def test_chunk_partitions_in_order(n_and_tasks):
    n, num_tasks = n_and_tasks
    entries = [f"d+++c{i}" for i in range(n)]
    tasks = chunk(entries, num_tasks)
    assert len(tasks) == num_tasks
    assert [e for t in tasks for e in t] == entries  # a partition that keeps the order
    sizes = [len(t) for t in tasks]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the remainder goes to the first tasks
    assert min(sizes) == n // num_tasks


def test_chunk_rejects_more_tasks_than_classes():
    with pytest.raises(StreamError, match="num_tasks=5"):
        chunk(["a+++b"] * 4, 5)


def test_resolve_gives_each_task_its_classes_samples():
    keys = {"d": {"x": ["k1", "k2"], "y": ["k3"]}, "e": {"z": ["k4"]}}
    tasks = resolve(["d+++y", "e+++z", "d+++x"], 2, keys)
    assert tasks[0] == {"classes": ["d+++y", "e+++z"], "samples": {"d": ["k3"], "e": ["k4"]}}
    assert tasks[1] == {"classes": ["d+++x"], "samples": {"d": ["k1", "k2"]}}


@pytest.mark.parametrize(("entry", "message"), [
    ("nope+++x", "unknown adaptation dataset 'nope'"),
    ("d+++nope", "dataset 'd' has no class 'nope'"),
    ("d-x", "must read 'dataset+++classname'"),
])
def test_resolve_names_what_is_wrong(entry, message):
    with pytest.raises(StreamError, match=re.escape(message)):
        resolve([entry], 1, {"d": {"x": ["k"]}})


def test_duplicate_entries_are_refused(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(["d+++x", "d+++x"]))
    with pytest.raises(StreamError, match="appears twice"):
        load_stream_file(path)


def test_shipped_streams_cover_every_adaptation_class_once():
    from clipflux.data.world import build_world

    expected = {f"{s.name}+++{c}" for s in build_world().values() if s.role == "adaptation" for c in s.classes}
    for name in ("fif_random", "dataset_incremental", "fif_similarity", "fif_similarity_reverse"):
        entries = load_stream_file(REPO / "streams" / f"{name}.json")
        assert set(entries) == expected and len(entries) == len(expected)


def test_random_order_is_seeded():
    classes = {"a": [str(i) for i in range(20)]}
    assert random_order(classes, 1) == random_order(classes, 1)
    assert random_order(classes, 1) != random_order(classes, 2)


def test_similarity_streams_are_reverses_and_tic_is_in_time_order():
    sim = load_stream_file(REPO / "streams" / "fif_similarity.json")
    assert load_stream_file(REPO / "streams" / "fif_similarity_reverse.json") == sim[::-1]
    from clipflux.data.tic import STEPS

    assert load_stream_file(REPO / "streams" / "tic_time_incremental.json") == [f"tic+++{s}" for s in STEPS]
