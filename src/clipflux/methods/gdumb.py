"""GDumb: a greedy sampler fills a bounded memory, and a dumb learner trains from the start on the memory alone.

Prabhu, Torr and Dokania, "GDumb: A Simple Approach that Questions Our Progress in Continual Learning", ECCV 2020,
as mammoth runs it (aimagelab/mammoth models/gdumb.py): `observe` only adds the stream's samples to a memory of
`buffer_size` (mammoth's reservoir `Buffer`), and `end_task` builds a new network and fits it on the memory
(`fit_buffer`).

In clipflux, at every task:
- the memory is a reservoir sample of `memory_size` samples over every task so far, this one included (the
  buffer policy "reservoir", read with the task added: `Buffer.items_with`);
- the model starts again from the weights the stream starts from (the base model: for a foundation model "from
  the start" is its pretrained state, not a random network as mammoth's small backbones);
- it trains the task's budget of steps with the CLIP loss on batches whose new-data share is drawn from the
  memory (the method's data mode "memory"; the experiment's pretraining share stays as it is).
So the model evaluated after task t is GDumb's learner at t; after the last task it is mammoth's GDumb, fitted
once on the final memory. Not here: mammoth's CutMix of the fitting batches and its own warm-restart schedule
(the experiment's schedule applies), and GDumb's class-balanced sampler (mammoth uses the reservoir too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipflux.config import ConfigError
from clipflux.methods.base import Method, TaskContext, register
from clipflux.methods.paint import on_host
from clipflux.methods.weights import load_weights_, snapshot


@dataclass(frozen=True)
class GDumbParams:
    """`memory_size`: samples the memory holds (mammoth's --buffer_size)."""

    memory_size: int

    def validate(self, path: str) -> None:
        if self.memory_size <= 0:
            raise ConfigError(f"{path}.memory_size: must be > 0, got {self.memory_size}")


@register("gdumb")
class GDumb(Method):
    """Every task: the base model, trained on a reservoir memory of everything seen so far."""

    Params = GDumbParams
    data_mode = "memory"
    host_state = ("initial",)  # used at task boundaries only

    def buffer_policy(self) -> tuple[str, int]:
        return "reservoir", self.params.memory_size

    def setup(self, model: torch.nn.Module) -> None:
        super().setup(model)
        self.initial = on_host(snapshot(model))  # rebuilt identically on resume: the stream's start

    def begin_task(self, task: TaskContext) -> None:
        load_weights_(self.model, self.initial)
