"""What evaluating on FiF's subsets costs compared with a full evaluation.

Usage: ./run.sh python benchmarks/eval_subsets.py [--test-per-class 500] [--fraction 0.1] [--repeats 1]

FiF evaluates during the stream on min(size, max(2 x classes, 300, fraction x size)) samples per dataset.
The 300-sample floor means that small test sets are evaluated almost whole: at the shipped world size (50
test images per class, 400-500 per dataset) a "10 %" subset is 60-75 % of the data. So the benchmark
generates the world's datasets with larger test splits (`--test-per-class`, default 500: 4000-5000 per
dataset, as large as many FiF test sets) where 10 % is above the floor, times one model state evaluated
in full and on subsets (text embeddings included, median of `--repeats`), and prints both tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from clipflux.config import load_params
from clipflux.data.pipeline import load_datasets, preprocess
from clipflux.data.world import generate_world
from clipflux.evaluate import Evaluator, evaluate_state, evaluation_sets
from clipflux.models import create_model, save_weights
from clipflux.subsets import subset_size


def _timed(evaluator: Evaluator, weights: Path, sets: dict, full: bool, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        evaluator.load(weights)  # a new model state: class embeddings are computed again
        evaluate_state(evaluator, sets, full, desc="benchmark")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test-per-class", type=int, default=500, help="test images per class of every dataset")
    parser.add_argument("--fraction", type=float, default=None, help="subset fraction (default: params.yaml evaluate.subset)")
    parser.add_argument("--repeats", type=int, default=1, help="timed evaluations of each kind (the median is shown)")
    parser.add_argument("--tasks", type=int, default=20, help="stream length for the whole-stream estimate (FiF: 20)")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    params = load_params()
    fraction = params.evaluate.subset if args.fraction is None else args.fraction
    torch.set_num_threads(params.evaluate.threads)
    world = dataclasses.replace(params.world, scale=1.0, pool_size=1, train_per_class=1, test_per_class=args.test_per_class)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_world(world, tmp / "raw", progress=False)
        preprocess(tmp / "raw", tmp / "shards", world.shard_size)
        sets, _ = evaluation_sets(tmp / "shards", load_datasets(tmp / "shards"), params.evaluate.seed, fraction)
        model, tokenizer = create_model(params.model)
        save_weights(model, tmp / "state.pt")
        evaluator = Evaluator(model, tokenizer, params.evaluate.batch_size)
        evaluate_state(evaluator, sets, False, desc="warm-up")  # allocator, open files
        full = _timed(evaluator, tmp / "state.pt", sets, True, args.repeats)
        subset = _timed(evaluator, tmp / "state.pt", sets, False, args.repeats)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, model {params.model.name}, batch {params.evaluate.batch_size}")
    print(f"\nOne model state, {args.test_per_class} test images per class, subset fraction {fraction:g}:\n")
    print("| dataset | role | task | classes | full | subset | subset share |")
    print("|---|---|---|---|---|---|---|")
    for name, s in sets.items():
        classes = len(s.manifest["classes"]) or 1
        print(f"| {name} | {s.manifest['role']} | {s.manifest['task']} | {classes} | {len(s.full)} | {len(s.subset)} "
              f"| {100 * len(s.subset) / len(s.full):.1f} % |")
    n_full, n_sub = sum(len(s.full) for s in sets.values()), sum(len(s.subset) for s in sets.values())
    print(f"| **all** | | | | {n_full} | {n_sub} | {100 * n_sub / n_full:.1f} % |")
    print(f"\n| evaluation | samples | seconds (median of {args.repeats}) | cost vs full |")
    print("|---|---|---|---|")
    print(f"| full sets | {n_full} | {full:.2f} | 100 % |")
    print(f"| subsets | {n_sub} | {subset:.2f} | {100 * subset / full:.1f} % |")
    stream = (2 * full + (args.tasks - 1) * subset) / ((args.tasks + 1) * full)
    print(f"\nA {args.tasks}-task stream (full before and after, subsets in between) costs {100 * stream:.1f} % "
          f"of evaluating every state in full.")

    print(f"\nAt the shipped world size ({params.world.test_per_class} x scale {params.world.scale:g} test images per "
          "class) the 300-sample floor dominates:\n")
    print("| dataset | classes | full | subset | subset share |")
    print("|---|---|---|---|---|")
    for name, s in sets.items():
        classes = len(s.manifest["classes"]) or 1
        n = round(len(s.full) * params.world.test_per_class * params.world.scale / args.test_per_class)
        k = subset_size(n, classes, fraction)
        print(f"| {name} | {classes} | {n} | {k} | {100 * k / n:.0f} % |")


if __name__ == "__main__":
    main()
