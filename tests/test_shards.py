"""Webdataset shards: byte-identical for the same data, verified by sha256, readable by index."""

from __future__ import annotations

import json

import numpy as np
import pytest
import webdataset as wds

from clipflux.data.pipeline import load_datasets, preprocess
from clipflux.data.world import generate_world
from clipflux.data.shards import ShardError, ShardReader, sha256_file

from conftest import TINY_WORLD


def test_manifest_counts_classes_and_checksums(tiny_shards):
    manifests = load_datasets(tiny_shards)
    assert {"pool", "shapes", "colours", "novel_shapes", "textures", "digits"} <= set(manifests)
    for name, m in manifests.items():
        for split, info in m["splits"].items():
            assert info["count"] == sum(s["count"] for s in info["shards"])
            for shard in info["shards"]:
                assert sha256_file(tiny_shards / name / shard["file"]) == shard["sha256"]
            if m["task"] == "classification":
                assert sorted(info["class_counts"]) == sorted(m["classes"])


def test_shards_are_byte_identical_across_runs(tiny_shards, tmp_path):
    generate_world(TINY_WORLD, tmp_path / "raw", progress=False)
    preprocess(tmp_path / "raw", tmp_path / "shards", TINY_WORLD.shard_size)
    assert json.loads((tmp_path / "shards/pool/manifest.json").read_text()) == json.loads(
        (tiny_shards / "pool/manifest.json").read_text())


def test_reader_matches_webdataset(tiny_shards):
    """Our random-access reader sees exactly what webdataset's own pipeline reads from the tars."""
    reader = ShardReader(tiny_shards / "textures", "train")
    urls = [str(tiny_shards / "textures" / s["file"]) for s in reader.manifest["splits"]["train"]["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8"))
    assert len(samples) == len(reader)
    for i, sample in enumerate(samples):
        ours = reader.read(i)
        assert sample["__key__"] == ours["key"]
        assert np.array_equal(sample["png"], ours["png"])
        assert sample["txt"] == ours["txt"]
        assert sample["json"]["label"] == reader.labels[i]


def test_corrupt_shard_is_detected(tiny_shards, tmp_path):
    import shutil

    copy = tmp_path / "textures"
    shutil.copytree(tiny_shards / "textures", copy)
    shard = sorted(copy.glob("train-*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=f"{shard.name}: corrupt shard"):
        ShardReader(copy, "train")
    shard.unlink()
    with pytest.raises(ShardError, match="missing"):
        ShardReader(copy, "train")
