"""The `clipflux` command: helpers around the pipeline that are not DVC stages."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clipflux.data import commands as data_commands
from clipflux.data.cards import write_cards
from clipflux.data.stream_files import write_streams
from clipflux.tracking import commands as tracking_commands


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="clipflux", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    streams = sub.add_parser("write-streams", help="regenerate the stream files of the synthetic world")
    streams.add_argument("--out", type=Path, default=Path("streams"))
    streams.add_argument("--seed", type=int, default=0)
    streams.add_argument("--model", type=Path, help="base model weights: also write the similarity orders")
    streams.add_argument("--shards", type=Path, default=Path("data/shards"))
    cards = sub.add_parser("datasets", help="write a dataset card (markdown) and example grids (PNG) per dataset")
    cards.add_argument("--shards", type=Path, default=Path("data/shards"))
    cards.add_argument("--out", type=Path, default=Path("reports/datasets"))
    data_commands.add_parsers(sub)
    budget = sub.add_parser("budget", help="FiF's Table 4: per method GFLOPs, memory, MAF and steps per task")
    budget.add_argument("--model", help="an architecture (default: params.yaml model.name)")
    budget.add_argument("--image-size", type=int, help="image side in pixels (default: the architecture's)")
    budget.add_argument("--batch-size", type=int, help="default: params.yaml train.optim.batch_size")
    budget.add_argument("--tasks", type=int, default=20, help="tasks of the stream, for the total samples (FiF: 20)")
    budget.add_argument("--finetune-steps", type=int,
                        help="full finetuning's steps per task (default: train.samples_per_task / batch size)")
    budget.add_argument("--gflops-per-task", type=float, help="a budget in GFLOPs per task instead")
    budget.add_argument("--measure", choices=["maf", "flops"], default="maf",
                        help="memory-adjusted FLOPs (FiF) or FLOPs alone")
    budget.add_argument("--methods", nargs="+", help="default: every method of params.yaml")
    budget.add_argument("--cuda", action="store_true", help="memory: the CUDA allocator's peak over real steps")
    tracking_commands.add_parsers(sub)
    args = parser.parse_args(argv)
    if args.command == "write-streams":
        model = None
        if args.model:
            from clipflux.config import load_params
            from clipflux.models import create_model, load_weights

            model, _ = create_model(load_params().model)
            load_weights(model, args.model)
        for path in write_streams(args.out, args.seed, model, args.shards):
            print(f"wrote {path}")
    elif args.command == "datasets":
        print(f"wrote {write_cards(args.shards, args.out)}")
    elif args.command in data_commands.COMMANDS:
        data_commands.run(args)
    elif args.command == "budget":
        print_budget(args)
    elif args.command in tracking_commands.COMMANDS:
        tracking_commands.run(args)


def print_budget(args: argparse.Namespace) -> None:
    """`clipflux budget`: profile the methods on the model and print the table (settings from params.yaml)."""
    import math

    from clipflux import budget
    from clipflux.config import BudgetConfig, load_params
    from clipflux.models import image_size

    params = load_params()
    name = args.model or params.model.name
    batch_size = args.batch_size or params.train.optim.batch_size
    finetune_steps = args.finetune_steps or math.ceil(params.train.samples_per_task / batch_size)
    cfg = BudgetConfig(measure=args.measure, gflops_per_task=args.gflops_per_task)
    model = budget.build_model(name, args.image_size)
    rows = budget.compare(params, args.methods or list(params.methods), model, batch_size, finetune_steps, cfg,
                          cuda=args.cuda)
    memory = "CUDA allocator peak" if args.cuda else "accounted"
    print(f"{name} at {image_size(model)} px, batch {batch_size}; budget per task: "
          f"{rows[0]['budget_gflops_per_task']:,.0f} GFLOPs ({args.measure}, full finetuning: "
          f"{rows[0]['finetune_steps_per_task']:,} steps); memory {memory}; GFLOPs count multiply-adds\n")
    print(budget.table(rows, args.tasks))


if __name__ == "__main__":
    main()
