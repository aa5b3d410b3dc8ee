"""Data-parallel training through `torchrun`: which rank this process is, and the collectives training needs.

`torchrun` starts one process per device (or per CPU share) and tells each its place through the environment
(RANK, WORLD_SIZE, LOCAL_RANK). `start` reads it and joins the process group: NCCL on GPUs, gloo on CPUs. A
process started without torchrun is rank 0 of 1, and every function here is then a no-op or an identity.

The global batch of a step is fixed by (seed, task, step); each rank trains on its slice of it (see
`data.loader.StepBatches`). CLIP's contrastive loss needs every sample's features, so inside
`global_batch(placement)` the CLIP loss gathers the features of all ranks (open_clip's local loss with
gathered features): each rank scores its own rows against every column, and DistributedDataParallel's mean
over ranks of the gradients is exactly the gradient of the loss of the whole batch. Other batch-level terms
(LwF's distillation) see the rank's slice.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator

import open_clip
import torch
import torch.distributed as dist
import torch.nn.functional as F

from clipflux.processes import die_with_parent


@dataclass(frozen=True)
class Placement:
    """Where this process sits in a data-parallel job.

    Attributes:
        rank: global rank (0 writes checkpoints, metrics and outputs).
        world_size: processes in the job, over all nodes.
        local_rank: rank on this node (picks the GPU).
        device: where this process trains.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def primary(self) -> bool:
        """Whether this process writes what the job writes (checkpoints, metrics, weights)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start(device: str = "cpu") -> Placement:
    """This process's placement from torchrun's environment; joins the process group when there are several.

    Args:
        device: "cpu" or "cuda" (each process then takes GPU `LOCAL_RANK`).

    Raises:
        RuntimeError: "cuda" was asked for on a machine without (enough) GPUs.
    """
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun worker, in a session of its own: dies with its agent
        die_with_parent()
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"device cuda: local rank {local_rank} needs GPU {local_rank}, but this machine "
                               f"has {torch.cuda.device_count()}; use device: cpu or fewer processes per node")
        torch.cuda.set_device(local_rank)
        where = torch.device("cuda", local_rank)
    elif device == "cpu":
        where = torch.device("cpu")
    else:
        raise ValueError(f"device {device!r}: choose cpu or cuda")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if where.type == "cuda" else "gloo")
    return Placement(rank, world_size, local_rank, where)


def stop(placement: Placement) -> None:
    """Leave the process group (after the last collective)."""
    if placement.distributed and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(obj: Any, placement: Placement) -> Any:
    """Rank 0's `obj` on every rank (any picklable object, e.g. a checkpoint that only rank 0 read)."""
    if not placement.distributed:
        return obj
    box = [obj if placement.primary else None]
    dist.broadcast_object_list(box, src=0, device=_collective_device(placement))
    return box[0]


def gather(obj: Any, placement: Placement) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not placement.distributed:
        return [obj]
    out: list[Any] = [None] * placement.world_size
    dist.all_gather_object(out, obj)
    return out


def mean(values: torch.Tensor, placement: Placement) -> list[float]:
    """The mean over ranks of each element of a 1-d tensor (e.g. each rank's losses of the last steps)."""
    if not placement.distributed:
        return values.tolist()
    total = values.detach().float().clone()
    dist.all_reduce(total)  # a sum: gloo has no average
    return [v / placement.world_size for v in total.tolist()]


def any_rank(flag: bool, placement: Placement) -> bool:
    """Whether `flag` is true on any rank, on every rank (so that all ranks take the same branch)."""
    if not placement.distributed:
        return flag
    box = torch.tensor([int(flag)], device=_collective_device(placement))
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item())


def _collective_device(placement: Placement) -> torch.device:
    # NCCL moves objects through GPU memory, gloo through host memory.
    return placement.device if placement.device.type == "cuda" else torch.device("cpu")


# -- the contrastive loss over the global batch --------------------------------------------------------

_GLOBAL_BATCH: ContextVar[Placement | None] = ContextVar("clipflux_global_batch", default=None)


@contextmanager
def global_batch(placement: Placement) -> Iterator[None]:
    """Within this block, `clip_loss` treats each rank's batch as its slice of one global batch."""
    token = _GLOBAL_BATCH.set(placement if placement.distributed else None)
    try:
        yield
    finally:
        _GLOBAL_BATCH.reset(token)


def batch_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Within `global_batch`: every rank's rows of a per-sample tensor, back in the order of the whole batch
    (rank r holds rows r, r + W, r + 2W, ... of it: `StepBatches.shard`), without gradient; else `tensor`."""
    placement = _GLOBAL_BATCH.get()
    if placement is None:
        return tensor.detach()
    parts = [torch.empty_like(tensor) for _ in range(placement.world_size)]
    dist.all_gather(parts, tensor.detach().contiguous())
    return torch.stack(parts, dim=1).flatten(0, 1)  # interleave: row i of rank r is row i * W + r


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' tensors concatenated along dim 0; the gradient flows back to each rank's own rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows = len(tensor)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss depends on every row: sum their gradients
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE loss: over the local batch, or inside `global_batch` over all ranks' batches.

    Over ranks it is open_clip's `ClipLoss(local_loss=True, gather_with_grad=True)`: this rank's images
    against all texts and its texts against all images, so the mean over ranks is the loss of the global
    batch. Every rank must hold the same number of samples.
    """
    placement = _GLOBAL_BATCH.get()
    if placement is None:
        return open_clip.ClipLoss()(image_features, text_features, logit_scale)
    all_images, all_texts = _GatherWithGrad.apply(image_features), _GatherWithGrad.apply(text_features)
    labels = torch.arange(len(image_features), device=image_features.device) + placement.rank * len(image_features)
    return (F.cross_entropy(logit_scale * image_features @ all_texts.T, labels)
            + F.cross_entropy(logit_scale * text_features @ all_images.T, labels)) / 2


__all__ = ["Placement", "any_rank", "batch_rows", "broadcast", "clip_loss", "gather", "global_batch", "mean", "start", "stop"]
