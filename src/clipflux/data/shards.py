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

from clipflux.errors import UserError


class ShardError(UserError, RuntimeError):
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
    """HxWx3 uint8 array from image bytes (PNG, or any format Pillow reads: the JPEG of imported shards)."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")  # a sample's image member: the first of these it has


def image_member(members: dict) -> str:
    """The extension of a sample's image member."""
    for ext in IMAGE_EXTS:
        if ext in members:
            return ext
    raise ShardError(f"sample has no image member ({'/'.join(IMAGE_EXTS)}); it has {sorted(members)}")


def decode_member(ext: str, data: bytes):
    """A member's value: an HxWx3 array for images, a dict for json, a str for txt."""
    if ext in IMAGE_EXTS:
        return decode_png(data)
    return json.loads(data) if ext == "json" else data.decode()


class ShardWriter:
    """Writes samples one at a time into `<split>-NNNNNN.tar` shards of `shard_size` samples each.

    Every shard is written to a temporary file, fsynced and renamed, so a shard that exists is complete.
    Members are written with fixed ownership and times, so the same samples give byte-identical shards.

    Args:
        out_dir: the dataset's shard folder.
        split: names the shards.
        shard_size: samples per shard.
    """

    def __init__(self, out_dir: str | Path, split: str, shard_size: int):
        self.out_dir, self.split, self.shard_size = Path(out_dir), split, shard_size
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shards: list[dict] = []
        self._file = self._writer = None
        self._count = 0

    def add(self, key: str, image_ext: str, image: bytes, caption: str, meta: dict) -> None:
        """Append one sample: its image bytes (`image_ext`: png or jpg), caption and metadata (the json member)."""
        if self._writer is None:
            self._open()
        self._writer.write({"__key__": key, image_ext: image, "txt": caption, "json": meta})
        self._count += 1
        if self._count == self.shard_size:
            self._close()

    def close(self) -> list[dict]:
        """Finish the last shard; returns one entry per shard: file name, sample count and sha256."""
        if self._writer is not None:
            self._close()
        return self.shards

    def _open(self) -> None:
        self._name = f"{self.split}-{len(self.shards):06d}.tar"
        self._file = open(self.out_dir / f".{self._name}.tmp", "wb")
        self._writer = wds.TarWriter(self._file, user="clipflux", group="clipflux", mode=0o444, mtime=0.0)

    def _close(self) -> None:
        self._writer.close()  # ends the tar stream; the file stays ours to sync and close
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.out_dir / f".{self._name}.tmp", self.out_dir / self._name)
        self.shards.append({"file": self._name, "count": self._count, "sha256": sha256_file(self.out_dir / self._name)})
        self._file = self._writer = None
        self._count = 0


def write_shards(
    out_dir: str | Path, split: str, images: np.ndarray, records: list[dict], shard_size: int
) -> list[dict]:
    """Write samples as `<split>-NNNNNN.tar` shards (see `ShardWriter`).

    Args:
        out_dir: the dataset's shard folder.
        split: "train" or "test"; names the shards.
        images: (N, H, W, 3) uint8 images.
        records: N records with at least "key", "caption" and "label".
        shard_size: samples per shard.

    Returns:
        One entry per shard: file name, sample count and sha256.
    """
    writer = ShardWriter(out_dir, split, shard_size)
    for image, record in zip(images, records):
        meta = {k: v for k, v in record.items() if k not in ("key", "caption")}
        writer.add(record["key"], "png", encode_png(image), record["caption"], meta)
    return writer.close()


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


