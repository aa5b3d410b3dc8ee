"""Evaluation throughput: images/s of zero-shot evaluation read from shards and preloaded into RAM.

Usage: python benchmarks/evaluation.py [--test-per-class N] [--states K]

Generates the world's evaluation data (`--test-per-class` test images per class, default params.yaml's), then
evaluates K model states on every FiF dataset in full (classification with template-ensembled class
embeddings, retrieval both ways), as the evaluate stage does: once reading and decoding the shards for every
state, once with `evaluate.preload` (decoded once into RAM, its one-time cost shown apart).
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # tables only (tqdm reads it on import)

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from clipflux.config import load_params
from clipflux.data.pipeline import load_datasets, preprocess
from clipflux.data.world import generate_world
from clipflux.evaluate import Evaluator, evaluate_state, evaluation_sets, preload
from clipflux.models import create_model, save_weights

from common import machine, table


def _per_state(evaluator: Evaluator, weights: Path, sets: dict, states: int) -> float:
    """Median seconds to evaluate one model state (class embeddings included) on every set in full."""
    times = []
    for _ in range(states):
        start = time.perf_counter()
        evaluator.load(weights)
        evaluate_state(evaluator, sets, True, desc="benchmark")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test-per-class", type=int, help="test images per class (default: params.yaml world)")
    parser.add_argument("--states", type=int, default=3, help="model states evaluated each way")
    args = parser.parse_args()
    params = load_params()
    cfg = params.evaluate
    torch.set_num_threads(cfg.threads)
    world = dataclasses.replace(params.world, pool_size=1, train_per_class=1,
                                test_per_class=args.test_per_class or params.world.test_per_class)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_world(world, tmp / "raw", progress=False)
        preprocess(tmp / "raw", tmp / "shards", world.shard_size)
        manifests = load_datasets(tmp / "shards")
        model, tokenizer = create_model(params.model)
        save_weights(model, tmp / "state.pt")
        evaluator = Evaluator(model, tokenizer, cfg.batch_size)
        sets, _ = evaluation_sets(tmp / "shards", manifests, cfg.seed, 1.0)
        evaluate_state(evaluator, sets, True, desc="warm-up")
        from_shards = _per_state(evaluator, tmp / "state.pt", sets, args.states)
        start = time.perf_counter()
        sets = preload(sets)
        loading = time.perf_counter() - start
        in_memory = _per_state(evaluator, tmp / "state.pt", sets, args.states)

    images = sum(len(s.full) for s in sets.values())
    print(machine(torch.device("cpu")))
    print(f"settings: model {params.model.name}, batch {cfg.batch_size}, {len(sets)} datasets, {images} images "
          f"({world.test_per_class} x scale {world.scale:g} per class), every set in full, median of {args.states} "
          f"states\n")
    print(table(["evaluation data", "s per model state", "images/s", "one-time cost"],
                [["read from shards every state", f"{from_shards:.2f}", f"{images / from_shards:.0f}", ""],
                 ["preloaded into RAM (evaluate.preload)", f"{in_memory:.2f}", f"{images / in_memory:.0f}",
                  f"{loading:.2f} s to decode"]]))


if __name__ == "__main__":
    main()
