"""Compute budgets: FLOP counts (FiF's unit) against published figures and torch's own counter, FiF's cost
ordering, memory on the accelerator only (host state not charged), EWC's Fisher in its budget, the steps
derivation (property tests), `clipflux budget`, and the train stage training the derived steps."""

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

from clipflux import budget, cli, flops
from clipflux.config import BudgetConfig, ConfigError, load_params
from clipflux.methods import Method, TaskContext, build_method
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


def test_vit_b32_forward_matches_the_published_gflops():
    """FiF's unit, as open_clip's docs/model_profile.csv counts ViT-B-32 at 224 px (2 FLOPs per multiply-add):
    image tower 8.82 GFLOPs per sample, text tower 5.96 (counting one step only: seconds)."""
    model = budget.build_model("ViT-B-32")
    step = budget._Step(model, build_method("finetune", None))
    step.method.setup(model)
    batch = budget._batch(model, 1, torch.Generator().manual_seed(0))
    counts = flops.count_step(step, (batch["images"], batch["texts"]))
    gflops = {part: sum(v for k, v in counts.items() if k.startswith(part)) / 1e9
              for part in ("forward/image/", "forward/text/", "forward/", "backward/")}
    assert gflops["forward/image/"] == pytest.approx(8.82, rel=0.01)
    assert gflops["forward/text/"] == pytest.approx(5.96, rel=0.01)
    # the backward of full finetuning: weight and activation gradients, about twice the forward
    assert gflops["backward/"] == pytest.approx(2 * gflops["forward/"], rel=0.03)


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
    """The traced forward plus the derived backward equals FlopCounterMode's count of an executed step (FiF's
    counter: 2 FLOPs per multiply-add, no normalisations), at batch 4, extended from the counts at 1, 2, 3."""
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # LwF's teacher: torch's counter cannot see into the fused kernel
    try:
        counted = budget.profile(tiny, name, METHODS.get(name), batch_size=4)
        batch = budget._batch(tiny, 4, torch.Generator().manual_seed(1))
        executed = _real_step_flops(tiny, name, batch)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
    assert counted.step_flops == executed


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