def tar_members(path: str | Path) -> list[tuple[str, int, int]]:
    """(name, data offset, size) of each regular file in a tar, in order: what `tarfile` gives as
    (name, offset_data, size), read from the 512-byte headers directly (4x faster: the default world's
    127,350 members in 1.4 s instead of 5.9 s, paid at every stage start). ustar, pax ('x'/'g') and GNU
    long-name ('L') headers are understood; anything else (a bad checksum, a sparse file, ...) is left to
    `tarfile`, which reads every tar and raises its own error."""
    data = Path(path).read_bytes()
    members, pending, pos, headers, checksums = [], {}, 0, [], []
    while pos + 512 <= len(data):
        header = data[pos:pos + 512]
        if header == bytes(512):  # end of archive
            return members if _checksums_match(data, headers, checksums) else _tarfile_members(path)
        try:
            checksums.append(int(header[148:156].split(b"\0")[0].strip() or b"-1", 8))
            size = int(header[124:136].split(b"\0")[0].strip() or b"0", 8)
        except ValueError:
            return _tarfile_members(path)
        if header[124] & 0x80:  # base-256 size
            return _tarfile_members(path)
        headers.append(pos)
        kind, start = header[156:157], pos + 512
        pos = start + (size + 511) // 512 * 512
        if kind == b"x":  # only extended headers' bodies are read: a member's data is never copied here
            pending.update(_pax_records(data[start:start + size]))
        elif kind == b"L":
            pending["path"] = data[start:start + size].rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif kind == b"g":
            continue
        elif kind in (b"0", b"\0", b"7"):
            name = pending.pop("path", None)
            if name is None:
                name = header[0:100].split(b"\0")[0].decode("utf-8", "surrogateescape")
                prefix = header[345:500].split(b"\0")[0] if header[257:262] == b"ustar" else b""
                if prefix:
                    name = prefix.decode("utf-8", "surrogateescape") + "/" + name
            if "size" in pending:  # a pax size overrides the header's (files over 8 GiB)
                return _tarfile_members(path)
            members.append((name, start, size))
            pending = {}
        elif kind in (b"1", b"2", b"3", b"4", b"5", b"6"):
            pending = {}
        else:
            return _tarfile_members(path)
    return members


def _checksums_match(data: bytes, headers: list[int], checksums: list[int]) -> bool:
    """Each header's stored checksum is the sum of its bytes with the checksum field read as spaces."""
    if not headers:
        return True
    blocks = np.frombuffer(data, dtype=np.uint8)[np.asarray(headers)[:, None] + np.arange(512)].astype(np.int64)
    sums = blocks.sum(axis=1) - blocks[:, 148:156].sum(axis=1) + 8 * 32
    return bool(np.array_equal(sums, np.asarray(checksums)))


def _pax_records(body: bytes) -> dict[str, str]:
    """The "length key=value\\n" records of a pax extended header."""
    records, pos = {}, 0
    while pos < len(body) and body[pos:pos + 1] != b"\0":
        length = int(body[pos:body.index(b" ", pos)])
        key, _, value = body[body.index(b" ", pos) + 1:pos + length - 1].partition(b"=")
        records[key.decode()] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _tarfile_members(path: str | Path) -> list[tuple[str, int, int]]:
    with tarfile.open(path) as tar:
        return [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]


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
        for name, offset, size in tar_members(self.shard_dir / file):
            key, _, ext = name.partition(".")
            grouped.setdefault(key, {})[ext] = (offset, size)
        for key, members in grouped.items():
            self.keys.append(key)
            self.entries.append(Entry(file, members))

    def __len__(self) -> int:
        return len(self.entries)

    def read(self, index: int, exts: tuple[str, ...] = ("png", "txt", "json")) -> dict:
        """The decoded members of sample `index`: "png" as an HxWx3 array, "txt" as str, "json" as dict.

        "png" names the sample's image whatever its format (an imported shard may hold "jpg").
        """
        entry = self.entries[index]
        out: dict = {"key": self.keys[index]}
        with open(self.shard_dir / entry.shard, "rb") as f:
            for ext in exts:
                offset, size = entry.members[image_member(entry.members) if ext == "png" else ext]
                f.seek(offset)
                out[ext] = decode_member(ext, f.read(size))
        return out
