"""Synaptic Intelligence: a quadratic penalty weighted by each parameter's contribution to the loss
decrease along its training path.

Zenke, Poole and Ganguli, "Continual Learning Through Synaptic Intelligence", ICML 2017 (arXiv 1703.04200),
with Fomo-in-Flux's defaults c = 0.5, xi = 1 (Roth, Udandarao et al., NeurIPS 2024 D&B, arXiv 2408.14471):

    loss = CLIP loss + c * sum_i Omega_i (theta_i - theta*_i)^2
    during a task:   omega_i += -g_i * (theta_i(t+1) - theta_i(t))      (the path integral, eq. 3)
    after a task:    Omega_i += omega_i / ((theta_i - theta*_i)^2 + xi),  theta* <- theta,  omega <- 0

g is the gradient the optimizer stepped with (after clipping). FiF (like mammoth) accumulates lr * g^2,
which is the same path integral for plain SGD; the product with the actual step is exact for AdamW too,
and needs nothing from the trainer. Because weight decay and Adam's momentum can make a step go uphill,
Omega is clamped at 0 so the penalty never rewards drifting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from clipflux.config import ConfigError
from clipflux.methods.base import ExtraWork, Method, TaskContext, clip_loss, register
from clipflux.methods.weights import clone_tensors, quadratic_penalty, trainable, trainable_values


@dataclass(frozen=True)
class SIParams:
    """`c`: penalty strength; `xi`: damping of the importance normalisation."""

    c: float
    xi: float

    def validate(self, path: str) -> None:
        if self.c < 0 or self.xi <= 0:
            raise ConfigError(f"{path}: need c >= 0 and xi > 0, got c={self.c}, xi={self.xi}")


@register("si")
class SI(Method):
    """Synaptic Intelligence on every trainable parameter."""

    Params = SIParams

    def setup(self, model: torch.nn.Module) -> None:
        super().setup(model)
        self.anchor = trainable_values(model)
        self.importance: dict[str, torch.Tensor] | None = None  # Omega
        self.path: dict[str, torch.Tensor] = {}  # omega of the current task
        self.previous: dict[str, torch.Tensor] = {}  # the parameters before the last step

    def penalty(self) -> torch.Tensor:
        """sum_i Omega_i (theta_i - theta*_i)^2 (zero before the first task has ended)."""
        return quadratic_penalty(self.model, self.importance, self.anchor)

    def loss(self, batch: dict[str, torch.Tensor], out: tuple) -> torch.Tensor:
        return clip_loss(out) + self.params.c * self.penalty()

    def begin_task(self, task: TaskContext) -> None:
        self.path = {n: torch.zeros_like(v) for n, v in self.anchor.items()}
        self.previous = trainable_values(self.model)

    def extra_work(self, steps: int, batch_size: int) -> ExtraWork:
        # per step: the step taken and its product with the gradient; per task: the normalised importance
        # (difference, square-and-add, division) and its accumulation
        return ExtraWork(weight_passes_per_step=2, weight_passes_per_task=4)

    def after_step(self) -> None:
        with torch.no_grad():
            for n, p in trainable(self.model).items():
                if p.grad is not None:
                    self.path[n] -= p.grad * (p - self.previous[n])
                self.previous[n].copy_(p)

    def end_task(self, task: TaskContext) -> None:
        current = trainable_values(self.model)
        fresh = {n: self.path[n] / ((current[n] - self.anchor[n]) ** 2 + self.params.xi) for n in current}
        old = self.importance or {n: torch.zeros_like(f) for n, f in fresh.items()}
        self.importance = {n: (old[n] + fresh[n]).clamp(min=0) for n in fresh}
        self.anchor = current
        self.path, self.previous = {}, {}

    def state_dict(self) -> dict[str, Any]:
        return {"anchor": clone_tensors(self.anchor), "importance": clone_tensors(self.importance),
                "path": clone_tensors(self.path), "previous": clone_tensors(self.previous)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.anchor, self.importance = clone_tensors(state["anchor"]), clone_tensors(state["importance"])
        self.path, self.previous = clone_tensors(state["path"]), clone_tensors(state["previous"])
