"""The `Method` contract and the registry of update methods.

The trainer owns the loop (zero_grad, backward, clipping, optimizer and scheduler steps, precision); a
method only says which parameters train, what the loss is, and what happens at task boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable

import torch

from clipflux import distributed
from clipflux.config import from_dict

REGISTRY: dict[str, type["Method"]] = {}


@dataclass(frozen=True)
class TaskContext:
    """What a method may know about the task at a boundary.

    Attributes:
        index: the task's position in the stream (0-based).
        num_tasks: the stream's length in tasks.
        steps: optimizer steps this task trains for.
        batches: `batches(n)` yields n batches of this task's data (same format as training batches,
            drawn from a generator separate from training's, so using it never changes training).
    """

    index: int
    num_tasks: int
    steps: int
    batches: Callable[[int], Iterable[dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class ExtraWork:
    """Work a method does besides its training steps, in the units the compute budget counts (`clipflux.budget`).

    Attributes:
        gradient_batches_per_task: forward and backward passes over training batches at the end of each task
            (EWC's Fisher estimate), each counted as a training step.
        weight_passes_per_step: multiply-adds per model parameter after every optimizer step (EMA's update).
        weight_passes_per_task: multiply-adds per model parameter at the end of each task (merging).
            Both are elementwise work, recorded with the budget but not charged: FiF's unit counts matrix
            products, convolutions and attention only, as it leaves out the optimizer's update in every step.
    """

    gradient_batches_per_task: int = 0
    weight_passes_per_step: int = 0
    weight_passes_per_task: int = 0


def register(name: str) -> Callable[[type["Method"]], type["Method"]]:
    """Class decorator: register a method under `name` (explicitly, no import side effects elsewhere)."""

    def wrap(cls: type[Method]) -> type[Method]:
        if name in REGISTRY:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


@dataclass(frozen=True)
class NoParams:
    """A method without hyperparameters."""


def method_params(name: str, raw: dict[str, Any] | None) -> Any:
    """Validate the `methods.<name>` section of params.yaml into the method's own dataclass."""
    return from_dict(REGISTRY[name].Params, raw or {}, f"methods.{name}")


def clip_loss(out: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The symmetric InfoNCE loss of CLIP over a batch's image-text pairs (over all ranks' slices of the
    step's batch during data-parallel training, see `clipflux.distributed`)."""
    return distributed.clip_loss(*out[:3])


class Method:
    """Base class of update methods: full finetuning of every parameter with the CLIP loss.

    Subclasses override what differs. State that changes during training must be returned by
    `state_dict` so that a resumed run is bit-identical to an uninterrupted one.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    # How a task's batches are drawn (read by the trainer): "mixture" = the experiment's FiF mixture of
    # update / buffer / pretraining shares; "union" = TiC's cumulative regimes, uniformly over the new data
    # and the replay buffer together; "memory" = GDumb: the new data's share drawn only from what the buffer
    # holds with this task added (`Buffer.items_with`), and no buffer share.
    data_mode: ClassVar[str] = "mixture"
    # Attributes the method keeps on the host (CPU) between steps and uses only at task boundaries or for
    # evaluation (merge snapshots, an unadapted copy): the compute budget does not charge them to the
    # accelerator's memory (`clipflux.budget`). A method that declares one must keep it on the CPU.
    host_state: ClassVar[tuple[str, ...]] = ()

    def steps_for_task(self, task: int, steps: int) -> int:
        """Optimizer steps for task `task` given the per-task budget `steps` (TiC's Oracle takes (t+1) x)."""
        return steps

    def extra_work(self, steps: int, batch_size: int) -> ExtraWork:
        """What the method computes besides its training steps in a task of `steps` steps (for the budget).

        Work inside a step, such as a teacher's forward in `loss`, is counted from the traced step instead.
        """
        return ExtraWork()

    def buffer_policy(self) -> tuple[str, int] | None:
        """(policy, capacity) of the replay buffer this method needs, or None for the experiment's own."""
        return None

    def __init__(self, params: Any):
        self.params = params
        self.model: torch.nn.Module | None = None

    def setup(self, model: torch.nn.Module) -> None:
        """Take the model to update (called once, before the first task)."""
        self.model = model

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the optimizer updates."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def begin_task(self, task: "TaskContext") -> None:
        """Called before the first step of a task (not again when a run resumes in the middle of it)."""

    def loss(self, batch: dict[str, torch.Tensor], out: tuple) -> torch.Tensor:
        """The training loss of one batch, given the model's output on it."""
        return clip_loss(out)

    def after_step(self) -> None:
        """Called after every optimizer step."""

    def end_task(self, task: "TaskContext") -> None:
        """Called after the last step of a task."""

    def eval_model(self) -> torch.nn.Module:
        """The weights to evaluate (merged, EMA, ...); by default the trained model itself."""
        return self.model

    def state_dict(self) -> dict[str, Any]:
        """Everything besides the model weights that resuming needs."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
