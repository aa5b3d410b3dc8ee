"""Stage `train`: adapt the base model over the tasks of a stream with one experiment's update method, once per
seed of the study.

Runs as one process, or as several under torchrun (`dvc.yaml` starts `train.nproc` per node): rank 0 then
writes the checkpoints, the weights and the tracked runs. The work is `clipflux.jobs.train`.
"""

import argparse
from pathlib import Path

from clipflux.checkpoint import start_over_requested
from clipflux.config import load_params
from clipflux.errors import reported
from clipflux.jobs.train import Paths, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiment", required=True, help="a key of params.yaml: experiments")
    parser.add_argument("--shards", required=True, type=Path, help="shards folder")
    parser.add_argument("--stream", required=True, type=Path, help="resolved stream (from build_stream)")
    parser.add_argument("--base", required=True, type=Path, help="base model weights")
    parser.add_argument("--out", required=True, type=Path,
                        help="folder for the evaluated weights after each task, one seed_<s> folder per seed")
    parser.add_argument("--checkpoints", required=True, type=Path, help="full-state checkpoints (persisted)")
    parser.add_argument("--start-over", action="store_true", default=start_over_requested(),
                        help="discard checkpoints instead of resuming (also: CLIPFLUX_START_OVER=1)")
    args = parser.parse_args()
    paths = Paths(args.shards, args.stream, args.base, args.out, args.checkpoints)
    train(load_params(), args.experiment, paths, args.start_over)


if __name__ == "__main__":
    reported(main)
