"""Sequential patching as TiC-CLIP runs it: interpolate each step's model with the previous patched model.

Garg et al., "TiC-CLIP: Continual Training of CLIP Models", ICLR 2024 (arXiv 2310.16226), Sec. 4, after
Ilharco et al., "Patching open-vocabulary models by interpolating weights", NeurIPS 2022 (arXiv 2208.05592).
Each task starts from the previous patched model and trains on the new data; afterwards

    patched_1 = trained_1,    patched_t = (1 - alpha) * patched_{t-1} + alpha * trained_t

and the patched model is evaluated. (TiC tunes alpha on previous tasks' retrieval; here it is a parameter.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from clipflux.config import ConfigError
from clipflux.methods.base import ExtraWork, Method, TaskContext, register
from clipflux.methods.merging import interpolate
from clipflux.methods.weights import clone_tensors, load_weights_, snapshot, with_weights


@dataclass(frozen=True)
class PatchingParams:
    """`alpha`: the weight of the newly trained model in the interpolation (0 keeps the old patch)."""

    alpha: float

    def validate(self, path: str) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"{path}.alpha: must be in [0, 1], got {self.alpha}")


@register("patching")
class Patching(Method):
    """Train from the last patched model; patch by interpolation after every task; evaluate the patch."""

    Params = PatchingParams

    def setup(self, model: torch.nn.Module) -> None:
        super().setup(model)
        self.patched: dict[str, torch.Tensor] | None = None

    def begin_task(self, task: TaskContext) -> None:
        if self.patched is not None:
            load_weights_(self.model, self.patched)

    def extra_work(self, steps: int, batch_size: int) -> ExtraWork:
        return ExtraWork(weight_passes_per_task=1)  # one interpolation per weight

    def end_task(self, task: TaskContext) -> None:
        trained = snapshot(self.model)
        self.patched = trained if self.patched is None else interpolate(self.patched, trained, self.params.alpha)

    def eval_model(self) -> torch.nn.Module:
        return self.model if self.patched is None else with_weights(self.model, self.patched)

    def state_dict(self) -> dict[str, Any]:
        return {"patched": clone_tensors(self.patched)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.patched = clone_tensors(state["patched"])
