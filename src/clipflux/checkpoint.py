"""Full-state checkpoints: written atomically, verified by sha256 on load, the last few kept; and the life of a
run's checkpoint folder (`Checkpoints`), in this one place.

A checkpoint is one `torch.save` file `ckpt-<task>-<step>.pt` plus `<file>.sha256`. Writing goes to a
temporary file that is fsynced and renamed, and the checksum is written last, so a checkpoint without a
matching checksum is never trusted: an interrupted write can never replace a good file with a broken one.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import shutil
import types
from pathlib import Path
from typing import Any

import torch

from clipflux import faults
from clipflux.errors import UserError

log = logging.getLogger(__name__)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be used (corrupt, or written with other parameters)."""


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        half = len(data) // 2
        f.write(data[:half])
        faults.reached("checkpoint-write")
        f.write(data[half:])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _replace(path: Path, write) -> None:
    """Write a file through `write(f)` into a temporary file that is fsynced and renamed: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _ValuePickler(pickle.Pickler):
    """A pickler without a memo: its bytes are a function of the values alone.

    The standard pickler writes an object seen before as a back-reference, so its bytes depend on which equal
    values are one object: a resumed run's state (keys, numpy dtypes, RNG tuples read back from a checkpoint) is
    equal to an uninterrupted run's but not shaped the same in memory, and would pickle differently. Tensors'
    storages are unaffected (torch writes each once, by its own bookkeeping); a state holds no cycles.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fast = True  # no memo (the C pickler's documented fast mode)


_VALUE_PICKLE = types.SimpleNamespace(__name__="pickle", Pickler=_ValuePickler)


