"""Webdataset shards: byte-identical for the same data, verified by sha256, readable by index."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import webdataset as wds

from clipflux.data.pipeline import load_datasets, preprocess
from clipflux.data.world import generate_world
from clipflux.data.shards import ShardError, ShardReader, sha256_file, tar_members

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


_names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="/\\"), min_size=1,
                 max_size=150)


def _tar(members, fmt) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for name, size in members:
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(range(256)) * (size // 256 + 1)))
    return buffer.getvalue()


@settings(max_examples=60, deadline=None)
@given(members=st.lists(st.tuples(_names, st.integers(0, 2000)), max_size=8),
       fmt=st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]))
def test_tar_index_agrees_with_tarfile(tmp_path_factory, members, fmt):
    """Names (long, non-ASCII), data offsets and sizes as `tarfile` reads them, in pax, GNU and ustar tars."""
    try:
        data = _tar(members, fmt)
    except ValueError:  # ustar cannot hold the name: nothing to compare
        return
    path = tmp_path_factory.mktemp("tar") / "t.tar"
    path.write_bytes(data)
    with tarfile.open(path) as tar:
        expected = [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]
    assert tar_members(path) == expected


def test_tar_index_leaves_a_bad_header_to_tarfile(tmp_path):
    """A header whose checksum does not match is not trusted: the index is tarfile's (which ends the archive
    there; a shard's sha256 in its manifest is what catches the damage, see test_corrupt_shard_is_detected)."""
    data = bytearray(_tar([("a.txt", 10), ("b.txt", 10)], tarfile.PAX_FORMAT))
    second = data.index(b"b.txt") - (data.index(b"b.txt") % 512)
    data[second + 1] ^= 0xFF  # inside the second member's name: the stored checksum no longer matches
    path = tmp_path / "bad.tar"
    path.write_bytes(bytes(data))
    with tarfile.open(path) as tar:
        expected = [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]
    assert [name for name, _, _ in expected] == ["a.txt"]
    assert tar_members(path) == expected
