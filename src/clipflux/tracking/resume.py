"""A resumed run in the tracking stores: it names the run it continues, and that run keeps only what came before.

Checkpoints hold no run identity (the same training writes the same bytes, so a replication shows in `git
diff` of dvc.lock as no change). A run that trains into a checkpoint folder records the folder in its
`meta.checkpoints`; the run it continues is the newest unfinished run of the same folder in the stores.

A run killed after its newest checkpoint may already have flushed metric entries past it (a heartbeat can do
that); the resumed run logs those steps again. So on resume the killed run's entries at or after the resume
step are dropped from every store, and the two runs together hold each step exactly once. The killed run is
marked INTERRUPTED with the id of the run that resumed it. A run that starts afresh in a folder whose last run
died before its first checkpoint supersedes that run: all of the dead run's entries are dropped.

A stage run again with the same configuration (DVC reruns it when its code changed, or when the machine died
after the stage finished but before DVC recorded it) makes the outputs the earlier run made: the new run
`replaces` the earlier COMPLETED runs of the same stage and configuration (`meta.config_sha256`), which keep
their record and get `replaced_by`. The current runs, those not replaced, hold each step exactly once.

A run whose process died (SIGKILL, a lost machine) cannot say so itself. Every run records its host, pid and
the pid's start time (`process_identity`); the next run that starts, and `clipflux tracking upload`, mark the
RUNNING runs of this host whose process is gone as INTERRUPTED with `died` set (`bury_dead_*`), so a killed run
never stays RUNNING. Runs of other hosts show as dead in Omniboard once their heartbeat stops.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

STATUS = "INTERRUPTED"


def continue_run(run: Any, resumed_from: dict[str, Any] | None, checkpoints: str | None = None) -> None:
    """Record `resumed_from` (from `Trainer.resume`) in the Sacred run `run`, and truncate the run it continues.

    Args:
        run: the running Sacred run (its observers are clipflux's file and MongoDB observers).
        resumed_from: None for a fresh start; else {"task", "step", "global_step"}, to which the run it
            continues is added as "run_id" and "run_uid" (None when no store knows it). Given with "run_uid"
            already, that run is the one continued.
        checkpoints: the checkpoint folder resumed from, as recorded in the runs' `meta.checkpoints`.
    """
    if resumed_from and "run_uid" not in resumed_from:
        origin = predecessor(run, checkpoints)
        resumed_from = {**resumed_from, "run_id": origin and origin["id"], "run_uid": origin and origin["uid"]}
    run.info["resumed_from"] = resumed_from
    if resumed_from is None:  # a fresh start supersedes the dead run that wrote no checkpoint to continue from
        origin = predecessor(run, checkpoints)
        if origin is None:
            return
        run.info["supersedes"] = origin["id"]
        uid, below = origin["uid"], 0
    elif resumed_from.get("run_uid"):
        uid, below = resumed_from["run_uid"], resumed_from["global_step"]
    else:
        return
    for observer in run.observers:
        truncate = getattr(observer, "truncate_run", None)
        if truncate:
            truncate(uid, below, run._id)


def predecessor(run: Any, checkpoints: str | None) -> dict[str, Any] | None:
    """The newest unfinished run (not `run`) that trained into `checkpoints`, as {"id", "uid"}, from the first
    store of `run` that knows one; None if none does."""
    if checkpoints is None:
        return None
    own = run.meta_info.get("clipflux_uid")
    for observer in run.observers:
        find = getattr(observer, "find_predecessor", None)
        found = find(checkpoints, own) if find else None
        if found:
            return found
    return None


def _newest_unfinished(docs: list[dict], checkpoints: str, own: str | None) -> dict | None:
    docs = [d for d in docs if d.get("meta", {}).get("checkpoints") == checkpoints and d.get("status") != "COMPLETED"
            and not d.get("resumed_by") and d["meta"].get("clipflux_uid") != own]  # not yet continued by another
    return max(docs, key=lambda d: str(d.get("start_time", "")), default=None)


def predecessor_in_folder(basedir: Path, checkpoints: str, own: str | None) -> dict[str, Any] | None:
    """`predecessor` among the file-observer runs under `basedir`."""
    docs = []
    for run_json in Path(basedir).glob("*/run.json"):
        try:
            docs.append(json.loads(run_json.read_text()) | {"_folder": run_json.parent.name})
        except (OSError, ValueError):
            continue
    doc = _newest_unfinished(docs, checkpoints, own)
    if doc is None:
        return None
    folder = doc["_folder"]
    return {"id": int(folder) if folder.isdigit() else folder, "uid": doc["meta"]["clipflux_uid"]}


def predecessor_in_database(db: Any, checkpoints: str, own: str | None) -> dict[str, Any] | None:
    """`predecessor` among the MongoDB runs."""
    docs = list(db.runs.find({"meta.checkpoints": checkpoints},
                             {"_id": 1, "meta": 1, "status": 1, "start_time": 1, "resumed_by": 1}))
    doc = _newest_unfinished(docs, checkpoints, own)
    return None if doc is None else {"id": doc["_id"], "uid": doc["meta"]["clipflux_uid"]}


def config_sha256(config: dict[str, Any]) -> str:
    """The hash of a run's configuration that tells runs of the same experiment apart (`meta.config_sha256`)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def replace_earlier(run: Any) -> list[Any]:
    """Mark the earlier COMPLETED runs of `run`'s stage and configuration as `replaced_by` it, in every store;
    records their ids in `run.info["replaces"]` (none: nothing recorded) and returns them."""
    meta = run.meta_info
    ids: list[Any] = []
    for observer in run.observers:
        mark = getattr(observer, "mark_replaced", None)
        found = mark(meta["stage"], meta["config_sha256"], meta["clipflux_uid"], run._id) if mark else None
        ids = ids or (found or [])
    if ids:
        run.info["replaces"] = ids
    return ids


def _earlier_same(doc: dict, stage: str, config_hash: str, own: str) -> bool:
    meta = doc.get("meta", {})
    return (meta.get("stage") == stage and meta.get("config_sha256") == config_hash and doc.get("status") == "COMPLETED"
            and not doc.get("replaced_by") and meta.get("clipflux_uid") != own)


def replaced_in_folder(basedir: Path, stage: str, config_hash: str, own: str, by: Any) -> list[Any]:
    """`replace_earlier` among the file-observer runs under `basedir`; returns their ids."""
    ids = []
    for run_json in sorted(Path(basedir).glob("*/run.json")):
        try:
            doc = json.loads(run_json.read_text())
        except (OSError, ValueError):
            continue
        if _earlier_same(doc, stage, config_hash, own):
            doc["replaced_by"] = by
            _write_json(run_json, doc)
            folder = run_json.parent.name
            ids.append(int(folder) if folder.isdigit() else folder)
    return ids


def replaced_in_database(db: Any, stage: str, config_hash: str, own: str, by: Any) -> list[Any]:
    """`replace_earlier` among the MongoDB runs; returns their ids."""
    docs = db.runs.find({"meta.stage": stage, "meta.config_sha256": config_hash, "status": "COMPLETED"},
                        {"_id": 1, "meta": 1, "status": 1, "replaced_by": 1})
    ids = [doc["_id"] for doc in docs if _earlier_same(doc, stage, config_hash, own)]
    if ids:
        db.runs.update_many({"_id": {"$in": ids}}, {"$set": {"replaced_by": by}})
    return ids


def kept(metric: dict[str, list], below: int) -> dict[str, list]:
    """A Sacred metric series ({"steps", "values", "timestamps"}) without the entries at step >= `below`."""
    keep = [i for i, step in enumerate(metric["steps"]) if step < below]
    return {**metric, **{key: [metric[key][i] for i in keep] for key in ("steps", "values", "timestamps")
                         if key in metric}}


def truncate_folder(basedir: Path, uid: str, below: int, resumed_by: Any) -> bool:
    """Truncate the file-observer run with `meta.clipflux_uid == uid` under `basedir`; False if there is none."""
    for run_json in Path(basedir).glob("*/run.json"):
        try:
            doc = json.loads(run_json.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("meta", {}).get("clipflux_uid") != uid:
            continue
        metrics_json = run_json.with_name("metrics.json")
        if metrics_json.exists():
            metrics = json.loads(metrics_json.read_text())
            _write_json(metrics_json, {name: kept(m, below) for name, m in metrics.items()})
        doc["status"], doc["resumed_by"] = STATUS, resumed_by
        _write_json(run_json, doc)
        return True
    return False


def truncate_database(db: Any, uid: str, below: int, resumed_by: Any) -> bool:
    """Truncate the MongoDB run with `meta.clipflux_uid == uid` (Sacred's `runs` and `metrics` collections)."""
    doc = db.runs.find_one({"meta.clipflux_uid": uid}, {"_id": 1})
    if doc is None:
        return False
    for metric in db.metrics.find({"run_id": doc["_id"]}):
        trimmed = kept(metric, below)
        db.metrics.update_one({"_id": metric["_id"]}, {"$set": {k: trimmed[k] for k in ("steps", "values", "timestamps")
                                                                if k in trimmed}})
    db.runs.update_one({"_id": doc["_id"]}, {"$set": {"status": STATUS, "resumed_by": resumed_by}})
    return True


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def process_identity(pid: int | None = None) -> dict[str, Any]:
    """{"host", "pid", "pid_start", "boot_id"}: what tells, later, whether the process `pid` (default: this one)
    still runs (a pid is reused; its start time since boot, within one boot, is not)."""
    pid = os.getpid() if pid is None else pid
    identity: dict[str, Any] = {"host": socket.gethostname(), "pid": pid, "pid_start": None, "boot_id": None}
    try:
        identity["pid_start"] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        identity["boot_id"] = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except (OSError, IndexError, ValueError):
        pass
    return identity


def is_dead(meta: dict[str, Any]) -> bool:
    """Whether the process a run's `meta` names is known to be gone: it ran on this host and no process with its
    pid and start time is running (a run without a recorded process, or of another host, is not known dead)."""
    if meta.get("host") != socket.gethostname() or not meta.get("pid"):
        return False
    now = process_identity(meta["pid"])
    if meta.get("boot_id") and now["boot_id"] and meta["boot_id"] != now["boot_id"]:
        return True  # the machine rebooted since
    if now["pid_start"] is None:
        return True  # no such process
    if Path(f"/proc/{meta['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
        return True  # a zombie: finished, not yet reaped
    return meta.get("pid_start") is not None and now["pid_start"] != meta["pid_start"]


def bury_dead_folder(runs_root: Path) -> list[Path]:
    """Mark every RUNNING file-observer run under `runs_root` (runs/<stage>/<id>/) whose process is dead as
    INTERRUPTED with `died`; returns their folders."""
    buried = []
    for run_json in Path(runs_root).glob("*/*/run.json"):
        try:
            doc = json.loads(run_json.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("status") == "RUNNING" and is_dead(doc.get("meta", {})):
            doc["status"], doc["died"] = STATUS, "its process was gone (killed)"
            _write_json(run_json, doc)
            buried.append(run_json.parent)
    return buried


def bury_dead_database(db: Any) -> list[Any]:
    """`bury_dead_folder` for the MongoDB runs of this host; returns their ids."""
    buried = []
    for doc in db.runs.find({"status": "RUNNING", "meta.host": socket.gethostname()}, {"_id": 1, "meta": 1}):
        if is_dead(doc.get("meta", {})):
            db.runs.update_one({"_id": doc["_id"], "status": "RUNNING"},
                               {"$set": {"status": STATUS, "died": "its process was gone (killed)"}})
            buried.append(doc["_id"])
    return buried

