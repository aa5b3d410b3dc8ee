"""Compute budgets as Fomo-in-Flux defines them (Roth, Udandarao et al., NeurIPS 2024 D&B, arXiv 2408.14471,
Table 4): what a training step of each method costs in FLOPs and in memory relative to full finetuning, their
product (memory-adjusted FLOPs, MAF), and the number of steps per task that fits every method into the same
budget.

A method is profiled for a model and a batch size on synthetic data (`profile`), in its second task (after
one `begin_task`/`end_task`), so that the state it keeps from earlier tasks exists and its loss has all its
terms:

- FLOPs in FiF's unit: 2 per multiply-add of matrix products, convolutions and attention, nothing else, as
  `torch.utils.flop_counter.FlopCounterMode` counts them (FiF's `flops_computation.py`; open_clip's
  `docs/model_profile.csv`: ViT-B/32 at 224 px is 8.82 GFLOPs per sample for the image tower, 5.96 for the
  text tower). `clipflux.flops` counts one training step: the forward of both towers and of the method's
  loss, a teacher's included, and the backward where gradients flow. Work a method does outside its steps
  counts when it is of that kind: EWC's Fisher estimate, a forward and backward pass per batch
  (`ExtraWork.gradient_batches_per_task`), charged to its task. Elementwise work is not counted, inside a
  step (the optimizer's update, normalisations) or outside (merges, EMA and SI updates:
  `ExtraWork.weight_passes_*`, recorded with the budget only), as FlopCounterMode around FiF's `end_task`
  counts a merge as nothing: so merging methods train full finetuning's steps, as in FiF's Table 4.
  Steps are counted at batch sizes 1, 2 and 3 and extended exactly to the training batch size: every count
  is a polynomial of degree at most 2 in it (the towers are linear, the loss's similarity matrix quadratic,
  adapter products constant).
- Memory: what must sit on the accelerator during a step, at the end of its forward pass where training
  memory peaks: every weight of the model, a gradient and AdamW's two moments per trainable parameter, every
  tensor the method keeps and uses in its steps (EWC's Fisher and anchor, SI's importance, LwF's teacher, EMA
  weights), and the tensors autograd saves for the backward pass (`torch.autograd.graph.saved_tensors_hooks`,
  once per storage, at batch sizes 1, 2 and 3, extended as above). What a method keeps on the host between
  steps (`Method.host_state`: the merge snapshots of `paint`, as FiF's `ema_paint` keeps them on the CPU; the
  adapters' unadapted copy for evaluation) is not charged. It depends on shapes only, so it is the same on
  every machine and so are the steps derived from it. On a GPU, `cuda_peak_bytes` measures the allocator's
  peak over real steps instead (FiF's measure).

Each method then gets the most steps per task whose cost fits the budget (`steps_within`): with memory
adjustment, steps x FLOPs per step x memory multiplier <= the budget, i.e. steps_m = steps_ft x MAF_ft / MAF_m
rounded down, with the per-task extras (EWC's Fisher) taken from the same budget.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator, Sequence

import open_clip
import torch

from clipflux.config import BudgetConfig, ConfigError, ModelConfig, Params
from clipflux.flops import count_step
from clipflux.methods import Method, TaskContext, build_method
from clipflux.methods.base import ExtraWork
from clipflux.methods.weights import copy_model
from clipflux.models import create_model, image_size, is_batchnorm, register_configs

PROBE_BATCHES = (1, 2, 3)
# FiF's study (Table 4): full finetuning trains 28,400 steps of 512 samples over the stream, split into tasks:
# 1420 / 568 / 284 / 142 steps per task for 20 / 50 / 100 / 200 tasks.
FIF_STREAM_SAMPLES = 28_400 * 512


def fif_finetune_steps(tasks: int, batch_size: int) -> int:
    """Full finetuning's steps per task in FiF's study of `tasks` tasks at `batch_size` (its samples, rounded down)."""
    return max(1, FIF_STREAM_SAMPLES // (tasks * batch_size))


def at_batch(values: Sequence[int], batch: int) -> int:
    """The quadratic through (1, v1), (2, v2), (3, v3) at `batch` (Lagrange's form; exact in integers)."""
    v1, v2, v3 = values
    return (v1 * ((batch - 2) * (batch - 3) // 2) - v2 * (batch - 1) * (batch - 3)
            + v3 * ((batch - 1) * (batch - 2) // 2))


@dataclass(frozen=True)
class Profile:
    """One method's cost for a model at a batch size (see the module docstring).

    Attributes:
        method: its registered name.
        batch_size: the training batch size the counts are for.
        flops: FLOPs (FiF's unit) of one training step by "phase/part/operator" (`clipflux.flops.count_step`).
        memory: bytes on the accelerator at a step's peak, by part ("weights", "gradients", "optimizer",
            "method", "activations"), or the allocator's "cuda_peak".
        extra_work: the method's work besides its steps in a task of a given number of steps.
    """

    method: str
    batch_size: int
    flops: dict[str, int]
    memory: dict[str, int]
    extra_work: Callable[[int], ExtraWork]

    @property
    def step_flops(self) -> int:
        """FLOPs of one training step."""
        return sum(self.flops.values())

    @property
    def memory_bytes(self) -> int:
        """Bytes on the accelerator at a step's peak."""
        return sum(self.memory.values())

    def task_flops(self, steps: int) -> int:
        """FLOPs of a task of `steps` steps, with the extra forward and backward passes (EWC's Fisher).

        The extra work's elementwise passes over the weights are not counted (see the module docstring).
        """
        return (steps + self.extra_work(steps).gradient_batches_per_task) * self.step_flops


# -- probing a method ---------------------------------------------------------------------------------


class _Step(torch.nn.Module):
    """The traced and measured part of a training step: the model's forward and the method's loss."""

    def __init__(self, model: torch.nn.Module, method: Method):
        super().__init__()
        self.model = model
        self.method = method  # not a module: what its loss runs (a teacher) counts outside the model

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        return self.method.loss({"images": images, "texts": texts}, self.model(images, texts))


def _batch(model: torch.nn.Module, size: int, generator: torch.Generator,
           device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Random images and token ids of the model's shapes (costs do not depend on the values)."""
    side = image_size(model)
    images = torch.randn(size, 3, side, side, generator=generator)
    texts = torch.randint(1, model.vocab_size, (size, model.context_length), generator=generator)
    return {"images": images.to(device), "texts": texts.to(device)}


def _second_task(model: torch.nn.Module, method: Method, generator: torch.Generator,
                 device: torch.device | str = "cpu") -> None:
    """Set the method up and pass one task boundary, so that it holds what it holds in later tasks."""

    def batches(n: int) -> Iterator[dict[str, torch.Tensor]]:
        return (_batch(model, 1, generator, device) for _ in range(min(n, 1)))

    method.setup(model)
    _probe_mode(model)
    first = TaskContext(index=0, num_tasks=2, steps=1, batches=batches)
    method.begin_task(first)
    method.end_task(first)
    method.begin_task(TaskContext(index=1, num_tasks=2, steps=1, batches=batches))
    _probe_mode(model)


def _probe_mode(model: torch.nn.Module) -> None:
    """Training mode, with BatchNorm layers (a ResNet tower's) on their running statistics: batch statistics
    are undefined at the probe batch of 1, and they cost a few operations per activation, not a matmul."""
    model.train()
    for module in model.modules():
        if is_batchnorm(module):
            module.eval()


def _held(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor reachable from `value` through modules, mappings and sequences."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, torch.nn.Module):
        yield from value.parameters()
        yield from value.buffers()
    elif isinstance(value, dict):
        for item in value.values():
            yield from _held(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _held(item)


def _storages(tensors: Iterator[torch.Tensor]) -> dict[int, int]:
    """{storage address: bytes}: tensors sharing a storage count once."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def _saved_bytes(step: _Step, batch: dict[str, torch.Tensor], known: set[int]) -> int:
    """Bytes of the storages autograd holds for the backward pass at the end of a step's forward, besides `known`.

    Tensors saved by parts of the graph that die during the forward (a weight computed and thrown away) are
    not held at the peak: only those still alive when the forward ends count, each storage once.
    """
    saved: list[weakref.ref] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        # The graph keeps a detached alias: the same storage, without the reference cycle that a saved output
        # holding its own grad_fn would make (which would keep the graph, and the model, alive after the step).
        alias = tensor.detach()
        saved.append(weakref.ref(alias))
        return alias

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = step(batch["images"], batch["texts"])
    held = _storages(t for t in (ref() for ref in saved) if t is not None)
    del loss
    return sum(size for address, size in held.items() if address not in known)


def _device_state(method: Method) -> dict[str, Any]:
    """The method's attributes that sit on the accelerator during a step: all but the model and `host_state`."""
    missing = set(method.host_state) - vars(method).keys()
    if missing:
        raise AttributeError(f"{type(method).__name__}.host_state names no attribute: {sorted(missing)}")
    return {k: v for k, v in vars(method).items() if v is not method.model and k not in method.host_state}


def _memory(step: _Step, batches: list[dict[str, torch.Tensor]], batch_size: int) -> dict[str, int]:
    """Bytes on the accelerator at the end of a step's forward pass, by part (see the module docstring)."""
    model, method = step.model, step.method
    weights = _storages(_held(model))
    kept = {k: v for k, v in _storages(_held(_device_state(method))).items() if k not in weights}
    gradients = sum(p.numel() * p.element_size() for p in method.trainable_parameters())
    saved = [_saved_bytes(step, batch, set(weights) | set(kept)) for batch in batches]
    return {"weights": sum(weights.values()), "gradients": gradients, "optimizer": 2 * gradients,
            "method": sum(kept.values()), "activations": at_batch(saved, batch_size)}


def profile(model: torch.nn.Module, name: str, raw_params: dict | None, batch_size: int) -> Profile:
    """Profile method `name` (hyperparameters `raw_params`) on a copy of `model` at `batch_size`.

    Only the model's architecture matters, not its weights; the model itself is left unchanged.
    """
    model = copy_model(model)
    method = build_method(name, raw_params)
    generator = torch.Generator().manual_seed(0)
    _second_task(model, method, generator)
    step = _Step(model, method)
    batches = [_batch(model, size, generator) for size in PROBE_BATCHES]
    counts = [count_step(step, (batch["images"], batch["texts"])) for batch in batches]
    flops = {key: at_batch([c[key] for c in counts], batch_size) for key in sorted(set().union(*counts))}
    return Profile(name, batch_size, flops, _memory(step, batches, batch_size),
                   extra_work=partial(build_method(name, raw_params).extra_work, batch_size=batch_size))


def cuda_peak_bytes(model: torch.nn.Module, name: str, raw_params: dict | None, batch_size: int) -> int:
    """FiF's memory measure on a GPU: the allocator's peak over a training step of the method in its second
    task (forward, loss, backward, AdamW step, `after_step`), with everything it holds on the device."""
    device = torch.device("cuda")
    model = copy_model(model).to(device)
    method = build_method(name, raw_params)
    generator = torch.Generator().manual_seed(0)
    _second_task(model, method, generator, device)
    optimizer = torch.optim.AdamW(method.trainable_parameters())
    batch = _batch(model, batch_size, generator, device)
    for _ in range(2):  # AdamW allocates its moments in its first step: the second is the steady state
        torch.cuda.reset_peak_memory_stats(device)
        loss = method.loss(batch, model(batch["images"], batch["texts"]))
        optimizer.zero_grad(set_to_none=True)  # as the trainer: the last step's gradients live through forward
        loss.backward()
        optimizer.step()
        method.after_step()
    return torch.cuda.max_memory_allocated(device)


# -- steps from the budget ----------------------------------------------------------------------------


def fit_steps(cost: Callable[[int], int], limit: int) -> int:
    """The most steps s with cost(s) <= limit, for a cost that strictly increases with s (0 if none fits)."""
    if cost(1) > limit:
        return 0
    low, high = 1, 2
    while cost(high) <= limit:
        low, high = high, 2 * high
    while high - low > 1:  # cost(low) <= limit < cost(high)
        middle = (low + high) // 2
        low, high = (middle, high) if cost(middle) <= limit else (low, middle)
    return low


def steps_within(method: Profile, finetune: Profile, budget: int, measure: str) -> int:
    """The most steps per task of `method` within `budget` FLOPs per task.

    With measure "maf" the budget is at full finetuning's memory, and a method's FLOPs count times its memory
    multiplier (memory / full finetuning's memory); with "flops" they count as they are.
    """
    if measure == "maf":
        return fit_steps(lambda s: method.task_flops(s) * method.memory_bytes, budget * finetune.memory_bytes)
    return fit_steps(method.task_flops, budget)


def _significant(x: float) -> float:
    return float(f"{x:.6g}")


def summary(method: Profile, finetune: Profile, steps: int, budget: int, measure: str) -> dict[str, Any]:
    """What a method gets and spends per task (recorded in the train stage's config and in `budget.json`)."""
    multiplier = method.memory_bytes / finetune.memory_bytes
    samples = steps * method.batch_size
    task = method.task_flops(steps)
    return {"method": method.method, "measure": measure, "steps_per_task": steps, "samples_per_task": samples,
            "budget_gflops_per_task": _significant(budget / 1e9),
            "gflops_per_step": _significant(method.step_flops / 1e9),
            "gflops_per_sample": _significant(task / samples / 1e9),  # extra work amortised over the task
            "memory_mib": _significant(method.memory_bytes / 2 ** 20),
            "memory_multiplier": _significant(multiplier),
            "maf_per_sample": _significant(task / samples / 1e9 * multiplier),
            "budget_used": _significant(task * (multiplier if measure == "maf" else 1.0) / budget),
            "extra_work": dataclasses.asdict(method.extra_work(steps))}


def allot(method: Profile, finetune: Profile, cfg: BudgetConfig, finetune_steps: int) -> dict[str, Any]:
    """A method's steps per task under budget `cfg`, and what they cost (`summary`).

    Args:
        method, finetune: profiles of the method and of full finetuning at the same batch size.
        cfg: the budget: `gflops_per_task`, else what full finetuning spends on `finetune_steps` steps.
        finetune_steps: full finetuning's steps per task.

    Raises:
        ConfigError: the budget is too small for a single step of the method.
    """
    budget = finetune.task_flops(finetune_steps) if cfg.gflops_per_task is None else round(cfg.gflops_per_task * 1e9)
    measure = "flops" if cfg.measure == "samples" else cfg.measure
    reference = steps_within(finetune, finetune, budget, measure)
    # "samples": every method trains as many steps as full finetuning
    steps = reference if cfg.measure == "samples" else steps_within(method, finetune, budget, measure)
    if steps == 0:
        raise ConfigError(f"budget: {budget / 1e9:.4g} GFLOPs per task do not fit one step of {method.method!r} "
                          f"({method.task_flops(1) / 1e9:.4g} GFLOPs, memory "
                          f"x{method.memory_bytes / finetune.memory_bytes:.3g})")
    return summary(method, finetune, steps, budget, cfg.measure) | {"finetune_steps_per_task": reference}


def build_model(name: str, size: int | None = None) -> torch.nn.Module:
    """Architecture `name` with random weights (a budget does not depend on them), at image side `size`."""
    if size is None:
        return create_model(ModelConfig(name))[0]
    register_configs()
    if name not in open_clip.list_models():
        raise ValueError(f"{name!r} is not an open_clip architecture or a configs/models/*.json file")
    return open_clip.create_model(name, pretrained=None, force_image_size=size)


def profiles(params: Params, methods: Sequence[str], model: torch.nn.Module, batch_size: int,
             cuda: bool = False) -> dict[str, Profile]:
    """`profile` of full finetuning and of each of `methods` (hyperparameters from params.yaml) on `model`.

    With `cuda`, memory is the CUDA allocator's peak over real steps (`cuda_peak_bytes`) instead of the
    accounting; the train stage always uses the accounting, which is the same on every machine.
    """
    def measured(name: str) -> Profile:
        found = profile(model, name, params.methods.get(name), batch_size)
        if not cuda:
            return found
        peak = cuda_peak_bytes(model, name, params.methods.get(name), batch_size)
        return dataclasses.replace(found, memory={"cuda_peak": peak})

    return {name: measured(name) for name in dict.fromkeys(["finetune", *methods])}


def compare(params: Params, methods: Sequence[str], model: torch.nn.Module, batch_size: int, finetune_steps: int,
            cfg: BudgetConfig, cuda: bool = False) -> list[dict[str, Any]]:
    """`allot` for each of `methods` against full finetuning on `model` (see `profiles`)."""
    found = profiles(params, methods, model, batch_size, cuda)
    return [allot(found[name], found["finetune"], cfg, finetune_steps) for name in methods]


def plan(params: Params, method: str) -> dict[str, Any]:
    """The steps per task of `method` under params.yaml's budget, and what they cost (see `allot`).

    With `budget.measure: samples` every method takes the steps of `train.samples_per_task` samples (TiC's
    budget); the method is profiled all the same, so that what it spends is recorded (the report's compute).
    """
    cfg, batch_size = params.budget, params.train.optim.batch_size
    finetune_steps = math.ceil(params.train.samples_per_task / batch_size)
    with torch.random.fork_rng(devices=[]):  # profiling leaves the random state of training as it was
        model = build_model(params.model.name)
        return compare(params, [method], model, batch_size, finetune_steps, cfg)[0]


def table(columns: dict[int | None, list[dict[str, Any]]]) -> str:
    """FiF's Table 4 as markdown, from `allot`'s rows per number of tasks (None: no total over the stream).

    Per method: GFLOPs per step (FiF's "Per-Task GFlops") and with the extra work amortised over the first
    column's steps, memory and its multiplier, MAF per step (FiF's "Per-Task MAFs", with the extra work), steps
    per task for each number of tasks, and the samples over the first stream.
    """
    (tasks, first), *_ = columns.items()
    head = ["method", "GFLOPs/step", "with extra work", "memory (MiB)", "memory x", "MAF/step",
            *(f"steps/task (T={t})" if t else "steps/task" for t in columns)]
    head += [f"samples (T={tasks})"] if tasks else ["samples/task"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for i, r in enumerate(first):
        extra = r["gflops_per_step"] * (1 + r["extra_work"]["gradient_batches_per_task"] / r["steps_per_task"])
        steps = [f"{rows[i]['steps_per_task']:,}" for rows in columns.values()]
        lines.append(f"| {r['method']} | {r['gflops_per_step']:,.6g} | {extra:,.6g} | {r['memory_mib']:,.0f} "
                     f"| {r['memory_multiplier']:.4f} | {extra * r['memory_multiplier']:,.6g} | {' | '.join(steps)} "
                     f"| {r['samples_per_task'] * (tasks or 1):,} |")
    return "\n".join(lines)
