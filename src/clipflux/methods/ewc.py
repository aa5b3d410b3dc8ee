"""Online EWC: a quadratic penalty that keeps parameters near their values after the previous tasks,
weighted by a running diagonal Fisher information.

Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017 (arXiv 1612.00796);
the online variant of Schwarz et al., "Progress & Compress", ICML 2018 (arXiv 1805.06370); as Fomo-in-Flux
runs it (Roth, Udandarao et al., NeurIPS 2024 D&B, arXiv 2408.14471; `continual_lib/ewc.py`):

    loss = CLIP loss + e_lambda / 2 * sum_i F_i (theta_i - theta*_i)^2
    at the end of each task: F <- gamma * F + F_task,  theta* <- theta

F_task is the mean over batches of the squared gradient of the CLIP loss (FiF's `fim_avg: batch`), from at
most `max_fim_samples` samples of the task, drawn from the task context's separate random stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from clipflux.config import ConfigError
from clipflux.methods.base import ExtraWork, Method, TaskContext, clip_loss, register
from clipflux.methods.weights import clone_tensors, quadratic_penalty, trainable, trainable_values


@dataclass(frozen=True)
class EWCParams:
    """`e_lambda`: penalty strength; `gamma`: decay of the old Fisher; `max_fim_samples`: Fisher samples."""

    e_lambda: float
    gamma: float
    max_fim_samples: int

    def validate(self, path: str) -> None:
        if self.e_lambda < 0 or not 0.0 <= self.gamma <= 1.0 or self.max_fim_samples <= 0:
            raise ConfigError(f"{path}: need e_lambda >= 0, 0 <= gamma <= 1, max_fim_samples > 0; got {self}")


def diagonal_fisher(model: torch.nn.Module, batches, max_samples: int) -> dict[str, torch.Tensor]:
    """Mean over batches of the squared CLIP-loss gradient of every trainable parameter.

    Gradients come from `torch.autograd.grad`, so the parameters' `.grad` is left alone.
    """
    params = trainable(model)
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    seen = count = 0
    for batch in batches:
        loss = clip_loss(model(batch["images"], batch["texts"]))
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for name, grad in zip(params, grads):
            if grad is not None:
                fisher[name] += grad.detach() ** 2
        count += 1
        seen += len(batch["images"])
        if seen >= max_samples:
            break
    return {name: f / max(count, 1) for name, f in fisher.items()}


@register("ewc")
class EWC(Method):
    """Online EWC on every trainable parameter."""

    Params = EWCParams

    def setup(self, model: torch.nn.Module) -> None:
        super().setup(model)
        self.fisher: dict[str, torch.Tensor] | None = None
        self.anchor: dict[str, torch.Tensor] | None = None

    def penalty(self) -> torch.Tensor:
        """sum_i F_i (theta_i - theta*_i)^2 (zero before the first task has ended)."""
        return quadratic_penalty(self.model, self.fisher, self.anchor)

    def loss(self, batch: dict[str, torch.Tensor], out: tuple) -> torch.Tensor:
        return clip_loss(out) + self.params.e_lambda / 2 * self.penalty()

    def extra_work(self, steps: int, batch_size: int) -> ExtraWork:
        # The Fisher: a forward and backward pass per batch of the task (until max_fim_samples), squaring and
        # summing each gradient, then one decay-and-add into the running Fisher.
        batches = min(steps, math.ceil(self.params.max_fim_samples / batch_size))
        return ExtraWork(gradient_batches_per_task=batches, weight_passes_per_task=batches + 1)

    def end_task(self, task: TaskContext) -> None:
        fresh = diagonal_fisher(self.model, task.batches(task.steps), self.params.max_fim_samples)
        if self.fisher is None:
            self.fisher = fresh
        else:
            self.fisher = {n: self.params.gamma * self.fisher[n] + fresh[n] for n in fresh}
        self.anchor = trainable_values(self.model)

    def state_dict(self) -> dict[str, Any]:
        return {"fisher": clone_tensors(self.fisher), "anchor": clone_tensors(self.anchor)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fisher, self.anchor = clone_tensors(state["fisher"]), clone_tensors(state["anchor"])
