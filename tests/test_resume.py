"""Exact resume under SIGKILL: the real stage scripts are killed at chosen points and rerun.

Real kills are made on one method of each kind of state a process death could lose (plain weights, an
end-of-task penalty, a per-step path integral, a running average, adapters, a teacher, a running merge, a TiC
replay buffer), with DataLoader workers and a data mixture that includes replay-buffer and pretraining data.
That every registered method's state survives a checkpoint is proved in the fast tier, in-process
(tests/test_methods.py::test_every_method_resumes_bit_identically_mid_task); what a kill adds (the files, the
workers, the tracking stores) does not depend on the method. A run killed anywhere and rerun must
finish bit-identical to the run that was never interrupted: the same weights after every task, the same
metrics, and the same logged series: the killed run truncated at the resume step plus the resumed run, each step once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipflux.checkpoint import CheckpointError, check_fingerprint
from clipflux.data.pipeline import preprocess
from clipflux.data.world import generate_world
from clipflux.methods import REGISTRY
from clipflux.models import create_model, save_weights, state_sha256
from clipflux.config import load_params

from conftest import REPO, TINY_WORLD

pytestmark = pytest.mark.slow  # real SIGKILLs of stage processes: ./run.sh test-all

STEPS, TASKS = 6, 2
TINY = {
    "pretrain": {"samples": 48, "workers": 2, "checkpoint_every": 2,
                 "optim": {"batch_size": 8, "warmup_steps": 1}},
    "train": {"samples_per_task": STEPS * 8, "workers": 2, "checkpoint_every": 2,
              "optim": {"batch_size": 8, "warmup_steps": 1, "warmup_share": None}},
    "budget": {"measure": "samples"},  # every method STEPS steps per task (tests/test_budget.py: derived steps)
}
METHODS = ["cumulative_exp", "ema", "ewc", "finetune", "lora", "lwf", "paint", "si"]


def test_the_killed_methods_are_registered():
    assert set(METHODS) <= set(REGISTRY)


def _merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        base[key] = _merge(base[key], value) if isinstance(value, dict) else value
    return base


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder with tiny params (one experiment per registered method), shards, a stream and a base model."""
    root = tmp_path_factory.mktemp("resume")
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    params["world"] = _merge(params["world"], {k: getattr(TINY_WORLD, k) for k in ("scale", "shard_size")})
    params["streams"] = {"s": {"file": str(REPO / "streams/fif_random.json"), "num_tasks": TASKS}}
    mixture = {"update": 0.5, "buffer": 0.25, "pretraining": 0.25}
    params["experiments"] = {m: {"method": m, "stream": "s", "mixture": mixture} for m in METHODS}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    generate_world(TINY_WORLD, root / "raw", progress=False)
    preprocess(root / "raw", root / "shards", TINY_WORLD.shard_size)
    _stage(root, "build_stream.py", "--name", "s", "--shards", "shards", "--out", "stream.json")
    torch.manual_seed(0)
    model, _ = create_model(load_params(root / "params.yaml").model)
    save_weights(model, root / "base.pt")
    return root


