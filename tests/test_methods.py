"""Every registered method on real shards (smoke and exact resume), and each method's core, tested directly."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import yaml

from clipflux.config import ConfigError, MixtureConfig, ModelConfig, OptimConfig
from clipflux.data.loader import index_items
from clipflux.data.shards import ShardReader
from clipflux.methods import REGISTRY, TaskContext, build_method
from clipflux.methods.adapters import merged_state_dict
from clipflux.methods.lwf import similarity_kl
from clipflux.methods.weights import snapshot
from clipflux.models import create_model, state_sha256
from clipflux.train import Loop, Trainer

from conftest import REPO

STEPS, TASKS = 3, 2
OPTIM = OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=1, clip_grad_norm=1.0, batch_size=4)
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())["methods"]
PARAMS["ewc"] = dict(PARAMS["ewc"], max_fim_samples=8)  # two batches: enough to test, cheap to run


class Interrupt(Exception):
    pass


def _model() -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    return create_model(ModelConfig(name="clipflux-tiny"))


def _trainer(shards, ckpt_dir, log, name: str, params: dict | None = None) -> Trainer:
    readers = [ShardReader(shards / "novel_shapes", "train"), ShardReader(shards / "pool", "train")]
    items = index_items(0, readers[0])
    tasks = [items[: len(items) // 2], items[len(items) // 2:]]
    model, tokenizer = _model()
    loop = Loop(seed=3, steps_per_task=STEPS, optim=OPTIM, mixture=MixtureConfig(0.5, 0.25, 0.25),
                checkpoint_every=2)
    method = build_method(name, PARAMS.get(name) if params is None else params)
    return Trainer(model, method, tokenizer, readers, tasks, index_items(1, readers[1]), loop, ckpt_dir, log,
                   fingerprint={"method": name})


_references: dict[str, dict] = {}


def _reference(name: str, shards, tmp_path_factory) -> dict:
    """One uninterrupted two-task run per method (shared by the smoke, selection and resume tests)."""
    if name not in _references:
        log = []
        trainer = _trainer(shards, tmp_path_factory.mktemp(f"ref-{name}"), lambda k, v, s: log.append((k, v, s)), name)
        before = snapshot(trainer.model)
        trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
        trainer.fit()
        evaluated = trainer.method.eval_model()
        _references[name] = {"before": before, "after": snapshot(trainer.model), "trainable": trainable,
                             "log": log, "eval": evaluated, "eval_sha": state_sha256(evaluated.state_dict()),
                             "model_sha": state_sha256(trainer.model.state_dict())}
    return _references[name]


def _changed(run: dict) -> set[str]:
    before, after = run["before"], run["after"]
    return {n for n in after if not torch.equal(before[n], after[n])}


# -- every registered method ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_trains_two_tasks_and_changes_only_its_trainable_parameters(name, tiny_shards,
                                                                                  tmp_path_factory):
    run = _reference(name, tiny_shards, tmp_path_factory)
    losses = [v for k, v, s in run["log"] if k == "train/loss"]
    assert len(losses) == STEPS * TASKS and all(math.isfinite(v) for v in losses)
    assert run["trainable"] and _changed(run) == run["trainable"]
    plain, _ = _model()
    evaluated = run["eval"]
    assert set(evaluated.state_dict()) == set(plain.state_dict())  # evaluate/save see a plain open_clip model
    with torch.no_grad():
        image = evaluated.encode_image(torch.zeros(2, 3, 32, 32))
    assert torch.isfinite(image).all()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_resumes_bit_identically_mid_task(name, tiny_shards, tmp_path_factory, tmp_path):
    """Killed in the second task (resuming from its mid-task checkpoint), the rerun equals the reference."""
    reference = _reference(name, tiny_shards, tmp_path_factory)
    kill_after = STEPS + 2  # the last step of task 2: the rerun resumes at (task 1, step 2)
    seen = []

    def log_then_die(key, value, step):
        seen.append((key, value, step))
        if key == "train/lr" and step == kill_after:
            raise Interrupt

    with pytest.raises(Interrupt):
        _trainer(tiny_shards, tmp_path, log_then_die, name).fit()
    resumed_log = []
    resumed = _trainer(tiny_shards, tmp_path, lambda k, v, s: resumed_log.append((k, v, s)), name)
    resumed.fit()
    assert state_sha256(resumed.method.eval_model().state_dict()) == reference["eval_sha"]
    assert state_sha256(resumed.model.state_dict()) == reference["model_sha"]
    assert min(s for _, _, s in resumed_log) == STEPS + 2  # it did resume mid-task
    merged = {(k, s): v for k, v, s in seen + resumed_log}
    assert merged == {(k, s): v for k, v, s in reference["log"]}
