"""The `evaluate_base` and `evaluate@<experiment>` stages' jobs: every evaluation dataset before the stream and
after every task (FiF's protocol), or TiC's dynamic sets (its evaluation matrix).

Full sets for the base model and after the last task, class-balanced subsets (`evaluate.subset`) after the
tasks in between; in validation mode held-out training samples instead of test data. Writes the evaluation
matrix (`eval.json`), A_KA / A_ZS / GM per task, forgetting and TiC transfer (`scores.json`), and the headline
numbers (`metrics.json`, DVC metrics: final A_KA / A_ZS / GM and forgetting, or TiC's transfer).

`evaluate_base` evaluates only the base model, once for all experiments, on the sets of every protocol the
experiments use, and writes those rows (`base.json`); each experiment's evaluation then starts from them instead
of evaluating the same weights again.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from clipflux import faults
from clipflux.config import Params
from clipflux.data.pipeline import load_datasets
from clipflux.evaluate import Evaluator, evaluate_state, evaluation_sets, preload
from clipflux.matrix import dataset_info, summarize
from clipflux.metrics import aggregate_metrics, display_decimals, headline_metrics, round_tree
from clipflux.models import create_model
from clipflux.streams import chunk, load_stream_file, parse_entry
from clipflux.subsets import evaluation_plan
from clipflux.tracking import configure_torch, environment_info, run_name, run_tracked


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


def _evaluator(params: Params) -> Evaluator:
    configure_torch(params.evaluate.threads)
    model, tokenizer = create_model(params.model)
    return Evaluator(model, tokenizer, params.evaluate.batch_size)


def evaluate_base(params: Params, shards: Path, base: Path, out: Path) -> None:
    """Evaluate the base model in full on the sets of every protocol in use; write `out`/base.json, {protocol: row}."""
    cfg = params.evaluate
    evaluator = _evaluator(params)
    manifests = load_datasets(shards)
    protocols = sorted({protocol(params, name, manifests) for name, exp in params.experiments.items()
                        if exp.init == "base"})  # runs from a random initialisation evaluate their own
    config = {"experiment": None, "evaluate": dataclasses.asdict(cfg), "model": dataclasses.asdict(params.model),
              "protocols": protocols}

    def work(run) -> dict:
        run.info["environment"] = environment_info(cfg.threads)
        evaluator.load(base)
        rows = {}
        for name in protocols:
            sets, _ = evaluation_sets(shards, manifests, cfg.seed, cfg.subset, cfg.validation, cfg.split, ROLES[name])
            rows[name] = {"after_task": 0, **evaluate_state(evaluator, sets, True, f"evaluate base model ({name})")}
            log_row(run, rows[name])
        out.mkdir(parents=True, exist_ok=True)
        (out / "base.json").write_text(json.dumps(rows, indent=1) + "\n")
        return {name: {k: row[k] for k in ("A_KA", "A_ZS", "GM") if k in row} for name, row in rows.items()}

    run_tracked("evaluate", config, work, name=run_name("evaluate", "base"))


def log_row(run, row: dict) -> None:
    """Log one evaluation row's metrics to the Sacred run, at its task as the step."""
    for name, values in row["metrics"].items():
        for metric, value in values.items():
            run.log_scalar(f"eval/{name}/{metric}", value, row["after_task"])
    for key in ("A_KA", "A_ZS", "GM"):
        if key in row:
            run.log_scalar(f"eval/{key}", row[key], row["after_task"])


@dataclasses.dataclass(frozen=True)
class Paths:
    """An experiment's evaluation inputs and output."""

    shards: Path  # shards folder
    models: Path  # weights after each task (seed_<s>/task_NNN.pt)
    out: Path  # report folder of the experiment
    base: Path | None = None  # base model weights (evaluated as task 0 unless base_rows)
    base_rows: Path | None = None  # the base model's rows from evaluate_base


