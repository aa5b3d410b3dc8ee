"""Continual model merging: merge each task's finetuned weights into a running merge (FiF's `*_paint`).

Fomo-in-Flux (Roth, Udandarao et al., NeurIPS 2024 D&B, arXiv 2408.14471; `continual_lib/ema_paint.py`)
after PAINT (Ilharco et al., "Patching open-vocabulary models by interpolating weights", NeurIPS 2022,
arXiv 2208.05592). The running merge starts as the zero-shot model; after task t it becomes

    merged_t = operator(finetuned_t, merged_{t-1}; base = zero-shot)

which is exactly FiF's "unrolled" merge over its stored checkpoints, kept online. `train_from` picks the
weights each next task starts from: the running merge (FiF's `ema_paint`), the previous task's finetuned
weights (training continues as in finetuning; merging only changes what is evaluated), or the zero-shot
weights (each task trained independently, then merged). The merge is what is evaluated.

The zero-shot weights and the running merge live on the host, as FiF keeps its merge checkpoints: `.cpu()`
copies (`continual_lib/utils/base_continual_learner.py:112-130`, `ema_paint.py:84-87`), put on the GPU only to
load a task's starting weights (`base_continual_learner.py:197-202`). Used only at task boundaries and for
evaluation, they take no accelerator memory during steps (`host_state`: the compute budget charges paint full
finetuning's memory), and merges run on the CPU whatever the training device, so a run resumed from a
checkpoint merges exactly as the uninterrupted run.

Operators that need two finetuned models meet FiF's unrolled merge at its first step, where the running merge is
the zero-shot model itself (task vector zero). Model Stock then finds cosine 0, ratio 0, and returns the zero-shot
model, after the first task and (training from the merge) after every later one: what FiF's code computes, kept
as it is; `train_from: finetuned` or another operator is the meaningful choice. MagMax and the random merge pick
between the new task vector and the running merge's, as FiF's do. The random merge draws from a generator seeded
by (seed, task), where FiF draws from torch's global one: resumable, and the same for every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from clipflux.config import ConfigError
from clipflux.methods import merging
from clipflux.methods.base import ExtraWork, Method, TaskContext, register
from clipflux.methods.weights import StateDict, load_weights_, with_weights


TASK_VECTOR_OPERATORS = ("task_arithmetic", "ties", "dare_ties", "breadcrumbs_ties")


@dataclass(frozen=True)
class LinesParams:
    """LiNeS layer-wise scaling of the merged task vector (FiF's `apply_lines`, `lines_params`: its default
    [0.5, 0.5, True, 'linear'], configs/config.yaml:344-349).

    Attributes:
        apply: scale by layer (first block alpha, last alpha + beta) instead of by `scale`.
        alpha, beta: the factors.
        shape: "linear", "quadratic" or "sqrt": how the factor grows with depth.
    """

    apply: bool = False
    alpha: float = 0.5
    beta: float = 0.5
    shape: merging.LinesShape = "linear"


@dataclass(frozen=True)
class PaintParams:
    """Hyperparameters of continual merging.

    Attributes:
        train_from: "merged", "finetuned" or "zeroshot": the weights each task after the first starts from.
        operator: "interpolation", "slerp", "task_arithmetic", "ties", "dare_ties", "breadcrumbs_ties", "magmax",
            "model_stock", "tall_masks" or "random" (`methods.merging`).
        alpha: interpolation and slerp: the weight of the newly finetuned model (FiF's default mean: 0.5).
        scale: the factor on the merged task vector of the task-vector operators (FiF: 1.0).
        density: TIES: fraction of each task vector kept by magnitude; DARE-TIES: probability of keeping an
            entry; Breadcrumbs: 1 - the smallest-magnitude fraction dropped (FiF's `prune_percentile` is
            1 - density; its default 0.7 is density 0.3).
        seed: DARE's random drops and the random merge's draws (one generator per task, from (seed, task)).
        top_drop: Breadcrumbs: the largest-magnitude fraction dropped (FiF's `top_prune_percentile`, 0.01).
        tall_lambda: TALL masks: an entry matters to a task if |tau_t| > lambda |tau - tau_t| (FiF: 0.4).
        tall_min_tasks: TALL masks: tasks that must agree to keep an entry (FiF's `pruning_threshold`, 0, which
            keeps every entry: task arithmetic; the TALL paper's consensus merging uses 2).
        lines: LiNeS layer-wise scaling, for the task-vector operators.
    """

    train_from: Literal["merged", "finetuned", "zeroshot"]
    operator: merging.Operator
    alpha: float
    scale: float
    density: float
    seed: int
    top_drop: float = 0.01
    tall_lambda: float = 0.4
    tall_min_tasks: int = 0
    lines: LinesParams = LinesParams()

    def validate(self, path: str) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"{path}.alpha: must be in [0, 1], got {self.alpha}")
        if not 0.0 < self.density <= 1.0:
            raise ConfigError(f"{path}.density: must be in (0, 1], got {self.density}")
        if self.operator == "breadcrumbs_ties" and not 0.0 <= self.top_drop < self.density:
            raise ConfigError(f"{path}.top_drop: must be in [0, density = {self.density}), got {self.top_drop}")
        if self.lines.apply and self.operator not in TASK_VECTOR_OPERATORS:
            raise ConfigError(f"{path}.lines.apply: LiNeS scales a merged task vector, which {self.operator!r} has "
                              f"none of; use it with one of {list(TASK_VECTOR_OPERATORS)}")


# Multiply-adds per weight of one merge (for the compute budget): interpolation, one lerp; slerp, three dot
# products and the weighted sum; task arithmetic, two task vectors, their sum and the scaled add; TIES, the
# task vectors, magnitudes, sign sums, the disjoint mean and the add; DARE-TIES, the rescaling besides.
# Breadcrumbs, the task vectors, a sort, the two masks, the sign sums, the disjoint mean and the add; MagMax, the
# task vectors, magnitudes, the selection and the add; Model Stock, the task vectors, three dot products, the
# average and the interpolation; TALL masks, the task vectors, their sum, two differences, the masks and the add;
# the random merge, the task vectors, the selection and the add.
MERGE_PASSES = {"interpolation": 1, "slerp": 5, "task_arithmetic": 4, "ties": 8, "dare_ties": 9,
                "breadcrumbs_ties": 10, "magmax": 5, "model_stock": 7, "tall_masks": 9, "random": 4}


def merge_into(params: PaintParams, merged: StateDict, finetuned: StateDict, zeroshot: StateDict,
               task: int) -> StateDict:
    """One continual merge step with the configured operator: FiF's `f_merge([new, running], zero_shot)`
    (ema_paint.py:103-108), the newly finetuned model first."""
    op, models = params.operator, [finetuned, merged]
    if op == "interpolation":
        return merging.interpolate(merged, finetuned, params.alpha)
    if op == "slerp":
        return merging.slerp(merged, finetuned, params.alpha)
    if op == "model_stock":
        return merging.model_stock(finetuned, merged, zeroshot)
    lines = params.lines
    scale = merging.lines_scaling(zeroshot, lines.alpha, lines.beta, lines.shape) if lines.apply else params.scale
    if op == "task_arithmetic":
        return merging.task_arithmetic(models, zeroshot, scale)
    if op == "ties":
        return merging.ties(models, zeroshot, params.density, scale)
    if op == "breadcrumbs_ties":
        return merging.breadcrumbs_ties(models, zeroshot, params.density, params.top_drop, scale)
    if op == "magmax":
        return merging.magmax(models, zeroshot, scale)
    if op == "tall_masks":
        return merging.tall_masks(models, zeroshot, scale, params.tall_lambda, params.tall_min_tasks)
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([params.seed, task]).generate_state(1)[0]))
    if op == "dare_ties":
        return merging.dare_ties(models, zeroshot, params.density, scale, generator)
    return merging.random_merge(models, zeroshot, scale, generator)


def on_host(state: dict[str, torch.Tensor]) -> StateDict:
    """Detached copies of a state's tensors on the CPU (never aliasing the given tensors)."""
    return {name: value.detach().to("cpu", copy=True) for name, value in state.items()}


@register("paint")
class Paint(Method):
    """Train each task with the CLIP loss, then merge it into the running merge, which is evaluated."""

    Params = PaintParams
    host_state = ("zeroshot", "merged")

    def setup(self, model: torch.nn.Module) -> None:
        super().setup(model)
        self.zeroshot = on_host(model.state_dict())
        self.merged = on_host(model.state_dict())
        self.merges = 0

    def begin_task(self, task: TaskContext) -> None:
        if task.index == 0 or self.params.train_from == "finetuned":
            return
        load_weights_(self.model, self.merged if self.params.train_from == "merged" else self.zeroshot)

    def extra_work(self, steps: int, batch_size: int) -> ExtraWork:
        return ExtraWork(weight_passes_per_task=MERGE_PASSES[self.params.operator])

    def end_task(self, task: TaskContext) -> None:
        self.merged = merge_into(self.params, self.merged, on_host(self.model.state_dict()), self.zeroshot,
                                 task.index)
        self.merges += 1

    def eval_model(self) -> torch.nn.Module:
        return with_weights(self.model, self.merged)

    def state_dict(self) -> dict[str, Any]:
        return {"zeroshot": on_host(self.zeroshot), "merged": on_host(self.merged), "merges": self.merges}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # back on the host, where the trainer may have moved a loaded state to the training device
        self.zeroshot, self.merged = on_host(state["zeroshot"]), on_host(state["merged"])
        self.merges = state["merges"]
