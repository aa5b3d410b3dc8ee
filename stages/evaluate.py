"""Stage `evaluate`: zero-shot accuracy on every dataset before the stream and after every task.

Writes the evaluation matrix (`eval.json`) and A_KA / A_ZS / GM per task (`metrics.json`, DVC metrics).
"""

import argparse
import dataclasses
import json
from pathlib import Path

from tqdm import tqdm

from clipflux.config import load_params
from clipflux.data.pipeline import load_datasets
from clipflux.data.shards import ShardReader
from clipflux.evaluate import zero_shot_accuracy
from clipflux.metrics import fif_scores
from clipflux.models import create_model, load_weights
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
    manifests = {n: m for n, m in load_datasets(args.shards).items()
                 if m["task"] == "classification" and "test" in m["splits"]}
    readers = {n: ShardReader(args.shards / n, "test") for n in manifests}
    roles = {n: m["role"] for n, m in manifests.items()}
    states = [args.base] + sorted(args.models.glob("task_*.pt"))
    model, tokenizer = create_model(params.model)
    config = {"experiment": args.experiment, "evaluate": dataclasses.asdict(cfg), "model": dataclasses.asdict(params.model)}

    def work(run) -> dict:
        run.info["environment"] = environment_info(cfg.threads)
        rows = []
        for task, path in enumerate(tqdm(states, desc=f"evaluate {args.experiment}", unit="model")):
            load_weights(model, path)
            scores = {n: zero_shot_accuracy(model, tokenizer, readers[n], manifests[n], cfg.batch_size) for n in manifests}
            summary = fif_scores(scores, roles)
            rows.append({"after_task": task, "scores": scores, **summary})
            for name, value in scores.items():
                run.log_scalar(f"eval/{name}/acc", value, task)
            for name, value in summary.items():
                run.log_scalar(f"eval/{name}", value, task)
        metrics = {f"task_{r['after_task']:02d}": {k: round(r[k], 4) for k in ("A_KA", "A_ZS", "GM")} for r in rows}
        metrics["final"] = metrics[f"task_{len(rows) - 1:02d}"]
        args.out.mkdir(parents=True, exist_ok=True)
        chance = {n: 100.0 / len(m["classes"]) for n, m in manifests.items()}
        evaluation = {"experiment": args.experiment, "method": params.experiments[args.experiment].method,
                      "roles": roles, "chance": chance, "rows": rows}
        (args.out / "eval.json").write_text(json.dumps(evaluation, indent=1) + "\n")
        (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        return metrics["final"]

    run_tracked("evaluate", config, work)


if __name__ == "__main__":
    main()
