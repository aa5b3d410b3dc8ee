"""Bring runs that only the file observer holds (MongoDB was down) into MongoDB, without duplicating any.

A run is identified across both stores by `meta.clipflux_uid`. For every run folder `runs/<stage>/<id>/`:
a run already in the database with the same status, info, result and metric values is left alone; a run
missing or partial there (the server died mid-run) is written whole from the local copy, under the
database id it already had or a new one. Running the upload again changes nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipflux.tracking.resume import bury_dead_folder
from clipflux.tracking.store import redact

STALE_AFTER_S = 300  # a RUNNING local run without a heartbeat for this long is taken as dead, and uploaded


@dataclass
class LocalRun:
    """One run folder of the file observer."""

    folder: Path
    run: dict[str, Any]
    config: dict[str, Any]
    info: dict[str, Any]
    metrics: dict[str, dict[str, list]]
    captured_out: str

    @classmethod
    def load(cls, folder: Path) -> "LocalRun":
        def read(name: str, default: Any) -> Any:
            path = folder / name
            return json.loads(path.read_text()) if path.exists() else default

        cout = folder / "cout.txt"
        return cls(folder, read("run.json", {}), read("config.json", {}), read("info.json", {}),
                   read("metrics.json", {}), redact(cout.read_text(errors="replace")) if cout.exists() else "")

    @property
    def uid(self) -> str:
        """The run's clipflux uid; runs recorded before uids existed get one derived from what they hold."""
        meta = self.run.get("meta", {})
        if meta.get("clipflux_uid"):
            return meta["clipflux_uid"]
        key = f"{self.run.get('experiment', {}).get('name')}|{self.run.get('start_time')}|{self.run.get('host', {}).get('hostname')}"
        return "local-" + hashlib.sha256(key.encode()).hexdigest()[:32]

    def still_running(self, now: dt.datetime) -> bool:
        beat = self.run.get("heartbeat") or self.run.get("start_time")
        return self.run.get("status") == "RUNNING" and bool(beat) and \
            (now - dt.datetime.fromisoformat(beat)).total_seconds() < STALE_AFTER_S


def local_runs(runs_dir: Path) -> list[LocalRun]:
    """Every run folder under `runs_dir/<stage>/<id>/`, in stage and id order."""
    folders = [p.parent for p in runs_dir.glob("*/*/run.json") if p.parent.name.isdigit()]
    return [LocalRun.load(f) for f in sorted(folders, key=lambda f: (f.parent.name, int(f.name)))]


def _time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


# What clipflux marks on a run after it ran (`tracking.resume`): kept in both stores alike.
MARKS = ("resumed_by", "died", "replaced_by")


def _without_metric_ids(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k != "metrics"}


def in_sync(db: Any, doc: dict[str, Any], local: LocalRun) -> bool:
    """Whether the database already holds everything the local copy holds."""
    if any(doc.get(key) != local.run.get(key) for key in ("status", "result", *MARKS)):
        return False
    if _without_metric_ids(doc.get("info") or {}) != _without_metric_ids(local.info):
        return False
    stored = {m["name"]: m for m in db.metrics.find({"run_id": doc["_id"]})}
    return set(stored) == set(local.metrics) and all(
        stored[n]["steps"] == m["steps"] and stored[n]["values"] == m["values"] for n, m in local.metrics.items())


def _gridfs_file(fs: Any, path: Path, filename: str, **extra: Any) -> Any:
    """Store `path` in GridFS under `filename` once (found again by its md5)."""
    data = path.read_bytes()
    md5 = hashlib.md5(data).hexdigest()
    found = fs.find_one({"filename": filename, "md5": md5})
    return found._id if found else fs.put(data, filename=filename, md5=md5, **extra)


def _claim_id(db: Any, uid: str) -> int:
    """A new run id, claimed with a placeholder document (safe against a concurrent observer or upload)."""
    import pymongo.errors

    while True:
        last = list(db.runs.find({}, {"_id": 1}).sort("_id", -1).limit(1))
        _id = last[0]["_id"] + 1 if last else 1
        try:
            db.runs.insert_one({"_id": _id, "status": "UPLOADING", "meta": {"clipflux_uid": uid}})
            return _id
        except pymongo.errors.DuplicateKeyError:
            continue


def _document(db: Any, fs: Any, local: LocalRun, _id: int) -> dict[str, Any]:
    """The run as Sacred's MongoObserver would have stored it, with its metrics written to `metrics`."""
    run = local.run
    db.metrics.delete_many({"run_id": _id})
    metric_ids = []
    for name, m in local.metrics.items():
        res = db.metrics.insert_one({"run_id": _id, "name": name, "steps": m["steps"], "values": m["values"],
                                     "timestamps": [_time(t) for t in m["timestamps"]]})
        metric_ids.append({"name": name, "id": str(res.inserted_id)})
    experiment = dict(run.get("experiment", {}))
    base_dir = experiment.get("base_dir", "")
    experiment["sources"] = [[name, _gridfs_file(fs, local.folder.parent / stored, os.path.join(base_dir, name))]
                             for name, stored in experiment.get("sources", [])]
    artifacts = [{"name": name, "file_id": _gridfs_file(fs, local.folder / name, f"artifact://runs/{_id}/{name}")}
                 for name in run.get("artifacts", []) if (local.folder / name).exists()]
    doc = {
        "_id": _id, "experiment": experiment, "format": "MongoObserver-0.7.0", "command": run.get("command"),
        "host": run.get("host", {}), "start_time": _time(run.get("start_time")), "config": local.config,
        "meta": {**run.get("meta", {}), "clipflux_uid": local.uid, "uploaded_from": str(local.folder)},
        "status": run.get("status"), "resources": run.get("resources", []), "artifacts": artifacts,
        "captured_out": local.captured_out, "info": {**local.info, "metrics": metric_ids},
        "heartbeat": _time(run.get("heartbeat")), "result": run.get("result"),
    }
    for key in ("stop_time", "fail_trace", *MARKS):
        if key in run:
            doc[key] = _time(run[key]) if key == "stop_time" else run[key]
    return doc


def upload(db: Any, runs_dir: Path, now: dt.datetime | None = None) -> list[tuple[LocalRun, int | None, str]]:
    """Upload every local run the database lacks or holds only in part.

    Args:
        db: the runs database (pymongo `Database`).
        runs_dir: the file observer's root (`runs/`).
        now: the current UTC time (to tell live runs from dead ones).

    Returns:
        (local run, database id, what happened) per run: "added", "completed", "in sync" or "still running".
    """
    import gridfs

    fs = gridfs.GridFS(db)
    now = now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    bury_dead_folder(runs_dir)  # a run of this host whose process died is INTERRUPTED, not "still running"
    report = []
    for local in local_runs(runs_dir):
        doc = db.runs.find_one({"meta.clipflux_uid": local.uid})
        if local.still_running(now):
            report.append((local, doc["_id"] if doc else None, "still running"))
            continue
        if doc is not None and doc.get("status") != "UPLOADING" and in_sync(db, doc, local):
            report.append((local, doc["_id"], "in sync"))
            continue
        _id = doc["_id"] if doc is not None else _claim_id(db, local.uid)
        db.runs.replace_one({"_id": _id}, _document(db, fs, local, _id), upsert=True)
        report.append((local, _id, "completed" if doc is not None else "added"))
    return report
