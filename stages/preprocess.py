"""Stage `preprocess`: write every raw dataset as webdataset shards with a manifest (counts, classes, sha256), and
index the imported datasets of `data.external` where they are."""

import argparse

from clipflux.config import load_params
from clipflux.errors import reported
from clipflux.data.pipeline import preprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", required=True, help="raw data folder")
    parser.add_argument("--out", required=True, help="shards folder (replaced)")
    args = parser.parse_args()
    params = load_params()
    manifests = preprocess(args.raw, args.out, params.world.shard_size, params.data.external)
    for name, manifest in manifests.items():
        counts = ", ".join(f"{split}={s['count']}" for split, s in manifest["splits"].items())
        print(f"preprocess: {name} ({manifest['role']}): {counts}")


if __name__ == "__main__":
    reported(main)
