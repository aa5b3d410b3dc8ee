"""The `train@<experiment>` stage's job: adapt the base model (or, for TiC's from-scratch regimes, a random
initialisation) over the tasks of a stream with the experiment's update method, once per seed of the study.

Every seed is its own tracked run, resuming from its own checkpoint folder (`<checkpoints>/seed_<s>`) and
writing the weights to evaluate after each task, with the budget it was allotted, to `<out>/seed_<s>`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from clipflux import distributed
from clipflux.budget import plan
from clipflux.checkpoint import Checkpoints
from clipflux.config import Params
from clipflux.data.loader import index_items, stream_tasks
from clipflux.data.pipeline import open_dataset
from clipflux.distributed import Placement
from clipflux.methods import build_method, check_params
from clipflux.models import architecture, create_model, initial_model, load_weights, save_weights, state_sha256
from clipflux.processes import exclusive
from clipflux.schedules import check_schedule
from clipflux.tracking import configure_torch, environment_info, run_name, run_tracked
from clipflux.train import Trainer


@dataclasses.dataclass(frozen=True)
class Paths:
    """The train stage's inputs and outputs."""

    shards: Path  # shards folder
    stream: Path  # resolved stream (from build_stream)
    base: Path  # base model weights
    out: Path  # the weights after each task, one seed_<s> folder per seed
    checkpoints: Path  # full-state checkpoints (persisted), one seed_<s> folder per seed


def train(params: Params, experiment: str, paths: Paths, start_over: bool) -> None:
    """Train every seed of `experiment`. Runs on every rank of a torchrun job; rank 0 writes, holding the lock of
    the experiment's checkpoint folder (`processes.exclusive`) from before its first write to after its last."""
    params = check_params(params)
    configure_torch(params.train.threads)
    placement = distributed.start(params.train.device)
    with exclusive(paths.checkpoints) if placement.primary else nullcontext():  # one writer per experiment
        if placement.primary and paths.out.exists():  # seeds removed from study.seeds leave no stale weights
            for stale in sorted(paths.out.glob("seed_*")):
                if int(stale.name.removeprefix("seed_")) >= params.study.seeds:
                    shutil.rmtree(stale)
        budget = plan_experiment(params, experiment)  # the same for every seed: profiled once
        for seed_index in range(params.study.seeds):
            train_seed(params, experiment, seed_index, paths, placement, dict(budget), start_over)
    distributed.stop(placement)


def plan_experiment(params: Params, experiment: str) -> dict:
    """Steps per task from the compute budget (deterministic: no timing), with the stream's per-task samples and
    budget measure where it sets them (TiC's C, counted in samples)."""
    exp, cfg = params.experiments[experiment], params.train_for(experiment)
    stream_cfg = params.streams[exp.stream]
    return plan(dataclasses.replace(
        params, train=dataclasses.replace(cfg, samples_per_task=stream_cfg.samples_per_task or cfg.samples_per_task),
        budget=dataclasses.replace(params.budget, measure=stream_cfg.measure or params.budget.measure)), exp.method)


def train_seed(params: Params, experiment: str, seed_index: int, paths: Paths, placement: Placement, budget: dict,
               start_over: bool) -> None:
    """Train one seed of the experiment into `out/seed_<s>`, resuming from `checkpoints/seed_<s>`."""
    exp = params.experiments[experiment]
    cfg = dataclasses.replace(params.train_for(experiment), seed=params.train.seed + seed_index)
    method = build_method(exp.method, params.methods.get(exp.method))
    if hasattr(method.params, "seed"):  # the method's own draws (adapter initialisation, ...) vary with the seed
        method.params = dataclasses.replace(method.params, seed=method.params.seed + seed_index)
    out, ckpts = paths.out / f"seed_{seed_index}", paths.checkpoints / f"seed_{seed_index}"

    # Data: one reader per adaptation dataset in the stream, plus the pretraining pool (data.pool).
    readers, tasks = stream_tasks(paths.shards, json.loads(paths.stream.read_text()))
    pool = np.empty((0, 2), dtype=np.int64)
    if exp.mixture.pretraining > 0:
        readers.append(open_dataset(paths.shards, params.data.pool, "train"))
        pool = index_items(len(readers) - 1, readers[-1])

    steps = budget["steps_per_task"]
    budget |= {"steps_by_task": [method.steps_for_task(t, steps) for t in range(len(tasks))], "init": exp.init}
    for task, task_steps in enumerate(budget["steps_by_task"]):  # before any work: a schedule that cannot run
        check_schedule(task, task_steps, cfg.optim, f"experiments.{experiment}.optim" if exp.optim else "train.optim")
    print(f"train {experiment} (seed {seed_index}): {exp.method} trains {steps} steps per task "
          f"(budget: {budget['measure']}; from {'the base model' if exp.init == 'base' else 'a random initialisation'})")
    config = {
        "experiment": experiment,
        "seed_index": seed_index,
        "seed": cfg.seed,
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
    if exp.init == "scratch":  # TiC: a random initialisation, the same on every rank and every resume
        model, tokenizer = initial_model(params.model, cfg.seed)
    else:
        model, tokenizer = create_model(params.model)
        load_weights(model, paths.base)
    folder = Checkpoints(ckpts, cfg.keep_checkpoints)
    first = 0 if exp.init == "scratch" else 1  # a run from scratch evaluates its initial weights as task 0
    if placement.primary:
        folder.begin(len(tasks), start_over)
        if first == 0:  # the evaluation matrix's first row
            save_weights(model, folder.weights_of(0))

    def work(run) -> dict:
        run.info["environment"] = environment_info(cfg.threads)
        trainer = Trainer(model, method, tokenizer, readers, tasks, pool, cfg, steps, ckpts, run.log_scalar, config,
                          flush=run.flush, mixture=exp.mixture, buffer=exp.buffer, placement=placement)
        run.continues(trainer.resume())
        trainer.fit(on_task_end=lambda task, m: save_weights(m, folder.weights_of(task + 1)))
        if placement.primary:
            if out.exists():
                shutil.rmtree(out)
            folder.finish({out / f"task_{t:03d}.pt": t for t in range(first, len(tasks) + 1)},
                          {out / "budget.json": json.dumps(budget, indent=1) + "\n"})
        return {"weights_sha256": state_sha256(model.state_dict())}

    run_tracked("train", config, work, primary=placement.primary, checkpoints=ckpts,
                name=run_name("train", experiment, seed_index, params.study.seeds))
