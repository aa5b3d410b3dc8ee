"""The optimizer and learning-rate schedule: FiF's and TiC's settings as options, pretraining's left as it was."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st

from clipflux.config import ConfigError, ModelConfig, OptimConfig, load_params
from clipflux.methods import build_method
from clipflux.models import create_model
from clipflux.schedules import lr_at, warmup_of
from clipflux.train import new_optimizer

from conftest import REPO

BASE = OptimConfig(lr=1e-3, weight_decay=0.2, warmup_steps=0, clip_grad_norm=1.0, batch_size=8)
FIF = dataclasses.replace(BASE, warmup_share=0.1, min_lr_share=0.001, weight_decay_on="all")

lrs = st.floats(1e-6, 1.0)
shares = st.floats(0.0, 0.99)


def open_clip_lr(step: int, steps: int, lr: float, warmup: int) -> float:
    """The schedule as clipflux computed it before FiF's options (open_clip's `cosine_lr`), kept verbatim."""
    if step < warmup:
        return lr * (step + 1) / warmup
    done = (step - warmup) / max(1, steps - warmup)
    return 0.5 * lr * (1.0 + math.cos(math.pi * done))


def fif_lr(step: int, steps: int, lr: float, warmup_perc: float, cosine_lr_mul: float) -> float:
    """FiF's `cosine_with_linear_warmup` (continual_lib/utils/base_continual_learner.py:315-342), times the lr."""
    warm = int(np.ceil(warmup_perc * steps))
    if warm and step < warm:
        return lr * (step % warm + 1) / warm
    e, es = step - warm + 1, steps - warm
    min_lr = lr * cosine_lr_mul
    return min_lr + 0.5 * (1 + np.cos(np.pi * e / es)) * (lr - min_lr)


# -- the schedule ----------------------------------------------------------------------------------


@given(lr=lrs, warmup=st.integers(0, 60), steps=st.integers(1, 1000), task=st.integers(0, 5), data=st.data())
def test_pretraining_schedule_is_unchanged_bit_for_bit(lr, warmup, steps, task, data):
    """With the new fields at their defaults, every value is the old schedule's, exactly (the base model must
    not change): warmup in steps, cosine to zero, the same on every task."""
    optim = dataclasses.replace(BASE, lr=lr, warmup_steps=warmup)
    step = data.draw(st.integers(0, steps - 1))
    assert lr_at(step, steps, optim, task) == open_clip_lr(step, steps, lr, warmup)


def test_shipped_pretraining_schedule_is_unchanged():
    cfg = load_params(REPO / "params.yaml").pretrain
    steps = math.ceil(cfg.samples / cfg.optim.batch_size)
    assert [lr_at(s, steps, cfg.optim) for s in range(steps)] == \
        [open_clip_lr(s, steps, cfg.optim.lr, cfg.optim.warmup_steps) for s in range(steps)]
    assert (cfg.optim.weight_decay_on, cfg.optim.beta1, cfg.optim.beta2, cfg.optim.eps) == \
        ("matrices", 0.9, 0.999, 1e-8)  # torch's AdamW defaults, which pretraining always used


@given(lr=lrs, share=shares, floor=st.floats(0.0, 0.5), steps=st.integers(1, 1000))
def test_warmup_share_then_cosine_to_the_floor(lr, share, floor, steps):
    optim = dataclasses.replace(BASE, lr=lr, warmup_share=share, min_lr_share=floor)
    warmup = warmup_of(0, steps, optim)
    assert warmup == math.ceil(share * steps)
    values = [lr_at(s, steps, optim) for s in range(steps)]
    ramp, decay = values[:warmup], values[warmup:]
    assert all(a < b for a, b in zip(ramp, ramp[1:])), "linear warmup rises every step"
    if ramp:
        assert ramp[-1] == pytest.approx(lr)
    if decay:
        assert decay[0] == pytest.approx(lr), "the cosine starts at the peak"
    assert all(a >= b for a, b in zip(decay, decay[1:])), "monotone decay after the warmup"
    assert all(0 < v <= lr * (1 + 1e-9) for v in values)
    assert all(v >= lr * floor * (1 - 1e-9) for v in decay), "never below the floor"
    if warmup < steps:
        assert lr_at(steps, steps, optim) == pytest.approx(lr * floor, abs=1e-12), "the cosine ends at the floor"


@given(lr=lrs, share=st.floats(0.01, 0.5), floor=st.floats(0.0, 0.01), steps=st.integers(2, 1000), data=st.data())
def test_matches_fif_cosine_with_linear_warmup_one_step_apart(lr, share, floor, steps, data):
    """FiF's warmup exactly; its cosine one step ahead of ours (the documented phase deviation)."""
    optim = dataclasses.replace(BASE, lr=lr, warmup_share=share, min_lr_share=floor)
    warm = warmup_of(0, steps, optim)
    step = data.draw(st.integers(0, steps - 1))
    if step < warm:
        assert lr_at(step, steps, optim) == pytest.approx(fif_lr(step, steps, lr, share, floor))
    elif step + 1 < steps:
        assert lr_at(step + 1, steps, optim) == pytest.approx(fif_lr(step, steps, lr, share, floor))


@given(share=st.floats(0.05, 0.99), after=st.one_of(st.none(), shares), steps=st.integers(1, 500),
       task=st.integers(1, 10))
def test_warmup_after_the_first_task(share, after, steps, task):
    optim = dataclasses.replace(BASE, warmup_share=share, warmup_after_first=after)
    assert warmup_of(0, steps, optim) == math.ceil(share * steps)
    assert warmup_of(task, steps, optim) == math.ceil((share if after is None else after) * steps)
    if after == 0:  # TiC's warm-started steps: the peak from the first step
        assert lr_at(0, steps, optim, task) == optim.lr


