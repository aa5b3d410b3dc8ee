"""Stage `build_stream`: resolve a FiF stream file into tasks with their classes and exact sample keys."""

import argparse
import json
from pathlib import Path

from clipflux.config import load_params
from clipflux.errors import reported
from clipflux.data.pipeline import load_datasets
from clipflux.streams import keys_by_class, load_stream_file, resolve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True, help="stream name (a key of params.yaml: streams)")
    parser.add_argument("--shards", required=True, type=Path, help="shards folder")
    parser.add_argument("--out", required=True, type=Path, help="resolved stream (JSON)")
    args = parser.parse_args()
    params = load_params()
    cfg, evaluation = params.streams[args.name], params.evaluate
    entries = load_stream_file(cfg.file)
    keys = keys_by_class(args.shards, load_datasets(args.shards), evaluation if evaluation.validation else None)
    tasks = resolve(entries, cfg.num_tasks, keys)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"name": args.name, "file": cfg.file, "num_tasks": cfg.num_tasks, "tasks": tasks}, indent=1))
    for t, task in enumerate(tasks):
        print(f"build_stream: {args.name} task {t + 1}: {len(task['classes'])} classes, "
              f"{sum(len(k) for k in task['samples'].values())} samples")


if __name__ == "__main__":
    reported(main)
