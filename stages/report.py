"""Stage `report`: compare all experiments, each averaged over its seeds: trajectory plot, final-GM bar chart, a
heatmap of each evaluation matrix, their data for DVC plots, and a markdown summary with the Findings."""

import argparse
import json
from pathlib import Path

from clipflux.config import load_params
from clipflux.errors import reported
from clipflux.report import (aggregate_seeds, final_rows, load_evaluations, markdown_summary, plot_final_gm,
                             plot_heatmap, plot_trajectories, trajectory_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiments", required=True, type=Path, help="folder of per-experiment reports")
    parser.add_argument("--out", required=True, type=Path, help="report folder")
    args = parser.parse_args()
    names = list(load_params().experiments)
    evaluations = [aggregate_seeds(load_evaluations(args.experiments / n / "eval.json")) for n in names]
    heatmaps = args.out / "heatmaps"
    heatmaps.mkdir(parents=True, exist_ok=True)
    for stale in heatmaps.glob("*.png"):  # experiments removed from params.yaml
        stale.unlink()

    plot_trajectories(evaluations, args.out / "trajectory.png")
    plot_final_gm(evaluations, args.out / "gm.png")
    for e in evaluations:
        plot_heatmap(e, heatmaps / f"{e['experiment']}.png")
    (args.out / "trajectory.json").write_text(json.dumps(trajectory_rows(evaluations), indent=1) + "\n")
    (args.out / "final.json").write_text(json.dumps(final_rows(evaluations), indent=1) + "\n")
    images = {"trajectory": "trajectory.png", "gm": "gm.png"} | {f"heatmap/{n}": f"heatmaps/{n}.png" for n in names}
    summary = markdown_summary(evaluations, images)
    (args.out / "summary.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    reported(main)