def test_warmup_after_first_also_follows_a_warmup_in_steps():
    optim = dataclasses.replace(BASE, warmup_steps=5, warmup_after_first=0.0)
    assert (warmup_of(0, 50, optim), warmup_of(1, 50, optim)) == (5, 0)


# -- the optimizer ---------------------------------------------------------------------------------


def _finetune_params() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    model, _ = create_model(ModelConfig(name="clipflux-tiny"))
    method = build_method("finetune", None)
    method.setup(model)
    return method.trainable_parameters()


@pytest.mark.parametrize("on", ["matrices", "all"])
def test_weight_decay_groups(on):
    params = _finetune_params()
    optimizer = new_optimizer(params, dataclasses.replace(BASE, weight_decay_on=on))
    matrices, rest = optimizer.param_groups
    assert all(p.ndim >= 2 for p in matrices["params"]) and all(p.ndim < 2 for p in rest["params"])
    assert len(matrices["params"]) + len(rest["params"]) == len(params) and rest["params"]
    assert matrices["weight_decay"] == 0.2
    assert rest["weight_decay"] == (0.2 if on == "all" else 0.0)
    # A step with zero gradients moves a parameter only through weight decay.
    for p in params:
        p.grad = torch.zeros_like(p)
    bias = rest["params"][0]
    before = bias.detach().clone()
    optimizer.step()
    assert torch.equal(bias, before) == (on == "matrices")


def test_default_optimizer_is_torch_adamw_as_pretraining_used_it():
    group = new_optimizer(_finetune_params(), BASE).param_groups[0]
    defaults = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]).defaults
    assert (group["betas"], group["eps"]) == (defaults["betas"], defaults["eps"])


# -- per-experiment overrides ----------------------------------------------------------------------


def _params(tmp_path, overrides: dict, train_optim: dict | None = None, measure: str = "samples"):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["experiments"]["tic_sequential"]["optim"] = overrides
    raw["streams"]["tic"]["measure"] = measure
    if measure != "samples":  # only tic_sequential keeps its own batch size
        for name, exp in raw["experiments"].items():
            if name != "tic_sequential":
                exp.get("optim", {}).pop("batch_size", None)
    raw["train"]["optim"].update(train_optim or {})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_params(path)


def test_experiment_overrides_reach_the_optimizer(tmp_path):
    tic = {"beta2": 0.98, "eps": 1.0e-6, "clip_grad_norm": 0, "warmup_after_first": 0.0}
    params = _params(tmp_path, tic)
    optim = params.train_for("tic_sequential").optim
    assert (optim.beta1, optim.beta2, optim.eps, optim.clip_grad_norm, optim.warmup_after_first) == \
        (0.9, 0.98, 1e-6, 0.0, 0.0)
    assert optim.lr == params.train.optim.lr  # what is not overridden comes from train.optim
    assert params.train_for("finetune") == params.train  # experiments without overrides are unchanged
    group = new_optimizer(_finetune_params(), optim).param_groups[0]
    assert (group["betas"], group["eps"]) == ((0.9, 0.98), 1e-6)


def test_a_budget_in_samples_allows_its_own_batch_size(tmp_path):
    """TiC counts its budget in samples, so its experiments may train at another batch size (the steps follow)."""
    params = _params(tmp_path, {"batch_size": 32})
    assert params.train_for("tic_sequential").optim.batch_size == 32
    assert params.train_for("finetune").optim.batch_size == params.train.optim.batch_size
    with pytest.raises(ConfigError) as err:  # in FLOPs, the batch size fixes the budget: one for all
        _params(tmp_path, {"batch_size": 32}, measure="maf")
    assert str(err.value).startswith("experiments.tic_sequential.optim.batch_size: the batch size is shared by "
                                     "every experiment whose budget is in FLOPs")


@pytest.mark.parametrize(
    ("overrides", "train_optim", "expected"),
    [
        ({"beta3": 0.9}, None, "experiments.tic_sequential.optim.beta3: unknown key; allowed keys here are ["
                               "'batch_size', 'beta1', 'beta2', 'clip_grad_norm', 'cooldown_share', 'eps', 'lr', 'min_lr_share', "
                               "'recovery', 'schedule', 'warmup_after_first', 'warmup_share', 'warmup_steps', "
                               "'weight_decay', 'weight_decay_on']"),
        ({"beta2": 1.5}, None, "experiments.tic_sequential.optim.beta2: must be in [0, 1), got 1.5"),
        ({"eps": "1e-6"}, None, "experiments.tic_sequential.optim.eps: expected float, got '1e-6' (str)"),
        ({"weight_decay_on": "some"}, None, "experiments.tic_sequential.optim.weight_decay_on: 'some' is not allowed"),
        ({"warmup_share": 0.1}, {"warmup_steps": 4, "warmup_share": None},
         "experiments.tic_sequential.optim.warmup_steps: 4 and warmup_share"),
        ({}, {"warmup_after_first": 1.0}, "train.optim.warmup_after_first: must be in [0, 1), got 1.0"),
        ({"schedule": "linear"}, None, "experiments.tic_sequential.optim.schedule: 'linear' is not allowed"),
        ({"cooldown_share": 0.1}, None, "experiments.tic_sequential.optim.cooldown_share: only constant, rsqrt and "
                                        "rsqrt_with_recovery cool down, not cosine"),
        ({"schedule": "rsqrt", "recovery": "sideways"}, None,
         "experiments.tic_sequential.optim.recovery: 'sideways' is not allowed"),
    ],
)
def test_bad_overrides_name_the_key(tmp_path, overrides, train_optim, expected):
    with pytest.raises(ConfigError) as err:
        _params(tmp_path, overrides, train_optim)
    assert expected in str(err.value) and "\n" not in str(err.value)
