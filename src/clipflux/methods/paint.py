"""Continual model merging: merge each task's finetuned weights into a running merge (FiF's `*_paint`).

Fomo-in-Flux (Roth, Udandarao et al., NeurIPS 2024 D&B, arXiv 2408.14471; `continual_lib/ema_paint.py`)
after PAINT (Ilharco et al., "Patching open-vocabulary models by interpolating weights", NeurIPS 2022,
arXiv 2208.05592). The running merge starts as the zero-shot model; after task t it becomes

    merged_t = operator(finetuned_t, merged_{t-1}; base = zero-shot)

which is exactly `ema_paint`'s unrolled merge over its stored checkpoints [zero-shot, finetuned_1, ...], kept
online. Two choices make FiF's other merging regimes, each a choice among these weights after task t:

- `merged`: the running merge above (FiF's `ema_paint.py` and `zs_paint.py` `unrolled_merge`, from the zero-shot
  model);
- `unrolled`: the double merges' unrolled merge over the finetuned checkpoints only, from the first:
  finetuned_1 after task 1, then operator(finetuned_t, unrolled_{t-1}) (double_merge_base.py:104-113, called with
  `running[1:]`);
- `all`: one merge of every task's finetuned weights (`all_merge`, double_merge_base.py:115-119), weighted
  equally (the double merges reset the interpolation weights to None, uniform);
- `wise`: operator(finetuned_t, zero-shot), the last task merged with the zero-shot model (`ft_paint.py`);
- `finetuned`: the last task's weights ("ft"); `zeroshot` (training only).

`train_from` picks the weights each task after the first starts from, `evaluate` those evaluated after each
task. FiF's `ema_paint` is merged/merged, `zs_paint` zeroshot/merged, `ft_paint` wise/wise, and
`double_merge_<train>_<eval>.py` is <train>/<eval> with ft = finetuned and zs = zeroshot (`all_all`, `all_ft`,
`all_unrolled`, `ft_all`, `ft_unrolled`, `unrolled_all`, `unrolled_ft`, `zs_unrolled`). Where a double merge also
runs an all-merge (`all_unrolled`, `unrolled_all`), FiF resets the interpolation weights to uniform before its
unrolled merge too, so there `alpha` acts as 0.5 in FiF; here `alpha` is used as configured (keep 0.5 to
match). FiF's offline merge, with its weightings, is `offline_merge`.

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
PAIRWISE_OPERATORS = ("slerp", "model_stock")


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


@dataclass(frozen=True, kw_only=True)
class MergeParams:
    """How models are merged (shared by `paint` and `offline_merge`).

    Attributes:
        operator: "interpolation", "slerp", "task_arithmetic", "ties", "dare_ties", "breadcrumbs_ties", "magmax",
            "model_stock", "tall_masks" or "random" (`methods.merging`).
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

    operator: merging.Operator
    scale: float
    density: float
    seed: int
    top_drop: float = 0.01
    tall_lambda: float = 0.4
    tall_min_tasks: int = 0
    lines: LinesParams = LinesParams()

    def validate(self, path: str) -> None:
        if not 0.0 < self.density <= 1.0:
            raise ConfigError(f"{path}.density: must be in (0, 1], got {self.density}")
        if self.operator == "breadcrumbs_ties" and not 0.0 <= self.top_drop < self.density:
            raise ConfigError(f"{path}.top_drop: must be in [0, density = {self.density}), got {self.top_drop}")
        if self.lines.apply and self.operator not in TASK_VECTOR_OPERATORS:
            raise ConfigError(f"{path}.lines.apply: LiNeS scales a merged task vector, which {self.operator!r} has "
                              f"none of; use it with one of {list(TASK_VECTOR_OPERATORS)}")

    def check_many(self, key: str) -> None:
        """Raise ConfigError where `key` asks this operator to merge more than two models at once."""
        if self.operator in PAIRWISE_OPERATORS:
            raise ConfigError(f"{key}: {self.operator} merges two models only (FiF's SLERP and ModelStock raise for "
                              f"more: merge.py:448, 884-887); use another operator or an unrolled merge")


