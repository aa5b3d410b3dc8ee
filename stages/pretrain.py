"""Stage `pretrain`: contrastive pretraining of the base model on the captioned pool (`data.pool`).

When `model.pretrained` is set (a checkpoint file, or an open_clip weight tag found in `model.cache_dir` or on
the hub), those weights are written as the base model instead of training. Runs as one process, or as several
under torchrun (`dvc.yaml` starts `pretrain.nproc` per node): rank 0 then writes the checkpoints, the weights
and the tracked run. The work is `clipflux.jobs.pretrain`.
"""

import argparse
from pathlib import Path

from clipflux.checkpoint import start_over_requested
from clipflux.config import load_params
from clipflux.errors import reported
from clipflux.jobs.pretrain import pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", required=True, type=Path, help="shards folder (reads the dataset named by data.pool)")
    parser.add_argument("--out", required=True, type=Path, help="base model weights")
    parser.add_argument("--checkpoints", required=True, type=Path, help="full-state checkpoints (persisted)")
    parser.add_argument("--start-over", action="store_true", default=start_over_requested(),
                        help="discard checkpoints instead of resuming (also: CLIPFLUX_START_OVER=1)")
    args = parser.parse_args()
    pretrain(load_params(), args.shards, args.out, args.checkpoints, args.start_over)


if __name__ == "__main__":
    reported(main)