def save(directory: str | Path, task: int, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write a checkpoint for position (task, step) and prune all but the newest `keep`. The same state gives the
    same bytes however it came about, so a resumed run's checkpoints (DVC caches the last) equal an uninterrupted
    run's."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer, pickle_module=_VALUE_PICKLE)
    data = buffer.getvalue()
    path = directory / f"ckpt-{task:04d}-{step:08d}.pt"
    _atomic_write(path, data)
    _atomic_write(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest().encode())
    prune(directory, keep)
    return path


def prune(directory: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (a finished run keeps one: DVC caches the folder).

    A checksum goes before its checkpoint, so a prune killed between the two leaves a checkpoint without a
    checksum, which loading skips and the next prune deletes; checksums whose checkpoint is gone (left by a prune
    killed before this order) are deleted too. So a folder ends the same however often its prunes were killed.
    """
    directory = Path(directory)
    for old in sorted(directory.glob("ckpt-*.pt"))[:-keep]:
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
        old.unlink()
    for digest in directory.glob("ckpt-*.pt.sha256"):
        if not digest.with_suffix("").exists():
            digest.unlink()


def newest_task(directory: str | Path) -> int | None:
    """The task position of the newest checkpoint in `directory` (from its name), or None when there is none."""
    names = sorted(Path(directory).glob("ckpt-*.pt"))
    return int(names[-1].name.split("-")[1]) if names else None


def load_latest(directory: str | Path) -> dict[str, Any] | None:
    """The newest checkpoint whose bytes match its checksum, or None when there is none.

    Corrupt or unfinished checkpoints are reported and skipped in favour of the previous valid one.
    """
    for path in sorted(Path(directory).glob("ckpt-*.pt"), reverse=True):
        digest_file = path.with_name(path.name + ".sha256")
        data = path.read_bytes()
        if not digest_file.exists():
            log.warning("checkpoint %s has no checksum (interrupted write?): skipped", path)
            continue
        if hashlib.sha256(data).hexdigest() != digest_file.read_text().strip():
            log.warning("checkpoint %s does not match its sha256 (corrupt): skipped", path)
            continue
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    return None


START_OVER_ENV = "CLIPFLUX_START_OVER"


def start_over_requested() -> bool:
    """Whether the user asked to discard checkpoints instead of resuming (`CLIPFLUX_START_OVER=1`)."""
    return os.environ.get(START_OVER_ENV, "") not in ("", "0")


def clear(directory: str | Path) -> None:
    """Remove a checkpoint folder and everything in it (starting over)."""
    if Path(directory).exists():
        shutil.rmtree(directory)


class Checkpoints:
    """A run's checkpoint folder through its life; every decision about what the folder holds is made here.

    1. `begin` (before training): discard the folder when asked to start over, or when it holds a finished run:
       a finished run's weights were handed over to its outputs, which DVC removes before it reruns a stage, so
       a rerun of a finished run trains again from the start.
    2. `resumable` (the trainer): the newest valid checkpoint to continue from.
    3. `save` (the trainer): a checkpoint every `checkpoint_every` steps and at each task's end, the newest `keep`
       kept; `weights_of`: where the weights to evaluate after each task are kept, beside the checkpoints
       (`eval/task_<NNN>.pt`), so that a resumed run still has every earlier task's.
    4. `finish` (after the last task): the kept weights copied to the run's outputs, then only the final
       state stays (DVC caches the folder: copies of the outputs would double it). Every step of it can be
       interrupted: until its last step retires the kept weights (one atomic rename), a rerun finds them and
       hands them over again; after it, the run is over and a rerun trains again (same outputs).

    Only rank 0 of a torchrun job calls `begin`, `save` and `finish`, holding the folder's lock
    (`processes.exclusive`).
    """

    def __init__(self, directory: str | Path, keep: int = 2):
        self.directory, self.keep = Path(directory), keep
        self.weights = self.directory / "eval"
        self._retired = self.directory / ".eval.retired"

    def begin(self, num_tasks: int, start_over: bool) -> None:
        """Prepare the folder for a run of `num_tasks` tasks (`start_over`: discard any checkpoint)."""
        shutil.rmtree(self._retired, ignore_errors=True)  # weights retired by a finish killed before it deleted them
        finished = (newest_task(self.directory) or 0) >= num_tasks
        if start_over or (finished and not self.weights.exists()):
            clear(self.directory)

    def resumable(self, num_tasks: int, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
        """The newest valid checkpoint, or None. A finished run written with other parameters is history, not
        something to resume: the folder is cleared. An unfinished one is returned as it is (the trainer refuses
        it with `check_fingerprint`, naming the differing parameters)."""
        state = load_latest(self.directory)
        if state and state["task"] >= num_tasks and state["fingerprint"] != fingerprint:
            clear(self.directory)
            return None
        return state

    def save(self, task: int, step: int, state: dict[str, Any]) -> Path:
        """Write the checkpoint of position (task, step), keeping the newest `keep`."""
        return save(self.directory, task, step, state, keep=self.keep)

    def weights_of(self, task: int) -> Path:
        """Where the weights evaluated after `task` (1-based; 0: the initial weights) are kept."""
        return self.weights / f"task_{task:03d}.pt"

    def finish(self, outputs: dict[Path, int], files: dict[Path, str] | None = None) -> None:
        """Hand the run over to its outputs: copy the kept weights of each task to its path (`outputs`:
        path -> task), write `files` (path -> text), then keep only the final checkpoint."""
        for path, text in (files or {}).items():
            _replace(path, lambda f, text=text: f.write(text.encode()))
            faults.reached("finish")
        for path, task in outputs.items():
            with open(self.weights_of(task), "rb") as source:
                _replace(path, lambda f, source=source: shutil.copyfileobj(source, f))
            faults.reached("finish")
        prune(self.directory, keep=1)
        faults.reached("finish")
        os.replace(self.weights, self._retired)  # the one step after which the run is over
        faults.reached("finish")
        shutil.rmtree(self._retired)


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Stop with the differing keys when a checkpoint was written with other parameters."""
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if keys:
        details = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in keys)
        raise CheckpointError(
            f"the checkpoint was written with other parameters ({details}). "
            "Restore them to resume, or delete the checkpoints folder to start over."
        )
