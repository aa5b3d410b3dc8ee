"""`run_tracked`: one pretrain / train / evaluate run as a Sacred run, observed into files and MongoDB."""

from __future__ import annotations

import os
import sys
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, TypeVar

from clipflux.tracking import lineage
from clipflux.tracking.resume import config_sha256, continue_run, process_identity, replace_earlier
from clipflux.tracking.store import StoreError, project_root, redact

T = TypeVar("T")
RUNS_DIR = Path("runs")


def _mongo_observer(stack: ExitStack, root: Path, local_copy: Path) -> Any:
    """The MongoDB observer for this run (its store held open by `stack`), or None when MongoDB is turned off
    or the embedded server cannot be started."""
    from clipflux.tracking.observers import ResilientMongoObserver
    from clipflux.tracking.server import open_store

    try:
        store = stack.enter_context(open_store(root))
    except StoreError as err:
        print(f"clipflux: runs are recorded in {local_copy} only: {redact(str(err))}", file=sys.stderr)
        return None
    return ResilientMongoObserver(store, local_copy) if store else None


def global_seed(config: dict[str, Any]) -> int:
    """The seed Sacred gives `random`, NumPy and torch at the start of a run: the config's own seed.

    Sacred seeds the global generators of every run, with a random seed unless the config has a top-level
    `seed`; pinning it to the stage's seed keeps "same params, same results" for any code that draws from a
    global generator (the trainer restores its own generator states on resume).
    """
    if isinstance(config.get("seed"), int):
        return config["seed"]
    found = [value for _, value in sorted(lineage.seeds(config).items()) if isinstance(value, int)]
    return found[0] if found else 0


class Run:
    """What a stage's work sees of its tracked run: clipflux's interface, with Sacred kept inside this module.

    On ranks other than 0 of a torchrun job (no Sacred run) it records nothing.

    Attributes:
        info: the run's `info` (shown in Omniboard); a plain dict on untracked ranks.
    """

    def __init__(self, sacred_run: Any = None, checkpoints: str | None = None):
        self._run, self._checkpoints = sacred_run, checkpoints
        self.info: dict[str, Any] = sacred_run.info if sacred_run is not None else {}

    @property
    def id(self) -> Any:
        """The run's id in the stores (None when untracked)."""
        return self._run._id if self._run is not None else None

    @property
    def uid(self) -> str | None:
        """The run's `meta.clipflux_uid`, the same in every store (None when untracked)."""
        return self._run.meta_info["clipflux_uid"] if self._run is not None else None

    def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
        """Log one metric value at `step` (rank 0 logs the job's metrics)."""
        if self._run is not None:
            self._run.log_scalar(name, value, step)

    def flush(self) -> None:
        """Make every metric logged so far durable in the stores (called before each checkpoint)."""
        if self._run is not None:
            self._run._emit_heartbeat()  # Sacred's own flush to its observers

    def continues(self, resumed_from: dict[str, Any] | None) -> None:
        """Record where training resumed (None: a fresh start), naming and truncating the run it continues."""
        if self._run is not None:
            continue_run(self._run, resumed_from, self._checkpoints)


def run_name(stage: str, experiment: str | None = None, seed_index: int = 0, seeds: int = 1) -> str:
    """What a run is called in Omniboard and `clipflux compare`: stage, experiment, and the seed when the study
    has several ("train finetune", "evaluate lora seed 2", "pretrain")."""
    return " ".join([stage, *([experiment] if experiment else []), *([f"seed {seed_index}"] if seeds > 1 else [])])


def run_tracked(stage: str, config: dict[str, Any], main: Callable[[Run], T], runs_dir: str | Path = RUNS_DIR,
                primary: bool = True, checkpoints: str | Path | None = None, name: str | None = None) -> T:
    """Run `main(run)` as a Sacred run named `name` (the stage's stage when None).

    The run is observed into `runs_dir/<stage>/<id>/` always, and into MongoDB (CLIPFLUX_MONGO_URL, else the
    embedded server) when it answers; a database that is down or dies mid-run never stops the work. The run's
    `info.lineage` holds the git commit, the DVC hashes of the stage's inputs (and, once `main` returned, of
    its outputs), the data manifests and the seeds; `meta.clipflux_uid` identifies it across both stores.

    Args:
        stage: the stage name (pretrain, train, evaluate).
        config: the run's configuration: its params section plus derived values (plain JSON types).
        main: the work; receives the `Run` (for `log_scalar`, `info`, `flush`, `continues`) and returns a small
            JSON-able result.
        runs_dir: root folder of the file observer.
        primary: False on ranks other than 0 of a torchrun job: `main` then gets a `Run` that records nothing,
            after the global generators are seeded as Sacred seeds them on rank 0.
        checkpoints: the checkpoint folder the run trains into (`meta.checkpoints`): how a resumed run finds
            the run it continues (`tracking.resume`).
        name: the run's name (Sacred's experiment name; `run_name`), else the stage's.
    """
    checkpoints = None if checkpoints is None else str(checkpoints)
    if not primary:
        from sacred.randomness import set_global_seed

        set_global_seed(global_seed(config))
        return main(Run())
    from sacred import Experiment

    from clipflux.tracking.observers import LocalFileObserver, bounded_output

    root = project_root()
    local_copy = Path(runs_dir) / stage
    ex = Experiment(name or stage, save_git_info=False, base_dir=str(root))
    script = Path(sys.argv[0]).resolve()
    if script.suffix == ".py" and script.is_relative_to(root):
        ex.add_source_file(str(script))  # the stage script, shown among the run's sources
    ex.captured_out_filter = bounded_output
    ex.observers.append(LocalFileObserver(local_copy))
    ex.add_config({**config, "seed": global_seed(config)})  # Sacred's own key, see global_seed
    address = os.environ.get("DVC_STAGE")
    info = {"lineage": lineage.collect(root, config)}
    result: dict[str, T] = {}

    @ex.main
    def _main(_run):
        for observer in _run.observers:  # runs of this host whose process died show as such (tracking.resume)
            bury = getattr(observer, "bury_dead", None)
            if bury:
                bury()
        replace_earlier(_run)  # the same stage and configuration run again: its earlier runs are history
        result["value"] = main(Run(_run, checkpoints))
        try:
            _run.info["lineage"]["outputs"] = lineage.dvc_outputs(root, address)
        except Exception as err:  # the work is done; a missing record must not fail it
            _run.info["lineage"]["outputs_error"] = f"{type(err).__name__}: {err}"
        return result["value"]  # Sacred's `result` of the run (e.g. the final A_KA / A_ZS / GM)

    with ExitStack() as stack:
        mongo = _mongo_observer(stack, root, local_copy)
        if mongo is not None:
            ex.observers.append(mongo)
        run = ex.run(options={"--capture": "sys"}, info=info,
                     meta_info={"clipflux_uid": uuid.uuid4().hex, "stage": stage, "dvc_stage": address,
                                "checkpoints": checkpoints, "config_sha256": config_sha256(config),
                                **process_identity()})
    if mongo is not None and mongo.failure:
        print(f"clipflux: run {run._id} is in {local_copy} but not (fully) in MongoDB: "
              "run `clipflux tracking upload` once MongoDB is back", file=sys.stderr)
    return result["value"]


def configure_torch(threads: int) -> None:
    """Fix the thread count and demand deterministic algorithms (part of the recorded environment)."""
    import torch

    # cuBLAS is deterministic only with a fixed workspace, set before CUDA starts (no effect on the CPU).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
