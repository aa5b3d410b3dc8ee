"""Training throughput of clipflux's train loop against a bare open_clip loop, and model FLOP utilisation.

Usage: python benchmarks/throughput.py [--model NAME] [--batch B] [--steps N] [--rounds R]
                                        [--precision fp32|bf16] [--compile] [--device cpu|cuda] [--threads T]

Both loops train the same architecture from the same weights, at the same batch size, on the same batches
held in memory (so data loading is out of the comparison). Rounds of N steps alternate between the two
(ABBA order), and the median rate of each is compared: the ratio must stay at or above 0.95. The clipflux
loop is `Trainer`'s task loop with the finetune method (DataLoader, lr schedule, method loss, clipping,
logit-scale clamp, metric logging, fault points). The second table divides the achieved FLOP/s by this
machine's measured matmul peak in the same precision (and by the data-sheet bf16 peak on a known GPU).
Defaults: `params.yaml`'s model and train batch size, on the CPU in fp32.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # tables only (tqdm reads it on import)

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from clipflux.config import MixtureConfig, ModelConfig, RunConfig, load_params
from clipflux.distributed import Placement
from clipflux.methods import build_method
from clipflux.models import create_model
from clipflux.tracking import configure_torch
from clipflux.train import Trainer

from common import (adamw, bare_open_clip_steps, datasheet_peak, machine, matmul_peak, memory_batches, sync, table,
                    train_step_flops)


class MemoryBatches(torch.utils.data.Dataset):
    """Step s's batch is `batches[s % len(batches)]` (one process, so `shard` is itself)."""

    def __init__(self, batches: list[dict], steps: int):
        self.batches, self.steps = batches, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> dict:
        return self.batches[step % len(self.batches)]

    def shard(self, rank: int, world_size: int) -> "MemoryBatches":
        return self


class MemoryTrainer(Trainer):
    """The trainer with its batches served from memory instead of shards."""

    memory: list[dict]

    def _batches(self, task: int, steps: int, purpose: int = 0) -> MemoryBatches:
        return MemoryBatches(self.memory, steps)


def _model(name: str, device: torch.device):
    torch.manual_seed(0)
    model, tokenizer = create_model(ModelConfig(name))
    return model.to(device), tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="open_clip architecture (default: params.yaml model.name)")
    parser.add_argument("--batch", type=int, help="batch size (default: params.yaml train.optim.batch_size)")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds of each loop, interleaved")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, help="CPU threads (default: params.yaml train.threads)")
    args = parser.parse_args()
    params = load_params()
    name, optim = args.model or params.model.name, params.train.optim
    if args.batch:
        optim = type(optim)(**{**optim.__dict__, "batch_size": args.batch})
    configure_torch(args.threads or params.train.threads)  # as the stages: deterministic algorithms
    device = torch.device(args.device)

    ours, tokenizer = _model(name, device)
    bare, _ = _model(name, device)
    batches = memory_batches(bare, tokenizer, optim.batch_size, device=device)
    run = RunConfig(seed=0, checkpoint_every=args.steps, optim=optim, precision=args.precision, compile=args.compile)
    if args.compile:
        bare.compile()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = MemoryTrainer(ours, build_method("finetune", None), tokenizer, [], [np.zeros((1, 2), np.int64)],
                                np.empty((0, 2), np.int64), run, args.steps, tmp, lambda key, value, step: None, {},
                                placement=Placement(device=device))
        trainer.memory = batches
        trainer._new_optimizer()
        optimizer = adamw(bare, optim, device)

        def clipflux_round() -> float:
            sync(device)
            start = time.perf_counter()
            trainer._train_task(0, 0)
            sync(device)
            return time.perf_counter() - start

        def bare_round() -> float:
            sync(device)
            start = time.perf_counter()
            bare_open_clip_steps(bare, optimizer, batches, args.steps, optim, args.precision, device)
            sync(device)
            return time.perf_counter() - start

        clipflux_round(), bare_round()  # warm-up: allocator, kernels, autocast caches
        times = {"clipflux": [], "bare": []}
        for r in range(args.rounds):
            order = (("clipflux", clipflux_round), ("bare", bare_round))
            for key, run in order if r % 2 == 0 else order[::-1]:
                times[key].append(run())

    samples = args.steps * optim.batch_size
    rates = {key: [samples / t for t in ts] for key, ts in times.items()}
    median = {key: statistics.median(r) for key, r in rates.items()}
    ratio = median["clipflux"] / median["bare"]
    print(machine(device))
    print(f"settings: model {name}, batch {optim.batch_size}, {args.precision}{', compiled' if args.compile else ''}, "
          f"{args.rounds} interleaved rounds of "
          f"{args.steps} steps each, in-memory data\n")
    print(table(["training loop", "samples/s (median)", "min - max over rounds"],
                [[key, f"{median[key]:.1f}", f"{min(r):.1f} - {max(r):.1f}"] for key, r in rates.items()]
                + [["**ratio clipflux / bare**", f"**{ratio:.3f}**", "must be >= 0.95"]]))

    flops = train_step_flops(_model(name, device)[0], batches[0], args.precision, device)  # eager: counted op by op
    peak, size = matmul_peak(device, torch.bfloat16 if args.precision == "bf16" else torch.float32)
    achieved = flops * median["clipflux"] / optim.batch_size
    rows = [["measured matmul peak", f"{peak / 1e12:.3f}", f"{100 * achieved / peak:.1f} %",
             f"best of square {args.precision} matmuls, n = {size}"]]
    sheet = datasheet_peak(device)
    if sheet:
        rows.append(["data-sheet dense bf16 peak", f"{sheet / 1e12:.1f}", f"{100 * achieved / sheet:.1f} %", ""])
    print(f"\nmodel FLOP utilisation: {flops / 1e9:.2f} GFLOP per step (forward + backward, 2 per multiply-add, "
          f"torch.utils.flop_counter), achieved {achieved / 1e12:.4f} TFLOP/s by the clipflux loop\n")
    print(table(["against", "peak TFLOP/s", "MFU", "note"], rows))


if __name__ == "__main__":
    main()
