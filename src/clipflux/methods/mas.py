"""Memory Aware Synapses: a quadratic penalty weighted by how sensitive the model's output is to each parameter,
measured without labels.

Aljundi et al., "Memory Aware Synapses: Learning what (not) to forget", ECCV 2018 (arXiv 1711.09601), as FACIL
and Avalanche run it (mmasana/FACIL src/approach/mas.py; ContinualAI/avalanche
avalanche/training/plugins/mas.py, "Implementation based on FACIL"):

    loss = CLIP loss + lambda / 2 * sum_i Omega_i (theta_i - theta*_i)^2
    at the end of each task: Omega <- alpha * Omega + (1 - alpha) * Omega_task,  theta* <- theta
    Omega_task = sum over batches of |d mean_x ||F(x)||_2 / d theta| * batch size / samples

F(x), the output whose sensitivity counts, is CLIP's: the row of image-to-text similarity logits of each image
of the batch against the batch's texts (what `lwf` distils). Omega starts at zero (Avalanche initialises it so),
so the first task trains without penalty. The importance batches are the task's own, from the task context's
separate random stream, up to `max_samples` samples (as EWC's Fisher).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from clipflux.config import ConfigError
from clipflux.methods.base import ExtraWork, Method, TaskContext, clip_loss, register
from clipflux.methods.lwf import similarity_logits
from clipflux.methods.weights import clone_tensors, quadratic_penalty, trainable, trainable_values


@dataclass(frozen=True)
class MASParams:
    """`reg`: the penalty's lambda (FACIL's lamb, Avalanche's lambda_reg); `alpha`: the old importance's share in
    the update (FACIL and Avalanche: 0.5); `max_samples`: samples of the task the importance is measured on."""

    reg: float
    alpha: float
    max_samples: int

    def validate(self, path: str) -> None:
        if self.reg < 0 or not 0.0 <= self.alpha <= 1.0 or self.max_samples <= 0:
            raise ConfigError(f"{path}: need reg >= 0, 0 <= alpha <= 1, max_samples > 0; got {self}")


def output_sensitivity(model: torch.nn.Module, batches, max_samples: int) -> dict[str, torch.Tensor]:
    """Per trainable parameter, the sample-weighted mean over batches of |gradient of the batch's mean L2 norm of
    the similarity-logit rows| (FACIL's `estimate_parameter_importance`)."""
    params = trainable(model)
    importance = {name: torch.zeros_like(p) for name, p in params.items()}
    seen = 0
    for batch in batches:
        norm = torch.linalg.vector_norm(similarity_logits(model(batch["images"], batch["texts"])), dim=1).mean()
        grads = torch.autograd.grad(norm, list(params.values()), allow_unused=True)
        size = len(batch["images"])
        for name, grad in zip(params, grads):
            if grad is not None:
                importance[name] += grad.detach().abs() * size
        seen += size
        if seen >= max_samples:
            break
    return {name: value / max(seen, 1) for name, value in importance.items()}


@register("mas")
class MAS(Method):
    """MAS on every trainable parameter."""

    Params = MASParams

    def setup(self, model: torch.nn.Module) -> None:
        super().setup(model)
        self.importance: dict[str, torch.Tensor] | None = None
        self.anchor: dict[str, torch.Tensor] | None = None

    def loss(self, batch: dict[str, torch.Tensor], out: tuple) -> torch.Tensor:
        return clip_loss(out) + self.params.reg / 2 * quadratic_penalty(self.model, self.importance, self.anchor)

    def extra_work(self, steps: int, batch_size: int) -> ExtraWork:
        # The importance: a forward and backward pass per batch (until max_samples), then one blend into Omega.
        batches = min(steps, math.ceil(self.params.max_samples / batch_size))
        return ExtraWork(gradient_batches_per_task=batches, weight_passes_per_task=batches + 1)

    def end_task(self, task: TaskContext) -> None:
        fresh = output_sensitivity(self.model, task.batches(task.steps), self.params.max_samples)
        old = self.importance or {name: torch.zeros_like(value) for name, value in fresh.items()}
        self.importance = {n: self.params.alpha * old[n] + (1 - self.params.alpha) * fresh[n] for n in fresh}
        self.anchor = trainable_values(self.model)

    def state_dict(self) -> dict[str, Any]:
        return {"importance": clone_tensors(self.importance), "anchor": clone_tensors(self.anchor)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.importance, self.anchor = clone_tensors(state["importance"]), clone_tensors(state["anchor"])
