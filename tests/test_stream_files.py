"""The stream orders `clipflux write-streams` ships: each a permutation of every adaptation class, in the order
its statistic says (recounted here independently), with its reverse."""

from __future__ import annotations

import json
import re

import numpy as np
import torch

from clipflux.config import ModelConfig
from clipflux.data.shards import ShardReader
from clipflux.evaluate import zero_shot_accuracy
from clipflux.models import create_model
from clipflux.stream_files import adaptation_classes, frequency_order, write_streams
from clipflux.streams import SEPARATOR

FIF_ORDERS = ["fif_random", "dataset_incremental", "fif_frequency", "fif_similarity", "fif_performance"]


def _every_class() -> list[str]:
    return sorted(f"{d}{SEPARATOR}{c}" for d, classes in adaptation_classes().items() for c in classes)


def test_every_order_is_a_permutation_of_the_adaptation_classes_with_its_reverse(tiny_shards, tmp_path):
    torch.manual_seed(0)
    model, tokenizer = create_model(ModelConfig(name="clipflux-tiny"))
    written = {p.stem: json.loads(p.read_text()) for p in write_streams(tmp_path, 0, model, tiny_shards, tokenizer)}
    assert set(written) == {*FIF_ORDERS, "tic_time_incremental", "fif_frequency_reverse", "fif_similarity_reverse",
                            "fif_performance_reverse"}
    for name in FIF_ORDERS:
        assert sorted(written[name]) == _every_class(), name
    for name in ("fif_frequency", "fif_similarity", "fif_performance"):
        assert written[f"{name}_reverse"] == written[name][::-1]

    # performance: the base model's zero-shot accuracy per class, recounted with the evaluation's own function
    accuracy = {}
    for entry in written["fif_performance"]:
        dataset, classname = entry.split(SEPARATOR)
        manifest = json.loads((tiny_shards / dataset / "manifest.json").read_text())
        if manifest["templates"]:
            reader = ShardReader(tiny_shards / dataset, "train", verify=False)
            label = manifest["classes"].index(classname)
            indices = np.flatnonzero(reader.labels == label)[:16]
            accuracy[entry] = zero_shot_accuracy(model, tokenizer, reader, manifest, 256, indices)
    ranked = [accuracy[e] for e in written["fif_performance"] if e in accuracy]
    assert all(a >= b - 1e-9 for a, b in zip(ranked, ranked[1:])) and ranked[0] > ranked[-1]


def test_frequency_order_follows_how_many_pool_captions_name_each_class(tiny_shards):
    pool = ShardReader(tiny_shards / "pool", "train", verify=False)
    words = [" " + " ".join(re.findall(r"[\w-]+", pool.read(i, ("txt",))["txt"].lower())) + " "
             for i in range(len(pool))]

    def count(entry: str) -> int:
        name = entry.split(SEPARATOR)[1].lower()
        return sum(1 for w in words if any(f" {name}{plural} " in w for plural in ("", "s", "es")))

    counts = [count(entry) for entry in frequency_order(tiny_shards)]
    assert all(a >= b for a, b in zip(counts, counts[1:])) and counts[0] > 0 and counts[-1] < counts[0]
