"""Compute budgets: FLOP counts against published figures and torch's own counter, FiF's cost ordering, EWC's
Fisher in its budget, the steps derivation (property tests), and the train stage training the derived steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from clipflux import budget
from clipflux.config import BudgetConfig, ConfigError, load_params
from clipflux.methods import TaskContext, build_method
from clipflux.methods.base import ExtraWork
from clipflux.methods.weights import copy_model
from clipflux.models import create_model, save_weights

from conftest import REPO

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
METHODS = PARAMS["methods"]
aten = torch.ops.aten
# torch's counter has no formula for the CPU attention kernels: the same formulas as for the GPU ones
CPU_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v),
    aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad, q, k, v),
}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return budget.build_model("clipflux-tiny")


@pytest.fixture(scope="module")
def vit_b32():
    """ViT-B/32 at 224 px with random weights (no download): the profiles of FiF's Table 4 ordering, batch 512."""
    torch.manual_seed(0)
    model = budget.build_model("ViT-B-32")
    profiles = {name: budget.profile(model, name, METHODS.get(name), 512)
                for name in ("finetune", "lora", "bitfit", "locked_image")}
    return model, profiles


def _gflops(profile: budget.Profile, prefix: str) -> float:
    return sum(v for k, v in profile.flops.items() if k.startswith(prefix)) / 1e9


def test_vit_b32_forward_matches_the_published_gflops(vit_b32):
    """open_clip's profile of ViT-B-32 (fvcore, multiply-adds): image tower 4.41 GFLOPs, text tower 2.96."""
    one = budget.profile(vit_b32[0], "finetune", None, batch_size=1)
    assert _gflops(one, "forward/image/") == pytest.approx(4.41, rel=0.02)
    assert _gflops(one, "forward/text/") == pytest.approx(2.96, rel=0.02)
    # the backward of full finetuning: weight and activation gradients, about twice the forward
    assert _gflops(one, "backward/") == pytest.approx(2 * _gflops(one, "forward/"), rel=0.03)


def test_cost_per_step_follows_fifs_ordering(vit_b32):
    """Full finetuning > LoRA > BitFit > locked image, in FLOPs and in memory-adjusted FLOPs per step."""
    p = vit_b32[1]
    order = [p[name] for name in ("finetune", "lora", "bitfit", "locked_image")]
    flops = [x.step_flops for x in order]
    maf = [x.step_flops * x.memory_bytes / p["finetune"].memory_bytes for x in order]
    assert flops == sorted(flops, reverse=True) and len(set(flops)) == 4
    assert maf == sorted(maf, reverse=True) and len(set(maf)) == 4
    # frozen parameters cost no gradient and no optimizer state
    assert p["finetune"].memory["gradients"] == pytest.approx(p["finetune"].memory["weights"], rel=1e-3)
    assert p["bitfit"].memory["optimizer"] < p["finetune"].memory["optimizer"] / 100
    # BitFit's gradients flow through every layer, locked-image's never enter the image tower
    assert _gflops(p["bitfit"], "backward/image/") > 0 and _gflops(p["locked_image"], "backward/image/") == 0


def _real_step_flops(model: torch.nn.Module, name: str, batch: dict) -> int:
    """FLOPs of one executed step (forward, loss, backward) as torch.utils.flop_counter counts them."""
    model = copy_model(model)
    method = build_method(name, METHODS.get(name))
    method.setup(model)
    method.begin_task(TaskContext(0, 1, 1, lambda n: iter(())))
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)
    with counter, parametrize.cached():  # each adapted weight computed once, as the trace has it
        method.loss(batch, model(batch["images"], batch["texts"])).backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("name", ["finetune", "lora", "bitfit", "locked_image", "lwf"])
