"""Cost of full-state checkpoints: save and load time, and the overhead at the default intervals.

Usage: ./run.sh python benchmarks/checkpointing.py [--repeats N]
Builds the default model with an AdamW state (as after a training step), saves and loads a full-state
checkpoint (model, optimizer, RNG states; atomic write with fsync and sha256) N times, times a training
step of the train and pretrain stages, and prints the overhead of checkpointing at `checkpoint_every`
and at every task boundary, relative to the training time between two checkpoints.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch

from clipflux import checkpoint
from clipflux.config import MixtureConfig, load_params
from clipflux.methods import build_method
from clipflux.models import create_model
from clipflux.train import Loop, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    params = load_params()
    torch.set_num_threads(params.train.threads)
    model, tokenizer = create_model(params.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(params.train.optim.batch_size, 3, 32, 32)
    texts = tokenizer(["a red circle"] * params.train.optim.batch_size)

    def step() -> float:
        start = time.perf_counter()
        out = model(images, texts)
        loss = build_method("finetune", None).loss({}, out)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    for _ in range(3):
        step()
    step_time = statistics.median(step() for _ in range(10))
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}}
    saves, loads = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            start = time.perf_counter()
            path = checkpoint.save(tmp, 0, i + 1, state, keep=2)
            saves.append(time.perf_counter() - start)
            start = time.perf_counter()
            checkpoint.load_latest(tmp)
            loads.append(time.perf_counter() - start)
        size = os.path.getsize(path)
    save, load = statistics.median(saves), statistics.median(loads)
    train, pretrain = params.train, params.pretrain
    steps_per_task = math.ceil(train.samples_per_task / train.optim.batch_size)
    interval = min(train.checkpoint_every, steps_per_task)  # a task boundary always checkpoints
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, model {params.model.name}")
    print(f"checkpoint: {size / 2**20:.1f} MiB; save {save * 1e3:.0f} ms, load {load * 1e3:.0f} ms "
          f"(median of {args.repeats}); train step {step_time * 1e3:.0f} ms at batch {train.optim.batch_size}")
    print("| stage | steps between checkpoints | training time between | save | overhead |")
    print("|---|---|---|---|---|")
    for name, every in (("train", interval), ("pretrain", pretrain.checkpoint_every)):
        scale = pretrain.optim.batch_size / train.optim.batch_size if name == "pretrain" else 1.0
        between = every * step_time * scale
        print(f"| {name} | {every} | {between:.1f} s | {save:.2f} s | {100 * save / between:.1f}% |")


if __name__ == "__main__":
    main()
