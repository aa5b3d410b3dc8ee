"""Throughput of each stage's core work on this machine, at the shipped params.yaml settings.

Usage: ./run.sh python benchmarks/throughput.py [--steps N]
Prints one table: world generation (samples/s), sharding (samples/s), training (samples/s at the
pretrain and train batch sizes) and zero-shot evaluation (images/s).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clipflux.config import MixtureConfig, load_params
from clipflux.data.loader import index_items
from clipflux.data.pipeline import generate_world, load_datasets, preprocess
from clipflux.data.shards import ShardReader
from clipflux.evaluate import zero_shot_accuracy
from clipflux.methods import build_method
from clipflux.models import create_model
from clipflux.train import Loop, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30, help="training steps to time")
    args = parser.parse_args()
    params = load_params()
    torch.set_num_threads(params.train.threads)
    world = params.world
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        generate_world(world, tmp / "raw", progress=False)
        n = sum(len(np.load(p, mmap_mode="r")) for p in (tmp / "raw").glob("*/*.npy"))
        rows.append(("download: generate the world", n / (time.perf_counter() - start), "samples/s", f"{n} samples"))
        start = time.perf_counter()
        preprocess(tmp / "raw", tmp / "shards", world.shard_size)
        rows.append(("preprocess: write shards", n / (time.perf_counter() - start), "samples/s", ""))

        pool = ShardReader(tmp / "shards" / "pool", "train")
        for stage, optim in (("pretrain", params.pretrain.optim), ("train", params.train.optim)):
            model, tokenizer = create_model(params.model)
            loop = Loop(0, args.steps, optim, MixtureConfig(1.0, 0.0, 0.0), checkpoint_every=10**9)
            times = []
            trainer = Trainer(model, build_method("finetune", None), tokenizer, [pool], [index_items(0, pool)],
                              np.empty((0, 2), dtype=np.int64), loop, tmp / f"ckpt-{stage}",
                              lambda k, v, s: times.append(time.perf_counter()) if k == "train/loss" else None, {})
            trainer.fit()
            rate = (len(times) - 5) * optim.batch_size / (times[-1] - times[4])  # skip warm-up steps
            rows.append((f"{stage}: training step (batch {optim.batch_size})", rate, "samples/s", "data loading included"))

        manifests = load_datasets(tmp / "shards")
        reader = ShardReader(tmp / "shards" / "shapes", "test")
        start = time.perf_counter()
        zero_shot_accuracy(model, tokenizer, reader, manifests["shapes"], params.evaluate.batch_size)
        rows.append(("evaluate: zero-shot", len(reader) / (time.perf_counter() - start), "images/s", "text embeddings included"))

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, model {params.model.name}")
    print(f"| {'work':40} | {'rate':>10} | unit      | note |")
    print(f"|{'-' * 42}|{'-' * 12}|-----------|------|")
    for name, rate, unit, note in rows:
        print(f"| {name:40} | {rate:10.0f} | {unit:9} | {note} |")


if __name__ == "__main__":
    main()
