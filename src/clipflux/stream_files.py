"""The stream files shipped in `streams/`, generated from the synthetic world (`clipflux write-streams`).

FiF-style orders over every adaptation class: a seeded random order (FiF's default), dataset-incremental,
an order by similarity to the pretraining pool (most similar first; needs a base model) and its reverse;
and TiC's time-incremental order over the time-ordered pool's steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from clipflux.data.world import build_world
from clipflux.streams import SEPARATOR, dataset_incremental, random_order


def adaptation_classes() -> dict[str, list[str]]:
    """Every adaptation dataset's classes (or retrieval topics), by dataset."""
    return {s.name: list(s.classes) for s in build_world().values() if s.role == "adaptation"}


@torch.no_grad()
def similarity_order(model: torch.nn.Module, shards: Path, per_class: int = 16, pool_samples: int = 1000) -> list[str]:
    """Adaptation classes ordered by how close their images are to the pretraining pool, closest first.

    A class's similarity is the mean, over up to `per_class` of its training images, of the highest cosine
    similarity to `pool_samples` pool images in the model's image embedding space (FiF orders its
    similarity streams by CLIP-space similarity to the pretraining data).
    """
    from clipflux.data.shards import ShardReader
    from clipflux.evaluate import image_embeddings

    model.eval()
    pool = ShardReader(shards / "pool", "train", verify=False)
    pool_emb = image_embeddings(model, pool, np.arange(min(pool_samples, len(pool))), 256)
    scores = {}
    for dataset, classes in adaptation_classes().items():
        reader = ShardReader(shards / dataset, "train", verify=False)
        for label, classname in enumerate(classes):
            indices = np.flatnonzero(reader.labels == label)[:per_class]
            emb = image_embeddings(model, reader, indices, 256)
            scores[f"{dataset}{SEPARATOR}{classname}"] = float((emb @ pool_emb.T).max(dim=1).values.mean())
    return sorted(scores, key=lambda entry: -scores[entry])


def write_streams(out_dir: Path, seed: int, model: torch.nn.Module | None = None, shards: Path | None = None) -> list[Path]:
    """Write the shipped stream orders into `out_dir`; the similarity orders only when a model is given."""
    classes = adaptation_classes()
    orders = {
        "fif_random": random_order(classes, seed),
        "dataset_incremental": dataset_incremental(classes, list(classes)),
        "tic_time_incremental": [f"tic{SEPARATOR}{step}" for step in build_world()["tic"].classes],
    }
    if model is not None and shards is not None:
        orders["fif_similarity"] = similarity_order(model, shards)
        orders["fif_similarity_reverse"] = orders["fif_similarity"][::-1]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, entries in orders.items():
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(entries, indent=1) + "\n")
        paths.append(path)
    return paths
