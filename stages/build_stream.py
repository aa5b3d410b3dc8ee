"""Stage `build_stream`: resolve a FiF stream file into tasks with their classes and exact sample keys."""

import argparse
import json
from pathlib import Path

from clipflux.config import load_params
from clipflux.data.pipeline import load_datasets
from clipflux.data.shards import ShardReader
from clipflux.streams import load_stream_file, resolve


def keys_by_class(shards: Path, manifests: dict[str, dict]) -> dict[str, dict[str, list[str]]]:
    """For every streamable dataset (a training split and classes or topics): class -> training sample keys."""
    out = {}
    for name, manifest in manifests.items():
        if manifest["role"] not in ("adaptation", "tic") or "train" not in manifest["splits"] or not manifest["classes"]:
            continue
        reader = ShardReader(shards / name, "train")
        classes = manifest["classes"]
        out[name] = {c: [] for c in classes}
        for key, label in zip(reader.keys, reader.labels):
            out[name][classes[label]].append(key)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True, help="stream name (a key of params.yaml: streams)")
    parser.add_argument("--shards", required=True, type=Path, help="shards folder")
    parser.add_argument("--out", required=True, type=Path, help="resolved stream (JSON)")
    args = parser.parse_args()
    cfg = load_params().streams[args.name]
    entries = load_stream_file(cfg.file)
    tasks = resolve(entries, cfg.num_tasks, keys_by_class(args.shards, load_datasets(args.shards)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"name": args.name, "file": cfg.file, "num_tasks": cfg.num_tasks, "tasks": tasks}, indent=1))
    for t, task in enumerate(tasks):
        print(f"build_stream: {args.name} task {t + 1}: {len(task['classes'])} classes, "
              f"{sum(len(k) for k in task['samples'].values())} samples")


if __name__ == "__main__":
    main()
