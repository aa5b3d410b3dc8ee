"""The `clipflux` command: helpers around the pipeline that are not DVC stages."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clipflux.data.world import build_world
from clipflux.streams import dataset_incremental, random_order
from clipflux.tracking import commands as tracking_commands


def write_streams(out_dir: Path, seed: int) -> list[Path]:
    """Write the shipped stream orders of the synthetic world into `out_dir`."""
    classes = {s.name: list(s.classes) for s in build_world().values() if s.role == "adaptation"}
    orders = {
        "fif_random": random_order(classes, seed),
        "dataset_incremental": dataset_incremental(classes, list(classes)),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, entries in orders.items():
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(entries, indent=1) + "\n")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="clipflux", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    streams = sub.add_parser("write-streams", help="regenerate the stream files of the synthetic world")
    streams.add_argument("--out", type=Path, default=Path("streams"))
    streams.add_argument("--seed", type=int, default=0)
    tracking_commands.add_parsers(sub)
    args = parser.parse_args(argv)
    if args.command == "write-streams":
        for path in write_streams(args.out, args.seed):
            print(f"wrote {path}")
    elif args.command in tracking_commands.COMMANDS:
        tracking_commands.run(args)


if __name__ == "__main__":
    main()
