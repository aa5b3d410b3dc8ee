"""Zero-shot classification and retrieval on real shards, the evaluation sets and one row of the matrix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from clipflux.config import EvaluateConfig, ModelConfig
from clipflux.data.pipeline import load_datasets
from clipflux.data.shards import ShardReader, write_shards
from clipflux.evaluate import (Evaluator, caption_ids, class_embeddings, classification_metrics, evaluate_state,
                               evaluation_sets, partner_ranks, preload, retrieval_metrics, text_embeddings)
from clipflux.models import create_model, save_weights
from clipflux.streams import keys_by_class
from clipflux.subsets import validation_keys


def _fixture_dataset(root: Path, name: str, task: str, role: str, n: int, steps: int | None = None) -> Path:
    """A dataset of `n` random images written as real shards, with a manifest; samples carry a time step if asked."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    classes = ["cat", "dog", "bird"]
    records = []
    for i in range(n):
        label = i % len(classes) if task == "classification" else -1
        caption = f"a photo of a {classes[i % 3]}" if task == "classification" else f"caption number {i} of {n}"
        record = {"key": f"{name}-{i:05d}", "caption": caption, "label": label}
        if steps:
            record["meta"] = {"time_step": 2014 + i % steps}
        records.append(record)
    out = root / name
    shards = write_shards(out, "test", images, records, shard_size=16)
    manifest = {"name": name, "role": role, "task": task, "classes": classes if task == "classification" else [],
                "templates": ["a photo of a {}.", "a {}."] if task == "classification" else [],
                "splits": {"test": {"count": n, "shards": shards}}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def model_and_tokenizer():
    torch.manual_seed(0)
    return create_model(ModelConfig("clipflux-tiny"))


@pytest.fixture(scope="module")
def fixture_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evalshards")
    _fixture_dataset(root, "captions", "retrieval", "evaluation", 24)
    _fixture_dataset(root, "timed", "classification", "evaluation", 30, steps=3)
    _fixture_dataset(root, "timed_captions", "retrieval", "adaptation", 18, steps=3)
    _fixture_dataset(root, "tic_ret", "retrieval", "tic", 400, steps=4)
    index = {n: {"role": json.loads((root / n / "manifest.json").read_text())["role"],
                 "task": json.loads((root / n / "manifest.json").read_text())["task"]}
             for n in ("captions", "timed", "timed_captions", "tic_ret")}
    (root / "datasets.json").write_text(json.dumps(index))
    return root


def test_metrics_on_hand_made_embeddings():
    eye = torch.eye(4)
    assert classification_metrics(eye[[0, 1, 1, 0]], eye[:2], np.array([0, 1, 0, 1]))["acc"] == 50.0
    # Caption i sits closest to image (i + 1) % 4: no pair is found first, every pair second.
    shifted = eye[[3, 0, 1, 2]] * 0.9 + eye * 0.1
    out = retrieval_metrics(eye, F.normalize(shifted, dim=-1), ks=(1, 2))
    assert out["i2t_R@1"] == 0.0 and out["t2i_R@1"] == 0.0
    assert out["i2t_R@2"] == 100.0 and out["R@2"] == 100.0
    identical = retrieval_metrics(eye, eye)
    assert identical["R@1"] == identical["i2t_R@5"] == identical["t2i_R@10"] == 100.0


def test_duplicate_captions_do_not_count_against_a_pair():
    images = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=-1)
    texts = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)  # captions 0 and 1 are the same
    same = caption_ids(torch.tensor([[7, 3, 0], [7, 3, 0], [7, 5, 0]]))  # token ids: captions 0 and 1 read alike
    assert partner_ranks(images, texts, same).tolist() == [0, 0, 0]
    assert partner_ranks(images, texts, same, chunk=2).tolist() == partner_ranks(images, texts, same).tolist()
    assert partner_ranks(images, texts).tolist() == [1, 1, 0]  # told nothing, the tie counts against both


