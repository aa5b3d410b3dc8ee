"""`python -m clipflux.dvcrun ARGS`: DVC's command line, with the YAML files DVC writes (`dvc.lock`, `.dvc`
files) written atomically. `./run.sh repro` and `./run.sh dvc ...` go through it.

DVC rewrites `dvc.lock` in place after every stage (`dvc.utils.serialize._common._dump_data` opens it with
"w+"), so a SIGKILL in that moment (measured by `benchmarks/chaos.py`: a kill 83.6 s into `pretrain`, as DVC
updated the lock) leaves a truncated file, and every later `dvc repro` stops with "'./dvc.lock' validation
failed". Here the same function writes a temporary file beside it, fsyncs it and renames it over the old one:
a kill leaves the old lock or the new one, never half of one (and perhaps `.dvc.lock.dvcrun.tmp`, git-ignored and
replaced by the next write). Other file systems than the local one keep DVC's own writing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def _atomic_dump_data(path: Any, data: Any, dumper: Any, fs: Any = None, **dumper_args: Any) -> None:
    if fs is not None and getattr(fs, "protocol", "local") not in ("local", "file"):
        return _ORIGINAL(path, data, dumper, fs=fs, **dumper_args)
    path = Path(os.fspath(path))
    tmp = path.with_name(f".{path.name}.dvcrun.tmp")  # DVC's repository lock: one writer at a time
    try:
        with open(tmp, "w+", encoding="utf-8") as fd:
            dumper(data, fd, **dumper_args)
            fd.flush()
            os.fsync(fd.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def install() -> None:
    """Make DVC's YAML, JSON and TOML writers atomic in this process."""
    global _ORIGINAL
    from dvc.utils.serialize import _common, _json, _toml, _yaml

    if _common._dump_data is not _atomic_dump_data:
        _ORIGINAL = _common._dump_data
    for module in (_common, _yaml, _json, _toml):
        if hasattr(module, "_dump_data"):
            module._dump_data = _atomic_dump_data


_ORIGINAL: Any = None


def main(argv: list[str]) -> int:
    install()
    from dvc.cli import main as dvc_main

    return dvc_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
