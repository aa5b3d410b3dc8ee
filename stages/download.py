"""Stage `download`: generate the synthetic world (the embedded default) into raw data.

With `data.world: false` the raw folder stays empty: the study runs on imported datasets only (`data.external`;
real datasets are fetched by `clipflux download` and imported by `clipflux import`, see README: Real data).
"""

import argparse
import shutil
from pathlib import Path

from clipflux.config import load_params
from clipflux.errors import reported
from clipflux.data.world import generate_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="raw data folder (replaced)")
    args = parser.parse_args()
    params = load_params()
    if params.data.world:
        generate_world(params.world, args.out)
    else:
        shutil.rmtree(args.out, ignore_errors=True)
        Path(args.out).mkdir(parents=True)
        print("download: data.world is false: no synthetic world")


if __name__ == "__main__":
    reported(main)
