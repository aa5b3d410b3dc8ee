"""The evaluation matrix of one experiment and what is read off it.

A row is one model state (the base model, then the model after each task) evaluated on every dataset.
`summarize` turns the rows into the experiment's `eval.json` (every score of every row, forgetting, TiC
matrices) and its `metrics.json` (DVC metrics: A_KA, A_ZS, GM after every task and at the end, forgetting,
TiC transfer), so that `dvc metrics diff` compares two runs number by number.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from clipflux.metrics import fif_scores, forgetting_per_dataset, headline_metric, tic_scores

SUMMARY_KEYS = ("A_KA", "A_ZS", "GM")


def dataset_info(manifest: dict, split: str, size: int, subset_size: int) -> dict[str, Any]:
    """What the report needs to know about an evaluated dataset, including its chance level."""
    task = manifest["task"]
    metric = headline_metric(task, "tic" if manifest["role"] == "tic" else "fif")
    if task == "classification":
        chance = 100.0 / len(manifest["classes"])
    else:  # Recall@k of a random ranking of `size` candidates
        chance = min(100.0, 100.0 * int(metric.removeprefix("R@")) / max(size, 1))
    return {"role": manifest["role"], "task": task, "metric": metric, "split": split, "size": size,
            "subset_size": subset_size, "chance": chance}


def row_summary(scores: Mapping[str, float], datasets: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """A_KA, A_ZS and GM of one row of headline scores."""
    return fif_scores(scores, {n: datasets[n]["role"] for n in scores})


def time_matrices(rows: Sequence[Mapping[str, Any]], groups: Sequence[Sequence[str]] | None = None
                  ) -> dict[str, dict[str, Any]]:
    """Per time-stepped dataset: its steps, the base model's scores and E[i][j] (after task i+1, step j).

    With `groups` (the time steps each task trains on, e.g. [["0", "1"], ["2", "3"], ...] when a stream puts
    two years in a task), the columns are the tasks' time windows: a window's score is the mean of its time
    steps' scores (each year weighs the same), so E is square with one task per window. Without groups E is
    square, and TiC's metrics defined, only when the stream has one task per time step.
    """
    out = {}
    for name in rows[0].get("time", {}):
        steps = sorted(rows[0]["time"][name], key=_step_order)
        windows = [[s] for s in steps]
        if groups and all(s in steps for group in groups for s in group):
            windows = [list(group) for group in groups]
        scores = [[math.fsum(row["time"][name][s] for s in w) / len(w) for w in windows] for row in rows]
        out[name] = {"steps": ["+".join(w) for w in windows], "base": scores[0], "matrix": scores[1:]}
    return out


def _step_order(step: str) -> tuple:
    try:
        return (0, float(step))
    except ValueError:
        return (1, step)


def _rounded(values: Mapping[str, float], digits: int = 4) -> dict[str, float]:
    return {k: round(v, digits) for k, v in values.items() if not (isinstance(v, float) and math.isnan(v))}


def summarize(experiment: str, method: str, datasets: Mapping[str, Mapping[str, Any]],
              rows: Sequence[Mapping[str, Any]], extra: Mapping[str, Any] | None = None,
              time_groups: Sequence[Sequence[str]] | None = None) -> tuple[dict, dict]:
    """The experiment's evaluation (eval.json) and its DVC metrics (metrics.json).

    Args:
        experiment, method: names, for the report.
        datasets: dataset name -> `dataset_info`.
        rows: one per model state, base model first: {"after_task", "subset", "scores", "metrics", "n",
            A_KA/A_ZS/GM, and "time": {dataset: {step: score}} for time-stepped datasets}.
        extra: more fields for eval.json (settings, datasets left out).
        time_groups: the time steps of each task, when a task spans several (see `time_matrices`).
    """
    forgetting = forgetting_per_dataset([row["scores"] for row in rows])
    means = {}
    for role, key in (("adaptation", "mean_adaptation"), ("evaluation", "mean_evaluation")):
        values = [f for n, f in forgetting.items() if datasets[n]["role"] == role]
        if values:
            means[key] = math.fsum(values) / len(values)
    times = time_matrices(rows, time_groups)
    tic = {n: tic_scores(t["matrix"], t["base"]) for n, t in times.items() if len(t["matrix"]) == len(t["steps"])}

    metrics: dict[str, Any] = {}
    for row in rows:  # none on the time-ordered world, which has no adaptation or evaluation-only datasets
        if any(k in row for k in SUMMARY_KEYS):
            metrics[f"task_{row['after_task']:02d}"] = _rounded({k: row[k] for k in SUMMARY_KEYS if k in row})
    if metrics:
        metrics["final"] = metrics[f"task_{rows[-1]['after_task']:02d}"]
    metrics["forgetting"] = _rounded(means | forgetting)
    if tic:
        metrics["tic"] = {n: _rounded(v) for n, v in tic.items()}
    evaluation = {"experiment": experiment, "method": method, **(extra or {}), "datasets": dict(datasets),
                  "rows": list(rows), "forgetting": forgetting | means, "time": times, "tic": tic}
    return evaluation, metrics