def test_counts_agree_with_torch_flop_counter(tiny, name):
    """fvcore's forward plus the derived backward equals FlopCounterMode's count of an executed step (which
    counts 2 FLOPs per multiply-add and no normalisations), at batch 4, extended from the counts at 1, 2, 3."""
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # LwF's teacher: torch's counter cannot see into the fused kernel
    try:
        counted = budget.profile(tiny, name, METHODS.get(name), batch_size=4)
        batch = budget._batch(tiny, 4, torch.Generator().manual_seed(1))
        executed = _real_step_flops(tiny, name, batch)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
    assert 2 * sum(v for k, v in counted.flops.items() if not k.endswith("_norm")) == executed


def test_a_frozen_teacher_costs_the_same_through_the_fused_attention(tiny):
    """LwF's teacher runs nn.MultiheadAttention's fused inference kernel; its handler counts what the slow path does."""
    fused = budget.profile(tiny, "lwf", METHODS["lwf"], batch_size=8)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        plain = budget.profile(tiny, "lwf", METHODS["lwf"], batch_size=8)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    assert "forward/other/attention" in fused.flops
    assert fused.step_flops == plain.step_flops
    # the fused kernel's projections are counted by its handler, under attention
    assert fused.flops["forward/other/attention"] > plain.flops["forward/other/attention"]


def test_ewc_pays_for_its_fisher_from_the_budget(tiny):
    finetune = budget.profile(tiny, "finetune", None, 64)
    ewc = budget.profile(tiny, "ewc", METHODS["ewc"], 64)
    assert ewc.step_flops == finetune.step_flops  # its penalty is elementwise: the same step
    cfg = BudgetConfig(measure="flops")
    allotted = budget.allot(ewc, finetune, cfg, finetune_steps=32)
    # the Fisher takes ceil(1024 / 64) = 16 batches, at most as many as the task has: s + min(s, 16) <= 32 steps
    assert METHODS["ewc"]["max_fim_samples"] == 1024
    assert allotted["steps_per_task"] == 15 and allotted["extra_work"]["gradient_batches_per_task"] == 15
    assert allotted["gflops_per_sample"] == pytest.approx(2 * allotted["gflops_per_step"] / 64, rel=1e-3)
    cheap = budget.profile(tiny, "ewc", {**METHODS["ewc"], "max_fim_samples": 64}, 64)
    assert budget.allot(cheap, finetune, cfg, finetune_steps=32)["steps_per_task"] == 30
    # with memory: the Fisher and the anchor are two more copies of the weights
    assert ewc.memory["method"] == pytest.approx(2 * ewc.memory["weights"], rel=1e-3)
    assert budget.allot(ewc, finetune, BudgetConfig(measure="maf"), 32)["steps_per_task"] < 15


def test_profiles_are_deterministic_and_the_memory_extension_is_exact(tiny):
    first, second = (budget.profile(tiny, "lora", METHODS["lora"], 8) for _ in range(2))
    assert first.flops == second.flops and first.memory == second.memory
    model = copy_model(tiny)
    method = build_method("lora", METHODS["lora"])
    budget._second_task(model, method, torch.Generator().manual_seed(0))
    known = set(budget._storages(budget._held(model))) | set(budget._storages(budget._held(method._plain)))
    measured = budget._saved_bytes(budget._Step(model, method), budget._batch(model, 8, torch.Generator()), known)
    assert first.memory["activations"] == measured


@given(st.integers(-10**6, 10**6), st.integers(-10**6, 10**6), st.integers(-10**6, 10**6), st.integers(1, 4096))
def test_counts_extend_exactly_from_three_batch_sizes(a, b, c, batch):
    p = lambda x: a + b * x + c * x * x  # noqa: E731
    assert budget.at_batch([p(1), p(2), p(3)], batch) == p(batch)


def _profile(step: int, memory: int, fisher_batches: int = 0) -> budget.Profile:
    return budget.Profile("m", 8, {"forward/image/linear": step}, {"weights": memory}, parameters=0,
                          extra_work=lambda steps: ExtraWork(gradient_batches_per_task=min(steps, fisher_batches)))


