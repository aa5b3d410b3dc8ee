"""End to end: the DVC pipeline on tiny settings, in a temporary clone of this repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import copy_repository

BIN = Path(sys.executable).parent
TINY = {
    "world": {"scale": 0.1, "shard_size": 256},
    "pretrain": {"samples": 1024, "checkpoint_every": 8, "optim": {"batch_size": 64}},
    "train": {"samples_per_task": 128, "checkpoint_every": 2, "optim": {"batch_size": 32}},
    "streams": {"fif_random": {"num_tasks": 2}, "tic": {"samples_per_task": 128}},
}
EXPERIMENTS = ("finetune", "tic_sequential")  # one FiF and one TiC experiment; tests/test_methods.py covers every method


def _merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        base[key] = _merge(base[key], value) if isinstance(value, dict) else value
    return base


def _run(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", TQDM_DISABLE="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The repository's files (tracked and new, as git sees them) committed into a fresh git repository."""
    root = tmp_path_factory.mktemp("clone")
    copy_repository(root)
    params = _merge(yaml.safe_load((root / "params.yaml").read_text()), TINY)
    params["experiments"] = {k: v for k, v in params["experiments"].items() if k in EXPERIMENTS}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "clone"]):
        _run(cmd, root)
    return root


@pytest.mark.e2e
def test_dvc_repro_end_to_end(clone):
    out = _run(["dvc", "repro"], clone)
    for stage in ("download", "preprocess", "build_stream@fif_random", "pretrain", "train@finetune",
                  "evaluate_base", "evaluate@finetune", "report"):
        assert f"Running stage '{stage}'" in out
    # The base model is evaluated once for all experiments, and sharing its row changes nothing.
    _run(["python", "stages/evaluate.py", "--experiment", "finetune", "--shards", "data/shards", "--base",
          "models/base.pt", "--models", "models/finetune", "--out", "alone"], clone)
    assert (clone / "alone/eval.json").read_bytes() == (clone / "reports/experiments/finetune/eval.json").read_bytes()

    # DVC's metrics are the headline numbers under the experiment's name; scores.json holds every number.
    scores = json.loads((clone / "reports/experiments/finetune/scores.json").read_text())
    assert set(scores) == {"task_00", "task_01", "task_02", "final", "forgetting"}
    for task in ("task_00", "task_01", "task_02", "final"):
        assert 0 <= scores[task]["A_KA"] <= 100 and 0 <= scores[task]["A_ZS"] <= 100
    assert {"mean_adaptation", "mean_evaluation", "shapes"} <= set(scores["forgetting"])
    metrics = json.loads((clone / "reports/experiments/finetune/metrics.json").read_text())
    assert metrics == {"finetune": {k: scores["final"][k] for k in ("A_KA", "A_ZS", "GM")}
                       | {"forgetting": scores["forgetting"]["mean_adaptation"]}}
    for png in ("trajectory.png", "gm.png", "heatmaps/finetune.png"):
        assert (clone / "reports" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (clone / "reports/summary.md").read_text()
    assert "| finetune | finetune | 2 |" in summary
    tic = json.loads((clone / "reports/experiments/tic_sequential/scores.json").read_text())["tic"]
    assert set(tic) == {"tic_cls", "tic_ret"} and set(tic["tic_cls"]) == {"in_domain", "backward", "forward", "bwt", "fwt"}
    tic_headline = json.loads((clone / "reports/experiments/tic_sequential/metrics.json").read_text())
    assert tic_headline == {"tic_sequential": {f"{n}.{k}": tic[n][k] for n in ("tic_cls", "tic_ret")
                                               for k in ("in_domain", "backward", "forward")}}
    assert "| tic_sequential | sequential | tic_ret | R@1 |" in summary
    # pretrain; evaluate_base and the check above; train and evaluate for each experiment
    assert len(list((clone / "runs").glob("*/[0-9]*/metrics.json"))) == 3 + 2 * len(EXPERIMENTS)

    # Nothing to do the second time.
    again = _run(["dvc", "repro"], clone)
    assert "Running stage" not in again

    # One parameter changed: only the stages that read it run again.
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "run 1"]):
        _run(cmd, clone)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["evaluate"]["batch_size"] = 100
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = _run(["dvc", "repro"], clone)
    assert "Running stage 'evaluate@finetune'" in changed
    for stage in ("download", "preprocess", "pretrain", "train@finetune"):
        assert f"Running stage '{stage}'" not in changed

    # DVC plots render, and metrics and plots compare across revisions (the commit above against the workspace).
    diff = _run(["dvc", "metrics", "diff", "--all"], clone)
    assert "reports/experiments/finetune/metrics.json" in diff and "finetune.GM" in diff
    vega = json.loads(_run(["dvc", "plots", "diff", "HEAD", "--show-vega", "--targets", "trajectory"], clone))
    assert {("finetune", "HEAD"), ("finetune", "workspace")} <= {(v["experiment"], v["rev"]) for v in vega["data"]["values"]}
    _run(["dvc", "plots", "show", "-o", "plots_html"], clone)
    html = (clone / "plots_html/index.html").read_text()
    assert all(name in html for name in ("trajectory.png", "gm.png", "heatmaps", "final_gm"))

    dag = _run(["dvc", "dag", "--dot"], clone)
    for stage in ("download", "preprocess", "build_stream", "pretrain", "train", "evaluate", "report"):
        assert stage in dag