def evaluate(params: Params, experiment: str, paths: Paths) -> None:
    """Evaluate every seed of `experiment` after every task; write eval.json and metrics.json to `paths.out`."""
    cfg = params.evaluate
    evaluator = _evaluator(params)
    manifests = load_datasets(paths.shards)
    kind = protocol(params, experiment, manifests)
    sets, skipped = evaluation_sets(paths.shards, manifests, cfg.seed, cfg.subset, cfg.validation, cfg.split, ROLES[kind])
    for name, why in skipped.items():
        print(f"evaluate: {name} left out: {why}")
    if cfg.preload:
        sets = preload(sets)
    datasets = {n: dataset_info(s.manifest, s.split, len(s.full), len(s.subset)) for n, s in sets.items()}
    base_row = json.loads(paths.base_rows.read_text()).get(kind) if paths.base_rows else None
    groups = time_groups(params, experiment, manifests) if kind == "tic" else None
    evaluations, metrics = [], []

    def write_outputs() -> None:
        """Write eval.json, scores.json and metrics.json once every seed is evaluated (inside the last seed's run,
        so that its lineage records the outputs' hashes)."""
        paths.out.mkdir(parents=True, exist_ok=True)
        (paths.out / "eval.json").write_text(json.dumps(evaluations[0] | {"seeds": evaluations}, indent=1) + "\n")
        scores = aggregate_metrics(metrics)
        (paths.out / "scores.json").write_text(json.dumps(scores, indent=1) + "\n")
        (paths.out / "metrics.json").write_text(json.dumps(headline_metrics(experiment, scores), indent=1) + "\n")

    for seed_index in range(params.study.seeds):
        last = seed_index == params.study.seeds - 1

        def record(evaluation: dict, seed_metrics: dict, last: bool = last) -> None:
            evaluations.append(evaluation)
            metrics.append(seed_metrics)
            if last:
                write_outputs()

        evaluate_seed(params, experiment, paths, seed_index, evaluator, sets, datasets, skipped, base_row, groups,
                      record)


def evaluate_seed(params: Params, experiment: str, paths: Paths, seed_index: int, evaluator: Evaluator, sets: dict,
                  datasets: dict, skipped: dict, base_row: dict | None, groups: list[list[str]] | None,
                  record) -> None:
    """Evaluate one seed's weights (`models/seed_<s>`) after every task; hand its evaluation and metrics to
    `record(evaluation, metrics)` inside the seed's tracked run."""
    cfg = params.evaluate
    models = paths.models / f"seed_{seed_index}"
    initial = models / "task_000.pt"  # a run from random initialisation starts from its own weights
    if initial.exists():
        base_row = None
    trained = sorted(path for path in models.glob("task_*.pt") if path != initial)
    states = [initial if initial.exists() else paths.base] + trained  # states[0] unread with base rows
    plan = evaluation_plan(len(states), cfg.subset)
    exp = params.experiments[experiment]
    method = exp.method
    budget = models / "budget.json"  # what the train stage allotted (absent for weights from elsewhere)
    allotted = json.loads(budget.read_text()) if budget.exists() else None
    config = {"experiment": experiment, "seed_index": seed_index, "method": method, "stream": exp.stream,
              "mixture": mixture_label(exp.mixture), "steps_per_task": (allotted or {}).get("steps_per_task"),
              "evaluate": dataclasses.asdict(cfg), "model": dataclasses.asdict(params.model), "datasets": datasets,
              "skipped": skipped}

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
                row = {"after_task": task, **evaluate_state(evaluator, sets, full, f"evaluate {experiment} "
                                                             f"(seed {seed_index}): {what}" + ("" if full else " (subsets)"))}
            rows.append(row)
            faults.reached("evaluate")
            log_row(run, row)
        settings = {"validation": cfg.validation, "subset": cfg.subset, "subset_seed": cfg.seed, "skipped": skipped,
                    "budget": allotted}
        evaluation, metrics = summarize(experiment, method, datasets, rows, settings,
                                        groups)
        run.info["summary"] = run_summary(metrics, datasets)
        record(evaluation | {"seed": seed_index}, metrics)
        return metrics.get("final") or metrics.get("tic", {})  # the run's result in Omniboard

    run_tracked("evaluate", config, work, name=run_name("evaluate", experiment, seed_index, params.study.seeds))


def mixture_label(mixture) -> str:
    """A mixture as one short label for a runs table: "update 0.5 / buffer 0.25 / pretraining 0.25"."""
    return " / ".join(f"{k} {v:g}" for k, v in dataclasses.asdict(mixture).items())


def run_summary(metrics: dict, datasets: dict) -> dict:
    """The numbers a runs table shows for one evaluate run (its `info.summary`, Omniboard's A_KA / A_ZS / GM /
    forgetting / TiC columns): its headline numbers (`headline_metrics`, TiC's nested per dataset), rounded to
    the decimals its evaluation sets resolve (`display_decimals`)."""
    tic = metrics.get("tic", {})
    if tic:
        decimals = min(display_decimals([datasets[n]["size"]], per_mean=1) for n in tic)
    else:
        decimals = display_decimals([d["size"] for d in datasets.values() if d["role"] == "adaptation"])
    summary: dict = {}
    for key, value in headline_metrics("run", metrics)["run"].items():
        dataset, _, name = key.rpartition(".")  # "tic_ret.backward" -> {"tic_ret": {"backward": ...}}
        (summary.setdefault(dataset, {}) if dataset else summary)[name] = value
    return round_tree(summary, decimals) | {"decimals": decimals}
