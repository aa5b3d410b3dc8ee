"""Stage `evaluate`: every evaluation dataset before the stream and after every task (FiF's protocol).

Full sets for the base model and after the last task, class-balanced subsets (`evaluate.subset`) after the
tasks in between; in validation mode held-out training samples instead of test data. Writes the evaluation
matrix (`eval.json`) and A_KA / A_ZS / GM per task, forgetting and TiC transfer (`metrics.json`, DVC metrics).

Without `--experiment` (stage `evaluate_base`) it evaluates only the base model, once for all experiments, on
the sets of every protocol the experiments use, and writes those rows (`--out`/base.json); each experiment's
evaluation then starts from them (`--base-rows`) instead of evaluating the same weights again.
"""

import argparse
import dataclasses
import json
from pathlib import Path

from clipflux import faults
from clipflux.config import load_params
from clipflux.data.pipeline import load_datasets
from clipflux.evaluate import Evaluator, evaluate_state, evaluation_sets, preload
from clipflux.matrix import dataset_info, summarize
from clipflux.metrics import aggregate_metrics
from clipflux.models import create_model
from clipflux.streams import chunk, load_stream_file, parse_entry
from clipflux.subsets import evaluation_plan
from clipflux.tracking import configure_torch, environment_info, run_tracked


ROLES = {"fif": ("adaptation", "evaluation"), "tic": ("tic",)}


def protocol(params, experiment: str, manifests: dict[str, dict]) -> str:
    """A stream over the time-ordered world is evaluated on its dynamic sets (TiC); any other on FiF's datasets."""
    stream = load_stream_file(params.streams[params.experiments[experiment].stream].file)
    return "tic" if any(manifests[parse_entry(e)[0]]["role"] == "tic" for e in stream) else "fif"


def time_groups(params, experiment: str, manifests: dict[str, dict]) -> list[list[str]] | None:
    """The time steps (as the samples' `time_step` values) each task of a TiC stream trains on, or None."""
    cfg = params.streams[params.experiments[experiment].stream]
    groups = []
    for task in chunk(load_stream_file(cfg.file), cfg.num_tasks):
        steps = []
        for dataset, name in map(parse_entry, task):
            if manifests[dataset]["role"] != "tic":
                return None
            steps.append(str(manifests[dataset]["classes"].index(name)))  # a step's class index is its time_step
        groups.append(steps)
    return groups


def evaluate_base(args, params, manifests: dict[str, dict], evaluator: Evaluator) -> None:
    """Evaluate the base model in full on the sets of every protocol in use; write {protocol: row}."""
    cfg = params.evaluate
    protocols = sorted({protocol(params, name, manifests) for name, exp in params.experiments.items()
                        if exp.init == "base"})  # runs from a random initialisation evaluate their own
    config = {"experiment": None, "evaluate": dataclasses.asdict(cfg), "model": dataclasses.asdict(params.model),
              "protocols": protocols}

    def work(run) -> dict:
        run.info["environment"] = environment_info(cfg.threads)
        evaluator.load(args.base)
        rows = {}
        for name in protocols:
            sets, _ = evaluation_sets(args.shards, manifests, cfg.seed, cfg.subset, cfg.validation, cfg.split, ROLES[name])
            rows[name] = {"after_task": 0, **evaluate_state(evaluator, sets, True, f"evaluate base model ({name})")}
            log_row(run, rows[name])
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "base.json").write_text(json.dumps(rows, indent=1) + "\n")
        return {name: {k: row[k] for k in ("A_KA", "A_ZS", "GM") if k in row} for name, row in rows.items()}

    run_tracked("evaluate", config, work)