class _Attention(torch.nn.Module):
    """Attention of trainable queries, keys and values (the step `count_step` traces)."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Parameter(torch.randn(3, 2, 4, 7, 16))

    def forward(self, scale: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv * scale
        return torch.nn.functional.scaled_dot_product_attention(q, k, v).sum()


def test_attention_is_counted_as_torch_counts_it_even_under_no_grad(tiny):
    """The known facts: a handler for aten::scaled_dot_product_attention (fvcore has none), and the step traced
    with gradients enabled even when the caller has them off (the fused attention path would hide work)."""
    step, scale = _Attention(), torch.ones(())
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)
    with counter:
        step(scale).backward()
    counted = flops.count_step(step, (scale,))
    assert counted["forward/other/attention"] > 0 and sum(counted.values()) == counter.get_total_flops()
    model_step = budget._Step(copy_model(tiny), build_method("finetune", None))
    model_step.method.setup(model_step.model)
    batch = budget._batch(tiny, 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        quiet = flops.count_step(model_step, (batch["images"], batch["texts"]))
    assert quiet == flops.count_step(model_step, (batch["images"], batch["texts"]))
    assert quiet["forward/image/attention"] > 0 and quiet["backward/image/linear"] > 0


def test_merges_train_full_finetunings_steps(tiny):
    """Paint keeps its snapshots on the host (FiF's ema_paint): the same memory and FLOPs as full finetuning, so
    the same steps (FiF's Table 4: merging methods train like full finetuning); a merge is elementwise work."""
    finetune = budget.profile(tiny, "finetune", None, 64)
    paint = budget.profile(tiny, "paint", METHODS["paint"], 64)
    assert paint.memory == finetune.memory and paint.memory["method"] == 0
    assert paint.step_flops == finetune.step_flops and paint.extra_work(58).weight_passes_per_task > 0
    for measure in ("maf", "flops"):
        allotted = budget.allot(paint, finetune, BudgetConfig(measure=measure), finetune_steps=58)
        assert allotted["steps_per_task"] == 58 and allotted["budget_used"] == 1.0
    method = build_method("paint", METHODS["paint"])
    budget._second_task(copy_model(tiny), method, torch.Generator().manual_seed(0))
    assert {t.device.type for t in [*method.zeroshot.values(), *method.merged.values()]} == {"cpu"}


class _Keeper(Method):
    """Full finetuning that keeps a copy of the weights (`self.copy`), and a scratch tensor (`self.scratch`)."""

    def setup(self, model: torch.nn.Module) -> None:
        super().setup(model)
        self.copy = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.scratch = torch.zeros(1000)


def test_host_state_is_not_charged_and_must_name_attributes(tiny):
    """Memory is what sits on the accelerator: attributes named in `host_state` are left out, the rest counted."""
    model = copy_model(tiny)

    def method_memory(host_state: tuple[str, ...]) -> dict[str, int]:
        method = type("Kept", (_Keeper,), {"host_state": host_state})(None)
        method.setup(model)
        step = budget._Step(model, method)
        return budget._memory(step, [budget._batch(model, n, torch.Generator()) for n in (1, 2, 3)], 4)

    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert method_memory(())["method"] == weights + 4000
    assert method_memory(("copy",))["method"] == 4000
    assert method_memory(("copy", "scratch"))["method"] == 0
    assert method_memory(("copy",))["activations"] == method_memory(())["activations"]
    with pytest.raises(AttributeError, match="names no attribute: \\['cpoy'\\]"):
        method_memory(("cpoy",))


@pytest.mark.parametrize("tasks, steps", [(20, 1420), (50, 568), (100, 284), (200, 142)])
def test_fifs_finetuning_steps_per_task(tasks, steps):
    assert budget.fif_finetune_steps(tasks, 512) == steps
    assert budget.fif_finetune_steps(tasks, 256) == 2 * steps  # the same samples


def test_the_budget_command_prints_fifs_table(capsys, monkeypatch):
    """`clipflux budget` with FiF's task counts: a steps column per count, full finetuning's steps from FiF's
    stream, hyperparameters overridden with --set, merges at full finetuning's steps."""
    monkeypatch.chdir(REPO)
    cli.main(["budget", "--model", "clipflux-tiny", "--batch-size", "512", "--tasks", "20", "200",
              "--methods", "finetune", "paint", "ewc", "--set", "ewc.max_fim_samples=50000"])
    out = capsys.readouterr().out
    assert "full finetuning: 1,420 steps, T=20" in out and "full finetuning: 142 steps, T=200" in out
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in out.splitlines() if line.startswith("| ")}
    assert rows["method"][6:8] == ["steps/task (T=20)", "steps/task (T=200)"]
    assert rows["finetune"][6:8] == ["1,420", "142"] and rows["paint"][6:8] == ["1,420", "142"]
    # EWC's Fisher over 50000 samples: ceil(50000 / 512) = 98 forward and backward passes per task
    assert int(rows["ewc"][6].replace(",", "")) + 98 <= 1420 and float(rows["ewc"][2].replace(",", "")) > float(
        rows["ewc"][1].replace(",", ""))
    with pytest.raises(ConfigError, match="--set ewc: expected METHOD.KEY=VALUE"):
        cli.run(["budget", "--model", "clipflux-tiny", "--methods", "ewc", "--set", "ewc"])
    # the command itself reports it in one line, no traceback, exit status 2
    with pytest.raises(SystemExit) as exit_:
        cli.main(["budget", "--model", "clipflux-tiny", "--methods", "ewc", "--set", "ewc"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("clipflux: error: --set ewc: expected METHOD.KEY=VALUE")


def test_ewc_pays_for_its_fisher_from_the_budget(tiny):
    finetune = budget.profile(tiny, "finetune", None, 64)
    ewc = budget.profile(tiny, "ewc", METHODS["ewc"], 64)
    assert ewc.step_flops == finetune.step_flops  # its penalty is elementwise: the same step
    cfg = BudgetConfig(measure="flops")
    allotted = budget.allot(ewc, finetune, cfg, finetune_steps=32)
    # the Fisher takes ceil(1024 / 64) = 16 batches, at most as many as the task has: s + min(s, 16) <= 32 steps
    assert METHODS["ewc"]["max_fim_samples"] == 1024
    assert allotted["steps_per_task"] == 16 and allotted["extra_work"]["gradient_batches_per_task"] == 16
    assert allotted["gflops_per_sample"] == pytest.approx(2 * allotted["gflops_per_step"] / 64, rel=1e-5)
    cheap = budget.profile(tiny, "ewc", {**METHODS["ewc"], "max_fim_samples": 64}, 64)
    assert budget.allot(cheap, finetune, cfg, finetune_steps=32)["steps_per_task"] == 31
    # with memory: the Fisher and the anchor, used in every step, are two more copies of the weights on the device
    assert ewc.memory["method"] == pytest.approx(2 * ewc.memory["weights"], rel=1e-3)
    assert budget.allot(ewc, finetune, BudgetConfig(measure="maf"), 32)["steps_per_task"] < 16


def test_profiles_are_deterministic_and_the_memory_extension_is_exact(tiny):
    first, second = (budget.profile(tiny, "lora", METHODS["lora"], 8) for _ in range(2))
    assert first.flops == second.flops and first.memory == second.memory
    model = copy_model(tiny)
    method = build_method("lora", METHODS["lora"])
    budget._second_task(model, method, torch.Generator().manual_seed(0))
    on_device = budget._held({"model": model, **budget._device_state(method)})
    known = set(budget._storages(on_device))
    measured = budget._saved_bytes(budget._Step(model, method), budget._batch(model, 8, torch.Generator()), known)
    assert first.memory["activations"] == measured


@given(st.integers(-10**6, 10**6), st.integers(-10**6, 10**6), st.integers(-10**6, 10**6), st.integers(1, 4096))
def test_counts_extend_exactly_from_three_batch_sizes(a, b, c, batch):
    p = lambda x: a + b * x + c * x * x  # noqa: E731
    assert budget.at_batch([p(1), p(2), p(3)], batch) == p(batch)


def _profile(step: int, memory: int, fisher_batches: int = 0) -> budget.Profile:
    return budget.Profile("m", 8, {"forward/image/linear": step}, {"weights": memory},
                          extra_work=lambda steps: ExtraWork(gradient_batches_per_task=min(steps, fisher_batches),
                                                             weight_passes_per_task=3))


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
    recorded = json.loads(next((tmp_path / "models").rglob("budget.json")).read_text())  # models/[seed_<s>/]
    # what the plan says, recorded as it is (the stage may add what it derives from it, such as steps by task)
    assert config["steps_per_task"] == expected["steps_per_task"]
    assert {k: config["budget"][k] for k in expected} == expected == {k: recorded[k] for k in expected}
    losses = json.loads((run / "metrics.json").read_text())["train/loss"]["steps"]
    assert losses == list(range(2 * expected["steps_per_task"]))
