"""The evaluation matrix of an experiment: eval.json and metrics.json from its rows."""

from __future__ import annotations

import json

import pytest

from clipflux.matrix import dataset_info, summarize, time_matrices


def _row(task: int, scores: dict, subset: bool = False, time: dict | None = None) -> dict:
    from clipflux.metrics import fif_scores

    roles = {"novel": "adaptation", "ret": "adaptation", "shapes": "evaluation"}
    return {"after_task": task, "subset": subset, "scores": scores, "metrics": {}, "n": {},
            "time": time or {}, **fif_scores(scores, roles)}


DATASETS = {
    "novel": {"role": "adaptation", "task": "classification", "metric": "acc", "chance": 12.5},
    "ret": {"role": "adaptation", "task": "retrieval", "metric": "R@5", "chance": 5.0},
    "shapes": {"role": "evaluation", "task": "classification", "metric": "acc", "chance": 12.5},
}


def test_dataset_info_chance_levels():
    cls = {"role": "evaluation", "task": "classification", "classes": ["a", "b", "c", "d"]}
    assert dataset_info(cls, "test", 400, 300)["chance"] == 25.0
    ret = {"role": "evaluation", "task": "retrieval", "classes": []}
    info = dataset_info(ret, "test", 1000, 300)
    assert info["chance"] == 0.5 and info["metric"] == "R@5" and info["subset_size"] == 300
    tic = dataset_info(dict(ret, role="tic"), "test", 1000, 300)  # TiC reports retrieval as Recall@1
    assert tic["metric"] == "R@1" and tic["chance"] == 0.1


def test_summary_of_a_hand_made_run():
    rows = [
        _row(0, {"novel": 10.0, "ret": 20.0, "shapes": 80.0}, time={"novel": {"0": 10.0, "1": 10.0}}),
        _row(1, {"novel": 50.0, "ret": 30.0, "shapes": 70.0}, subset=True, time={"novel": {"0": 60.0, "1": 5.0}}),
        _row(2, {"novel": 40.0, "ret": 40.0, "shapes": 75.0}, time={"novel": {"0": 50.0, "1": 70.0}}),
    ]
    evaluation, metrics = summarize("ft", "finetune", DATASETS, rows, {"validation": False})
    assert set(metrics) == {"task_00", "task_01", "task_02", "final", "forgetting", "tic"}
    assert metrics["task_00"] == {"A_KA": 15.0, "A_ZS": 80.0, "GM": pytest.approx(34.641, abs=1e-3)}
    assert metrics["final"] == metrics["task_02"] and metrics["final"]["A_KA"] == 40.0
    # Forgetting: best earlier minus final, per dataset and averaged per group.
    assert metrics["forgetting"] == {"novel": 10.0, "ret": -10.0, "shapes": 5.0,
                                     "mean_adaptation": 0.0, "mean_evaluation": 5.0}
    # TiC on the time-stepped dataset: E = [[60, 5], [50, 70]], before the stream [10, 10].
    assert metrics["tic"]["novel"] == {"in_domain": 65.0, "backward": 50.0, "forward": 5.0, "bwt": -10.0, "fwt": -5.0}
    assert evaluation["time"]["novel"] == {"steps": ["0", "1"], "base": [10.0, 10.0], "matrix": [[60.0, 5.0], [50.0, 70.0]]}
    assert evaluation["validation"] is False and evaluation["rows"][1]["subset"]
    assert json.loads(json.dumps(evaluation)) == evaluation  # plain JSON: time steps are strings, as JSON keys are


def test_time_matrix_orders_steps_numerically_and_skips_tic_when_not_square():
    rows = [_row(t, {"novel": 1.0, "ret": 1.0, "shapes": 1.0}, time={"novel": {"10": 1.0, "9": 2.0, "2": 3.0}})
            for t in range(3)]
    assert time_matrices(rows)["novel"]["steps"] == ["2", "9", "10"]
    _, metrics = summarize("ft", "finetune", DATASETS, rows)  # 2 tasks but 3 time steps: E is not square
    assert "tic" not in metrics


def test_tasks_spanning_several_time_steps_give_a_square_matrix_of_their_windows():
    """A TiC stream with two years per task: E's columns are the tasks' windows, each the mean of its years."""
    from clipflux.matrix import time_matrices

    def row(scores):
        return {"time": {"tic_cls": {str(s): v for s, v in enumerate(scores)}}}

    rows = [row([10, 20, 30, 40]), row([50, 30, 20, 10]), row([40, 40, 60, 80])]
    times = time_matrices(rows, [["0", "1"], ["2", "3"]])["tic_cls"]
    assert times["steps"] == ["0+1", "2+3"]
    assert times["base"] == [15, 35] and times["matrix"] == [[40, 15], [40, 70]]
    assert len(time_matrices(rows)["tic_cls"]["matrix"][0]) == 4  # one column per step without groups
