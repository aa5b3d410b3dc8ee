"""Stage `evaluate`: every evaluation dataset before the stream and after every task (FiF's protocol), or TiC's
dynamic sets; writes the evaluation matrix (`eval.json`) and its metrics (`metrics.json`, DVC metrics).

Without `--experiment` (stage `evaluate_base`) it evaluates only the base model, once for all experiments, and
writes its rows (`--out`/base.json); each experiment's evaluation then starts from them (`--base-rows`). The work
is `clipflux.jobs.evaluate`.
"""

import argparse
from pathlib import Path

from clipflux.config import load_params
from clipflux.errors import reported
from clipflux.jobs.evaluate import Paths, evaluate, evaluate_base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiment", help="a key of params.yaml: experiments (none: evaluate the base model only)")
    parser.add_argument("--shards", required=True, type=Path, help="shards folder")
    parser.add_argument("--base", type=Path, help="base model weights (evaluated as task 0 unless --base-rows)")
    parser.add_argument("--base-rows", type=Path, help="the base model's rows written without --experiment")
    parser.add_argument("--models", type=Path, help="weights after each task (seed_<s>/task_NNN.pt)")
    parser.add_argument("--out", required=True, type=Path, help="report folder of this experiment (or of the base)")
    args = parser.parse_args()
    if args.experiment is None:
        if args.base is None:
            parser.error("--base is required to evaluate the base model")
        return evaluate_base(load_params(), args.shards, args.base, args.out)
    if args.models is None or (args.base is None and args.base_rows is None):
        parser.error("--experiment needs --models, and --base or --base-rows")
    evaluate(load_params(), args.experiment, Paths(args.shards, args.models, args.out, args.base, args.base_rows))


if __name__ == "__main__":
    reported(main)
