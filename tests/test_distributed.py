"""Data-parallel training under torchrun on the CPU (gloo): ranks share every batch out without overlap, the
global-batch loss is that of a single process, and a 2-process run killed with SIGKILL resumes bit-identically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st

from clipflux.config import MixtureConfig, load_params
from clipflux.data.loader import StepBatches
from clipflux.methods import REGISTRY
from clipflux.models import create_model, save_weights, state_sha256
from clipflux.replay import split_batch

from conftest import REPO

pytestmark = pytest.mark.slow  # torchrun with several processes: ./run.sh test-all

BATCH, STEPS, TASKS = 8, 4, 2


def _torchrun(nproc: int, script: Path, *args: str, cwd: Path = REPO,
              fault: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, TQDM_DISABLE="1", CLIPFLUX_MONGO_URL="off", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    env.pop("CLIPFLUX_FAULT", None)
    if fault:
        env["CLIPFLUX_FAULT"] = fault
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", str(script),
           *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@given(world_size=st.integers(1, 4), per_rank=st.integers(1, 5), buffer=st.integers(0, 30), pool=st.integers(0, 30),
       step=st.integers(0, 50))
def test_rank_slices_partition_each_batch(world_size, per_rank, buffer, pool, step):
    """Pure: the ranks' slices of a step's batch are disjoint positions that together are the whole batch."""
    batch = world_size * per_rank
    items = {name: np.stack([np.full(n, i), np.arange(n)], axis=1)
             for i, (name, n) in enumerate({"update": 13, "buffer": buffer, "pretraining": pool}.items())}
    counts = split_batch(batch, MixtureConfig(0.5, 0.25, 0.25), buffer, pool)
    whole = StepBatches([object()] * 3, items, counts, seed=1, task=0, steps=60, tokenizer=None, image_size=32)
    slices = [whole.shard(r, world_size).items(step)[r::world_size] for r in range(world_size)]
    assert all(len(s) == per_rank for s in slices)
    assert Counter(map(tuple, np.concatenate(slices).tolist())) == Counter(map(tuple, whole.items(step).tolist()))


def test_ranks_train_on_disjoint_slices_that_cover_every_batch(tiny_shards, tmp_path):
    """Two ranks see disjoint halves of every batch of every task (update, buffer and pretraining data), and
    learn what one process learns from the whole batches: the same losses up to float summation order."""
    records = {}
    for nproc in (1, 2):
        out = tmp_path / f"nproc{nproc}"
        proc = _torchrun(nproc, REPO / "tests/ddp_worker.py", "--shards", str(tiny_shards), "--out", str(out))
        assert proc.returncode == 0, proc.stderr[-3000:]
        records[nproc] = [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]

    single, (rank0, rank1) = records[1][0], records[2]
    assert len(single["seen"]) == len(rank0["seen"]) == len(rank1["seen"]) == STEPS * TASKS
    sources = set()
    for whole, a, b in zip(single["seen"], rank0["seen"], rank1["seen"]):
        assert (whole["task"], whole["step"]) == (a["task"], a["step"]) == (b["task"], b["step"])
        assert len(a["items"]) == len(b["items"]) == BATCH // 2
        assert Counter(map(tuple, a["items"])) + Counter(map(tuple, b["items"])) == Counter(map(tuple, whole["items"]))
        sources |= {dataset for dataset, _ in a["items"] + b["items"]}
    assert sources == {0, 1}  # the task's data and the pretraining pool (the buffer holds task 1's data)
    assert rank0["sha256"] == rank1["sha256"]  # both ranks end with the same weights
    np.testing.assert_allclose(rank0["losses"], single["losses"], rtol=1e-4)


METHODS = sorted(set(REGISTRY) - {"finetune"})


@pytest.fixture(scope="module")
def every_method(tiny_shards, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """Every method trained on two ranks in one launch (the processes start once, not once per method)."""
    out = tmp_path_factory.mktemp("methods")
    return out, _torchrun(2, REPO / "tests/ddp_worker.py", "--shards", str(tiny_shards), "--out", str(out),
                          "--method", *METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_on_two_ranks_that_stay_in_step(every_method, method):
    """Each registered method under DDP: its loss, task-boundary work and state keep both ranks' weights equal."""
    out, proc = every_method
    records = [out / method / f"rank{r}.json" for r in range(2)]
    assert all(r.exists() for r in records), f"{method} did not finish on both ranks:\n{proc.stderr[-3000:]}"
    rank0, rank1 = (json.loads(r.read_text()) for r in records)
    assert rank0["sha256"] == rank1["sha256"] and np.isfinite(rank0["losses"]).all()


