"""Scaling of data-parallel training under torchrun on the CPU (gloo): 1 and 2 processes, same global batch.

Usage: python benchmarks/scaling.py [--layouts 1x2 2x1] [--steps N] [--scale S]

Each layout PxT runs `torchrun --nproc-per-node P` with T threads per process, training the real trainer on
shards of a generated world (the default mixture of the FiF experiments: an adaptation dataset, a replay buffer, the pool)
at `params.yaml`'s global train batch, split over the ranks. After a warm-up task, one task of N steps is
timed on rank 0 (data loading, the gradient all-reduce and the gathered contrastive loss included). The
default layouts use the same cores (2) once as one process and once as two.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # tables only (tqdm reads it on import)

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from clipflux import distributed
from clipflux.config import MixtureConfig, load_params
from clipflux.data.loader import index_items
from clipflux.data.pipeline import preprocess
from clipflux.data.world import generate_world
from clipflux.data.shards import ShardReader
from clipflux.methods import build_method
from clipflux.models import create_model
from clipflux.tracking import configure_torch
from clipflux.train import Trainer

from common import machine, table


def worker(shards: Path, threads: int, steps: int, out: Path) -> None:
    """One rank: a warm-up task, then one timed task; rank 0 writes samples/s to `out`."""
    params = load_params()
    cfg = params.train
    configure_torch(threads)  # as the stages: deterministic algorithms
    placement = distributed.start("cpu")
    readers = [ShardReader(shards / d, "train") for d in ("novel_shapes", "textures", "pool")]
    tasks = [index_items(0, readers[0]), index_items(1, readers[1])]
    torch.manual_seed(0)
    model, tokenizer = create_model(params.model)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, build_method("finetune", None), tokenizer, readers, tasks, index_items(2, readers[2]),
                          dataclasses.replace(cfg, checkpoint_every=steps), steps, tmp, lambda key, value, step: None,
                          {}, mixture=MixtureConfig(0.34, 0.33, 0.33), placement=placement)
        trainer._new_optimizer()
        trainer.buffer.add_task(tasks[0])  # the second task replays the first
        trainer._train_task(1, 0)  # warm-up
        start = time.perf_counter()
        trainer._train_task(1, 0)
        elapsed = time.perf_counter() - start
    if placement.primary:
        out.write_text(json.dumps({"samples_per_s": steps * cfg.optim.batch_size / elapsed}))
    distributed.stop(placement)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", nargs="+", default=["1x2", "2x1"], help="processes x threads per process")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--scale", type=float, default=0.1, help="world scale")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # shards folder, when run by torchrun
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.threads, args.steps, args.out)

    params = load_params()
    rows, base = [], None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        world = dataclasses.replace(params.world, scale=args.scale)
        generate_world(world, tmp / "raw", progress=False)
        preprocess(tmp / "raw", tmp / "shards", world.shard_size)
        for layout in args.layouts:
            nproc, threads = (int(x) for x in layout.split("x"))
            out = tmp / f"{layout}.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   __file__, "--worker", str(tmp / "shards"), "--threads", str(threads), "--steps", str(args.steps),
                   "--out", str(out)]
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise SystemExit(f"{layout} failed:\n{proc.stderr[-3000:]}")
            rate = json.loads(out.read_text())["samples_per_s"]
            base = base or rate
            rows.append([nproc, threads, nproc * threads, f"{rate:.1f}", f"{rate / base:.2f}"])

    print(machine(torch.device("cpu")))
    print(f"settings: model {params.model.name}, global batch {params.train.optim.batch_size} split over the ranks, "
          f"gloo, {args.steps} timed steps after a warm-up task, data from shards with train.workers = "
          f"{params.train.workers}, world scale {args.scale}\n")
    print(table(["processes", "threads each", "cores used", "samples/s", "vs first layout"], rows))


if __name__ == "__main__":
    main()
