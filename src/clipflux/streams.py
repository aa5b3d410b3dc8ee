"""Streams: ordered lists of `dataset+++classname` (FiF's format) chunked into tasks.

Pure functions, but for `keys_by_class`, which reads the shards.

A stream file (`streams/<name>.json`) is a JSON list of `dataset+++classname` entries; its order is the
order in which classes arrive. `chunk` splits it into `num_tasks` tasks of `len // num_tasks` classes,
the remainder going one each to the first tasks, exactly as FiF does. `resolve` turns the tasks into
the exact sample keys each task trains on; `keys_by_class` lists those keys from the shards.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from clipflux.config import EvaluateConfig
from clipflux.data.pipeline import open_dataset
from clipflux.errors import UserError
from clipflux.subsets import validation_keys

SEPARATOR = "+++"


class StreamError(UserError, ValueError):
    """A stream file names a dataset or class that does not exist, or cannot be chunked."""


def parse_entry(entry: str) -> tuple[str, str]:
    """Split `dataset+++classname` into its two parts."""
    dataset, sep, classname = entry.partition(SEPARATOR)
    if not sep or not dataset or not classname:
        raise StreamError(f"{entry!r}: a stream entry must read 'dataset{SEPARATOR}classname'")
    return dataset, classname


def load_stream_file(path: str | Path) -> list[str]:
    """The entries of a stream file, checked for format and duplicates."""
    entries = json.loads(Path(path).read_text())
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise StreamError(f"{path}: a stream file must be a JSON list of 'dataset{SEPARATOR}classname' strings")
    for entry in entries:
        parse_entry(entry)
    seen = set()
    for entry in entries:
        if entry in seen:
            raise StreamError(f"{path}: {entry!r} appears twice")
        seen.add(entry)
    return entries


def chunk(entries: list[str], num_tasks: int) -> list[list[str]]:
    """Split a stream into `num_tasks` consecutive tasks, FiF-style.

    Each task gets `len(entries) // num_tasks` entries and the first `len(entries) % num_tasks` tasks
    get one more, so task sizes differ by at most one and the order is preserved.
    """
    if not 1 <= num_tasks <= len(entries):
        raise StreamError(f"num_tasks={num_tasks}: must be between 1 and the stream length {len(entries)}")
    base, extra = divmod(len(entries), num_tasks)
    tasks, start = [], 0
    for t in range(num_tasks):
        size = base + (1 if t < extra else 0)
        tasks.append(entries[start : start + size])
        start += size
    return tasks


def resolve(
    entries: list[str], num_tasks: int, keys_by_class: dict[str, dict[str, list[str]]]
) -> list[dict]:
    """Resolve a stream into tasks with their classes and exact training sample keys.

    Args:
        entries: the stream's `dataset+++classname` entries, in order.
        num_tasks: how many tasks to chunk it into.
        keys_by_class: for each adaptation dataset, class name -> the keys of its training samples.

    Returns:
        One dict per task: "classes" (its entries) and "samples" (dataset -> sorted sample keys).

    Raises:
        StreamError: naming an unknown dataset or class and what is available.
    """
    tasks = []
    for task_entries in chunk(entries, num_tasks):
        samples: dict[str, list[str]] = {}
        for entry in task_entries:
            dataset, classname = parse_entry(entry)
            if dataset not in keys_by_class:
                raise StreamError(f"{entry!r}: unknown adaptation dataset {dataset!r}; known: {sorted(keys_by_class)}")
            if classname not in keys_by_class[dataset]:
                known = sorted(keys_by_class[dataset])
                raise StreamError(f"{entry!r}: dataset {dataset!r} has no class {classname!r}; it has {known}")
            samples.setdefault(dataset, []).extend(keys_by_class[dataset][classname])
        tasks.append({"classes": task_entries, "samples": {d: sorted(k) for d, k in sorted(samples.items())}})
    return tasks


# --------------------------------------------------------------------------------------------------
# Orders shipped in streams/


def random_order(classes: dict[str, list[str]], seed: int) -> list[str]:
    """FiF's default: every class of every adaptation dataset, in one seeded random order."""
    entries = [f"{d}{SEPARATOR}{c}" for d in sorted(classes) for c in classes[d]]
    order = np.random.default_rng(seed).permutation(len(entries))
    return [entries[i] for i in order]


def dataset_incremental(classes: dict[str, list[str]], datasets: list[str]) -> list[str]:
    """One dataset after another, in the given order; classes in their dataset's order."""
    return [f"{d}{SEPARATOR}{c}" for d in datasets for c in classes[d]]


def keys_by_class(shards: Path, manifests: dict[str, dict], held_out: EvaluateConfig | None = None
                  ) -> dict[str, dict[str, list[str]]]:
    """For every streamable dataset (a training split and classes or topics): class -> training sample keys.

    With `held_out` (evaluate.validation on), the keys the evaluate stage validates on are left out of the
    stream: FiF's validation mode trains on `split` of each class and never reads the test data.
    """
    out = {}
    for name, manifest in manifests.items():
        if manifest["role"] not in ("adaptation", "tic") or "train" not in manifest["splits"] or not manifest["classes"]:
            continue
        reader = open_dataset(shards, name, "train")
        classes = manifest["classes"]
        held = set()
        if held_out is not None and manifest["role"] == "adaptation":  # as evaluate.evaluation_sets holds out
            held = validation_keys(held_out.seed, name, reader.keys, reader.labels.tolist(), held_out.split)
        out[name] = {c: [] for c in classes}
        for key, label in zip(reader.keys, reader.labels):
            if key not in held:
                out[name][classes[label]].append(key)
    return out
