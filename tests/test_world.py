"""The synthetic world: deterministic, labels match content, no test sample in train."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from clipflux.data.world import build_world, generate

WORLD = build_world()
CLASSIFICATION = [s for s in WORLD.values() if s.task == "classification"]


@given(st.sampled_from(sorted(WORLD)), st.integers(0, 2**31 - 1))
def test_same_seed_same_samples_other_seed_other_samples(name, seed):
    spec = WORLD[name]
    split = spec.splits[0]
    a, ra = generate(spec, split, 2, 32, seed)
    b, rb = generate(spec, split, 2, 32, seed)
    c, _ = generate(spec, split, 2, 32, seed + 1)
    assert np.array_equal(a, b) and ra == rb
    assert not np.array_equal(a, c)


@given(st.sampled_from([s.name for s in CLASSIFICATION]), st.integers(0, 1000))
def test_captions_name_the_true_class(name, seed):
    spec = WORLD[name]
    _, records = generate(spec, spec.splits[0], 2, 32, seed)
    for r in records:
        assert r["classname"] == spec.classes[r["label"]]
        assert r["classname"] in r["caption"]


def test_pool_captions_describe_the_rendered_object():
    _, records = generate(WORLD["pool"], "train", 300, 32, 0)
    for r in records:
        meta = r["meta"]
        assert meta["shape"] in r["caption"] or meta["colour"] in r["caption"]
        if meta["count"] > 1:
            assert {2: "two", 3: "three"}[meta["count"]] in r["caption"]


def test_pool_never_shows_adaptation_concepts():
    new_words = {c for s in WORLD.values() if s.role == "adaptation" for c in s.classes}
    _, records = generate(WORLD["pool"], "train", 2000, 32, 0)
    captions = " ".join(r["caption"] for r in records)
    assert not [w for w in new_words if f" {w}" in f" {captions}"]


def test_shapes_differ_between_classes():
    """Images of different classes differ more than images of one class: the label is in the pixels."""
    images, records = generate(WORLD["textures"], "train", 5, 32, 0)
    assert len({json.dumps(r["label"]) for r in records}) == len(WORLD["textures"].classes)
    assert images.std() > 10


def test_no_test_digit_glyph_is_used_for_training():
    _, train = generate(WORLD["digits"], "train", 60, 32, 0)
    _, test = generate(WORLD["digits"], "test", 60, 32, 0)
    for label in range(10):
        train_glyphs = {r["meta"]["glyph"] for r in train if r["label"] == label}
        test_glyphs = {r["meta"]["glyph"] for r in test if r["label"] == label}
        assert not train_glyphs & test_glyphs