@given(st.integers(2, 40), st.integers(1, 8))
def test_a_collapsed_model_retrieves_nothing_beyond_chance(n, dim):
    """Every image and caption embedded alike (every score tied): each pair ranks behind all n - 1 other pairs,
    so Recall@k is 0 for k < n; strict ranking alone would have given it 100 %."""
    same = torch.nn.functional.normalize(torch.ones(n, dim), dim=-1)
    out = retrieval_metrics(same, same, ks=(1, 5), captions=caption_ids(torch.arange(n).unsqueeze(1)))
    assert out["R@1"] == 0.0 and out["R@5"] == (100.0 if n <= 5 else 0.0)
    overflowed = torch.full((n, dim), float("nan"))  # an image tower that overflowed: NaN embeddings
    out = retrieval_metrics(overflowed, same, ks=(1, 5), captions=caption_ids(torch.arange(n).unsqueeze(1)))
    assert out["R@1"] == 0.0 and out["R@5"] == (100.0 if n <= 5 else 0.0)


def test_class_embeddings_are_the_template_ensemble(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    templates = ["a photo of a {}.", "a {}.", "art of the {}."]
    got = class_embeddings(model, tokenizer, ["cat", "dog"], templates, batch_size=2)
    for row, name in zip(got, ["cat", "dog"]):
        each = text_embeddings(model, tokenizer, [t.format(name) for t in templates], batch_size=8)
        assert torch.allclose(row, F.normalize(each.mean(dim=0), dim=-1), atol=1e-5)


def test_class_embeddings_are_computed_once_per_model_state(model_and_tokenizer, tiny_shards, tmp_path, monkeypatch):
    model, tokenizer = model_and_tokenizer
    calls = []
    monkeypatch.setattr(model, "encode_text", lambda tokens, _f=model.encode_text: calls.append(len(tokens)) or _f(tokens))
    save_weights(model, tmp_path / "state.pt")
    evaluator = Evaluator(model, tokenizer, batch_size=64)
    manifest = load_datasets(tiny_shards)["shapes"]
    reader = ShardReader(tiny_shards / "shapes", "test")
    first = evaluator.evaluate(reader, manifest, np.arange(len(reader)))
    again = evaluator.evaluate(reader, manifest, np.arange(4))  # same classes and templates: reused
    assert len(calls) == 1 and calls[0] == len(manifest["classes"]) * len(manifest["templates"])
    evaluator.load(tmp_path / "state.pt")  # a new model state: computed again
    assert evaluator.evaluate(reader, manifest, np.arange(len(reader))) == first
    assert len(calls) == 2 and again["n"] == 4 and 0 <= first["metrics"]["acc"] <= 100


def test_retrieval_on_fixture_shards(model_and_tokenizer, fixture_shards):
    model, tokenizer = model_and_tokenizer
    manifest = json.loads((fixture_shards / "captions/manifest.json").read_text())
    reader = ShardReader(fixture_shards / "captions", "test")
    out = Evaluator(model, tokenizer, batch_size=10).evaluate(reader, manifest, np.arange(len(reader)))
    m = out["metrics"]
    assert out["n"] == 24
    for direction in ("i2t_", "t2i_", ""):
        assert 0 <= m[f"{direction}R@1"] <= m[f"{direction}R@5"] <= m[f"{direction}R@10"] <= 100
    assert m["R@5"] == pytest.approx((m["i2t_R@5"] + m["t2i_R@5"]) / 2)
    small = Evaluator(model, tokenizer, batch_size=10).evaluate(reader, manifest, np.arange(8))
    assert small["metrics"]["R@10"] == 100.0  # 8 candidates: the partner is always in the top 10


def test_time_steps_give_a_row_per_step(model_and_tokenizer, fixture_shards, tmp_path):
    model, tokenizer = model_and_tokenizer
    sets, skipped = evaluation_sets(fixture_shards, load_datasets(fixture_shards), seed=0, fraction=0.1)
    assert skipped == {} and sets["timed"].groups.tolist()[:4] == [2014, 2015, 2016, 2014]
    assert sets["captions"].groups is None
    evaluator = Evaluator(model, tokenizer, batch_size=16)
    row = evaluate_state(evaluator, sets, full=True, desc="test")
    assert set(row["time"]) == {"timed", "timed_captions"}
    assert set(row["time"]["timed"]) == {"2014", "2015", "2016"}
    assert set(row["scores"]) == {"captions", "timed", "timed_captions"}
    assert row["scores"]["captions"] == row["metrics"]["captions"]["R@5"]
    assert row["A_ZS"] == pytest.approx((row["scores"]["captions"] + row["scores"]["timed"]) / 2)
    assert row["A_KA"] == row["scores"]["timed_captions"] and not row["subset"]


def test_preloaded_sets_give_the_same_row_without_reading_shards(model_and_tokenizer, fixture_shards, tmp_path):
    model, tokenizer = model_and_tokenizer
    manifests = load_datasets(fixture_shards)
    evaluator = Evaluator(model, tokenizer, batch_size=16)
    from_shards, _ = evaluation_sets(fixture_shards, manifests, seed=0, fraction=0.1)
    in_memory = preload(evaluation_sets(fixture_shards, manifests, seed=0, fraction=0.1)[0])
    for s in in_memory.values():  # every read now comes from RAM
        s.reader.reader.shard_dir = tmp_path / "gone"
    for full in (True, False):
        assert evaluate_state(evaluator, in_memory, full, "test") == evaluate_state(evaluator, from_shards, full, "test")


def test_validation_mode_never_reads_test_data(tiny_shards):
    manifests = load_datasets(tiny_shards)
    sets, skipped = evaluation_sets(tiny_shards, manifests, seed=0, fraction=0.1, validation=True, split=0.8)
    assert {n for n, m in manifests.items() if m["role"] == "adaptation"} == set(sets)
    assert set(skipped) == {n for n, m in manifests.items() if m["role"] == "evaluation"}  # they only have test data
    for name, s in sets.items():
        assert s.split == "train"
        held = validation_keys(0, name, s.reader.keys, s.reader.labels.tolist(), 0.8)
        assert {s.reader.keys[i] for i in s.full} == held
    normal, _ = evaluation_sets(tiny_shards, manifests, seed=0, fraction=0.1)
    assert {s.split for s in normal.values()} == {"test"} and set(normal) == set(sets) | set(skipped)
    # ... and the stream trains on the rest of each class, never on a validation key
    config = EvaluateConfig(batch_size=64, threads=1, seed=0, subset=0.1, validation=True, split=0.8)
    streamed, everything = keys_by_class(tiny_shards, manifests, config), keys_by_class(tiny_shards, manifests)
    for name, s in sets.items():
        validated = {s.reader.keys[i] for i in s.full}
        trained = {k for keys in streamed[name].values() for k in keys}
        assert not trained & validated and trained | validated == set(s.reader.keys)
        assert all(streamed[name][c] for c in everything[name])  # every class keeps training samples


def test_the_time_ordered_world_is_evaluated_in_full_with_recall_at_1(model_and_tokenizer, fixture_shards):
    model, tokenizer = model_and_tokenizer
    manifests = load_datasets(fixture_shards)
    sets, _ = evaluation_sets(fixture_shards, manifests, seed=0, fraction=0.1, roles=("tic",))
    assert list(sets) == ["tic_ret"] and len(sets["tic_ret"].subset) == 400  # FiF would take 300: retrieval pools
    fif, _ = evaluation_sets(fixture_shards, manifests, seed=0, fraction=0.1, roles=("evaluation",))
    assert all(len(s.subset) == len(s.full) for s in fif.values())  # under the 300 floor anyway
    row = evaluate_state(Evaluator(model, tokenizer, batch_size=100), sets, full=False, desc="test")
    assert not row["subset"]  # nothing was cut, so the row is not marked as a subset evaluation
    assert row["scores"]["tic_ret"] == row["metrics"]["tic_ret"]["R@1"]  # TiC reports retrieval as Recall@1
    assert set(row["time"]["tic_ret"]) == {"2014", "2015", "2016", "2017"} and "A_KA" not in row
