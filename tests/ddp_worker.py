"""A tiny training run under torchrun that records what each rank trained on (run by tests/test_distributed.py).

Usage: torchrun --nproc-per-node N tests/ddp_worker.py --shards DIR --out DIR [--method NAME ...]
Each rank writes `rank<r>.json`: the (dataset id, index) items of every batch it trained on, by task and
step, the logged losses and the sha256 of the final weights. With several methods, each trains in turn from the
same initial weights (one launch: the processes start once) and writes under `DIR/<method>/`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from clipflux import distributed
from clipflux.config import MixtureConfig, ModelConfig, OptimConfig, RunConfig
from clipflux.data.loader import index_items
from clipflux.data.shards import ShardReader
from clipflux.methods import build_method
from clipflux.models import create_model, state_sha256
from clipflux.train import Trainer

STEPS = 4
METHOD_PARAMS = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["methods"]
OPTIM = OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=1, clip_grad_norm=1.0, batch_size=8)


class RecordingTrainer(Trainer):
    """The trainer, noting the items of every batch this rank trains on."""

    seen: list[dict]

    def _loader(self, task: int, start_step: int):
        for step, batch in enumerate(super()._loader(task, start_step), start=start_step):
            self.seen.append({"task": task, "step": step, "items": batch["items"].tolist()})
            yield batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--method", nargs="+", default=["finetune"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    placement = distributed.start("cpu")
    readers = [ShardReader(args.shards / "novel_shapes", "train"), ShardReader(args.shards / "pool", "train")]
    items = index_items(0, readers[0])
    tasks = [items[: len(items) // 2], items[len(items) // 2:]]
    for name in args.method:
        out = args.out / name if len(args.method) > 1 else args.out
        torch.manual_seed(0)
        model, tokenizer = create_model(ModelConfig(name="clipflux-tiny"))
        run = RunConfig(seed=3, checkpoint_every=2, optim=OPTIM)
        losses: list[float] = []
        method = build_method(name, METHOD_PARAMS.get(name))
        trainer = RecordingTrainer(model, method, tokenizer, readers, tasks,
                                   index_items(1, readers[1]), run, STEPS, out / "checkpoints",
                                   lambda key, value, step: losses.append(value) if key == "train/loss" else None,
                                   fingerprint={"method": name},
                                   mixture=MixtureConfig(0.5, 0.25, 0.25), placement=placement)
        trainer.seen = []
        trainer.fit()
        record = {"seen": trainer.seen, "losses": losses, "sha256": state_sha256(model.state_dict())}
        (out / f"rank{placement.rank}.json").write_text(json.dumps(record))
    distributed.stop(placement)


if __name__ == "__main__":
    main()
