"""Knowledge accumulation against compute: full finetuning over the default stream at multiples of its budget.

Usage: python benchmarks/adaptation.py [--multiples 1 2 4] [--lrs 0.0003] [--batch-size 64] [--method finetune]

Needs the default pipeline's outputs (`./run.sh repro`: data/shards, data/streams/fif_random.json,
models/base.pt). For every (multiple, learning rate) it trains the base model over the stream's tasks with
`multiple` x train.samples_per_task samples per task (the train stage's loop, no tracking), then evaluates
every FiF dataset in full, and prints A_KA and A_ZS before and after with the training time: how far the
default's budget is from a given gain in A_KA on this machine. A per-dataset table (base model, then each
run) follows.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # tables only (tqdm reads it on import)

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clipflux.config import load_params
from clipflux.data.loader import stream_tasks
from clipflux.data.pipeline import load_datasets
from clipflux.evaluate import Evaluator, evaluate_state, evaluation_sets
from clipflux.methods import build_method
from clipflux.models import create_model, load_weights
from clipflux.tracking import configure_torch
from clipflux.train import Trainer

from common import machine, table

COLUMNS = ["budget x", "lr", "steps/task", "samples", "train s", "A_KA base", "A_KA final", "A_KA gain", "A_ZS base",
           "A_ZS final"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--multiples", type=float, nargs="+", default=[1, 2, 4], help="x train.samples_per_task")
    parser.add_argument("--lrs", type=float, nargs="+", default=None, help="default: train.optim.lr")
    parser.add_argument("--batch-size", type=int, default=None, help="default: train.optim.batch_size")
    parser.add_argument("--method", default="finetune")
    parser.add_argument("--stream", type=Path, default=Path("data/streams/fif_random.json"))
    args = parser.parse_args()
    params = load_params()
    configure_torch(params.train.threads)
    for needed in (Path("data/shards/datasets.json"), args.stream, Path("models/base.pt")):
        if not needed.exists():
            raise SystemExit(f"{needed} is missing: run the default pipeline first (./run.sh repro)")
    readers, tasks = stream_tasks("data/shards", json.loads(args.stream.read_text()))
    sets, _ = evaluation_sets("data/shards", load_datasets("data/shards"), params.train.seed, 1.0)
    model, tokenizer = create_model(params.model)
    load_weights(model, "models/base.pt")
    base = evaluate_state(Evaluator(model, tokenizer, 256), sets, True, desc="base")
    batch = args.batch_size or params.train.optim.batch_size
    print(machine(torch.device("cpu")))
    print(f"{args.method} over {args.stream} ({len(tasks)} tasks), batch {batch}; default budget: "
          f"{params.train.samples_per_task} samples per task; A_KA / A_ZS on the full sets\n")
    rows, finals = [], []
    for lr in args.lrs or [params.train.optim.lr]:
        for multiple in args.multiples:
            steps = max(1, round(multiple * params.train.samples_per_task / batch))
            optim = dataclasses.replace(params.train.optim, lr=lr, batch_size=batch)
            run = dataclasses.replace(params.train, optim=optim, checkpoint_every=10**9, keep_checkpoints=1)
            load_weights(model, "models/base.pt")
            method = build_method(args.method, params.methods.get(args.method))
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as checkpoints:
                trainer = Trainer(model, method, tokenizer, readers, tasks, np.empty((0, 2), np.int64), run,
                                  steps, checkpoints, lambda *_: None, {})
                trainer.fit()
            seconds = time.perf_counter() - start
            final = evaluate_state(Evaluator(model, tokenizer, 256), sets, True, desc="final")
            finals.append((f"x{multiple:g} lr {lr:g}", final["scores"]))
            rows.append([f"{multiple:g}", lr, steps, steps * batch * len(tasks), f"{seconds:.0f}",
                         f"{base['A_KA']:.1f}", f"{final['A_KA']:.1f}", f"{final['A_KA'] - base['A_KA']:+.1f}",
                         f"{base['A_ZS']:.1f}", f"{final['A_ZS']:.1f}"])
            print(table(COLUMNS, rows[-1:]), flush=True)  # each run's row as it ends, then all of them
    print("\n" + table(COLUMNS, rows))
    print("\n" + per_dataset(load_datasets("data/shards"), base["scores"], finals))


def per_dataset(manifests: dict[str, dict], base: dict[str, float], finals: list[tuple[str, dict]]) -> str:
    """Every dataset's score (accuracy, or Recall@5 for retrieval) for the base model and after each run."""
    rows = [[name, manifests[name]["role"], f"{base[name]:.1f}", *(f"{scores[name]:.1f}" for _, scores in finals)]
            for name in sorted(base, key=lambda n: (manifests[n]["role"], n))]
    return table(["dataset", "role", "base", *(label for label, _ in finals)], rows)


if __name__ == "__main__":
    main()
