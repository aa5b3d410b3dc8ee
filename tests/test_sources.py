"""Reading shards without unpacking from URLs: HTTP on 127.0.0.1, S3 (moto's server on 127.0.0.1) and webdataset
`pipe:` commands give exactly the samples of the local shards; a corrupt shard is refused; training on a
streamed pool is deterministic and resumes bit-identically."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from clipflux.config import MixtureConfig, ModelConfig, OptimConfig, RunConfig
from clipflux.data.loader import index_items
from clipflux.data.shards import ShardError, ShardReader
from clipflux.data.sources import StreamedShardReader, open_reader
from clipflux.methods import build_method
from clipflux.models import create_model, state_sha256
from clipflux.replay import blocked_permutation
from clipflux.train import Trainer
from fileserver import FileServer


@pytest.fixture(scope="module")
def pool(tiny_shards):
    """The tiny world's pool shards, served over HTTP from 127.0.0.1."""
    folder = tiny_shards / "pool"
    files = {f"/pool/{p.name}": p.read_bytes() for p in folder.iterdir()}
    with FileServer(files) as server:
        yield folder, server


def _same_samples(a, b) -> None:
    assert len(a) == len(b)
    for i in range(len(a)):
        x, y = a.read(i), b.read(i)
        assert x["key"] == y["key"] and x["txt"] == y["txt"] and x["json"] == y["json"]
        assert np.array_equal(x["png"], y["png"])


def test_http_and_pipe_locations_stream_the_local_samples(pool):
    folder, server = pool
    local = ShardReader(folder, "train")
    http = open_reader(f"{server.url}/pool", "train")
    assert isinstance(http, StreamedShardReader)
    _same_samples(local, http)
    assert http.keys == local.keys and np.array_equal(http.labels, local.labels)
    assert np.array_equal(np.bincount(http.blocks), [s["count"] for s in http.shards])
    _same_samples(local, open_reader(f"pipe:cat {folder}/{{file}}", "train"))


def test_corrupt_or_missing_remote_shards_are_refused(pool):
    folder, server = pool
    server.files["/bad/manifest.json"] = server.files["/pool/manifest.json"]
    for name in ("train-000000.tar", "train-000001.tar"):
        data = bytearray(server.files[f"/pool/{name}"])
        data[2000] ^= 0xFF
        server.files[f"/bad/{name}"] = bytes(data)
    with pytest.raises(ShardError, match=r"/bad/train-000000.tar: corrupt shard"):
        open_reader(f"{server.url}/bad", "train").read(0)
    with pytest.raises(ShardError, match=r"/nowhere: cannot read manifest.json: HTTPError"):
        open_reader(f"{server.url}/nowhere", "train")


def test_s3_location_through_moto_on_loopback(pool, monkeypatch):
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    folder, _ = pool
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(key, value)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="shards")
        for path in folder.iterdir():
            s3.upload_file(str(path), "shards", f"pool/{path.name}")
        _same_samples(ShardReader(folder, "train"), open_reader("s3://shards/pool", "train"))
    finally:
        server.stop()


def test_blocked_permutation_keeps_shards_together():
    blocks = np.repeat([0, 1, 2, 3], [5, 3, 4, 2])
    perm = blocked_permutation(np.random.default_rng(0), blocks)
    assert sorted(perm.tolist()) == list(range(14))
    runs = [blocks[perm][0]] + [b for a, b in zip(blocks[perm], blocks[perm][1:]) if a != b]
    assert sorted(runs) == [0, 1, 2, 3]  # each shard read in one run
    assert np.array_equal(perm, blocked_permutation(np.random.default_rng(0), blocks))


class Interrupt(Exception):
    pass


def _trainer(tiny_shards, pool_reader, ckpt, log):
    readers = [ShardReader(tiny_shards / "novel_shapes", "train"), pool_reader]
    items = index_items(0, readers[0])
    torch.manual_seed(0)
    model, tokenizer = create_model(ModelConfig(name="clipflux-tiny"))
    optim = OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=1, clip_grad_norm=1.0, batch_size=8)
    return Trainer(model, build_method("finetune", None), tokenizer, readers, [items[:20], items[20:]],
                   index_items(1, readers[1]), RunConfig(seed=1, checkpoint_every=2, optim=optim), 4, ckpt, log,
                   {"x": 1}, mixture=MixtureConfig(0.5, 0.0, 0.5))


def test_training_on_a_streamed_pool_is_deterministic_and_resumes_exactly(tiny_shards, pool, tmp_path):
    folder, server = pool
    reference = _trainer(tiny_shards, open_reader(f"{server.url}/pool", "train"), tmp_path / "a", lambda *a: None)
    reference.fit()
    piped = _trainer(tiny_shards, open_reader(f"pipe:cat {folder}/{{file}}", "train"), tmp_path / "b", lambda *a: None)
    piped.fit()
    assert state_sha256(reference.model.state_dict()) == state_sha256(piped.model.state_dict())

    def die(key, value, step):
        if key == "train/lr" and step == 4:  # second task, first step
            raise Interrupt

    with pytest.raises(Interrupt):
        _trainer(tiny_shards, open_reader(f"{server.url}/pool", "train"), tmp_path / "c", die).fit()
    resumed = _trainer(tiny_shards, open_reader(f"{server.url}/pool", "train"), tmp_path / "c", lambda *a: None)
    resumed.fit()
    assert resumed.resumed_from["task"] == 1
    assert state_sha256(resumed.model.state_dict()) == state_sha256(reference.model.state_dict())
