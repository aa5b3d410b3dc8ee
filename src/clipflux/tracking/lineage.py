"""Lineage of a run: the code commit, the DVC hashes of its inputs and outputs, the data manifests, the environment.

A stage run by DVC knows its address (`DVC_STAGE`, e.g. `train@finetune`); DVC's own API resolves that
stage's deps and outs and hashes them exactly as DVC writes them to `dvc.lock`, so a run's recorded
inputs can be matched against `dvc.lock` and against the outputs recorded by the runs upstream. The stages
upstream that are not Sacred runs (download, preprocess, build_stream) are taken from `dvc.lock` as it
stood when the run started. Keys that are paths are stored in lists (`{"path": ..., "md5": ...}`), since
MongoDB field names must not contain dots.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

SLURM_JOB = {  # what a run's lineage records of its Slurm job (`slurm_job`): Slurm's variable -> key
    "SLURM_JOB_ID": "job_id", "SLURM_ARRAY_JOB_ID": "array_job_id", "SLURM_JOB_NAME": "job_name",
    "SLURM_CLUSTER_NAME": "cluster", "SLURM_JOB_PARTITION": "partition", "SLURM_JOB_ACCOUNT": "account",
    "SLURM_JOB_NODELIST": "nodes", "SLURM_JOB_NUM_NODES": "num_nodes", "SLURM_CPUS_PER_TASK": "cpus_per_task",
    "SLURM_GPUS_PER_NODE": "gpus_per_node", "SLURM_RESTART_COUNT": "restarts", "SLURM_SUBMIT_HOST": "submit_host",
}
PACKAGES = ("torch", "torchvision", "open_clip_torch", "numpy", "webdataset", "sacred", "dvc", "pymongo", "clipflux")


def environment_info(threads: int) -> dict[str, Any]:
    """Where and with what a run ran: host, device, thread count, package versions."""
    import torch

    accelerators = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "device": "cpu",
        "accelerators": accelerators,
        "threads": threads,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "packages": {name: _version(name) for name in PACKAGES},
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_info(root: Path, products: set[str] = frozenset()) -> dict[str, Any]:
    """The commit checked out at `root` and whether the work tree differs from it.

    `dvc.lock` and the pipeline's outputs (`products`, e.g. a git-tracked metrics file that DVC removes before
    its stage runs) are left out of `dirty`: DVC rewrites them as stages run, and their hashes are recorded
    anyway. They are listed in `changed` like any other file.
    """
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=60)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return {"commit": None, "dirty": None, "note": "not a git work tree (or no commit yet)"}
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=normal").stdout.splitlines()]
    return {
        "commit": head.stdout.strip(),
        "branch": git("rev-parse", "--abbrev-ref", "HEAD").stdout.strip(),
        "dirty": any(path != "dvc.lock" and not _under(path, products) for path in changed),
        "changed": changed[:100],
        "changed_count": len(changed),
    }


def _under(path: str, folders: set[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


def seeds(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every `seed` in a nested config, keyed by its path (`train/seed`)."""
    found = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            found.update(seeds(value, path + "/"))
        elif key == "seed" or key.endswith("_seed"):
            found[path] = value
    return found


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"world.seed": 0} → {"world": {"seed": 0}} (dvc.lock params have dotted keys)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return nested


def read_lock(root: Path) -> dict[str, Any]:
    """The stages of `dvc.lock` ({} when there is none)."""
    path = root / "dvc.lock"
    if not path.exists():
        return {}
    # libyaml's loader when PyYAML has it: the same document, parsed 5x faster (0.15 s for the default lock)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return (yaml.load(path.read_text(), Loader=loader) or {}).get("stages", {})


def _entries(items: list[dict] | None) -> list[dict[str, Any]]:
    return [{"path": item["path"], "md5": item.get("md5")} for item in items or []]


