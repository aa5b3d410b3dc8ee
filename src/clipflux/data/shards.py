"""Webdataset shards on disk: writing them reproducibly, verifying them, and reading samples by index.

A shard is a plain POSIX tar of `<key>.png`, `<key>.txt` and `<key>.json` members (webdataset's layout),
written with fixed ownership and modification times so the same samples give byte-identical shards.
`manifest.json` beside the shards records counts, classes and a sha256 per shard.

Reading goes through `ShardReader`: it indexes each tar's member offsets once and then reads any sample
by its position, so training can draw batches as a pure function of (seed, task, step) — which is what
makes resuming exact — straight from the tar files, without unpacking them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image


class ShardError(RuntimeError):
    """A shard is missing, or its content does not match the checksum in its manifest."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an HxWx3 uint8 image (deterministic for a given Pillow/zlib)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """HxWx3 uint8 array from PNG bytes."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def write_shards(
    out_dir: str | Path, split: str, images: np.ndarray, records: list[dict], shard_size: int
) -> list[dict]:
    """Write samples as `<split>-NNNNNN.tar` shards, each written atomically (temporary file, rename).

    Args:
        out_dir: the dataset's shard folder.
        split: "train" or "test"; names the shards.
        images: (N, H, W, 3) uint8 images.
        records: N records with at least "key", "caption" and "label".
        shard_size: samples per shard.

    Returns:
        One entry per shard: file name, sample count and sha256.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    for number, start in enumerate(range(0, len(records), shard_size)):
        name = f"{split}-{number:06d}.tar"
        tmp = out_dir / f".{name}.tmp"
        with open(tmp, "wb") as f:
            writer = wds.TarWriter(f, user="clipflux", group="clipflux", mode=0o444, mtime=0.0)
            for image, record in zip(images[start : start + shard_size], records[start : start + shard_size]):
                meta = {k: v for k, v in record.items() if k not in ("key", "caption")}
                writer.write({"__key__": record["key"], "png": encode_png(image), "txt": record["caption"], "json": meta})
            writer.close()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out_dir / name)
        shards.append({"file": name, "count": len(records[start : start + shard_size]), "sha256": sha256_file(out_dir / name)})
    return shards


def verify_shards(shard_dir: str | Path, manifest: dict, split: str) -> None:
    """Check every shard of `split` against the sha256 in the manifest.

    Raises:
        ShardError: naming the first missing or corrupt shard.
    """
    for shard in manifest["splits"][split]["shards"]:
        path = Path(shard_dir) / shard["file"]
        if not path.exists():
            raise ShardError(f"{path}: shard listed in manifest.json is missing")
        actual = sha256_file(path)
        if actual != shard["sha256"]:
            raise ShardError(f"{path}: corrupt shard, sha256 {actual[:12]}… but manifest says {shard['sha256'][:12]}…")


def load_manifest(shard_dir: str | Path) -> dict:
    """The manifest.json of one dataset's shard folder."""
    with open(Path(shard_dir) / "manifest.json") as f:
        return json.load(f)


@dataclass(frozen=True)
class Entry:
    """Where one sample's members live inside a tar file."""

    shard: str
    members: dict[str, tuple[int, int]]  # extension -> (offset, size)


class ShardReader:
    """Random access to the samples of one split of one dataset, read straight from its tar shards.

    Args:
        shard_dir: the dataset's shard folder (with manifest.json).
        split: which split to read.
        verify: check each shard's sha256 against the manifest first.
    """

    def __init__(self, shard_dir: str | Path, split: str, verify: bool = True):
        self.shard_dir = Path(shard_dir)
        self.manifest = load_manifest(shard_dir)
        if split not in self.manifest["splits"]:
            raise ShardError(f"{shard_dir}: no split {split!r}; has {sorted(self.manifest['splits'])}")
        if verify:
            verify_shards(shard_dir, self.manifest, split)
        self.entries: list[Entry] = []
        self.keys: list[str] = []
        for shard in self.manifest["splits"][split]["shards"]:
            self._index(shard["file"])
        self.labels = np.array([self.read(i, ("json",))["json"]["label"] for i in range(len(self))], dtype=np.int64)

    def _index(self, file: str) -> None:
        grouped: dict[str, dict[str, tuple[int, int]]] = {}
        with tarfile.open(self.shard_dir / file) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                grouped.setdefault(key, {})[ext] = (member.offset_data, member.size)
        for key, members in grouped.items():
            self.keys.append(key)
            self.entries.append(Entry(file, members))

    def __len__(self) -> int:
        return len(self.entries)

    def read(self, index: int, exts: tuple[str, ...] = ("png", "txt", "json")) -> dict:
        """The decoded members of sample `index`: "png" as an HxWx3 array, "txt" as str, "json" as dict."""
        entry = self.entries[index]
        out: dict = {"key": self.keys[index]}
        with open(self.shard_dir / entry.shard, "rb") as f:
            for ext in exts:
                offset, size = entry.members[ext]
                f.seek(offset)
                data = f.read(size)
                out[ext] = decode_png(data) if ext == "png" else json.loads(data) if ext == "json" else data.decode()
        return out
