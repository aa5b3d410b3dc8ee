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
from clipflux.methods import build_method, check_params
from clipflux.models import architecture, create_model, initial_model, load_weights, save_weights, state_sha256
from clipflux.tracking import configure_torch, environment_info, run_tracked
from clipflux.train import Loop, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiment", required=True, help="a key of params.yaml: experiments")
    parser.add_argument("--shards", required=True, type=Path, help="shards folder")
    parser.add_argument("--stream", required=True, type=Path, help="resolved stream (from build_stream)")
    parser.add_argument("--base", required=True, type=Path, help="base model weights")
    parser.add_argument("--out", required=True, type=Path,
                        help="folder for the evaluated weights after each task, one seed_<s> folder per seed")
    parser.add_argument("--checkpoints", required=True, type=Path, help="full-state checkpoints (persisted)")
    parser.add_argument("--start-over", action="store_true", default=start_over_requested(),
                        help="discard checkpoints instead of resuming (also: CLIPFLUX_START_OVER=1)")
    args = parser.parse_args()
    params = check_params(load_params())
    configure_torch(params.train.threads)
    placement = distributed.start(params.train.device)
    if placement.primary:  # seeds removed from study.seeds leave no stale weights behind
        for stale in sorted(args.out.glob("seed_*")) if args.out.exists() else []:
            if int(stale.name.removeprefix("seed_")) >= params.study.seeds:
                shutil.rmtree(stale)
    budget = plan_experiment(params, args.experiment)  # the same for every seed: profiled once
    for seed_index in range(params.study.seeds):
        train_seed(args, params, seed_index, placement, dict(budget))
    distributed.stop(placement)


def plan_experiment(params, experiment: str) -> dict:
    """Steps per task from the compute budget (deterministic: no timing), with the stream's per-task samples and
    budget measure where it sets them (TiC's C, counted in samples)."""
    exp, cfg = params.experiments[experiment], params.train_for(experiment)
    stream_cfg = params.streams[exp.stream]
    return plan(dataclasses.replace(
        params, train=dataclasses.replace(cfg, samples_per_task=stream_cfg.samples_per_task or cfg.samples_per_task),
        budget=dataclasses.replace(params.budget, measure=stream_cfg.measure or params.budget.measure)), exp.method)


def train_seed(args, params, seed_index: int, placement, budget: dict) -> None:
    """Train one seed of the experiment into `--out/seed_<s>`, resuming from `--checkpoints/seed_<s>`."""
    exp, cfg = params.experiments[args.experiment], params.train_for(args.experiment)  # with its optim overrides
    seed = cfg.seed + seed_index
    method = build_method(exp.method, params.methods.get(exp.method))
    if hasattr(method.params, "seed"):  # the method's own draws (adapter initialisation, ...) vary with the seed
        method.params = dataclasses.replace(method.params, seed=method.params.seed + seed_index)
    out, ckpts = args.out / f"seed_{seed_index}", args.checkpoints / f"seed_{seed_index}"
    stream = json.loads(args.stream.read_text())

    # Data: one reader per adaptation dataset in the stream, plus the pretraining pool (data.pool).
    readers, tasks = stream_tasks(args.shards, stream)
    pool = np.empty((0, 2), dtype=np.int64)
    if exp.mixture.pretraining > 0:
        readers.append(open_dataset(args.shards, params.data.pool, "train"))
        pool = index_items(len(readers) - 1, readers[-1])

    steps = budget["steps_per_task"]
    budget |= {"steps_by_task": [method.steps_for_task(t, steps) for t in range(len(tasks))], "init": exp.init}
    print(f"train {args.experiment} (seed {seed_index}): {exp.method} trains {steps} steps per task "
          f"(budget: {budget['measure']}; from {'the base model' if exp.init == 'base' else 'a random initialisation'})")
    config = {
        "experiment": args.experiment,
        "seed_index": seed_index,
        "seed": seed,
        "method": exp.method,
        "method_params": dataclasses.asdict(method.params),
        "stream": exp.stream,
        "init": exp.init,
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
    loop = Loop(seed, steps, cfg.optim, exp.mixture, cfg.checkpoint_every, cfg.keep_checkpoints, cfg.workers,
                exp.buffer, precision=cfg.precision, compile=cfg.compile, pin_memory=cfg.pin_memory,
                augment=cfg.augment)
    if exp.init == "scratch":  # TiC: a random initialisation, the same on every rank and every resume
        model, tokenizer = initial_model(params.model, seed)
    else:
        model, tokenizer = create_model(params.model)
        load_weights(model, args.base)
    kept = ckpts / "eval"  # persisted with the checkpoints, so a resumed run still has every task
    finished = (checkpoint.newest_task(ckpts) or 0) >= len(tasks)
    # A finished run's task weights live in --out only: rerunning it starts over.
    if placement.primary and (args.start_over or (finished and not kept.exists())):
        clear(ckpts)
    if placement.primary and exp.init == "scratch":  # the evaluation matrix's first row: the initial weights
        save_weights(model, kept / "task_000.pt")

    def work(run) -> dict:
        run.info["environment"] = environment_info(cfg.threads)
        trainer = Trainer(model, method, tokenizer, readers, tasks, pool, loop, ckpts, run.log_scalar,
                          config, flush=run.flush, placement=placement)
        run.continues(trainer.resume())
        trainer.fit(on_task_end=lambda task, m: save_weights(m, kept / f"task_{task + 1:03d}.pt"))
        if placement.primary:
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            (out / "budget.json").write_text(json.dumps(budget, indent=1) + "\n")
            for t in range(0 if exp.init == "scratch" else 1, len(tasks) + 1):
                shutil.copyfile(kept / f"task_{t:03d}.pt", out / f"task_{t:03d}.pt")
            # Finished: the checkpoints folder (cached by DVC) keeps only the final state, not copies of --out.
            shutil.rmtree(kept)
            checkpoint.prune(ckpts, keep=1)
        return {"weights_sha256": state_sha256(model.state_dict())}

    run_tracked("train", config, work, primary=placement.primary, checkpoints=ckpts)


if __name__ == "__main__":
    main()
