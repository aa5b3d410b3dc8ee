"""Stage `train`: adapt the base model over the tasks of a stream with one experiment's update method.

Runs as one process, or as several under torchrun (`dvc.yaml` starts `train.nproc` per node): rank 0 then
writes the checkpoints, the weights and the Sacred run.
"""

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from clipflux import checkpoint, distributed
from clipflux.budget import plan
from clipflux.checkpoint import clear, start_over_requested
from clipflux.config import load_params
from clipflux.data.loader import index_items, stream_tasks
from clipflux.data.pipeline import open_dataset
from clipflux.methods import build_method
from clipflux.models import architecture, create_model, load_weights, save_weights, state_sha256
from clipflux.tracking import configure_torch, environment_info, run_tracked
from clipflux.tracking.resume import continue_run
from clipflux.train import Loop, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiment", required=True, help="a key of params.yaml: experiments")
    parser.add_argument("--shards", required=True, type=Path, help="shards folder")
    parser.add_argument("--stream", required=True, type=Path, help="resolved stream (from build_stream)")
    parser.add_argument("--base", required=True, type=Path, help="base model weights")
    parser.add_argument("--out", required=True, type=Path, help="folder for the evaluated weights after each task")
    parser.add_argument("--checkpoints", required=True, type=Path, help="full-state checkpoints (persisted)")
    parser.add_argument("--start-over", action="store_true", default=start_over_requested(),
                        help="discard checkpoints instead of resuming (also: CLIPFLUX_START_OVER=1)")
    args = parser.parse_args()
    params = load_params()
    exp, cfg = params.experiments[args.experiment], params.train
    method = build_method(exp.method, params.methods.get(exp.method))
    configure_torch(cfg.threads)
    placement = distributed.start(cfg.device)
    stream = json.loads(args.stream.read_text())

    # Data: one reader per adaptation dataset in the stream, plus the pretraining pool (data.pool).
    readers, tasks = stream_tasks(args.shards, stream)
    pool = np.empty((0, 2), dtype=np.int64)
    if exp.mixture.pretraining > 0:
        readers.append(open_dataset(args.shards, params.data.pool, "train"))
        pool = index_items(len(readers) - 1, readers[-1])

    budget = plan(params, exp.method)  # steps per task from the compute budget (deterministic: no timing)
    steps = budget["steps_per_task"]
    print(f"train {args.experiment}: {exp.method} trains {steps} steps per task (budget: {params.budget.measure})")
    config = {
        "experiment": args.experiment,
        "method": exp.method,
        "method_params": dataclasses.asdict(method.params),
        "stream": exp.stream,
        "mixture": dataclasses.asdict(exp.mixture),
        "buffer": dataclasses.asdict(exp.buffer),
        "train": dataclasses.asdict(cfg),
        "model": dataclasses.asdict(params.model),
        "architecture": architecture(params.model.name),
        "steps_per_task": steps,
        "budget": budget,
        "num_tasks": len(tasks),
        "world_size": placement.world_size,
    }
    loop = Loop(cfg.seed, steps, cfg.optim, exp.mixture, cfg.checkpoint_every, cfg.keep_checkpoints, cfg.workers,
                exp.buffer, precision=cfg.precision, compile=cfg.compile, pin_memory=cfg.pin_memory)
    model, tokenizer = create_model(params.model)
    load_weights(model, args.base)
    kept = args.checkpoints / "eval"  # persisted with the checkpoints, so a resumed run still has every task
    finished = (checkpoint.newest_task(args.checkpoints) or 0) >= len(tasks)
    # A finished run's task weights live in --out only: rerunning it starts over.
    if placement.primary and (args.start_over or (finished and not kept.exists())):
        clear(args.checkpoints)

    def work(run) -> dict:
        run.info["environment"] = environment_info(cfg.threads)
        trainer = Trainer(model, method, tokenizer, readers, tasks, pool, loop, args.checkpoints, run.log_scalar,
                          config, run_id={"id": run._id, "uid": run.meta_info["clipflux_uid"]},
                          flush=run._emit_heartbeat, placement=placement)  # Sacred's own flush to observers
        continue_run(run, trainer.resume())
        trainer.fit(on_task_end=lambda task, m: save_weights(m, kept / f"task_{task + 1:03d}.pt"))
        if placement.primary:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "budget.json").write_text(json.dumps(budget, indent=1) + "\n")
            for t in range(len(tasks)):
                shutil.copyfile(kept / f"task_{t + 1:03d}.pt", args.out / f"task_{t + 1:03d}.pt")
            # Finished: the checkpoints folder (cached by DVC) keeps only the final state, not copies of --out.
            shutil.rmtree(kept)
            checkpoint.prune(args.checkpoints, keep=1)
        return {"weights_sha256": state_sha256(model.state_dict())}

    run_tracked("train", config, work, primary=placement.primary)
    distributed.stop(placement)


if __name__ == "__main__":
    main()