def _stage(root: Path, script: str, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    # The series compared is the file observer's (the MongoDB path has its own fault tests in test_tracking).
    env = dict(os.environ, TQDM_DISABLE="1", CLIPFLUX_MONGO_URL="off")
    env.pop("CLIPFLUX_FAULT", None)
    if fault:
        env["CLIPFLUX_FAULT"] = fault
    return subprocess.run([sys.executable, str(REPO / "stages" / script), *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)


def _train(root: Path, method: str, name: str, fault: str | None = None) -> subprocess.CompletedProcess:
    return _stage(root, "train.py", "--experiment", method, "--shards", "shards", "--stream", "stream.json",
                  "--base", "base.pt", "--out", f"{name}/models", "--checkpoints", f"{name}/checkpoints",
                  fault=fault)


def _runs(root: Path) -> list[dict]:
    """Every Sacred run of the train stage in this workspace: id, config, info, metrics."""
    runs = []
    for run_dir in sorted((root / "runs/train").glob("[0-9]*"), key=lambda p: int(p.name)):
        load = lambda name: json.loads((run_dir / name).read_text()) if (run_dir / name).exists() else {}  # noqa: E731
        runs.append({"id": int(run_dir.name), "config": load("config.json"), "info": load("info.json"),
                     "metrics": load("metrics.json"), "run": load("run.json")})
    return runs


def _series(metrics: dict, below: int | None = None) -> dict[tuple[str, int], float]:
    return {(name, step): value for name, m in metrics.items() for step, value in zip(m["steps"], m["values"])
            if below is None or step < below}


def _weights(folder: Path) -> list[str]:
    found = sorted(folder.glob("seed_0/task_*.pt"))
    assert found, f"no task weights in {folder}/seed_0"
    return [state_sha256(torch.load(p, weights_only=True)) for p in found]


_references: dict[str, tuple[list[str], dict]] = {}


def _reference(root: Path, method: str) -> tuple[list[str], dict]:
    """Weights after each task and the logged series of the uninterrupted run (computed once per method)."""
    if method not in _references:
        proc = _train(root, method, f"ref-{method}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        run = [r for r in _runs(root) if r["config"].get("experiment") == method][-1]
        _references[method] = (_weights(root / f"ref-{method}/models"), _series(run["metrics"]))
    return _references[method]


def _kill_and_resume(root: Path, method: str, fault: str, name: str) -> None:
    weights, series = _reference(root, method)
    killed = _train(root, method, name, fault=fault)
    assert killed.returncode == -signal.SIGKILL, f"the fault {fault} was never reached:\n{killed.stderr[-2000:]}"
    resumed = _train(root, method, name)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    killed_run, resumed_run = _runs(root)[-2:]

    assert _weights(root / name / "models") == weights
    origin = resumed_run["info"]["resumed_from"]
    if origin is None:  # killed before the first checkpoint: a fresh start
        assert _series(resumed_run["metrics"]) == series
        return
    assert str(origin["run_id"]) == str(killed_run["id"])
    resume_step = origin["global_step"]
    # The killed run was truncated at the resume step: the two runs hold every step exactly once.
    before, after = _series(killed_run["metrics"]), _series(resumed_run["metrics"])
    assert all(step < resume_step for _, step in before)
    assert min(step for _, step in after) == resume_step
    assert before | after == series
    assert killed_run["run"]["status"] == "INTERRUPTED" and str(killed_run["run"]["resumed_by"]) == str(resumed_run["id"])


# finetune's kills are the checkpoint-write, task-end and finish tests below; each other method adds its own state.
@pytest.mark.parametrize("method", [m for m in METHODS if m != "finetune"])
@settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck))
@given(step=st.integers(1, STEPS * TASKS - 1))
def test_kill_at_a_random_step_resumes_bit_identically(workspace, method, step):
    _kill_and_resume(workspace, method, f"step@{step}", f"kill-{method}-step{step}")


@pytest.mark.parametrize("fault", ["checkpoint-write@2", "checkpoint-write@3", "task-end@1"])
def test_kill_while_writing_a_checkpoint_or_ending_a_task(workspace, fault):
    _kill_and_resume(workspace, "finetune", fault, f"kill-{fault.replace('@', '-')}")


def test_kill_during_evaluation_gives_the_same_metrics(workspace):
    _reference(workspace, "finetune")
    args = ["--experiment", "finetune", "--shards", "shards", "--base", "base.pt", "--models", "ref-finetune/models"]
    first = _stage(workspace, "evaluate.py", *args, "--out", "eval-ref")
    assert first.returncode == 0, first.stderr[-3000:]
    killed = _stage(workspace, "evaluate.py", *args, "--out", "eval-killed", fault="evaluate@2")
    assert killed.returncode == -signal.SIGKILL
    again = _stage(workspace, "evaluate.py", *args, "--out", "eval-killed")
    assert again.returncode == 0, again.stderr[-3000:]
    for name in ("metrics.json", "scores.json"):
        assert (workspace / "eval-killed" / name).read_bytes() == (workspace / "eval-ref" / name).read_bytes()
    # The killed run could not say it died: the rerun marked it (no run stays RUNNING).
    statuses = [json.loads(p.read_text())["status"] for p in (workspace / "runs/evaluate").glob("*/run.json")]
    assert sorted(statuses) == ["COMPLETED", "COMPLETED", "INTERRUPTED"]


@pytest.mark.parametrize("n", [1, 2, 4, 5])
def test_kill_while_finishing_completes_with_the_same_outputs(workspace, n):
    """`finish` points with 2 tasks: 1 budget.json written, 2-3 each task's weights, 4 checkpoints pruned,
    5 the kept weights retired (the run is over: the rerun trains again)."""
    weights, series = _reference(workspace, "finetune")
    name = f"kill-finish-{n}"
    killed = _train(workspace, "finetune", name, fault=f"finish@{n}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    shutil.rmtree(workspace / name / "models", ignore_errors=True)  # DVC removes a stage's outputs before a rerun
    again = _train(workspace, "finetune", name)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _weights(workspace / name / "models") == weights
    budget = "models/seed_0/budget.json"
    assert (workspace / name / budget).read_bytes() == (workspace / "ref-finetune" / budget).read_bytes()
    assert sorted(p.name for p in (workspace / name / "checkpoints/seed_0").iterdir()) == [
        "ckpt-0002-00000000.pt", "ckpt-0002-00000000.pt.sha256"]
    killed_run, rerun = _runs(workspace)[-2:]
    assert killed_run["run"]["status"] == "INTERRUPTED"
    before, after = _series(killed_run["metrics"]), _series(rerun["metrics"])
    assert not set(before) & set(after) and before | after == series  # each step once


@pytest.mark.parametrize("fault", ["step@3", "checkpoint-write@2"])
def test_pretrain_resumes_bit_identically(workspace, fault):
    args = ["--shards", "shards", "--out"]
    ref = _stage(workspace, "pretrain.py", *args, "pre-ref/base.pt", "--checkpoints", "pre-ref/ckpt")
    assert ref.returncode == 0, ref.stderr[-3000:]
    name = f"pre-{fault.replace('@', '-')}"
    killed = _stage(workspace, "pretrain.py", *args, f"{name}/base.pt", "--checkpoints", f"{name}/ckpt", fault=fault)
    assert killed.returncode == -signal.SIGKILL
    resumed = _stage(workspace, "pretrain.py", *args, f"{name}/base.pt", "--checkpoints", f"{name}/ckpt")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    sha = lambda p: state_sha256(torch.load(p, weights_only=True))  # noqa: E731
    assert sha(workspace / f"{name}/base.pt") == sha(workspace / "pre-ref/base.pt")


def test_other_parameters_are_refused_with_the_differing_keys(workspace):
    killed = _train(workspace, "finetune", "changed", fault="step@3")
    assert killed.returncode == -signal.SIGKILL
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["train"]["optim"]["lr"] = 0.5
    (workspace / "params-changed.yaml").write_text(yaml.safe_dump(params))
    original = (workspace / "params.yaml").read_text()
    try:
        (workspace / "params.yaml").write_text(yaml.safe_dump(params))
        refused = _train(workspace, "finetune", "changed")
        assert refused.returncode != 0
        assert "train: checkpoint" in refused.stderr and "'lr': 0.5" in refused.stderr
        started_over = _stage(workspace, "train.py", "--experiment", "finetune", "--shards", "shards", "--stream",
                              "stream.json", "--base", "base.pt", "--out", "changed/models", "--checkpoints",
                              "changed/checkpoints", "--start-over")
        assert started_over.returncode == 0, started_over.stderr[-3000:]
    finally:
        (workspace / "params.yaml").write_text(original)


def test_the_architecture_is_part_of_the_recorded_parameters(workspace):
    """Editing configs/models/<name>.json must refuse a resume, not load old weights into a new shape."""
    _reference(workspace, "finetune")
    run = next(r for r in _runs(workspace) if r["config"].get("experiment") == "finetune")
    name = load_params(workspace / "params.yaml").model.name
    shipped = json.loads((REPO / "configs" / "models" / f"{name}.json").read_text())
    assert run["config"]["architecture"] == shipped
    widened = json.loads(json.dumps(run["config"]))
    widened["architecture"]["vision_cfg"]["width"] *= 2
    with pytest.raises(CheckpointError, match="architecture: checkpoint"):
        check_fingerprint(run["config"], widened)
