"""Stage `pretrain`: contrastive pretraining of the base model on the captioned pool.

When `model.pretrained` is set (a checkpoint file, or an open_clip weight tag found in `model.cache_dir` or on
the hub), those weights are written as the base model instead of training. The pool is `data.pool`. Runs as
one process, or as several under torchrun (`dvc.yaml` starts `pretrain.nproc` per node): rank 0 then writes
the checkpoints, the weights and the Sacred run.
"""

import argparse
import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from clipflux import checkpoint, distributed
from clipflux.checkpoint import clear, start_over_requested
from clipflux.config import MixtureConfig, load_params
from clipflux.data.loader import index_items
from clipflux.data.pipeline import open_dataset
from clipflux.methods import build_method
from clipflux.models import architecture, create_model, load_pretrained, save_weights, state_sha256
from clipflux.tracking import configure_torch, environment_info, run_tracked
from clipflux.train import Loop, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", required=True, type=Path, help="shards folder (reads the dataset named by data.pool)")
    parser.add_argument("--out", required=True, type=Path, help="base model weights")
    parser.add_argument("--checkpoints", required=True, type=Path, help="full-state checkpoints (persisted)")
    parser.add_argument("--start-over", action="store_true", default=start_over_requested(),
                        help="discard checkpoints instead of resuming (also: CLIPFLUX_START_OVER=1)")
    args = parser.parse_args()
    params = load_params()
    cfg = params.pretrain
    configure_torch(cfg.threads)
    placement = distributed.start(cfg.device)
    torch.manual_seed(cfg.seed)  # the initial weights (the same on every rank)
    model, tokenizer = create_model(params.model)
    if params.model.pretrained:
        if placement.primary:
            source = load_pretrained(model, params.model)
            save_weights(model, args.out)
            print(f"pretrain: skipped, base model = {params.model.name} weights from {source}")
        distributed.stop(placement)
        return

    pool = open_dataset(args.shards, params.data.pool, "train")
    steps = math.ceil(cfg.samples / cfg.optim.batch_size)
    config = {"model": dataclasses.asdict(params.model), "architecture": architecture(params.model.name),
              "pretrain": dataclasses.asdict(cfg), "steps": steps, "world_size": placement.world_size}
    loop = Loop(cfg.seed, steps, cfg.optim, MixtureConfig(1.0, 0.0, 0.0), cfg.checkpoint_every,
                cfg.keep_checkpoints, cfg.workers, precision=cfg.precision, compile=cfg.compile,
                pin_memory=cfg.pin_memory)
    if args.start_over and placement.primary:
        clear(args.checkpoints)

    def work(run) -> dict:
        run.info["environment"] = environment_info(cfg.threads)
        trainer = Trainer(model, build_method("finetune", None), tokenizer, [pool], [index_items(0, pool)],
                          np.empty((0, 2), dtype=np.int64), loop, args.checkpoints, run.log_scalar, config,
                          flush=run.flush, placement=placement)
        run.continues(trainer.resume())
        trainer.fit()
        if placement.primary:
            save_weights(model, args.out)
            checkpoint.prune(args.checkpoints, keep=1)  # finished: only the final state stays (DVC caches the folder)
        return {"weights_sha256": state_sha256(model.state_dict())}

    run_tracked("pretrain", config, work, primary=placement.primary, checkpoints=args.checkpoints)
    distributed.stop(placement)


if __name__ == "__main__":
    main()
