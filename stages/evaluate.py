"""Stage `evaluate`: every evaluation dataset before the stream and after every task (FiF's protocol).

Full sets for the base model and after the last task, class-balanced subsets (`evaluate.subset`) after the
tasks in between; in validation mode held-out training samples instead of test data. Writes the evaluation
matrix (`eval.json`) and A_KA / A_ZS / GM per task, forgetting and TiC transfer (`metrics.json`, DVC metrics).
"""

import argparse
import dataclasses
import json
from pathlib import Path

from clipflux import faults
from clipflux.config import load_params
from clipflux.data.pipeline import load_datasets
from clipflux.evaluate import Evaluator, evaluate_state, evaluation_sets
from clipflux.matrix import dataset_info, summarize
from clipflux.models import create_model
from clipflux.streams import load_stream_file, parse_entry
from clipflux.subsets import evaluation_plan
from clipflux.tracking import configure_torch, environment_info, run_tracked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiment", required=True, help="a key of params.yaml: experiments")
    parser.add_argument("--shards", required=True, type=Path, help="shards folder")
    parser.add_argument("--base", required=True, type=Path, help="base model weights (evaluated as task 0)")
    parser.add_argument("--models", required=True, type=Path, help="weights after each task (task_NNN.pt)")
    parser.add_argument("--out", required=True, type=Path, help="report folder of this experiment")
    args = parser.parse_args()
    params = load_params()
    cfg = params.evaluate
    configure_torch(cfg.threads)
    manifests = load_datasets(args.shards)
    # A stream over the time-ordered world is evaluated on its dynamic sets (TiC); any other on FiF's datasets.
    stream = load_stream_file(params.streams[params.experiments[args.experiment].stream].file)
    tic = any(manifests[parse_entry(e)[0]]["role"] == "tic" for e in stream)
    roles = ("tic",) if tic else ("adaptation", "evaluation")
    sets, skipped = evaluation_sets(args.shards, manifests, cfg.seed, cfg.subset, cfg.validation, cfg.split, roles)
    for name, why in skipped.items():
        print(f"evaluate: {name} left out: {why}")
    datasets = {n: dataset_info(s.manifest, s.split, len(s.full), len(s.subset)) for n, s in sets.items()}
    states = [args.base] + sorted(args.models.glob("task_*.pt"))
    plan = evaluation_plan(len(states), cfg.subset)
    model, tokenizer = create_model(params.model)
    evaluator = Evaluator(model, tokenizer, cfg.batch_size)
    method = params.experiments[args.experiment].method
    config = {"experiment": args.experiment, "evaluate": dataclasses.asdict(cfg), "model": dataclasses.asdict(params.model),
              "datasets": datasets, "skipped": skipped}

    def work(run) -> dict:
        run.info["environment"] = environment_info(cfg.threads)
        rows = []
        for task, (path, full) in enumerate(zip(states, plan)):
            evaluator.load(path)
            what = "base model" if task == 0 else f"after task {task}/{len(states) - 1}"
            row = {"after_task": task, **evaluate_state(evaluator, sets, full, f"evaluate {args.experiment}: {what}"
                                                         + ("" if full else " (subsets)"))}
            rows.append(row)
            faults.reached("evaluate")
            for name, values in row["metrics"].items():
                for metric, value in values.items():
                    run.log_scalar(f"eval/{name}/{metric}", value, task)
            for key in ("A_KA", "A_ZS", "GM"):
                if key in row:
                    run.log_scalar(f"eval/{key}", row[key], task)
        settings = {"validation": cfg.validation, "subset": cfg.subset, "seed": cfg.seed, "skipped": skipped}
        evaluation, metrics = summarize(args.experiment, method, datasets, rows, settings)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "eval.json").write_text(json.dumps(evaluation, indent=1) + "\n")
        (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        return metrics.get("final") or metrics.get("tic", {})

    run_tracked("evaluate", config, work)


if __name__ == "__main__":
    main()
