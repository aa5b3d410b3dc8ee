"""Reports: plots are written and readable, the plot data and the markdown say what the evaluations say."""

from __future__ import annotations

import json

import matplotlib.image
import pytest

from clipflux.matrix import summarize
from clipflux.metrics import fif_scores
from clipflux.report import (aggregate_seeds, final_rows, load_evaluations, markdown_summary, plot_final_gm,
                             plot_heatmap, plot_trajectories, tic_rows, trajectory_rows)

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


def _tic_evaluation(name: str = "tic_seq", method: str = "sequential", shift: float = 0.0) -> dict:
    """A TiC run: 3 time steps, one task per step, a classification and a retrieval set split by time step
    (`shift` added to every score after the first task)."""
    datasets = {"tic_cls": {"role": "tic", "task": "classification", "metric": "acc", "split": "test", "size": 300,
                            "chance": 10.0},
                "tic_ret": {"role": "tic", "task": "retrieval", "metric": "R@1", "split": "test", "size": 300,
                            "chance": 0.3}}
    e = [[v + shift for v in row] for row in [[30.0, 10.0, 15.0], [50.0, 70.0, 20.0], [40.0, 65.0, 80.0]]]
    rows = []
    for t in range(4):
        step_scores = [20.0, 20.0, 20.0] if t == 0 else e[t - 1]
        time = {n: {str(j): v for j, v in enumerate(step_scores)} for n in datasets}
        mean = sum(step_scores) / 3
        rows.append({"after_task": t, "subset": t in (1, 2), "scores": {n: mean for n in datasets}, "metrics": {},
                     "n": {}, "time": time})
    evaluation, metrics = summarize(name, method, datasets, rows, {"subset": 0.1})
    assert metrics["tic"]["tic_ret"]["fwt"] == -5.0 + shift and "final" not in metrics  # no A_KA / A_ZS on this world
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


# -- several seeds and the Findings --------------------------------------------------------------------

def _eval_json(seeds: list[dict]) -> dict:
    """eval.json as the evaluate stage writes it for N seeds: seed 0 at the top level and every seed listed."""
    listed = [s | {"seed": i} for i, s in enumerate(seeds)]
    return listed[0] | {"seeds": listed}


def _seeded(name: str, method: str, gains: tuple[float, ...], loss: float) -> dict:
    return _eval_json([_evaluation(name, method, g, loss) for g in gains])


def test_load_evaluations_reads_both_formats(tmp_path):
    (tmp_path / "old.json").write_text(json.dumps(EVALUATIONS[0]))
    assert load_evaluations(tmp_path / "old.json") == [EVALUATIONS[0]]
    (tmp_path / "new.json").write_text(json.dumps(_seeded("finetune", "finetune", (9, 10, 11), 6)))
    seeds = load_evaluations(tmp_path / "new.json")
    assert [s["seed"] for s in seeds] == [0, 1, 2] and all("seeds" not in s for s in seeds)
    assert [s["rows"][-1]["scores"]["novel"] for s in seeds] == [37.0, 40.0, 43.0]
    (tmp_path / "bad.json").write_text(json.dumps(EVALUATIONS[0] | {"seeds": [EVALUATIONS[1]]}))
    with pytest.raises(ValueError, match="one evaluation of 'finetune' per seed"):
        load_evaluations(tmp_path / "bad.json")


def test_one_seed_changes_nothing(tmp_path):
    (tmp_path / "e.json").write_text(json.dumps(_eval_json([EVALUATIONS[0]])))
    one = [aggregate_seeds(load_evaluations(tmp_path / "e.json")), EVALUATIONS[1]]
    assert trajectory_rows(one) == trajectory_rows(EVALUATIONS) and final_rows(one) == final_rows(EVALUATIONS)
    assert "±" not in markdown_summary(one)


def test_seeds_are_averaged_with_their_sample_std(tmp_path):
    three = aggregate_seeds(load_evaluations(_write(tmp_path, _seeded("finetune", "finetune", (9, 10, 11), 6))))
    assert three["n_seeds"] == 3 and three["rows"][-1]["scores"]["novel"] == 40.0
    assert three["std"]["rows"][-1]["scores"]["novel"] == pytest.approx(3.0)  # 37, 40, 43
    rows = trajectory_rows([three])
    assert rows[-1]["A_KA_std"] == pytest.approx(2.25) and rows[-1]["A_ZS_std"] == 0.0  # KA: novel 3, captions 1.5
    assert rows[0]["task"] == 0 and rows[0]["A_KA_std"] == 0.0  # the base model is the same for every seed
    final = final_rows([three])[0]
    assert final["A_KA"] == 37.5 and final["A_KA_std"] == pytest.approx(2.25) and "A_KA_base_std" not in final
    text = markdown_summary([three])
    assert "| finetune | finetune | 3 | 15.0 ± 0.0 | 37.5 ± 2.2 | 80.0 ± 0.0 | 62.0 ± 0.0 |" in text
    assert "| novel | adaptation | acc | test | 400 | 12.5 | 10.0 ± 0.0 | 40.0 | 40.0 ± 3.0 | +30.0 |" in text
    assert "3 seeds" in text
    short = _evaluation("finetune", "finetune", 10, 6, tasks=2)
    with pytest.raises(ValueError, match="finetune: seeds disagree on the length"):
        aggregate_seeds([EVALUATIONS[0], short])


