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
    elif args.command in tracking_commands.COMMANDS:
        tracking_commands.run(args)


if __name__ == "__main__":
    main()
