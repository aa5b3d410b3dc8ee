"""The data stages' work on shards: turn raw data into shards (preprocess) and open them (every stage after).

Raw layout, per dataset: `<raw>/<dataset>/card.json` (the dataset card) and per split `<split>.npy`
(uint8 images) with `<split>.jsonl` (one record per image).

Imported datasets (`clipflux import`, see `clipflux.data.importers`) are shard folders already, wherever they
are (`data.external` in params: a folder under data/external/ or a URL). `preprocess` does not copy them: it
records their location and their manifest's sha256 in `<shards>/datasets.json`, the index every stage opens
datasets through (`open_dataset`). Every stage downstream depends on the index, so a re-indexed import reruns
what reads it; an import changed after indexing is refused by `open_dataset` until it is re-indexed (DVC cannot
watch data/external itself without making the default pipeline need it).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from clipflux.data.shards import ShardError, load_manifest, write_shards
from clipflux.data.sources import load_manifest_at, open_reader
from clipflux.progress import progress as show_progress


def write_json(path: Path, obj: object) -> None:
    """Write `obj` as JSON to `path` atomically (a temporary file, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_raw(dataset_dir: str | Path, split: str) -> tuple[np.ndarray, list[dict]]:
    """Images and records of one raw split."""
    dataset_dir = Path(dataset_dir)
    images = np.load(dataset_dir / f"{split}.npy")
    with open(dataset_dir / f"{split}.jsonl") as f:
        records = [json.loads(line) for line in f]
    if len(records) != len(images):
        raise ValueError(f"{dataset_dir}/{split}: {len(images)} images but {len(records)} records")
    return images, records


def shard_dataset(dataset_dir: str | Path, out_dir: str | Path, shard_size: int) -> dict:
    """Write one raw dataset as webdataset shards plus its manifest.

    Returns:
        The manifest: the dataset card plus, per split, sample count, per-class counts and shards.
    """
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    card = json.loads((dataset_dir / "card.json").read_text())
    manifest = dict(card, splits={})
    for split_file in sorted(dataset_dir.glob("*.jsonl")):
        split = split_file.stem
        images, records = read_raw(dataset_dir, split)
        labels = Counter(r["classname"] for r in records if r["classname"] is not None)
        manifest["splits"][split] = {
            "count": len(records),
            "class_counts": dict(sorted(labels.items())),
            "shards": write_shards(out_dir, split, images, records, shard_size),
        }
    write_json(out_dir / "manifest.json", manifest)
    return manifest


CARD_KEYS = ("name", "role", "task", "classes", "templates", "shift", "splits")


def external_entry(name: str, location: str) -> dict:
    """The index entry of an imported dataset: its role, task, location and manifest sha256 (checked)."""
    manifest, digest = load_manifest_at(location)
    missing = [k for k in CARD_KEYS if k not in manifest]
    if missing:
        raise ShardError(f"data.external.{name}: {location}/manifest.json lacks {missing}; import it with `clipflux import`")
    if manifest["name"] != name:
        raise ShardError(f"data.external.{name}: {location} holds dataset {manifest['name']!r}, not {name!r}")
    return {"role": manifest["role"], "task": manifest["task"], "location": str(location), "manifest_sha256": digest}


def preprocess(raw_dir: str | Path, shards_dir: str | Path, shard_size: int,
               external: dict[str, str] | None = None) -> dict[str, dict]:
    """Shard every raw dataset and index the imported ones (the preprocess stage); `shards_dir` is replaced.

    Args:
        raw_dir: the raw world (possibly empty).
        shards_dir: the output folder.
        shard_size: samples per shard of the world's datasets.
        external: imported datasets, name -> location (`data.external`).

    Returns:
        The manifests by dataset name; the index is written as `<shards_dir>/datasets.json` (name -> role,
        task, and for imported datasets location and manifest sha256).
    """
    raw_dir, shards_dir = Path(raw_dir), Path(shards_dir)
    if shards_dir.exists():
        shutil.rmtree(shards_dir)
    shards_dir.mkdir(parents=True)
    manifests = {}
    dataset_dirs = sorted(p for p in raw_dir.iterdir() if p.is_dir())
    for dataset_dir in show_progress(dataset_dirs, desc="preprocess", unit="dataset"):
        manifests[dataset_dir.name] = shard_dataset(dataset_dir, shards_dir / dataset_dir.name, shard_size)
    index = {name: {"role": m["role"], "task": m["task"]} for name, m in manifests.items()}
    for name, location in sorted((external or {}).items()):
        if name in index:
            raise ShardError(f"data.external.{name}: the synthetic world has a dataset of that name; rename the import")
        index[name] = external_entry(name, location)
        manifests[name] = load_manifest_at(location)[0]
    write_json(shards_dir / "datasets.json", index)
    return manifests


def load_index(shards_dir: str | Path) -> dict[str, dict]:
    """`<shards_dir>/datasets.json`: every dataset of the study, by name."""
    return json.loads((Path(shards_dir) / "datasets.json").read_text())


def load_datasets(shards_dir: str | Path) -> dict[str, dict]:
    """Every dataset's manifest (the world's and the imported ones), by name."""
    out = {}
    for name, entry in load_index(shards_dir).items():
        out[name] = load_manifest_at(entry["location"])[0] if "location" in entry else load_manifest(Path(shards_dir) / name)
    return out


def open_dataset(shards_dir: str | Path, name: str, split: str, verify: bool = True):
    """A reader of one split of a dataset of the study, wherever its shards are (see `clipflux.data.sources`).

    Raises:
        ShardError: the dataset is not in the index, or its imported manifest changed since preprocess.
    """
    index = load_index(shards_dir)
    if name not in index:
        raise ShardError(f"{shards_dir}: no dataset {name!r}; the study has {sorted(index)}")
    entry = index[name]
    if "location" not in entry:
        return open_reader(Path(shards_dir) / name, split, verify)
    return open_reader(entry["location"], split, verify, manifest_sha256=entry["manifest_sha256"])
