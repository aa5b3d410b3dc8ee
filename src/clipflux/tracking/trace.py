"""`clipflux lineage`: from a run, or a file in `reports/`, back to the commit, parameters and data behind it.

The walk follows recorded hashes only: a run's inputs lead to the runs that wrote exactly those bytes, and
inputs no tracked run wrote (shards, streams, raw data) to the stages in `dvc.lock` that produced them,
down to the raw data.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from clipflux.tracking.lineage import read_lock, upstream_from_lock
from clipflux.tracking.query import get_run, producers, stage_of

MAX_DEPTH = 6


def md5_file(path: Path) -> str:
    """DVC 3's hash of a file: the md5 of its bytes."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_for_file(db: Any, root: Path, path: str) -> dict[str, Any] | None:
    """The completed run whose recorded outputs hold `path` with its current content, if any."""
    target = root / path
    if target.is_file():
        md5 = md5_file(target)
    else:
        outs = {o["path"]: o.get("md5") for entry in read_lock(root).values() for o in entry.get("outs", [])}
        md5 = outs.get(path)
    if md5 is None:
        return None
    found = list(db.runs.find({"info.lineage.outputs": {"$elemMatch": {"path": path, "md5": md5}},
                               "status": "COMPLETED"}).sort("_id", -1).limit(1))
    return found[0] if found else None


def _lock_producer(lock: dict[str, Any], path: str) -> dict[str, Any] | None:
    chain = upstream_from_lock(lock, [path])
    return chain[0] if chain else None