def upstream_from_lock(lock: dict[str, Any], paths: list[str]) -> list[dict[str, Any]]:
    """The stages in `dvc.lock` that produced `paths`, and theirs in turn, nearest first.

    Each entry: {"stage", "deps": [{"path", "md5"}], "params": nested, "outs": [{"path", "md5"}]}.
    """
    producer = {out["path"]: name for name, entry in lock.items() for out in entry.get("outs", [])}
    seen, order, todo = set(), [], list(paths)
    while todo:
        name = producer.get(todo.pop(0))
        if name is None or name in seen:
            continue
        seen.add(name)
        entry = lock[name]
        params = {}
        for values in (entry.get("params") or {}).values():
            params.update(values)
        order.append({"stage": name, "deps": _entries(entry.get("deps")), "params": _nest(params),
                      "outs": _entries(entry.get("outs"))})
        todo += [dep["path"] for dep in entry.get("deps", [])]
    return order


def _stage(root: Path, address: str) -> Any:
    from dvc.repo import Repo

    repo = Repo(str(root))
    try:
        return repo.stage.collect(address)[0]
    finally:
        repo.close()


def _hashes(items: list[Any]) -> list[dict[str, Any]]:
    from dvc.dependency.param import ParamsDependency

    found = []
    for item in items:
        if isinstance(item, ParamsDependency):
            continue
        try:
            value = item.get_hash().value
        except Exception:  # a missing path: DVC itself would refuse to run the stage
            value = None
        found.append({"path": item.def_path, "md5": value})
    return found


def dvc_inputs(root: Path, address: str | None) -> dict[str, Any]:
    """The stage's deps hashed as DVC hashes them, and its upstream stages from `dvc.lock`."""
    if not address:
        return {"stage": None, "note": "not run by DVC (no DVC_STAGE): inputs not recorded"}
    stage = _stage(root, address)
    deps = _hashes(stage.deps)
    return {"stage": address, "deps": deps, "outs": [out.def_path for out in stage.outs],
            "upstream": upstream_from_lock(read_lock(root), [d["path"] for d in deps])}


def dvc_outputs(root: Path, address: str | None) -> list[dict[str, Any]]:
    """The stage's outs hashed as DVC will record them in `dvc.lock` (call after the stage wrote them)."""
    return _hashes(_stage(root, address).outs) if address else []


def manifests(root: Path, deps: list[dict[str, Any]]) -> dict[str, Any]:
    """For every dep folder holding `<dataset>/manifest.json`: each manifest's sha256 and its shards' sha256."""
    found = {}
    for dep in deps:
        folder = root / dep["path"]
        for manifest in sorted(folder.glob("*/manifest.json")) if folder.is_dir() else []:
            content = manifest.read_bytes()
            splits = json.loads(content).get("splits", {})
            found[manifest.parent.name] = {
                "manifest": str(manifest.relative_to(root)),
                "sha256": hashlib.sha256(content).hexdigest(),
                "shards": [{"file": shard["file"], "sha256": shard["sha256"]}
                           for split in splits.values() for shard in split.get("shards", [])],
            }
    return found


def collect(root: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The lineage of a run about to start at `root` with `config` (recorded as `info.lineage`)."""
    address = os.environ.get("DVC_STAGE")
    lineage: dict[str, Any] = {"seeds": seeds(config), "command": [Path(sys.argv[0]).name, *sys.argv[1:]]}
    try:
        lineage["dvc"] = dvc_inputs(root, address)
        lineage["data"] = manifests(root, lineage["dvc"].get("deps", []))
    except Exception as err:  # lineage must not stop training; the gap is recorded and shown
        lineage["dvc"] = {"stage": address, "error": f"{type(err).__name__}: {err}"}
        print(f"clipflux: could not record the DVC inputs of {address}: {err}", file=sys.stderr)
    products = {out["path"] for entry in read_lock(root).values() for out in entry.get("outs", [])}
    lineage["git"] = git_info(root, products | set(lineage["dvc"].get("outs", [])))
    job = slurm_job()
    if job:  # run as a Slurm job (`launcher.kind: slurm`): which job, on which nodes, with what
        lineage["slurm"] = job
    return lineage


def slurm_job(env: dict[str, str] = os.environ) -> dict[str, str] | None:
    """The Slurm job this process runs in (id, nodes, resources, restarts), or None outside Slurm."""
    if "SLURM_JOB_ID" not in env:
        return None
    return {key: env[var] for var, key in SLURM_JOB.items() if var in env}