@given(st.integers(1, 10**12), st.integers(1, 10**12), st.integers(1, 10**10), st.integers(1, 10**10),
       st.integers(1, 5000))
def test_steps_are_fifs_rule_rounded_down(flops_ft, flops_m, memory_ft, memory_m, steps_ft):
    """Without extra work, steps_m = floor(steps_ft x MAF_ft / MAF_m) exactly."""
    finetune, method = _profile(flops_ft, memory_ft), _profile(flops_m, memory_m)
    steps = budget.steps_within(method, finetune, finetune.task_flops(steps_ft), "maf")
    assert steps == steps_ft * flops_ft * memory_ft // (flops_m * memory_m)
    assert budget.steps_within(finetune, finetune, finetune.task_flops(steps_ft), "maf") == steps_ft


@given(st.integers(1, 10**6), st.integers(0, 200), st.integers(0, 10**9))
def test_steps_are_the_most_that_fit(step, fisher_batches, limit):
    method = _profile(step, 1, fisher_batches)
    steps = budget.fit_steps(method.task_flops, limit)
    assert steps == 0 or method.task_flops(steps) <= limit
    assert method.task_flops(steps + 1) > limit


def test_budget_params_are_checked(tmp_path):
    for key, value, expected in [("measure", "time", "budget.measure: 'time' is not allowed"),
                                 ("gflops_per_task", -1, "budget.gflops_per_task: must be > 0")]:
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        raw["budget"][key] = value
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
        with pytest.raises(ConfigError, match=expected):
            load_params(tmp_path / "params.yaml")


def test_a_budget_too_small_for_one_step_is_refused(tiny):
    finetune = budget.profile(tiny, "finetune", None, 8)
    with pytest.raises(ConfigError, match="do not fit one step of 'finetune'"):
        budget.allot(finetune, finetune, BudgetConfig(measure="maf", gflops_per_task=1e-3), finetune_steps=1)


def test_the_train_stage_trains_the_derived_steps(tiny_shards, tmp_path):
    """The train stage gives LNFit the steps its budget buys, records them, and trains exactly that many."""
    raw = dict(PARAMS)
    raw["train"] = {**raw["train"], "samples_per_task": 32, "optim": {**raw["train"]["optim"], "batch_size": 8}}
    raw["streams"] = {"s": {"file": str(REPO / "streams/fif_random.json"), "num_tasks": 2}}
    raw["experiments"] = {"lnfit": {"method": "lnfit", "stream": "s", "mixture": {"update": 1.0, "buffer": 0.0,
                                                                                  "pretraining": 0.0}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "params.yaml")
    expected = budget.plan(params, "lnfit")
    assert expected == budget.plan(params, "lnfit")  # the same on every run: checkpoints and DVC agree
    assert expected["steps_per_task"] > expected["finetune_steps_per_task"] == 4
    env = dict(os.environ, TQDM_DISABLE="1", CLIPFLUX_MONGO_URL="off")

    def stage(script: str, *args: str) -> None:
        proc = subprocess.run([sys.executable, str(REPO / "stages" / script), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]

    save_weights(create_model(params.model)[0], tmp_path / "base.pt")
    stage("build_stream.py", "--name", "s", "--shards", str(tiny_shards), "--out", "stream.json")
    stage("train.py", "--experiment", "lnfit", "--shards", str(tiny_shards), "--stream", "stream.json",
          "--base", "base.pt", "--out", "models", "--checkpoints", "checkpoints")
    run = next((tmp_path / "runs/train").glob("[0-9]*"))
    config = json.loads((run / "config.json").read_text())
    assert config["steps_per_task"] == expected["steps_per_task"] and config["budget"] == expected
    assert json.loads((tmp_path / "models/budget.json").read_text()) == expected
    losses = json.loads((run / "metrics.json").read_text())["train/loss"]["steps"]
    assert losses == list(range(2 * expected["steps_per_task"]))
