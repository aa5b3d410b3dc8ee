"""The `pretrain` stage's job: contrastive pretraining of the base model on the pool (`data.pool`), or the
pretrained weights `model.pretrained` names written as the base model instead.

Pretraining is the trainer's loop with one task whose update data is the pool, and full finetuning as the method.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from clipflux import distributed
from clipflux.checkpoint import Checkpoints
from clipflux.config import Params
from clipflux.data.loader import index_items
from clipflux.data.pipeline import open_dataset
from clipflux.methods import build_method
from clipflux.models import architecture, create_model, load_pretrained, save_weights, state_sha256
from clipflux.processes import exclusive
from clipflux.schedules import check_schedule
from clipflux.tracking import configure_torch, environment_info, run_tracked
from clipflux.train import Trainer


def pretrain(params: Params, shards: Path, out: Path, checkpoints: Path, start_over: bool) -> None:
    """Write the base model's weights to `out`, training them (resumably, in `checkpoints`) unless they are
    pretrained. Runs on every rank of a torchrun job; rank 0 writes, holding the checkpoint folder's lock."""
    cfg = params.pretrain
    configure_torch(cfg.threads)
    placement = distributed.start(cfg.device)
    torch.manual_seed(cfg.seed)  # the initial weights (the same on every rank)
    model, tokenizer = create_model(params.model)
    if params.model.pretrained:
        if placement.primary:
            source = load_pretrained(model, params.model)
            save_weights(model, out)
            print(f"pretrain: skipped, base model = {params.model.name} weights from {source}")
        return distributed.stop(placement)

    pool = open_dataset(shards, params.data.pool, "train")
    steps = math.ceil(cfg.samples / cfg.optim.batch_size)
    check_schedule(0, steps, cfg.optim, "pretrain.optim")
    config = {"model": dataclasses.asdict(params.model), "architecture": architecture(params.model.name),
              "pretrain": dataclasses.asdict(cfg), "steps": steps, "world_size": placement.world_size}
    folder = Checkpoints(checkpoints, cfg.keep_checkpoints)

    def work(run) -> dict:
        run.info["environment"] = environment_info(cfg.threads)
        trainer = Trainer(model, build_method("finetune", None), tokenizer, [pool], [index_items(0, pool)],
                          np.empty((0, 2), dtype=np.int64), cfg, steps, checkpoints, run.log_scalar, config,
                          flush=run.flush, placement=placement)
        run.continues(trainer.resume())
        trainer.fit(on_task_end=lambda task, m: save_weights(m, folder.weights_of(task + 1)))
        if placement.primary:
            folder.finish({out: 1})
        return {"weights_sha256": state_sha256(model.state_dict())}

    with exclusive(checkpoints) if placement.primary else nullcontext():  # one writer per checkpoint folder
        if placement.primary:
            folder.begin(1, start_over)
        run_tracked("pretrain", config, work, primary=placement.primary, checkpoints=checkpoints)
    distributed.stop(placement)
