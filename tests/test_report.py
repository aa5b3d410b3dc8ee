"""Reports: plots are written and readable, the plot data and the markdown say what the evaluations say."""

from __future__ import annotations

import matplotlib.image

from clipflux.matrix import summarize
from clipflux.metrics import fif_scores
from clipflux.report import (final_rows, markdown_summary, plot_final_gm, plot_heatmap, plot_trajectories,
                             tic_rows, trajectory_rows)

DATASETS = {
    "novel": {"role": "adaptation", "task": "classification", "metric": "acc", "split": "test", "size": 400, "chance": 12.5},
    "captions": {"role": "adaptation", "task": "retrieval", "metric": "R@5", "split": "test", "size": 300, "chance": 1.7},
    "shapes": {"role": "evaluation", "task": "classification", "metric": "acc", "split": "test", "size": 400, "chance": 12.5},
}
ROLES = {n: d["role"] for n, d in DATASETS.items()}


def _evaluation(name: str, method: str, gain: float, loss: float, tasks: int = 3) -> dict:
    rows = []
    for t in range(tasks + 1):
        scores = {"novel": 10 + gain * t, "captions": 20 + gain * t / 2, "shapes": 80 - loss * t}
        rows.append({"after_task": t, "subset": 0 < t < tasks, "scores": scores, "metrics": {}, "n": {}, "time": {},
                     **fif_scores(scores, ROLES)})
    evaluation, _ = summarize(name, method, DATASETS, rows, {"validation": False, "subset": 0.1})
    return evaluation


EVALUATIONS = [_evaluation("finetune", "finetune", 10, 6), _evaluation("lora", "lora", 6, 1)]


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and matplotlib.image.imread(path).shape[0] > 100


def test_plots_are_written(tmp_path):
    plot_trajectories(EVALUATIONS, tmp_path / "trajectory.png")
    plot_final_gm(EVALUATIONS, tmp_path / "gm.png")
    plot_heatmap(EVALUATIONS[0], tmp_path / "heatmap.png")
    for name in ("trajectory.png", "gm.png", "heatmap.png"):
        assert _is_png(tmp_path / name)


def test_plot_data_rows():
    rows = trajectory_rows(EVALUATIONS)
    assert len(rows) == 8 and rows[0] == {"experiment": "finetune", "method": "finetune", "task": 0, "subset": False,
                                          "A_KA": 15.0, "A_ZS": 80.0, "GM": 34.641}
    assert [r["subset"] for r in rows[:4]] == [False, True, True, False]
    final = final_rows(EVALUATIONS)
    assert [r["experiment"] for r in final] == ["finetune", "lora"]
    assert final[0]["A_KA"] == 37.5 and final[0]["A_ZS"] == 62.0 and final[0]["GM_base"] == 34.641


def test_markdown_table(tmp_path):
    text = markdown_summary(EVALUATIONS, {"trajectory": "trajectory.png", "heatmap/lora": "heatmaps/lora.png"})
    assert "| finetune | finetune | 3 | 15.0 | 37.5 | 80.0 | 62.0 | 34.6 | 48.2 | -7.5 | 18.0 |" in text
    assert "| captions | adaptation | R@5 | test | 300 | 1.7 | 20.0 | 35.0 | 35.0 | +15.0 | -5.0 |" in text
    assert "![trajectory](trajectory.png)" in text and "![lora evaluation matrix](heatmaps/lora.png)" in text
    assert "class-balanced subsets (0.1 of each" in text


def test_reports_cope_with_validation_runs_without_zero_shot_datasets(tmp_path):
    rows = [{"after_task": t, "subset": False, "scores": {"novel": 10.0 * t}, "metrics": {}, "n": {}, "time": {},
             "A_KA": 10.0 * t} for t in range(3)]
    evaluation, metrics = summarize("val", "finetune", {"novel": DATASETS["novel"]}, rows, {"validation": True})
    assert metrics["final"] == {"A_KA": 20.0}
    plot_trajectories([evaluation], tmp_path / "t.png")
    plot_final_gm([evaluation], tmp_path / "g.png")
    plot_heatmap(evaluation, tmp_path / "h.png")
    assert all(_is_png(tmp_path / n) for n in ("t.png", "g.png", "h.png"))
    assert "Validation mode" in markdown_summary([evaluation])


def _tic_evaluation() -> dict:
    """A TiC run: 3 time steps, one task per step, a classification and a retrieval set split by time step."""
    datasets = {"tic_cls": {"role": "tic", "task": "classification", "metric": "acc", "split": "test", "size": 300,
                            "chance": 10.0},
                "tic_ret": {"role": "tic", "task": "retrieval", "metric": "R@1", "split": "test", "size": 300,
                            "chance": 0.3}}
    e = [[30.0, 10.0, 15.0], [50.0, 70.0, 20.0], [40.0, 65.0, 80.0]]
    rows = []
    for t in range(4):
        step_scores = [20.0, 20.0, 20.0] if t == 0 else e[t - 1]
        time = {n: {str(j): v for j, v in enumerate(step_scores)} for n in datasets}
        mean = sum(step_scores) / 3
        rows.append({"after_task": t, "subset": t in (1, 2), "scores": {n: mean for n in datasets}, "metrics": {},
                     "n": {}, "time": time})
    evaluation, metrics = summarize("tic_seq", "sequential", datasets, rows, {"subset": 0.1})
    assert metrics["tic"]["tic_ret"]["fwt"] == -5.0 and "final" not in metrics  # no A_KA / A_ZS on this world
    return evaluation


def test_time_ordered_runs_get_tic_panels_and_a_tic_table(tmp_path):
    tic = _tic_evaluation()
    plot_heatmap(tic, tmp_path / "tic.png")
    assert _is_png(tmp_path / "tic.png")
    assert trajectory_rows([tic]) == [] and final_rows([tic]) == []
    assert tic_rows([tic])[0] == {"experiment": "tic_seq", "method": "sequential", "dataset": "tic_cls", "metric": "acc",
                                  "in_domain": 60.0, "backward": 51.6667, "forward": 15.0, "bwt": 2.5, "fwt": -5.0}
    text = markdown_summary(EVALUATIONS + [tic])
    assert "| tic_seq | sequential | tic_ret | R@1 | 60.0 | 51.7 | 15.0 | 2.5 | -5.0 |" in text
    assert "| finetune | finetune | 3 |" in text and "| tic_seq | sequential | 3 |" not in text
    plot_trajectories([tic], tmp_path / "t.png")
    plot_final_gm([tic], tmp_path / "g.png")
    assert _is_png(tmp_path / "t.png") and _is_png(tmp_path / "g.png")


def test_markdown_shows_the_budget_each_method_got():
    budgets = {"finetune": {"measure": "maf", "steps_per_task": 32, "samples_per_task": 2048, "gflops_per_sample": 0.1234,
                            "memory_multiplier": 1.0, "maf_per_sample": 0.1234, "budget_used": 1.0},
               "lora": {"measure": "samples", "steps_per_task": 32, "samples_per_task": 2048}}
    text = markdown_summary([e | {"budget": budgets[e["experiment"]]} for e in EVALUATIONS])
    assert "| finetune | finetune | maf | 32 | 2048 | 0.123 | 1 | 0.123 | 100.0% |" in text
    assert "| lora | lora | samples | 32 | 2048 | – | – | – | – |" in text
    assert "Compute budget" not in markdown_summary(EVALUATIONS)