@dataclass(frozen=True, kw_only=True)
class PaintParams(MergeParams):
    """Hyperparameters of continual merging (and `MergeParams`).

    Attributes:
        train_from: "merged", "unrolled", "all", "wise", "finetuned" or "zeroshot": the weights each task after
            the first starts from (see the module docstring).
        evaluate: "merged", "unrolled", "all", "wise" or "finetuned": the weights evaluated after each task.
        alpha: interpolation and slerp into the running merge: the weight of the newly finetuned model (FiF's
            default mean: 0.5).
    """

    train_from: Literal["merged", "unrolled", "all", "wise", "finetuned", "zeroshot"]
    alpha: float
    evaluate: Literal["merged", "unrolled", "all", "wise", "finetuned"] = "merged"

    def validate(self, path: str) -> None:
        super().validate(path)
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"{path}.alpha: must be in [0, 1], got {self.alpha}")
        for key in ("train_from", "evaluate"):
            if getattr(self, key) == "all":
                self.check_many(f"{path}.{key}")


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
    (ema_paint.py:103-108, double_merge_base.py:119-128), the newly finetuned model first."""
    op = params.operator
    if op == "interpolation":
        return merging.interpolate(merged, finetuned, params.alpha)
    if op == "slerp":
        return merging.slerp(merged, finetuned, params.alpha)
    if op == "model_stock":
        return merging.model_stock(finetuned, merged, zeroshot)
    return merge_task_vectors(params, [finetuned, merged], zeroshot, task)


def merge_all(params: MergeParams, models: list[StateDict], zeroshot: StateDict, task: int,
              weights: list[float] | None = None) -> StateDict:
    """One merge of many models at once (FiF's `all_merge`, double_merge_base.py:130-134): interpolation is their
    weighted average (uniform without `weights`), the other operators merge their task vectors."""
    if params.operator == "interpolation":
        return merging.weighted_average(models, weights or merging.weights_of("uniform", len(models)))
    return merge_task_vectors(params, models, zeroshot, task)


def merge_task_vectors(params: MergeParams, models: list[StateDict], zeroshot: StateDict, task: int) -> StateDict:
    """The task-vector operators (all but interpolation, slerp and Model Stock) on `models` over `zeroshot`."""
    op, lines = params.operator, params.lines
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
    if op == "random":
        return merging.random_merge(models, zeroshot, scale, generator)
    raise ValueError(f"{op} does not merge task vectors")


def on_host(state: dict[str, torch.Tensor]) -> StateDict:
    """Detached copies of a state's tensors on the CPU (never aliasing the given tensors)."""
    return {name: value.detach().to("cpu", copy=True) for name, value in state.items()}


@register("paint")
class Paint(Method):
    """Train each task with the CLIP loss, then merge it (into the running merge, the unrolled merge, with every
    earlier task, or with the zero-shot model); the weights chosen by `evaluate` are evaluated."""

    Params = PaintParams
    host_state = ("zeroshot", "merged", "unrolled", "wise", "finetuned")

    def setup(self, model: torch.nn.Module) -> None:
        super().setup(model)
        self.zeroshot = on_host(model.state_dict())
        self.merged = on_host(model.state_dict())
        self.unrolled: StateDict | None = None  # after the first task
        self.wise: StateDict | None = None
        self.finetuned: list[StateDict] = []  # every task's finetuned weights, kept only for `all` merges
        self.merges = 0

    def _uses(self, weights: str) -> bool:
        return weights in (self.params.train_from, self.params.evaluate)

    def _weights(self, kind: str) -> StateDict:
        if kind == "all":
            return merge_all(self.params, self.finetuned, self.zeroshot, self.merges - 1)
        return {"merged": self.merged, "unrolled": self.unrolled, "wise": self.wise, "zeroshot": self.zeroshot}[kind]

    def begin_task(self, task: TaskContext) -> None:
        if task.index == 0 or self.params.train_from == "finetuned":
            return
        load_weights_(self.model, self._weights(self.params.train_from))

    def extra_work(self, steps: int, batch_size: int) -> ExtraWork:
        # one merge per task for each kind of merged weights in use (an all-merge charged as one merge)
        merges = sum(self._uses(kind) for kind in ("merged", "unrolled", "all", "wise"))
        return ExtraWork(weight_passes_per_task=MERGE_PASSES[self.params.operator] * merges)

    def end_task(self, task: TaskContext) -> None:
        finetuned = on_host(self.model.state_dict())
        if self._uses("all"):
            self.finetuned.append(finetuned)
        if self._uses("merged"):
            self.merged = merge_into(self.params, self.merged, finetuned, self.zeroshot, task.index)
        if self._uses("unrolled"):
            self.unrolled = finetuned if self.unrolled is None else merge_into(
                self.params, self.unrolled, finetuned, self.zeroshot, task.index)
        if self._uses("wise"):
            self.wise = merge_into(self.params, self.zeroshot, finetuned, self.zeroshot, task.index)
        self.merges += 1

    def eval_model(self) -> torch.nn.Module:
        if self.params.evaluate == "finetuned":
            return self.model
        return with_weights(self.model, self._weights(self.params.evaluate))

    def state_dict(self) -> dict[str, Any]:
        def copy(state: StateDict | None) -> StateDict | None:
            return None if state is None else on_host(state)

        return {"zeroshot": on_host(self.zeroshot), "merged": on_host(self.merged), "unrolled": copy(self.unrolled),
                "wise": copy(self.wise), "finetuned": [on_host(f) for f in self.finetuned], "merges": self.merges}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # back on the host, where the trainer may have moved a loaded state to the training device
        self.zeroshot, self.merged = on_host(state["zeroshot"]), on_host(state["merged"])
        self.unrolled = None if state["unrolled"] is None else on_host(state["unrolled"])
        self.wise = None if state["wise"] is None else on_host(state["wise"])
        self.finetuned = [on_host(f) for f in state["finetuned"]]
        self.merges = state["merges"]