@pytest.fixture(scope="module")
def workspace(tiny_shards, tmp_path_factory) -> Path:
    """Tiny params for 2 processes (one experiment with a replay and pretraining mixture), a stream, a base model."""
    root = tmp_path_factory.mktemp("ddp")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(samples_per_task=STEPS * BATCH, threads=1, workers=1, checkpoint_every=2, nproc=2)
    params["train"]["optim"].update(batch_size=BATCH, warmup_steps=1, warmup_share=None)
    params["streams"] = {"s": {"file": str(REPO / "streams/fif_random.json"), "num_tasks": TASKS}}
    params["experiments"] = {"replay": {"method": "finetune", "stream": "s",
                                        "mixture": {"update": 0.5, "buffer": 0.25, "pretraining": 0.25}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = dict(os.environ, TQDM_DISABLE="1")
    subprocess.run([sys.executable, str(REPO / "stages/build_stream.py"), "--name", "s", "--shards", str(tiny_shards),
                    "--out", "stream.json"], cwd=root, env=env, check=True, capture_output=True)
    torch.manual_seed(0)
    save_weights(create_model(load_params(root / "params.yaml").model)[0], root / "base.pt")
    return root


def _train(root: Path, shards: Path, name: str, fault: str | None = None) -> subprocess.CompletedProcess:
    return _torchrun(2, REPO / "stages/train.py", "--experiment", "replay", "--shards", str(shards),
                     "--stream", "stream.json", "--base", "base.pt", "--out", f"{name}/models",
                     "--checkpoints", f"{name}/checkpoints", cwd=root, fault=fault)


def _runs(root: Path) -> list[dict]:
    """The train stage's Sacred runs in the file store, oldest first: id, info, metric series."""
    runs = []
    for run_dir in sorted((root / "runs/train").glob("[0-9]*"), key=lambda p: int(p.name)):
        metrics = json.loads((run_dir / "metrics.json").read_text())
        series = {(name, step): value for name, m in metrics.items() for step, value in zip(m["steps"], m["values"])}
        runs.append({"id": run_dir.name, "info": json.loads((run_dir / "info.json").read_text()), "series": series})
    return runs


def _weights(folder: Path) -> list[str]:
    found = sorted(folder.glob("seed_0/task_*.pt"))
    assert found, f"no task weights in {folder}/seed_0"
    return [state_sha256(torch.load(p, weights_only=True)) for p in found]


@pytest.mark.parametrize("fault", ["step@5", "checkpoint-write@3"])
def test_killed_two_process_run_resumes_bit_identically(workspace, tiny_shards, fault):
    """The train stage under torchrun with 2 ranks, killed (every rank at a step, or rank 0 while it writes a
    checkpoint) and rerun: the same weights after every task and the same logged series as the run that was
    never interrupted; rank 0 alone records a Sacred run."""
    if not (workspace / "ref").exists():
        ref = _train(workspace, tiny_shards, "ref")
        assert ref.returncode == 0, ref.stderr[-3000:]
    reference = _runs(workspace)[0]
    assert reference["info"]["resumed_from"] is None

    name = f"kill-{fault.replace('@', '-')}"
    killed = _train(workspace, tiny_shards, name, fault=fault)
    assert killed.returncode != 0 and "Signal 9 (SIGKILL)" in killed.stderr, killed.stderr[-3000:]
    resumed = _train(workspace, tiny_shards, name)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    killed_run, resumed_run = _runs(workspace)[-2:]

    assert _weights(workspace / name / "models") == _weights(workspace / "ref/models")
    assert len(_weights(workspace / "ref/models")) == TASKS
    origin = resumed_run["info"]["resumed_from"]
    assert str(origin["run_id"]) == killed_run["id"] and origin["global_step"] > 0
    assert all(step < origin["global_step"] for _, step in killed_run["series"])  # each step once
    assert min(step for _, step in resumed_run["series"]) == origin["global_step"]
    assert killed_run["series"] | resumed_run["series"] == reference["series"]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def test_a_killed_launcher_takes_its_workers_along(workspace, tiny_shards):
    """torchrun starts its workers in sessions of their own, so killing the launcher's process group misses
    them: each worker asks the kernel to kill it with its parent (`distributed.start`). SIGKILL to the launcher's
    process group, mid-run, leaves no worker running (checked by pid)."""
    env = dict(os.environ, TQDM_DISABLE="1", CLIPFLUX_MONGO_URL="off", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "clipflux.launch", "2", str(REPO / "stages/train.py"), "--experiment", "replay",
         "--shards", str(tiny_shards), "--stream", "stream.json", "--base", "base.pt", "--out", "orphans/models",
         "--checkpoints", "orphans/checkpoints"], cwd=workspace, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        for line in launcher.stdout:  # rank 0 prints this once the workers have started training
            if line.startswith("train replay"):
                break
        workers = _children(launcher.pid)
        assert len(workers) == 2 and all(map(_alive, workers)), workers
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
        for _ in range(100):
            if not any(map(_alive, workers)):
                break
            time.sleep(0.1)
        assert not any(map(_alive, workers)), "a worker outlived its launcher"
    finally:
        if launcher.poll() is None:
            launcher.kill()
