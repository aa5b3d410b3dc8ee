"""TiC-CLIP's training regimes over time-ordered data (Garg et al., "TiC-CLIP: Continual Training of CLIP
Models", ICLR 2024, arXiv 2310.16226, Sec. 3).

Each regime is full finetuning with a way of drawing its data and a starting point per step:

- Sequential: new data only, from the last checkpoint.
- Cumulative-All / -Exp / -Equal: from the last checkpoint, on the new data together with a replay buffer
  of all past data / a buffer of size D whose old data halves every step / a buffer of size D split equally
  over past steps; drawn uniformly over the union, as TiC shuffles replay with new data.
- Restart: from the initial weights (those the stream starts from), all data so far, budget C per step.
- Oracle: from the initial weights, all data so far, budget t x C at step t (1-based).

Only Sequential, Cumulative-All and Oracle are in TiC's public code; the others follow the paper's text.
TiC's LwF and Patching are the `lwf` and `patching` methods.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from clipflux.methods.base import Method, TaskContext, register


@dataclass(frozen=True)
class BufferSize:
    """The replay buffer size D of TiC's bounded-buffer regimes (in samples)."""

    buffer_size: int = 2000

    def validate(self, path: str) -> None:
        if self.buffer_size <= 0:
            from clipflux.config import ConfigError

            raise ConfigError(f"{path}.buffer_size: must be > 0, got {self.buffer_size}")


class _Regime(Method):
    data_mode = "union"
    policy = "all"

    def buffer_policy(self) -> tuple[str, int]:
        return self.policy, getattr(self.params, "buffer_size", 0)


@register("sequential")
class Sequential(_Regime):
    """TiC Sequential: train on the new step's data only, from the last checkpoint."""

    policy = "none"


@register("cumulative_all")
class CumulativeAll(_Regime):
    """TiC Cumulative-All: the last checkpoint, all data so far (replay of every past sample)."""


@register("cumulative_exp")
class CumulativeExp(_Regime):
    """TiC Cumulative-Exp: a buffer of size D in which each older step's share halves."""

    Params = BufferSize
    policy = "exp"


@register("cumulative_equal")
class CumulativeEqual(_Regime):
    """TiC Cumulative-Equal: a buffer of size D split equally over the past steps."""

    Params = BufferSize
    policy = "equal"


@register("restart")
class Restart(_Regime):
    """TiC Restart: every step starts again from the initial weights, on all data so far, budget C."""

    def setup(self, model) -> None:
        super().setup(model)
        self.initial = copy.deepcopy(model.state_dict())  # rebuilt identically on resume: the stream's start

    def begin_task(self, task: TaskContext) -> None:
        self.model.load_state_dict(self.initial)


@register("oracle")
class Oracle(Restart):
    """TiC Oracle: from the initial weights on all data so far with t x the per-step budget."""

    def steps_for_task(self, task: int, steps: int) -> int:
        return (task + 1) * steps