def _write(tmp_path, content: dict):
    path = tmp_path / f"{content['experiment']}.json"
    path.write_text(json.dumps(content))
    return path


def test_plots_draw_the_spread(tmp_path):
    evaluations = [aggregate_seeds(load_evaluations(_write(tmp_path, _seeded(n, n, gains, loss))))
                   for n, gains, loss in (("finetune", (9, 10, 11), 6), ("lora", (6, 6.5, 7), 1))]
    plot_trajectories(evaluations, tmp_path / "t.png")
    plot_final_gm(evaluations, tmp_path / "g.png")
    plot_heatmap(evaluations[0], tmp_path / "h.png")
    tic = aggregate_seeds([_tic_evaluation(), _tic_evaluation(shift=2.0)])
    plot_heatmap(tic, tmp_path / "tic.png")
    assert all(_is_png(tmp_path / n) for n in ("t.png", "g.png", "h.png", "tic.png"))
    plot_trajectories([{k: v for k, v in e.items() if k != "std"} for e in evaluations], tmp_path / "no_bars.png")
    assert (matplotlib.image.imread(tmp_path / "t.png") != matplotlib.image.imread(tmp_path / "no_bars.png")).any()
    assert tic_rows([tic])[0]["in_domain_std"] == 1.4142  # sqrt(2), rounded as the DVC plot data are


def test_findings_rank_fif_and_mark_gaps_against_the_spread(tmp_path):
    # final A_KA = 15 + 2.25 x gain: a 37.5 ± 2.25; b 33.0 ± 1.125 (gap 4.5 > spread 2.25);
    # c 31.875 ± 2.25 (gap 1.125, within the spread 2.25)
    specs = (("a", (9, 10, 11)), ("b", (7.5, 8, 8.5)), ("c", (6.5, 7.5, 8.5)))
    evaluations = [aggregate_seeds(load_evaluations(_write(tmp_path, _seeded(n, "finetune", g, 6 - i)))) for i, (n, g)
                   in enumerate(specs)]
    text = markdown_summary(evaluations)
    findings = text[text.index("## Findings"):]
    assert "**final A_KA** (higher is better): a leads b by 4.5 (> spread 2.2); b over c by 1.1 (within spread 2.2)." \
        in findings
    assert "**forgetting (eval.)** (lower is better): c leads b by 3.0 (> spread 0.0); b over a by 3.0" in findings
    assert "**final GM** (higher is better): a leads c by 1.7 (> spread 1.6); c over b by 0.2 (within spread 1.6)." \
        in findings
    assert "| a | finetune | 48.2 ± 1.4 (1) | 37.5 ± 2.2 (1) | 62.0 ± 0.0 (3) | 18.0 ± 0.0 (3) |" in findings
    assert findings.index("| a | finetune |") < findings.index("| c | finetune |") < findings.index("| b | finetune |")
    one = markdown_summary([e | {"n_seeds": 1} for e in EVALUATIONS])
    assert "**final GM** (higher is better): finetune leads lora by 1.4 (one seed: spread unknown)." in one
    assert "**forgetting (eval.)** (lower is better): lora leads finetune by 15.0 (one seed: spread unknown)." in one


def test_tic_findings_put_compute_beside_the_scores_and_relative_to_the_oracle():
    base = {"measure": "flops", "steps_per_task": 10, "gflops_per_step": 2.0, "samples_per_task": 640}
    tic = [aggregate_seeds([_tic_evaluation(name, method, shift) | {"budget": base | budget}])
           for name, method, shift, budget in (("tic_seq", "sequential", 0.0, {}),
                                               ("tic_oracle", "oracle", 5.0, {"steps_by_task": [10, 20, 30],
                                                                              "init": "scratch"}))]
    text = markdown_summary(tic)
    findings = text[text.index("## Findings"):]
    assert "| tic_oracle | oracle | scratch | 120 (2) | 2.00 | 1.00 | 65.0 (1) |" in findings  # 2 GFLOPs x (10+20+30)
    assert "| tic_seq | sequential | – | 60 (1) | 1.00 | 0.50 | 60.0 (2) |" in findings
    assert "**total GFLOPs** (lower is better): tic_seq leads tic_oracle by 60." in findings
