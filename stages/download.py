"""Stage `download`: generate the synthetic world (the embedded default) into raw data."""

import argparse

from clipflux.config import load_params
from clipflux.data.pipeline import generate_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="raw data folder (replaced)")
    args = parser.parse_args()
    params = load_params()
    generate_world(params.world, args.out)


if __name__ == "__main__":
    main()
