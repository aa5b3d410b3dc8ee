"""Data: generating and sharding the world, and decoding training batches from shards against the rate
at which training consumes them.

Usage: python benchmarks/data_loading.py [--scale S] [--steps N] [--workers 0 1 2]

Generates the world at `--scale` (per-sample rates do not depend on it), shards it, then reads the batches of
a training task from the shards through the trainer's DataLoader (`StepBatches`: index lookup, PNG decode,
tokenising, tensors) with each number of workers, the first being `params.yaml`'s `train.workers`. Training
consumes samples at the rate of its loop on batches held in memory (measured here too); a loading rate below
it means training waits for data with that many workers.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # tables only (tqdm reads it on import)

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clipflux.config import MixtureConfig, load_params
from clipflux.data.loader import StepBatches, index_items
from clipflux.data.pipeline import preprocess
from clipflux.data.world import generate_world
from clipflux.data.shards import ShardReader
from clipflux.models import create_model, image_size
from clipflux.replay import split_batch

from common import adamw, bare_open_clip_steps, machine, memory_batches, table


def loading_rate(batches: StepBatches, workers: int, steps: int) -> float:
    """Samples/s of a DataLoader over the first `steps` batches (after the first, which waits for the workers)."""
    loader = iter(torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(steps), num_workers=workers))
    next(loader)  # worker start-up is paid once per task, not per step
    start = time.perf_counter()
    n = sum(len(batch["texts"]) for batch in loader)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.3, help="world scale (the shipped default is 1.0)")
    parser.add_argument("--steps", type=int, default=40, help="batches read per measurement")
    parser.add_argument("--workers", type=int, nargs="+", help="worker counts (default: train.workers, 1, 2)")
    args = parser.parse_args()
    params = load_params()
    cfg = params.train
    workers = args.workers or sorted({cfg.workers, 1, 2})
    torch.set_num_threads(cfg.threads)
    world = dataclasses.replace(params.world, scale=args.scale)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        generate_world(world, tmp / "raw", progress=False)
        n = sum(len(np.load(p, mmap_mode="r")) for p in (tmp / "raw").glob("*/*.npy"))
        rows.append(["download: generate the world", "", f"{n / (time.perf_counter() - start):.0f}", ""])
        start = time.perf_counter()
        preprocess(tmp / "raw", tmp / "shards", world.shard_size)
        rows.append(["preprocess: write shards", "", f"{n / (time.perf_counter() - start):.0f}", ""])

        torch.manual_seed(0)
        model, tokenizer = create_model(params.model)
        batches = memory_batches(model, tokenizer, cfg.optim.batch_size)
        optimizer = adamw(model, cfg.optim, torch.device("cpu"))
        bare_open_clip_steps(model, optimizer, batches, 3, cfg.optim, cfg.precision, torch.device("cpu"))  # warm-up
        steps = 10
        start = time.perf_counter()
        bare_open_clip_steps(model, optimizer, batches, steps, cfg.optim, cfg.precision, torch.device("cpu"))
        consumed = steps * cfg.optim.batch_size / (time.perf_counter() - start)

        # A task of the finetune experiment (FiF's mixture): an adaptation dataset, a replay buffer and the pool.
        readers = [ShardReader(tmp / "shards" / d, "train") for d in ("novel_shapes", "textures", "pool")]
        sources = {"update": index_items(0, readers[0]), "buffer": index_items(1, readers[1]),
                   "pretraining": index_items(2, readers[2])}
        mixture = MixtureConfig(0.34, 0.33, 0.33)
        counts = split_batch(cfg.optim.batch_size, mixture, len(sources["buffer"]), len(sources["pretraining"]))
        task = StepBatches(readers, sources, counts, cfg.seed, 0, args.steps + 1, tokenizer, image_size(model))
        for w in workers:
            rate = loading_rate(task, w, args.steps + 1)
            note = " (train.workers)" if w == cfg.workers else ""
            rows.append([f"train batches from shards, workers {w}{note}", w, f"{rate:.0f}", f"{rate / consumed:.2f}"])
        rows.append(["training consumes (in-memory loop)", "", f"{consumed:.0f}", "1.00"])

    print(machine(torch.device("cpu")))
    print(f"settings: world scale {args.scale}, batch {cfg.optim.batch_size}, mixture update/buffer/pretraining "
          f"{mixture.update}/{mixture.buffer}/{mixture.pretraining}, model {params.model.name}, {args.steps} batches "
          f"per reading\n")
    print(table(["work", "workers", "samples/s", "x training's rate"], rows))


if __name__ == "__main__":
    main()
