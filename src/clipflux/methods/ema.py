"""EMA of weights: train as full finetuning, evaluate an exponential moving average of the weights.

Weight averaging after Polyak and Juditsky (SIAM J. Control Optim. 1992), in the exponential form of
Tarvainen and Valpola, "Mean teachers are better role models", NeurIPS 2017 (arXiv 1703.01780): the
per-step counterpart of Fomo-in-Flux's per-task merges (Roth, Udandarao et al., NeurIPS 2024 D&B,
arXiv 2408.14471). The average starts at the base model and runs over the whole stream (it is not reset
between tasks):

    ema <- decay * ema + (1 - decay) * theta   after every optimizer step
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from clipflux.config import ConfigError
from clipflux.methods.base import ExtraWork, Method, register
from clipflux.methods.weights import clone_tensors, snapshot, with_weights


@dataclass(frozen=True)
class EMAParams:
    """`decay`: the average's weight on its previous value at each step."""

    decay: float

    def validate(self, path: str) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ConfigError(f"{path}.decay: must be in [0, 1), got {self.decay}")


@register("ema")
class EMA(Method):
    """Full finetuning; the EMA weights are evaluated."""

    Params = EMAParams

    def setup(self, model: torch.nn.Module) -> None:
        super().setup(model)
        self.average = snapshot(model)

    def extra_work(self, steps: int, batch_size: int) -> ExtraWork:
        return ExtraWork(weight_passes_per_step=1)  # one lerp per weight

    def after_step(self) -> None:
        with torch.no_grad():
            for name, value in self.model.state_dict().items():
                if torch.is_floating_point(value):
                    self.average[name].lerp_(value, 1.0 - self.params.decay)
                else:
                    self.average[name].copy_(value)

    def eval_model(self) -> torch.nn.Module:
        return with_weights(self.model, self.average)

    def state_dict(self) -> dict[str, Any]:
        return {"average": clone_tensors(self.average)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average = clone_tensors(state["average"])
