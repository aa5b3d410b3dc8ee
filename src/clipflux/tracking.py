"""Sacred at the edge: every pretrain / train / evaluate run is a Sacred run with a file observer.

Library code never imports Sacred; stage scripts call `run_tracked` with their config and a main function
that receives the run (for `log_scalar` and `info`).
"""

from __future__ import annotations

import platform
import socket
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

T = TypeVar("T")
RUNS_DIR = Path("runs")
PACKAGES = ("torch", "open_clip_torch", "numpy", "webdataset", "sacred", "dvc")


def environment_info(threads: int) -> dict[str, Any]:
    """Where and with what a run ran: host, device, thread count, package versions."""
    return {
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "device": "cpu",
        "threads": threads,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "packages": {name: metadata.version(name) for name in PACKAGES},
    }


def run_tracked(stage: str, config: dict[str, Any], main: Callable[[Any], T], runs_dir: str | Path = RUNS_DIR) -> T:
    """Run `main(run)` as a Sacred run of experiment `clipflux.<stage>`, observed into `runs_dir/<stage>`.

    Args:
        stage: the stage name (pretrain, train, evaluate).
        config: the run's configuration: its params section plus derived values (plain JSON types).
        main: the work; receives the Sacred run and returns a small JSON-able result.
        runs_dir: root folder of the file observer.
    """
    from sacred import Experiment
    from sacred.observers import FileStorageObserver
    from sacred.utils import apply_backspaces_and_linefeeds

    ex = Experiment(f"clipflux.{stage}", save_git_info=False)
    ex.captured_out_filter = apply_backspaces_and_linefeeds
    ex.observers.append(FileStorageObserver(str(Path(runs_dir) / stage)))
    ex.add_config(config)
    result: dict[str, T] = {}

    @ex.main
    def _main(_run):
        result["value"] = main(_run)

    ex.run(options={"--capture": "sys"})
    return result["value"]


def configure_torch(threads: int) -> None:
    """Fix the thread count and demand deterministic algorithms (part of the recorded environment)."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
