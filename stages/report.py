"""Stage `report`: the KA/ZS trajectory plot, its data for DVC plots, and a markdown summary of all experiments."""

import argparse
import json
from pathlib import Path

from clipflux.config import load_params
from clipflux.report import markdown_summary, plot_trajectories, trajectory_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiments", required=True, type=Path, help="folder of per-experiment reports")
    parser.add_argument("--out", required=True, type=Path, help="report folder")
    args = parser.parse_args()
    names = list(load_params().experiments)
    evaluations = [json.loads((args.experiments / n / "eval.json").read_text()) for n in names]
    args.out.mkdir(parents=True, exist_ok=True)
    plot_trajectories(evaluations, args.out / "trajectory.png")
    (args.out / "trajectory.json").write_text(json.dumps(trajectory_rows(evaluations), indent=1) + "\n")
    summary = markdown_summary(evaluations)
    (args.out / "summary.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
