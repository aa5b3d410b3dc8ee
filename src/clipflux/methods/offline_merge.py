"""Offline merging: every task trains from the zero-shot weights; the evaluated model is one merge of every task's
finetuned weights so far, weighted from uniform to exponential (FiF's `offline_merge`).

Fomo-in-Flux (Roth, Udandarao et al., NeurIPS 2024 D&B, arXiv 2408.14471; continual_lib/offline_merge.py,
configs/experiment/offline_merge_*.yaml). Training always starts from the zero-shot weights
(`define_training_weights`, :354-360), the finetuned weights of each task are stored (`end_task`, :85-99), and
the evaluation weights are the merge of all of them (`define_evaluation_weights`, :101-347):

- interpolation weighs the checkpoints with `weighting` (oldest first; `merging.weights_of`); the other operators
  merge their task vectors over the zero-shot weights, as in `paint`;
- `include_zeroshot` adds the zero-shot weights as the oldest checkpoint (FiF's `include_zero_shot_in_merge`);
- without it, one finetuned checkpoint is evaluated as it is, unmerged (:283-285), where `paint`'s `all` merge
  (FiF's double merges) merges even one.

The zero-shot and finetuned weights live on the host, as FiF's checkpoint storage does (`host_state`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from clipflux.methods import merging
from clipflux.methods.base import ExtraWork, Method, TaskContext, register
from clipflux.methods.paint import MERGE_PASSES, MergeParams, merge_all, on_host
from clipflux.methods.weights import StateDict, load_weights_, with_weights


@dataclass(frozen=True, kw_only=True)
class OfflineMergeParams(MergeParams):
    """Hyperparameters of offline merging (and `MergeParams`).

    Attributes:
        weighting: interpolation's weights of the checkpoints (FiF's `interpolation_weighting`): uniform, linear,
            sqrt, quadratic, cubic, fifth, tenth, exp, log, or reverse_ any of them but uniform.
        include_zeroshot: merge the zero-shot weights too, as the oldest checkpoint.
    """

    weighting: merging.Weighting = "uniform"
    include_zeroshot: bool = False

    def validate(self, path: str) -> None:
        super().validate(path)
        self.check_many(f"{path}.operator")


@register("offline_merge")
class OfflineMerge(Method):
    """Train every task from the zero-shot weights; evaluate the merge of all tasks' finetuned weights."""

    Params = OfflineMergeParams
    host_state = ("zeroshot", "finetuned")

    def setup(self, model: torch.nn.Module) -> None:
        super().setup(model)
        self.zeroshot = on_host(model.state_dict())
        self.finetuned: list[StateDict] = []

    def begin_task(self, task: TaskContext) -> None:
        if task.index > 0:
            load_weights_(self.model, self.zeroshot)

    def extra_work(self, steps: int, batch_size: int) -> ExtraWork:
        return ExtraWork(weight_passes_per_task=MERGE_PASSES[self.params.operator])

    def end_task(self, task: TaskContext) -> None:
        self.finetuned.append(on_host(self.model.state_dict()))

    def evaluated_weights(self) -> StateDict:
        """What FiF evaluates after the tasks so far (offline_merge.py:164-347)."""
        models = [self.zeroshot, *self.finetuned] if self.params.include_zeroshot else self.finetuned
        if len(models) <= 1:
            return models[0] if models else self.zeroshot
        weights = merging.weights_of(self.params.weighting, len(models))
        return merge_all(self.params, models, self.zeroshot, len(self.finetuned) - 1, weights)

    def eval_model(self) -> torch.nn.Module:
        return with_weights(self.model, self.evaluated_weights())

    def state_dict(self) -> dict[str, Any]:
        return {"zeroshot": on_host(self.zeroshot), "finetuned": [on_host(f) for f in self.finetuned]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.zeroshot = on_host(state["zeroshot"])
        self.finetuned = [on_host(f) for f in state["finetuned"]]
