"""The stream files shipped in `streams/`, generated from the synthetic world (`clipflux write-streams`).

FiF-style orders over every adaptation class (FiF ships them as stream_construction/<order>_sequence_1.json and
<order>_sequence_reverse_1.json): a seeded random order (FiF's default), dataset-incremental, by concept frequency
in the pretraining pool's captions (most frequent first), and, from a base model, by similarity to the pretraining
pool (most similar first) and by the base model's zero-shot performance (best first, easy to hard); each with its
reverse; and TiC's time-incremental order over the time-ordered pool's steps.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from clipflux.data.world import build_world
from clipflux.streams import SEPARATOR, dataset_incremental, random_order


def adaptation_classes() -> dict[str, list[str]]:
    """Every adaptation dataset's classes (or retrieval topics), by dataset."""
    return {s.name: list(s.classes) for s in build_world().values() if s.role == "adaptation"}


@torch.no_grad()
def class_image_embeddings(model: torch.nn.Module, shards: Path, per_class: int = 16) -> dict[str, list[torch.Tensor]]:
    """Per adaptation dataset, the model's image embeddings of up to `per_class` training images of each class, in
    class order (what the similarity and performance orders both score)."""
    from clipflux.data.shards import ShardReader
    from clipflux.evaluate import image_embeddings

    model.eval()
    embedded = {}
    for dataset, classes in adaptation_classes().items():
        reader = ShardReader(shards / dataset, "train", verify=False)
        embedded[dataset] = [image_embeddings(model, reader, np.flatnonzero(reader.labels == label)[:per_class], 256)
                             for label in range(len(classes))]
    return embedded


@torch.no_grad()
def similarity_order(model: torch.nn.Module, shards: Path, embedded: dict[str, list[torch.Tensor]] | None = None,
                     pool_samples: int = 1000) -> list[str]:
    """Adaptation classes ordered by how close their images are to the pretraining pool, closest first.

    A class's similarity is the mean, over its embedded training images (`class_image_embeddings`), of the
    highest cosine similarity to `pool_samples` pool images in the model's image embedding space (FiF orders its
    similarity streams by CLIP-space similarity to the pretraining data).
    """
    from clipflux.data.shards import ShardReader
    from clipflux.evaluate import image_embeddings

    embedded = embedded or class_image_embeddings(model, shards)
    pool = ShardReader(shards / "pool", "train", verify=False)
    pool_emb = image_embeddings(model, pool, np.arange(min(pool_samples, len(pool))), 256)
    scores = {}
    for dataset, classes in adaptation_classes().items():
        for classname, emb in zip(classes, embedded[dataset]):
            scores[f"{dataset}{SEPARATOR}{classname}"] = float((emb @ pool_emb.T).max(dim=1).values.mean())
    return sorted(scores, key=lambda entry: -scores[entry])


def frequency_order(shards: Path) -> list[str]:
    """Adaptation classes ordered by how many pretraining-pool captions name them (the name or its plural in s or
    es, as whole words, any case), most frequent first; ties keep the classes' canonical order (FiF orders by the
    concept's frequency in the pretraining data)."""
    from clipflux.data.shards import ShardReader

    pool = ShardReader(shards / "pool", "train", verify=False)
    captions = [pool.read(i, ("txt",))["txt"].lower() for i in range(len(pool))]
    counts = {}
    for dataset, classes in adaptation_classes().items():
        for classname in classes:
            word = re.compile(rf"(?<![\w-]){re.escape(classname.lower())}(?:e?s)?(?![\w-])")
            counts[f"{dataset}{SEPARATOR}{classname}"] = sum(1 for c in captions if word.search(c))
    return sorted(counts, key=lambda entry: -counts[entry])


@torch.no_grad()
def performance_order(model: torch.nn.Module, tokenizer, shards: Path,
                      embedded: dict[str, list[torch.Tensor]] | None = None) -> list[str]:
    """Adaptation classes ordered by the model's zero-shot accuracy on their embedded training images
    (`class_image_embeddings`), against the dataset's classes with its templates or the bare name, best first;
    ties keep the canonical order."""
    from clipflux.evaluate import class_embeddings

    embedded = embedded or class_image_embeddings(model, shards)
    scores = {}
    for dataset, classes in adaptation_classes().items():
        manifest = json.loads((shards / dataset / "manifest.json").read_text())
        text = class_embeddings(model, tokenizer, classes, manifest.get("templates") or ["{}"])
        for label, (classname, emb) in enumerate(zip(classes, embedded[dataset])):
            predicted = (emb @ text.T).argmax(dim=1)
            scores[f"{dataset}{SEPARATOR}{classname}"] = float((predicted == label).float().mean())
    return sorted(scores, key=lambda entry: -scores[entry])


def write_streams(out_dir: Path, seed: int, model: torch.nn.Module | None = None, shards: Path | None = None,
                  tokenizer=None) -> list[Path]:
    """Write the shipped stream orders into `out_dir`: the frequency orders with `shards`, the similarity and
    performance orders with a model (and its tokenizer) too."""
    classes = adaptation_classes()
    orders = {
        "fif_random": random_order(classes, seed),
        "dataset_incremental": dataset_incremental(classes, list(classes)),
        "tic_time_incremental": [f"tic{SEPARATOR}{step}" for step in build_world()["tic"].classes],
    }
    if shards is not None and (shards / "pool").exists():
        orders["fif_frequency"] = frequency_order(shards)
    if model is not None and shards is not None:
        embedded = class_image_embeddings(model, shards)  # once, for both orders
        orders["fif_similarity"] = similarity_order(model, shards, embedded)
        orders["fif_performance"] = performance_order(model, tokenizer, shards, embedded)
    for name in ("fif_frequency", "fif_similarity", "fif_performance"):
        if name in orders:
            orders[f"{name}_reverse"] = orders[name][::-1]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, entries in orders.items():
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(entries, indent=1) + "\n")
        paths.append(path)
    return paths
