"""Sacred observers that never stop a run: a file observer that is always there, a MongoDB observer that steps
aside when the database is down, and the filter that keeps captured output bounded. Both observers store
nothing that holds the MongoDB credentials (see `store.redact`).

Sacred calls observers from two threads (its heartbeat timer, and the trainer's `flush` before each
checkpoint), so both observers serialise their events.
"""

from __future__ import annotations

import functools
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from sacred.observers import FileStorageObserver, MongoObserver
from sacred.utils import apply_backspaces_and_linefeeds

from clipflux.tracking.resume import (bury_dead_database, bury_dead_folder, predecessor_in_database,
                                      predecessor_in_folder, replaced_in_database, replaced_in_folder,
                                      truncate_database, truncate_folder)
from clipflux.tracking.store import Store, redact

MAX_OUTPUT_LINES = 2000
MAX_OUTPUT_CHARS = 200_000
DROPPED = f"[clipflux: earlier output dropped; a run keeps the last {MAX_OUTPUT_LINES} lines]\n"
EVENTS = ("started_event", "heartbeat_event", "log_metrics", "completed_event", "interrupted_event",
          "failed_event", "resource_event", "artifact_event")


def bounded_output(text: str) -> str:
    """Sacred's captured-output filter: progress bars collapsed, credentials redacted, only the tail kept.

    Sacred applies it to the whole output so far at every heartbeat, so the stored output never grows past
    MAX_OUTPUT_LINES lines or MAX_OUTPUT_CHARS characters however long the run.
    """
    text = redact(apply_backspaces_and_linefeeds(text))
    dropped = text.startswith(DROPPED)
    if dropped:
        text = text[len(DROPPED):]
    lines = text.splitlines(keepends=True)
    if len(lines) > MAX_OUTPUT_LINES:
        text, dropped = "".join(lines[-MAX_OUTPUT_LINES:]), True
    if len(text) > MAX_OUTPUT_CHARS:
        text, dropped = text[-MAX_OUTPUT_CHARS:], True
    return DROPPED + text if dropped else text


def scrub(value: Any) -> Any:
    """A copy of `value` with credentials redacted from every string in it (dict keys included)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub(v) for v in value)
    return value


def _serialised(cls: type) -> type:
    """Wrap every observer event of `cls` in the instance's `_guard` (a lock, and for MongoDB a fault catch),
    with credentials scrubbed from what it stores: config, info, result, fail trace."""
    for name in EVENTS:
        method = getattr(cls, name)

        @functools.wraps(method)
        def event(self, *args, _method=method, _name=name, **kwargs):
            if _name != "log_metrics":  # log_metrics records metric ids in Sacred's own `info`: keep that object
                args, kwargs = scrub(args), scrub(kwargs)
            return self._guard(_name, lambda: _method(self, *args, **kwargs))

        setattr(cls, name, event)
    return cls


@_serialised
class LocalFileObserver(FileStorageObserver):
    """Sacred's file observer into `runs/<stage>/<id>/`, which takes another id when the database's is taken."""

    def __init__(self, basedir: str | Path):
        super().__init__(str(basedir))
        self._lock = threading.Lock()

    def _guard(self, event: str, call: Callable[[], Any]) -> Any:
        with self._lock:
            return call()

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        if _id is not None and (Path(self.basedir) / str(_id)).exists():
            _id = None  # e.g. a fresh database numbering from 1 again beside older local runs
        return super().started_event(ex_info, command, host_info, start_time, config, meta_info, _id)

    def truncate_run(self, uid: str, below: int, resumed_by: Any) -> None:
        """Drop the entries at step >= `below` of the earlier run `uid` (see `tracking.resume`)."""
        with self._lock:
            truncate_folder(Path(self.basedir), uid, below, resumed_by)

    def find_predecessor(self, checkpoints: str, own: str | None) -> dict[str, Any] | None:
        """The newest unfinished run here that trained into `checkpoints` (see `tracking.resume`)."""
        with self._lock:
            return predecessor_in_folder(Path(self.basedir), checkpoints, own)

    def mark_replaced(self, stage: str, config_hash: str, own: str, by: Any) -> list[Any]:
        """Mark the earlier completed runs here of the same stage and configuration as replaced (`tracking.resume`)."""
        with self._lock:
            return replaced_in_folder(Path(self.basedir), stage, config_hash, own, by)

    def bury_dead(self) -> None:
        """Mark the runs of every stage (runs/<stage>/) whose process died as INTERRUPTED (`tracking.resume`)."""
        with self._lock:
            bury_dead_folder(Path(self.basedir).parent)


@_serialised
class ResilientMongoObserver(MongoObserver):
    """Sacred's MongoDB observer with short timeouts that, at the first failure, warns once and stands aside.

    The run goes on; the file observer still holds all of it, and `clipflux tracking upload` brings it into
    the database later. Unlike Sacred's own observer it never retries for minutes and never pickles a
    failed run to disk.
    """

    def __init__(self, store: Store, local_copy: Path):
        super().__init__(client=store.client(), db_name=store.db_name)
        self.store, self.local_copy = store, local_copy
        self.failure: str | None = None
        self._lock = threading.Lock()

    def __str__(self) -> str:
        return f"MongoDB {self.store}"

    def _guard(self, event: str, call: Callable[[], Any]) -> Any:
        with self._lock:
            if self.failure is not None:
                return None
            try:
                return call()
            except Exception as err:
                self.failure = redact(f"{type(err).__name__}: {err}")[:500]
                print(f"clipflux: MongoDB at {self.store} failed ({event}): {self.failure}\n"
                      f"clipflux: the run goes on and is kept in {self.local_copy}; once MongoDB is back, "
                      "`clipflux tracking upload` adds it to the database", file=sys.stderr)
                return None

    def truncate_run(self, uid: str, below: int, resumed_by: Any) -> None:
        """Drop the entries at step >= `below` of the earlier run `uid` (see `tracking.resume`)."""
        self._guard("truncate_run", lambda: truncate_database(self.runs.database, uid, below, resumed_by))

    def find_predecessor(self, checkpoints: str, own: str | None) -> dict[str, Any] | None:
        """The newest unfinished run in the database that trained into `checkpoints` (see `tracking.resume`)."""
        return self._guard("find_predecessor", lambda: predecessor_in_database(self.runs.database, checkpoints, own))

    def mark_replaced(self, stage: str, config_hash: str, own: str, by: Any) -> list[Any] | None:
        """Mark the earlier completed runs in the database of the same stage and configuration as replaced."""
        return self._guard("mark_replaced",
                           lambda: replaced_in_database(self.runs.database, stage, config_hash, own, by))

    def bury_dead(self) -> None:
        """Mark this host's runs in the database whose process died as INTERRUPTED (`tracking.resume`)."""
        self._guard("bury_dead", lambda: bury_dead_database(self.runs.database))

    def save(self) -> None:
        # Sacred's save() silently skips a heartbeat when the server is gone; raise so the guard notices.
        self.runs.update_one({"_id": self.run_entry["_id"]}, {"$set": self.run_entry})

    def final_save(self, attempts: int) -> None:
        self.runs.update_one({"_id": self.run_entry["_id"]}, {"$set": self.run_entry}, upsert=True)
