"""Cost of full-state checkpoints: save and load time, and the overhead at the default intervals.

Usage: ./run.sh python benchmarks/checkpointing.py [--repeats N]
Builds the default model with an AdamW state (as after a training step), saves and loads both kinds of
full-state checkpoint N times (mid-task: model, optimizer, RNG states; task boundary: no optimizer, since a
task starts a fresh one; atomic write with fsync and sha256), times a training step of the train and
pretrain stages, and prints the overhead of checkpointing at `checkpoint_every` and at every task boundary
relative to a task's training time.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clipflux import checkpoint
from clipflux.config import load_params
from clipflux.methods import build_method
from clipflux.models import create_model, image_size


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    params = load_params()
    torch.set_num_threads(params.train.threads)
    model, tokenizer = create_model(params.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_of = build_method("finetune", None).loss

    def step_time(batch_size: int) -> float:
        images = torch.randn(batch_size, 3, image_size(model), image_size(model))
        texts = tokenizer(["a red circle"] * batch_size)

        def step() -> None:
            loss = loss_of({}, model(images, texts))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        return _median_time(step, 10)

    train, pretrain = params.train, params.pretrain
    step_s = {"train": step_time(train.optim.batch_size), "pretrain": step_time(pretrain.optim.batch_size)}
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    # Mid-task checkpoints hold the optimizer; task-boundary ones do not (a task starts a fresh optimizer).
    states = {"mid-task": {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng},
              "boundary": {"model": model.state_dict(), "optimizer": None, "rng": rng}}
    cost = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, state in states.items():
            counter = iter(range(1, 10**6))
            save = _median_time(lambda: checkpoint.save(tmp, 0, next(counter), state, keep=2), args.repeats)
            load = _median_time(lambda: checkpoint.load_latest(tmp), args.repeats)
            size = max(os.path.getsize(p) for p in Path(tmp).glob("*.pt"))
            cost[kind] = (save, load, size)
            checkpoint.clear(tmp)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, model {params.model.name}")
    print("| checkpoint | size | save | load |")
    print("|---|---|---|---|")
    for kind, (save, load, size) in cost.items():
        print(f"| {kind} | {size / 2**20:.1f} MiB | {save * 1e3:.0f} ms | {load * 1e3:.0f} ms |")
    print(f"\nmedian of {args.repeats}; one training step (model only, no data loading, so the overhead below "
          f"is an upper bound): train {step_s['train'] * 1e3:.0f} ms at batch {train.optim.batch_size}, "
          f"pretrain {step_s['pretrain'] * 1e3:.0f} ms at batch {pretrain.optim.batch_size}\n")
    print("| stage | steps per task | checkpoint_every | checkpoints per task | training time per task | "
          "checkpointing | overhead |")
    print("|---|---|---|---|---|---|---|")
    for name, cfg, samples in (("train", train, train.samples_per_task), ("pretrain", pretrain, pretrain.samples)):
        steps = math.ceil(samples / cfg.optim.batch_size)
        mid = (steps - 1) // cfg.checkpoint_every  # a checkpoint at a task's last step is the boundary one
        spent = mid * cost["mid-task"][0] + cost["boundary"][0]
        trained = steps * step_s[name]
        print(f"| {name} | {steps} | {cfg.checkpoint_every} | {mid} mid-task + 1 boundary | {trained:.1f} s | "
              f"{spent:.2f} s | {100 * spent / trained:.1f}% |")


if __name__ == "__main__":
    main()
