"""The cluster path on a real two-node Slurm cluster on 127.0.0.1 (tests/slurm_cluster.py starts it): a stage
run as a Slurm job writes what the local run writes; a two-node srun + torchrun job trains and resumes; a job
warned before its time limit checkpoints, requeues itself and finishes bit-identical; a sweep of four experiments
runs as concurrent jobs into one MongoDB and `dvc exp show`. A stop asked of a local run (no Slurm) is checked
first: it is what the Slurm warning becomes inside the job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from clipflux.config import load_params
from clipflux.data.pipeline import preprocess
from clipflux.data.world import generate_world
from clipflux.models import create_model, save_weights, state_sha256
from clipflux.stopping import REQUEUE_EXIT

import slurm_cluster
from conftest import REPO, TINY_WORLD, copy_repository

pytestmark = pytest.mark.slow  # daemons, jobs and torchrun: ./run.sh test-all

BIN = Path(sys.executable).parent
STEPS, TASKS, BATCH = 16, 2, 32
TINY = {
    "train": {"samples_per_task": STEPS * BATCH, "checkpoint_every": 8, "threads": 1,
              "optim": {"batch_size": BATCH, "warmup_steps": 1, "warmup_share": None}},
    "budget": {"measure": "samples"},
    "launcher": {"slurm": {"cpus_per_task": 1, "time": "0:10:00", "signal_seconds": 30}},
}


def _merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        base[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = slurm_cluster.available()
    if why:
        pytest.fail(f"the Slurm tests need Debian's slurm-wlm and munge, run as root (.ci/run installs them): {why}")
    started = slurm_cluster.Cluster(tmp_path_factory.mktemp("slurm")).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Tiny params (one finetune experiment), shards, a stream and a base model; no DVC: the launcher alone."""
    root = tmp_path_factory.mktemp("cluster-work")
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    params["world"] = _merge(params["world"], {k: getattr(TINY_WORLD, k) for k in ("scale", "shard_size")})
    params["streams"] = {"s": {"file": str(REPO / "streams/fif_random.json"), "num_tasks": TASKS}}
    params["experiments"] = {"finetune": {"method": "finetune", "stream": "s",
                                         "mixture": {"update": 1.0, "buffer": 0.0, "pretraining": 0.0}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    generate_world(TINY_WORLD, root / "raw", progress=False)
    preprocess(root / "raw", root / "shards", TINY_WORLD.shard_size)
    subprocess.run([sys.executable, str(REPO / "stages/build_stream.py"), "--name", "s", "--shards", "shards",
                    "--out", "stream.json"], cwd=root, check=True)
    torch.manual_seed(0)
    model, _ = create_model(load_params(root / "params.yaml").model)
    save_weights(model, root / "base.pt")
    return root


def _params(root: Path, **sections) -> None:
    params = _merge(yaml.safe_load((root / "params.yaml").read_text()), sections)
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def _env(cluster=None, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPFLUX_", "DVC_", "SLURM_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", TQDM_DISABLE="1", CLIPFLUX_MONGO_URL="off", **extra)
    if cluster is not None:
        env["SLURM_CONF"] = str(cluster.conf)
    return env


def _launch(root: Path, name: str, nproc: int = 1, env: dict | None = None, background: bool = False):
    cmd = [sys.executable, "-m", "clipflux.launch", str(nproc), str(REPO / "stages/train.py"), "--experiment",
           "finetune", "--shards", "shards", "--stream", "stream.json", "--base", "base.pt", "--out",
           f"{name}/models", "--checkpoints", f"{name}/checkpoints"]
    if background:
        return subprocess.Popen(cmd, cwd=root, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    return subprocess.run(cmd, cwd=root, env=env or _env(), capture_output=True, text=True, timeout=600)


def _weights(folder: Path) -> list[str]:
    found = sorted(folder.glob("seed_0/task_*.pt"))
    assert len(found) == TASKS, f"expected {TASKS} task weights in {folder}/seed_0, found {found}"
    return [state_sha256(torch.load(p, weights_only=True)) for p in found]


def _train_runs(root: Path) -> list[dict]:
    runs = []
    for run_dir in sorted((root / "runs/train").glob("[0-9]*"), key=lambda p: int(p.name)):
        runs.append({name: json.loads((run_dir / f"{name}.json").read_text()) for name in ("run", "info")
                     if (run_dir / f"{name}.json").exists()} | {"id": int(run_dir.name)})
    return runs


_references: dict[int, list[str]] = {}


def _reference(root: Path, nproc: int) -> list[str]:
    """The task weights of an uninterrupted local run on `nproc` ranks (torchrun --standalone for 2)."""
    if nproc not in _references:
        _params(root, launcher={"kind": "local"})
        done = _launch(root, f"local-{nproc}", nproc)
        assert done.returncode == 0, done.stderr[-3000:]
        _references[nproc] = _weights(root / f"local-{nproc}/models")
    return _references[nproc]


def test_a_local_run_asked_to_stop_checkpoints_exits_for_requeue_and_resumes_exactly(workspace):
    """A stop asked before the first step (the stop file exists): the run stops after step 1 (off the checkpoint
    grid of 8), with status REQUEUE_EXIT; run again, it resumes there to the uninterrupted run's weights."""
    reference = _reference(workspace, 1)
    stop = workspace / "stop-now"
    stop.touch()
    stopped = _launch(workspace, "stopped", env=_env(CLIPFLUX_STOP_FILE=str(stop)))
    assert stopped.returncode == REQUEUE_EXIT, stopped.stderr[-3000:]
    assert "stopped on request at task 0, step 1" in stopped.stderr
    assert sorted(p.name for p in (workspace / "stopped/checkpoints/seed_0").glob("*.pt")) == ["ckpt-0000-00000001.pt"]
    resumed = _launch(workspace, "stopped")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _weights(workspace / "stopped/models") == reference
    interrupted, continued = _train_runs(workspace)[-2:]
    assert interrupted["run"]["status"] == "INTERRUPTED"
    assert continued["info"]["resumed_from"]["step"] == 1
    assert str(continued["info"]["resumed_from"]["run_id"]) == str(interrupted["id"])


def test_a_train_stage_run_as_a_slurm_job_writes_the_local_runs_weights(cluster, workspace):
    reference = _reference(workspace, 1)
    _params(workspace, launcher={"kind": "slurm"})
    done = _launch(workspace, "slurm-1", env=_env(cluster))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "runs as Slurm job" in done.stdout and "train finetune (seed 0)" in done.stdout  # the job's log, here
    assert _weights(workspace / "slurm-1/models") == reference
    slurm = _train_runs(workspace)[-1]["info"]["lineage"]["slurm"]
    job = next(j for j in cluster.jobs() if j["JobId"] == slurm["job_id"])
    assert job["JobName"] == slurm["job_name"] == "clipflux-train-finetune" and job["JobState"] == "COMPLETED"
    assert slurm["num_nodes"] == "1" and slurm["nodes"] in ("n1", "n2") and slurm["cpus_per_task"] == "1"


def test_a_two_node_job_trains_through_srun_and_torchrun_and_resumes_after_a_kill(cluster, workspace):
    """Two nodes x one rank: the same world as two local ranks, so the same weights; each rank is SIGKILLed at its
    13th step (a lost node), the job fails, and the rerun resumes from the checkpoint at step 8."""
    reference = _reference(workspace, 2)
    _params(workspace, launcher={"kind": "slurm", "slurm": {"nodes": 2}})
    killed = _launch(workspace, "two-nodes", env=_env(cluster, CLIPFLUX_FAULT="step@13"))
    assert killed.returncode != 0, killed.stdout[-3000:]
    assert sorted(p.name for p in (workspace / "two-nodes/checkpoints/seed_0").glob("*.pt"))[-1] == \
        "ckpt-0000-00000008.pt"
    resumed = _launch(workspace, "two-nodes", env=_env(cluster))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert _weights(workspace / "two-nodes/models") == reference
    run = _train_runs(workspace)[-1]
    assert run["info"]["resumed_from"]["step"] == 8
    assert run["info"]["lineage"]["slurm"]["num_nodes"] == "2" and run["info"]["lineage"]["slurm"]["nodes"] == "n[1-2]"


def test_a_job_warned_before_its_time_limit_requeues_and_finishes_bit_identical(cluster, workspace):
    """Slurm's warning (`--signal=B:USR1@30`, sent here as Slurm sends it, to the batch shell) lands mid-task:
    the stage checkpoints after its step, the job requeues itself, and the requeued job finishes the one run."""
    reference = _reference(workspace, 1)
    _params(workspace, launcher={"kind": "slurm", "slurm": {"nodes": 1}})
    launcher = _launch(workspace, "warned", env=_env(cluster), background=True)
    folder = workspace / "warned/checkpoints/seed_0"
    deadline = time.monotonic() + 120
    while not list(folder.glob("ckpt-0000-00000008.pt")):  # mid-task 0: its first periodic checkpoint
        assert launcher.poll() is None and time.monotonic() < deadline, "the job ended before it was warned"
        time.sleep(0.05)
    job = next(j for j in cluster.jobs() if j["JobName"] == "clipflux-train-finetune" and j["JobState"] == "RUNNING")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job["JobId"]], env=_env(cluster), check=True)
    out, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, out[-3000:]
    assert "stop requested" in out and f"requeueing job {job['JobId']}" in out and "(restart 1)" in out
    assert _weights(workspace / "warned/models") == reference
    assert next(j for j in cluster.jobs() if j["JobId"] == job["JobId"])["Restarts"] == "1"
    interrupted, continued = _train_runs(workspace)[-2:]
    assert interrupted["run"]["status"] == "INTERRUPTED"
    assert str(continued["info"]["resumed_from"]["run_id"]) == str(interrupted["id"])
    assert continued["info"]["lineage"]["slurm"]["restarts"] == "1"


def test_a_sweep_of_four_experiments_runs_as_concurrent_jobs_into_mongodb_and_dvc_exp_show(cluster,
                                                                                            tmp_path_factory):
    from test_pipeline import TINY as PIPELINE_TINY
    from test_tracking_pipeline import SMALLER

    root = copy_repository(tmp_path_factory.mktemp("sweep"))
    params = _merge(_merge(yaml.safe_load((root / "params.yaml").read_text()), PIPELINE_TINY), SMALLER)
    params["experiments"] = {"finetune": params["experiments"]["finetune"]}
    params["launcher"] = {"kind": "slurm", "slurm": {"cpus_per_task": 1, "time": "0:10:00"}}
    params["train"]["threads"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = _env(cluster)
    env.pop("CLIPFLUX_MONGO_URL")

    def run(*cmd: str) -> str:
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "clone"]):
        run(*cmd)
    run("clipflux", "mongo", "start")  # one lasting server for the whole sweep (docs/cluster.md)
    try:
        env["CLIPFLUX_MONGO_URL"] = next(w.rstrip("/") + "/" for w in run("clipflux", "mongo", "status").split()
                                         if w.startswith("mongodb://"))
        run("dvc", "repro", "evaluate_base")  # what the sweep shares, the base model's pretraining as a job too
        before = max((int(j["JobId"]) for j in cluster.jobs()), default=0)  # jobs of the tests before this one
        run("dvc", "exp", "run", "--queue", "-S", "train.seed=1,2,3,4", "evaluate@finetune")
        run("dvc", "queue", "start", "-j", "4")
        deadline = time.monotonic() + 900
        while True:  # until all four ended (right after `queue start` the status may list none yet)
            status = run("dvc", "queue", "status")
            if sum(" Success" in line or " Failed" in line for line in status.splitlines()) == 4:
                break
            assert time.monotonic() < deadline, status
            time.sleep(2)
        failed = [line.split()[1] for line in status.splitlines() if line.split()[-1:] == ["Failed"]]
        assert not failed, status + "\n".join(run("dvc", "queue", "logs", name)[-3000:] for name in failed)
        trains = [j for j in cluster.jobs() if j["JobName"] == "clipflux-train-finetune" and int(j["JobId"]) > before]
        assert len(trains) == 4 and all(j["JobState"] == "COMPLETED" for j in trains)
        starts, ends = sorted(j["StartTime"] for j in trains), sorted(j["EndTime"] for j in trains)
        assert starts[1] < ends[0], f"the sweep's jobs never ran side by side: {starts}, {ends}"
        rows = json.loads(run("dvc", "exp", "show", "--json"))
        exps = [e for row in rows for e in row.get("experiments") or []]
        seeds = sorted(e["revs"][0]["data"]["params"]["params.yaml"]["data"]["train"]["seed"] for e in exps)
        assert seeds == [1, 2, 3, 4]
        assert all(e["revs"][0]["data"]["metrics"] for e in exps)
        from pymongo import MongoClient

        db = MongoClient(env["CLIPFLUX_MONGO_URL"], serverSelectionTimeoutMS=10000)["clipflux"]
        trains = list(db.runs.find({"meta.stage": "train", "status": "COMPLETED"}))
        assert sorted(r["config"]["train"]["seed"] for r in trains) == [1, 2, 3, 4]
        assert len({r["info"]["lineage"]["slurm"]["job_id"] for r in trains}) == 4
        assert db.runs.count_documents({"meta.dvc_stage": "evaluate@finetune", "status": "COMPLETED"}) == 4
    finally:
        run("clipflux", "mongo", "stop")
