"""A resumed run in the tracking stores: it names the run it continues, and that run keeps only what came before.

Checkpoints hold no run identity (the same training writes the same bytes, so a replication shows in `git
diff` of dvc.lock as no change). A run that trains into a checkpoint folder records the folder in its
`meta.checkpoints`; the run it continues is the newest unfinished run of the same folder in the stores.

A run killed after its newest checkpoint may already have flushed metric entries past it (a heartbeat can do
that); the resumed run logs those steps again. So on resume the killed run's entries at or after the resume
step are dropped from every store, and the two runs together hold each step exactly once. The killed run is
marked INTERRUPTED with the id of the run that resumed it.
"""

from __future__ import annotations

import json
import os
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
    if not resumed_from or not resumed_from.get("run_uid"):
        return
    for observer in run.observers:
        truncate = getattr(observer, "truncate_run", None)
        if truncate:
            truncate(resumed_from["run_uid"], resumed_from["global_step"], run._id)


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
            and d["meta"].get("clipflux_uid") != own]
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
    docs = list(db.runs.find({"meta.checkpoints": checkpoints}, {"_id": 1, "meta": 1, "status": 1, "start_time": 1}))
    doc = _newest_unfinished(docs, checkpoints, own)
    return None if doc is None else {"id": doc["_id"], "uid": doc["meta"]["clipflux_uid"]}


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
