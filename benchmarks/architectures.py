"""Image towers: how fast each shipped architecture's image tower learns the world's classes from scratch.

Usage: python benchmarks/architectures.py [--datasets painted_shapes digits] [--steps 300] [--lr 1e-3]

Needs the default pipeline's shards (`./run.sh repro`). For every architecture in `configs/models/` and every
dataset, it builds the image tower from scratch, trains it with a linear head and cross-entropy on the
dataset's training split (batches of 64 drawn with a fixed seed, AdamW, weight decay 0.2) and prints the test
accuracy and the training time: the README's comparison of the ViT (`clipflux-tiny`) and the ResNet
(`clipflux-tiny-rn`) on this world.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clipflux.config import ModelConfig
from clipflux.data.pipeline import open_dataset
from clipflux.models import CONFIG_DIR, create_model, image_size, to_input
from clipflux.tracking import configure_torch

from common import machine, table


def split(shards: Path, name: str, part: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    reader = open_dataset(shards, name, part)
    images = np.stack([reader.read(i, ("png",))["png"] for i in range(len(reader))])
    return to_input(images, size), torch.as_tensor(np.asarray(reader.labels))


def accuracy(arch: str, shards: Path, name: str, steps: int, lr: float) -> tuple[float, float]:
    """Test accuracy in percent and training seconds of `arch`'s image tower trained from scratch on `name`."""
    torch.manual_seed(0)
    model, _ = create_model(ModelConfig(name=arch))
    tower, size = model.visual, image_size(model)
    x_train, y_train = split(shards, name, "train", size)
    x_test, y_test = split(shards, name, "test", size)
    head = torch.nn.Linear(tower.output_dim, int(y_train.max()) + 1)
    optimizer = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=lr, weight_decay=0.2)
    generator = torch.Generator().manual_seed(0)
    tower.train()
    start = time.perf_counter()
    for _ in range(steps):
        batch = torch.randint(len(x_train), (64,), generator=generator)
        loss = F.cross_entropy(head(tower(x_train[batch])), y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    tower.eval()
    with torch.no_grad():
        correct = (head(tower(x_test)).argmax(1) == y_test).float().mean().item()
    return 100 * correct, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["painted_shapes", "digits"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--shards", type=Path, default=Path("data/shards"))
    args = parser.parse_args()
    if not (args.shards / "datasets.json").exists():
        raise SystemExit(f"{args.shards} has no datasets: run the default pipeline first (./run.sh repro)")
    configure_torch(2)
    print(machine(torch.device("cpu")))
    print(f"image tower from scratch + linear head, cross-entropy, {args.steps} steps of 64, lr {args.lr:g}\n")
    rows = []
    for arch in sorted(p.stem for p in Path(CONFIG_DIR).glob("*.json")):
        for name in args.datasets:
            acc, seconds = accuracy(arch, args.shards, name, args.steps, args.lr)
            rows.append([arch, name, f"{acc:.1f}", f"{seconds:.1f}"])
    print(table(["architecture", "dataset", "test accuracy %", "train s"], rows))


if __name__ == "__main__":
    main()