@pytest.mark.e2e
def test_a_queued_grid_runs_in_parallel(clone):
    """A sweep: `dvc exp run --queue` with a grid of two learning rates, run by two queue workers; `dvc exp show
    --only-changed` is then one table of the learning rate and the headline numbers it moved."""
    _run(["dvc", "repro", "evaluate@finetune"], clone)  # what the grid shares (nothing to do after the test above)
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "base"]):
        _run(cmd, clone)
    _run(["dvc", "exp", "run", "--queue", "-S", "train.optim.lr=0.001,0.003", "evaluate@finetune"], clone)
    _run(["dvc", "queue", "start", "-j", "2"], clone)
    deadline = time.monotonic() + 600
    while any(word in _run(["dvc", "queue", "status"], clone) for word in ("Queued", "Running")):
        assert time.monotonic() < deadline, _run(["dvc", "queue", "status"], clone)
        time.sleep(2)
    status = _run(["dvc", "queue", "status"], clone)
    failed = [line.split()[1] for line in status.splitlines() if line.split()[-1:] == ["Failed"]]
    assert not failed, status + "\n".join(_run(["dvc", "queue", "logs", name], clone)[-3000:] for name in failed)
    rows = json.loads(_run(["dvc", "exp", "show", "--json"], clone))
    experiments = [exp for row in rows for exp in (row.get("experiments") or [])]
    learning_rates = {exp["revs"][0]["data"]["params"]["params.yaml"]["data"]["train"]["optim"]["lr"]
                      for exp in experiments}
    assert learning_rates == {0.001, 0.003}
    table = subprocess.run(["dvc", "exp", "show", "--only-changed", "--no-pager"], cwd=clone, capture_output=True,
                           text=True, env=dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", COLUMNS="1000")
                           ).stdout  # at its own width, not cut to a terminal's
    header = next(line for line in table.splitlines() if "Experiment" in line).split()
    assert {"finetune.A_KA", "finetune.A_ZS", "finetune.GM", "finetune.forgetting", "train.optim.lr"} <= set(header)
    assert "…" not in table and max(map(len, table.splitlines())) <= 200, table


@pytest.mark.e2e
def test_tic_runs_from_a_random_initialisation_and_seeds_repeat_an_experiment(clone):
    """TiC's regimes start from a fresh initialisation (the first row of their matrix), not the base model; and
    `study.seeds: 2` trains and evaluates a second seed whose metrics come as mean and spread."""
    import torch

    from clipflux.config import load_params
    from clipflux.models import initial_model

    _run(["dvc", "repro", "evaluate@tic_sequential"], clone)  # nothing to do after the first test
    params = load_params(clone / "params.yaml")
    start = torch.load(clone / "models/tic_sequential/seed_0/task_000.pt", weights_only=True)
    fresh = initial_model(params.model, params.train.seed)[0].state_dict()
    assert start.keys() == fresh.keys() and all(torch.equal(start[k], fresh[k]) for k in start)
    rows = json.loads((clone / "reports/experiments/tic_sequential/eval.json").read_text())["rows"]
    assert "tic" not in json.loads((clone / "reports/base/base.json").read_text())  # only FiF runs use the base
    assert rows[0]["metrics"]["tic_cls"]["acc"] < 30  # a random initialisation, near chance (1 in 12)

    raw = yaml.safe_load((clone / "params.yaml").read_text())
    raw["study"]["seeds"] = 2
    (clone / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    out = _run(["dvc", "repro", "evaluate@finetune"], clone)
    assert "Running stage 'train@finetune'" in out and "Running stage 'pretrain'" not in out
    weights = [torch.load(clone / f"models/finetune/seed_{s}/task_002.pt", weights_only=True) for s in (0, 1)]
    assert not all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    evaluation = json.loads((clone / "reports/experiments/finetune/eval.json").read_text())
    assert [e["seed"] for e in evaluation["seeds"]] == [0, 1]
    metrics = json.loads((clone / "reports/experiments/finetune/metrics.json").read_text())["finetune"]
    assert metrics["seeds"] == 2 and metrics["GM_std"] >= 0 and list(metrics)[:2] == ["A_KA", "A_KA_std"]
    finals = [e["rows"][-1]["GM"] for e in evaluation["seeds"]]
    assert metrics["GM"] == pytest.approx(sum(finals) / 2, abs=1e-3)