def run_lineage(db: Any, doc: dict[str, Any], lock: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """The lineage tree of a run document (see module docstring)."""
    info = doc.get("info") or {}
    recorded = info.get("lineage") or {}
    git = recorded.get("git", {})
    node = {"run": doc["_id"], "stage": stage_of(doc), "status": doc.get("status"),
            "commit": git.get("commit"), "dirty": git.get("dirty"),
            "config": {k: v for k, v in doc.get("config", {}).items() if k not in ("datasets", "skipped")},
            "inputs": (recorded.get("dvc") or {}).get("deps", []), "outputs": recorded.get("outputs", []),
            "data": {name: m.get("sha256") for name, m in (recorded.get("data") or {}).items()},
            "environment": {k: (info.get("environment") or {}).get(k) for k in ("host", "device", "threads")},
            "slurm": recorded.get("slurm"), "upstream": []}
    made_by = {dep["path"]: run for dep, run in producers(db, doc)}
    upstream_lock = {s["stage"]: s for s in (recorded.get("dvc") or {}).get("upstream", [])}
    for dep in node["inputs"]:
        if dep["path"].startswith(("src/", "stages/", "configs/")):
            continue  # code: pinned by the commit
        entry: dict[str, Any] = {"path": dep["path"], "md5": dep["md5"]}
        if dep["path"] in made_by and depth < MAX_DEPTH:
            entry["run"] = run_lineage(db, made_by[dep["path"]], lock, depth + 1)
        else:
            stage = _producer_in(upstream_lock, dep["path"]) or _lock_producer(lock, dep["path"])
            if stage:
                entry["stage"] = _stage_chain(stage, upstream_lock or lock_entries(lock))
        node["upstream"].append(entry)
    return node


def lock_entries(lock: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """dvc.lock's stages in the recorded-upstream format, by name."""
    return {s["stage"]: s for s in upstream_from_lock(lock, [o["path"] for e in lock.values() for o in e.get("outs", [])])}


def _producer_in(stages: dict[str, dict[str, Any]], path: str) -> dict[str, Any] | None:
    for stage in stages.values():
        if any(out["path"] == path for out in stage["outs"]):
            return stage
    return None


def _stage_chain(stage: dict[str, Any], stages: dict[str, dict[str, Any]], depth: int = 0) -> dict[str, Any]:
    """A dvc.lock stage with, for each of its data deps, the stage that produced it (down to raw data)."""
    node = {"stage": stage["stage"], "params": stage["params"], "deps": []}
    for dep in stage["deps"]:
        if dep["path"].startswith(("src/", "stages/", "configs/")):
            continue
        entry: dict[str, Any] = {"path": dep["path"], "md5": dep["md5"]}
        producer = _producer_in(stages, dep["path"])
        if producer and depth < MAX_DEPTH:
            entry["stage"] = _stage_chain(producer, stages, depth + 1)
        node["deps"].append(entry)
    return node


def lineage_of(db: Any, root: Path, target: str) -> dict[str, Any]:
    """The lineage tree of run `target` (an id) or of the file `target` (a path under the project)."""
    lock = read_lock(root)
    if target.isdigit():
        return run_lineage(db, get_run(db, int(target)), lock)
    path = str(Path(target).resolve().relative_to(root)) if Path(target).is_absolute() else target
    if not (root / path).exists():
        raise LookupError(f"{target}: neither a run id nor a file of the project")
    run = run_for_file(db, root, path)
    if run is not None:
        return {"file": path, "md5": md5_file(root / path) if (root / path).is_file() else None,
                "run": run_lineage(db, run, lock)}
    stage = _lock_producer(lock, path)
    if stage is None:
        raise LookupError(f"{path}: no tracked run wrote it as it is now, and no stage in dvc.lock outputs it "
                          "(is it a DVC output? run `dvc status`)")
    stages = lock_entries(lock)
    tree = {"file": path, "stage": _stage_chain(stage, stages), "inputs": []}
    for dep in stage["deps"]:  # e.g. reports/summary.md ← report ← reports/experiments ← evaluate runs
        run = run_for_file(db, root, dep["path"]) if (root / dep["path"]).is_file() else None
        if run is not None:
            tree["inputs"].append({"path": dep["path"], "run": run_lineage(db, run, lock)})
    return tree


def render(tree: dict[str, Any], indent: int = 0, seen: set | None = None) -> str:
    """The lineage tree as indented text, each artifact, run and stage once: a repeat says where it was shown."""
    seen = set() if seen is None else seen
    pad = "  " * indent
    lines = []
    if "file" in tree:
        lines.append(f"{pad}{tree['file']}" + (f"  md5 {tree['md5']}" if tree.get("md5") else ""))
        if "run" in tree:
            lines.append(render(tree["run"], indent + 1, seen))
        if "stage" in tree:
            lines.append(_render_stage(tree["stage"], indent + 1, seen))
        for item in tree.get("inputs", []):
            lines.append(f"{pad}  ← {item['path']}")
            lines.append(render(item["run"], indent + 2, seen))
        return "\n".join(lines)
    if ("run", tree["run"]) in seen:
        return f"{pad}run {tree['run']}  {tree['stage']}  (shown above)"
    seen.add(("run", tree["run"]))
    clean = {True: "dirty work tree", False: "clean", None: "unknown"}[tree["dirty"]]
    lines.append(f"{pad}run {tree['run']}  {tree['stage']}  {tree['status']}")
    lines.append(f"{pad}  code    commit {tree['commit']} ({clean})")
    lines.append(f"{pad}  params  {_flat(tree['config'])}")
    env = tree["environment"]
    lines.append(f"{pad}  ran on  {env.get('host')}, {env.get('device')}, {env.get('threads')} threads")
    job = tree.get("slurm")
    if job:  # launcher.kind: slurm (docs/cluster.md)
        lines.append(f"{pad}  job     Slurm job {job.get('job_id')} ({job.get('job_name')}) on {job.get('nodes')}: "
                     f"{job.get('num_nodes')} node(s), {job.get('cpus_per_task')} CPUs per node"
                     + (f", GPUs {job['gpus_per_node']} per node" if job.get("gpus_per_node") else "")
                     + f", requeued {job.get('restarts', '0')} time(s)")
    for out in tree["outputs"]:
        lines.append(f"{pad}  wrote   {out['path']}  md5 {out['md5']}")
    if tree["data"]:
        short = ", ".join(f"{name} {sha[:12]}" for name, sha in tree["data"].items())
        lines.append(f"{pad}  data    manifests (sha256, full in --json): {short}")
    for item in tree["upstream"]:
        lines.extend(_render_input(item, indent + 1, seen))
    return "\n".join(lines)


def _render_input(item: dict[str, Any], indent: int, seen: set) -> list[str]:
    """`← path md5` and, the first time that artifact appears, what made it."""
    pad = "  " * indent
    key = ("artifact", item["path"], item["md5"])
    if key in seen and ("run" in item or "stage" in item):
        return [f"{pad}← {item['path']}  md5 {item['md5']}  (shown above)"]
    seen.add(key)
    lines = [f"{pad}← {item['path']}  md5 {item['md5']}"]
    if "run" in item:
        lines.append(render(item["run"], indent + 1, seen))
    elif "stage" in item:
        lines.append(_render_stage(item["stage"], indent + 1, seen))
    return lines


def _render_stage(stage: dict[str, Any], indent: int, seen: set) -> str:
    pad = "  " * indent
    lines = [f"{pad}stage {stage['stage']} (dvc.lock)  params {_flat(stage['params']) or '-'}"]
    for dep in stage["deps"]:
        lines.extend(_render_input(dep, indent + 1, seen))
    return "\n".join(lines)


def statement(tree: dict[str, Any]) -> str:
    """One paragraph of provenance for a paper's appendix: the file, the runs and stages behind it, their code
    commits, seeds, data manifests and hardware, from the lineage tree."""
    runs, stages, data, hosts = {}, set(), {}, set()

    def walk(node: dict[str, Any]) -> None:
        if "file" in node:
            for child in [node.get("run"), node.get("stage")] + [i.get("run") for i in node.get("inputs", [])]:
                if child:
                    walk(child)
        elif "run" in node and "upstream" in node:
            runs[node["run"]] = node
            data.update(node["data"])
            env = node["environment"]
            hosts.add(f"{env.get('host')} ({env.get('device')}, {env.get('threads')} threads)")
            for item in node["upstream"]:
                walk(item.get("run") or item.get("stage") or {})
        elif "stage" in node and "deps" in node:
            stages.add(node["stage"])
            for dep in node["deps"]:
                if "stage" in dep:
                    walk(dep["stage"])

    walk(tree)
    commits = sorted({f"{r['commit']}{' (dirty)' if r['dirty'] else ''}" for r in runs.values() if r["commit"]})
    seeds = sorted({f"{r['stage']} seed {_seed(r['config'])}" for r in runs.values() if _seed(r["config"]) is not None})
    what = tree.get("file") or f"run {tree.get('run')}"
    ordered = [f"{r['stage']} (run {i})" for i, r in sorted(runs.items())]
    text = (f"{what} was produced by {len(runs)} tracked run(s) of clipflux: {', '.join(ordered) or 'none'}"
            f"{'; upstream DVC stages ' + ', '.join(sorted(stages)) if stages else ''}. "
            f"Code: commit {', '.join(commits) or 'unknown'}. ")
    if seeds:
        text += f"Seeds: {', '.join(seeds)}. "
    if data:
        text += "Data: " + ", ".join(f"{n} (manifest sha256 {sha[:12]})" for n, sha in sorted(data.items())) + ". "
    text += f"Hardware: {', '.join(sorted(hosts)) or 'unknown'}."
    return text


def _seed(config: dict[str, Any]) -> Any:
    for key in ("seed", "seed_index"):
        if key in config and not isinstance(config[key], dict):
            return config[key]
    for section in ("run", "train", "pretrain"):
        value = config.get(section)
        if isinstance(value, dict) and "seed" in value:
            return value["seed"]
    return None


def _flat(config: dict[str, Any], prefix: str = "") -> str:
    parts = []
    for key, value in config.items():
        if isinstance(value, dict):
            inner = _flat(value, f"{prefix}{key}.")
            if inner:
                parts.append(inner)
        else:
            parts.append(f"{prefix}{key}={value}")
    return " ".join(parts)