def log_row(run, row: dict) -> None:
    """Log one evaluation row's metrics to the Sacred run, at its task as the step."""
    for name, values in row["metrics"].items():
        for metric, value in values.items():
            run.log_scalar(f"eval/{name}/{metric}", value, row["after_task"])
    for key in ("A_KA", "A_ZS", "GM"):
        if key in row:
            run.log_scalar(f"eval/{key}", row[key], row["after_task"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiment", help="a key of params.yaml: experiments (none: evaluate the base model only)")
    parser.add_argument("--shards", required=True, type=Path, help="shards folder")
    parser.add_argument("--base", type=Path, help="base model weights (evaluated as task 0 unless --base-rows)")
    parser.add_argument("--base-rows", type=Path, help="the base model's rows written without --experiment "
                        "(evaluated here when not given)")
    parser.add_argument("--models", type=Path, help="weights after each task (task_NNN.pt)")
    parser.add_argument("--out", required=True, type=Path, help="report folder of this experiment (or of the base)")
    args = parser.parse_args()
    params = load_params()
    cfg = params.evaluate
    configure_torch(cfg.threads)
    manifests = load_datasets(args.shards)
    model, tokenizer = create_model(params.model)
    evaluator = Evaluator(model, tokenizer, cfg.batch_size)
    if args.experiment is None:
        if args.base is None:
            parser.error("--base is required to evaluate the base model")
        return evaluate_base(args, params, manifests, evaluator)
    if args.models is None or (args.base is None and args.base_rows is None):
        parser.error("--experiment needs --models, and --base or --base-rows")

    kind = protocol(params, args.experiment, manifests)
    sets, skipped = evaluation_sets(args.shards, manifests, cfg.seed, cfg.subset, cfg.validation, cfg.split, ROLES[kind])
    for name, why in skipped.items():
        print(f"evaluate: {name} left out: {why}")
    if cfg.preload:
        sets = preload(sets)
    datasets = {n: dataset_info(s.manifest, s.split, len(s.full), len(s.subset)) for n, s in sets.items()}
    base_row = json.loads(args.base_rows.read_text()).get(kind) if args.base_rows else None
    groups = time_groups(params, args.experiment, manifests) if kind == "tic" else None
    evaluations, metrics = [], []

    def write_outputs() -> None:
        """Write eval.json and metrics.json once every seed is evaluated (inside the last seed's run, so that
        its lineage records the outputs' hashes)."""
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "eval.json").write_text(json.dumps(evaluations[0] | {"seeds": evaluations}, indent=1) + "\n")
        (args.out / "metrics.json").write_text(json.dumps(aggregate_metrics(metrics), indent=1) + "\n")

    for seed_index in range(params.study.seeds):
        last = seed_index == params.study.seeds - 1

        def record(evaluation: dict, seed_metrics: dict, last: bool = last) -> None:
            evaluations.append(evaluation)
            metrics.append(seed_metrics)
            if last:
                write_outputs()

        evaluate_seed(args, params, seed_index, evaluator, sets, datasets, skipped, base_row, groups, record)


def evaluate_seed(args, params, seed_index: int, evaluator: Evaluator, sets: dict, datasets: dict, skipped: dict,
                  base_row: dict | None, groups: list[list[str]] | None, record) -> None:
    """Evaluate one seed's weights (`--models/seed_<s>`) after every task; hand its evaluation and metrics to
    `record(evaluation, metrics)` inside the seed's tracked run."""
    cfg = params.evaluate
    models = args.models / f"seed_{seed_index}"
    initial = models / "task_000.pt"  # a run from random initialisation starts from its own weights
    if initial.exists():
        base_row = None
    trained = sorted(path for path in models.glob("task_*.pt") if path != initial)
    states = [initial if initial.exists() else args.base] + trained  # states[0] unread with base rows
    plan = evaluation_plan(len(states), cfg.subset)
    method = params.experiments[args.experiment].method
    config = {"experiment": args.experiment, "seed_index": seed_index, "evaluate": dataclasses.asdict(cfg),
              "model": dataclasses.asdict(params.model), "datasets": datasets, "skipped": skipped}

    def work(run) -> dict:
        run.info["environment"] = environment_info(cfg.threads)
        rows = []
        for task, (path, full) in enumerate(zip(states, plan)):
            if task == 0 and base_row is not None:
                row = base_row  # the same weights on the same full sets: evaluated once by evaluate_base
            else:
                evaluator.load(path)
                what = ("initial weights" if initial.exists() else "base model") if task == 0 else \
                    f"after task {task}/{len(states) - 1}"
                row = {"after_task": task, **evaluate_state(evaluator, sets, full, f"evaluate {args.experiment} "
                                                             f"(seed {seed_index}): {what}" + ("" if full else " (subsets)"))}
            rows.append(row)
            faults.reached("evaluate")
            log_row(run, row)
        budget = models / "budget.json"  # what the train stage allotted (absent for weights from elsewhere)
        settings = {"validation": cfg.validation, "subset": cfg.subset, "subset_seed": cfg.seed, "skipped": skipped,
                    "budget": json.loads(budget.read_text()) if budget.exists() else None}
        evaluation, metrics = summarize(args.experiment, method, datasets, rows, settings,
                                        groups)
        record(evaluation | {"seed": seed_index}, metrics)
        return metrics.get("final") or metrics.get("tic", {})  # the run's result in Omniboard

    run_tracked("evaluate", config, work)


if __name__ == "__main__":
    main()
