"""Where a dataset's shards live, and reading them from there without unpacking anything.

A location is a shard folder (`manifest.json` beside `<split>-NNNNNN.tar`) given as:

- a local path: read by `ShardReader`, random access into the tars by member offsets;
- `http://...` or `https://...`: the folder's URL;
- `s3://bucket/prefix`: through fsspec/s3fs (credentials and `AWS_ENDPOINT_URL` from the environment);
- `pipe:<command>` with `{file}` where the file name goes, e.g. `pipe:aws s3 cp s3://bucket/pool/{file} -`
  (webdataset's pipe: URLs, run by webdataset's `gopen`);
- `dvc://<path>`: a folder tracked by DVC in this repository, streamed from the DVC cache or, when not pulled,
  straight from the default DVC remote (`dvc.api.open`).

Locations other than local paths cannot be read at random offsets, so `StreamedShardReader` reads a shard whole,
checks it against the manifest's sha256, and keeps the last few shards in memory. Training draws such a
dataset's samples in shard-blocked order (`clipflux.replay.draw` with blocks), so each shard is fetched once per
pass; the order is still a pure function of (seed, task, step) and the manifest, so batches, and resuming, are
exactly as reproducible as with local shards (see README: Training from tars and URLs).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import urllib.request
from collections import OrderedDict
from pathlib import Path

import numpy as np
import webdataset as wds

from clipflux.data.shards import ShardError, ShardReader, decode_member, image_member

REMOTE_PREFIXES = ("http://", "https://", "s3://", "pipe:", "dvc://")


def is_local(location: str | Path) -> bool:
    """Whether a location is a local folder (random access) rather than a URL (streamed)."""
    return not str(location).startswith(REMOTE_PREFIXES)


def read_bytes(location: str, file: str) -> bytes:
    """The bytes of `file` in the shard folder at `location` (any kind of location)."""
    location = str(location)
    try:
        if location.startswith("pipe:"):
            if "{file}" not in location:
                raise ShardError(f"{location}: a pipe: location needs '{{file}}' where the file name goes")
            with wds.gopen(location.replace("{file}", file), "rb") as stream:
                return stream.read()
        if location.startswith(("http://", "https://")):
            with urllib.request.urlopen(f"{location.rstrip('/')}/{file}", timeout=120) as response:
                return response.read()
        if location.startswith("s3://"):
            import fsspec

            with fsspec.open(f"{location.rstrip('/')}/{file}", "rb") as f:
                return f.read()
        if location.startswith("dvc://"):
            import dvc.api

            with dvc.api.open(f"{location.removeprefix('dvc://').rstrip('/')}/{file}", mode="rb") as f:
                return f.read()
        return (Path(location) / file).read_bytes()
    except ShardError:
        raise
    except Exception as e:  # every transport has its own errors; name the file and what happened
        raise ShardError(f"{location}: cannot read {file}: {type(e).__name__}: {e}") from None


def load_manifest_at(location: str | Path) -> tuple[dict, str]:
    """A shard folder's manifest and the sha256 of its bytes."""
    data = read_bytes(str(location), "manifest.json")
    return json.loads(data), hashlib.sha256(data).hexdigest()


def open_reader(location: str | Path, split: str, verify: bool = True, manifest_sha256: str | None = None):
    """A reader of one split at any location: `ShardReader` for a local folder, else `StreamedShardReader`.

    Args:
        location: the shard folder.
        split: the split to read.
        verify: check shards against the manifest's sha256 (streamed shards are always checked).
        manifest_sha256: when given, the manifest must still hash to this (what `preprocess` recorded).
    """
    if manifest_sha256 is not None:
        _, actual = load_manifest_at(location)
        if actual != manifest_sha256:
            raise ShardError(f"{location}: manifest.json changed since preprocess recorded it (sha256 {actual[:12]}…, "
                             f"recorded {manifest_sha256[:12]}…): re-index with `dvc repro --force preprocess`, then `dvc repro`")
    if is_local(location):
        return ShardReader(location, split, verify=verify)
    return StreamedShardReader(str(location), split)


class StreamedShardReader:
    """The samples of one split at a location that can only be read whole (a URL), shard by shard.

    It has the interface of `ShardReader` (`len`, `keys`, `labels`, `read`) plus `blocks`, the shard of each
    sample, which lets training draw samples shard by shard. `keys` and `labels` need every shard once; they
    are read on first use (training on the pool needs neither).

    Args:
        location: the shard folder's URL.
        split: the split to read.
        cache: how many decoded shards to keep in memory.
    """

    def __init__(self, location: str, split: str, cache: int = 2):
        self.shard_dir = location
        self.manifest, _ = load_manifest_at(location)
        if split not in self.manifest["splits"]:
            raise ShardError(f"{location}: no split {split!r}; has {sorted(self.manifest['splits'])}")
        self.shards = self.manifest["splits"][split]["shards"]
        counts = [s["count"] for s in self.shards]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.blocks = np.repeat(np.arange(len(counts)), counts)
        self._cache: OrderedDict[int, list[tuple[str, dict[str, bytes]]]] = OrderedDict()
        self._size = cache
        self._keys: list[str] | None = None
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def keys(self) -> list[str]:
        if self._keys is None:
            self._keys = [key for n in range(len(self.shards)) for key, _ in self._shard(n)]
        return self._keys

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = np.array([json.loads(m["json"])["label"] for n in range(len(self.shards))
                                     for _, m in self._shard(n)], dtype=np.int64)
        return self._labels

    def read(self, index: int, exts: tuple[str, ...] = ("png", "txt", "json")) -> dict:
        """The decoded members of sample `index` ("png" is its image, whatever the format)."""
        shard = int(self.blocks[index])
        key, members = self._shard(shard)[index - int(self.starts[shard])]
        out: dict = {"key": key}
        for ext in exts:
            out[ext] = decode_member(ext, members[image_member(members) if ext == "png" else ext])
        return out

    def _shard(self, n: int) -> list[tuple[str, dict[str, bytes]]]:
        """The samples of shard n in order, fetched and checked on first use."""
        if n in self._cache:
            self._cache.move_to_end(n)
            return self._cache[n]
        entry = self.shards[n]
        data = read_bytes(self.shard_dir, entry["file"])
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ShardError(f"{self.shard_dir}/{entry['file']}: corrupt shard, sha256 does not match the manifest")
        samples: dict[str, dict[str, bytes]] = {}
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
        if len(samples) != entry["count"]:
            raise ShardError(f"{self.shard_dir}/{entry['file']}: {len(samples)} samples, manifest says {entry['count']}")
        self._cache[n] = list(samples.items())
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return self._cache[n]
