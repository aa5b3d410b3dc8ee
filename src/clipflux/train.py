"""The task loop. The trainer owns the optimizer, the schedule, precision, clipping, distributed wrapping and
checkpoints; methods plug in.

Pretraining is the same loop with one task whose update data is the captioned pool. Under torchrun every rank
runs this loop on its slice of each step's batch (see `clipflux.distributed`); rank 0 alone writes
checkpoints and metrics, and a run resumes exactly with the same number of ranks.
"""

from __future__ import annotations

import math
import random
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from clipflux import checkpoint, distributed, faults, stopping
from clipflux.config import BufferConfig, MixtureConfig, OptimConfig, RunConfig
from clipflux.data.loader import StepBatches
from clipflux.data.shards import ShardReader
from clipflux.distributed import Placement
from clipflux.methods import Method, TaskContext
from clipflux.models import image_size, is_batchnorm
from clipflux.progress import Progress, progress
from clipflux.replay import Buffer, split_batch
from clipflux.schedules import lr_at
from clipflux.stopping import Stopped

LogScalar = Callable[[str, float, int], None]


def train_mode(model: torch.nn.Module) -> None:
    """Training mode, except for BatchNorm layers whose statistics do not train: they stay in eval mode and keep
    their running statistics (as open_clip's `lock_image_tower(freeze_bn_stats=True)`), so a frozen tower stays
    the same. Those are the layers whose parameters are all frozen, and those a method has told to stop
    tracking statistics (`track_running_stats = False`) while their affine parameters train (LNFit's
    `batchnorm` option)."""
    model.train()
    for module in model.modules():
        if is_batchnorm(module) and (not module.track_running_stats
                                     or not any(p.requires_grad for p in module.parameters())):
            module.eval()


def new_optimizer(params: list[torch.nn.Parameter], optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `params` in two groups: matrices, and the rest (biases, norms, logit scale), which get no weight
    decay with `weight_decay_on: matrices` (open_clip) and the same decay as the matrices with "all" (FiF puts
    every parameter in groups with the one weight decay: base_continual_learner.py:133-138, 259-280)."""
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": optim.weight_decay},
              {"params": rest, "weight_decay": optim.weight_decay if optim.weight_decay_on == "all" else 0.0}]
    # The fused kernel on GPUs and on the CPU (deterministic either way; on the 2-core CPU a step of the default model
    # spends 7 ms in it instead of 41 ms in the per-tensor loop, 12 % of the step).
    return torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps, fused=True)


class Trainer:
    """Trains a model over tasks with an update method, checkpointing so that any interruption resumes exactly.

    Args:
        model: the model (updated in place).
        method: the update method, not yet set up.
        tokenizer: open_clip tokenizer of the model.
        readers: shard readers; the dataset ids in item arrays index this list.
        tasks: per task, the (dataset id, index) items of its new data.
        pool: items of the pretraining pool (for the mixture's pretraining share); may be empty.
        run: the run's settings (`params.yaml`'s `pretrain` or `train`, as the stage runs it): its seed fixes the
            batches, its optimizer and schedule the updates.
        steps_per_task: optimizer steps per task (from the compute budget; a method may scale them per task).
        ckpt_dir: where full-state checkpoints go (`checkpoint.Checkpoints`).
        log_scalar: metric sink, e.g. a Sacred run's `log_scalar`.
        fingerprint: the parameters that fix the run; a checkpoint written with others is refused.
        flush: makes every metric logged so far durable in the tracking store; called before each
            checkpoint, so a run killed later has lost no metric older than its newest checkpoint.
        mixture: the batch's shares of new data, replay buffer and pretraining pool (pretraining: new data only).
        buffer: the replay buffer's policy and size, unless the method sets its own.
        placement: this process's rank and device (`distributed.start`); by default rank 0 of 1 on the CPU.

    Attributes:
        resumed_from: after `resume` found a checkpoint: {"task", "step", "global_step"}. Which tracking run
            wrote it is the tracking stores' business (`tracking.resume`): a checkpoint holds no run identity,
            so the same training writes the same bytes.
    """

    def __init__(self, model: torch.nn.Module, method: Method, tokenizer: Any, readers: list[ShardReader],
                 tasks: list[np.ndarray], pool: np.ndarray, run: RunConfig, steps_per_task: int,
                 ckpt_dir: str | Path, log_scalar: LogScalar, fingerprint: dict[str, Any],
                 flush: Callable[[], None] | None = None, mixture: MixtureConfig = MixtureConfig(1.0, 0.0, 0.0),
                 buffer: BufferConfig = BufferConfig(), placement: Placement = Placement()):
        if run.optim.batch_size % placement.world_size:
            raise ValueError(f"batch size {run.optim.batch_size} is not divisible by the {placement.world_size} "
                             "ranks: every rank trains on an equal slice of each batch")
        self.model, self.method, self.tokenizer = model.to(placement.device), method, tokenizer
        self.readers, self.tasks, self.pool = readers, tasks, pool
        self.run, self.steps_per_task, self.mixture = run, steps_per_task, mixture
        self.checkpoints = checkpoint.Checkpoints(ckpt_dir, run.keep_checkpoints)
        self.log_scalar, self.fingerprint = log_scalar, fingerprint
        self.flush, self.placement = flush, placement
        self.resumed_from: dict[str, Any] | None = None
        policy, size = method.buffer_policy() or (buffer.policy, buffer.size)
        self.buffer = Buffer(policy, size, run.seed)
        self.method.setup(model)
        if run.compile:
            self.model.compile()  # in place: the same parameters and state dict, DDP wraps it as it is
        self.optimizer: torch.optim.Optimizer | None = None

    # -- state ---------------------------------------------------------------------------------------

    def _state(self, task: int, step: int) -> dict[str, Any]:
        # The learning rate is a pure function of the step (`lr_at`) and batches a pure function of
        # (seed, task, step), so (task, step) is the whole scheduler and data-loader position. bf16 needs no
        # grad scaler. RNG states (every rank's) are kept for methods that draw from global generators; all
        # else is the same on every rank.
        return {
            "task": task,
            "step": step,
            "fingerprint": self.fingerprint,
            "model": self.model.state_dict(),
            # A task starts with a fresh optimizer, so a task-boundary checkpoint (step 0) needs none: a
            # third of the size of a mid-task one (AdamW keeps two moments per parameter).
            "optimizer": self.optimizer.state_dict() if self.optimizer and step > 0 else None,
            "method": self.method.state_dict(),
            "buffer": self.buffer.state_dict(),
            "rng": distributed.gather(self._rng_state(), self.placement),
        }

    def _rng_state(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if self.placement.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.placement.device)
        return state

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.placement.device)

    def _save(self, task: int, step: int) -> None:
        state = self._state(task, step)  # every rank: the RNG states are gathered
        if not self.placement.primary:
            return
        if self.flush:
            self.flush()
        self.checkpoints.save(task, step, state)

    def _restore(self, state: dict[str, Any]) -> tuple[int, int]:
        checkpoint.check_fingerprint(state["fingerprint"], self.fingerprint)
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(_to_device(state["method"], self.placement.device))
        self.buffer.load_state_dict(state["buffer"])
        rng = state["rng"]  # one state per rank (a single one in checkpoints written before DDP)
        self._set_rng_state(rng[self.placement.rank] if isinstance(rng, list) else rng)
        task, step = state["task"], state["step"]
        self.resumed_from = {"task": task, "step": step, "global_step": self._offset(task) + step}
        if step > 0:  # mid-task: the optimizer of this task exists already
            self._new_optimizer()
            self.optimizer.load_state_dict(state["optimizer"])
        return task, step

    def _new_optimizer(self) -> None:
        self.optimizer = new_optimizer(self.method.trainable_parameters(), self.run.optim)

    # -- loop ----------------------------------------------------------------------------------------

    def resume(self) -> dict[str, Any] | None:
        """Load the newest valid checkpoint, if any; returns where it resumes from (also `resumed_from`).

        Raises:
            CheckpointError: the checkpoint of an unfinished run was written with other parameters.
        """
        state = None
        if self.placement.primary:  # rank 0 reads and hands the state to the others: no shared disk needed
            state = self.checkpoints.resumable(len(self.tasks), self.fingerprint)
        state = distributed.broadcast(state, self.placement)
        self._position = self._restore(state) if state else (0, 0)
        return self.resumed_from

    def fit(self, on_task_end: Callable[[int, torch.nn.Module], None] | None = None) -> None:
        """Run every remaining task, from the newest valid checkpoint if there is one.

        Args:
            on_task_end: called on rank 0 after each task with the weights to evaluate (e.g. to save them).
        """
        if not hasattr(self, "_position"):
            self.resume()
        stopping.listen()
        start_task, start_step = self._position
        for task in range(start_task, len(self.tasks)):
            context = self._context(task)
            if start_step == 0:
                self.method.begin_task(context)
                self._new_optimizer()
            self._train_task(task, start_step)
            self.method.end_task(context)
            self.buffer.add_task(self.tasks[task])
            if on_task_end and self.placement.primary:
                on_task_end(task, self.method.eval_model())
            faults.reached("task-end")
            self._save(task + 1, 0)
            start_step = 0
            if task + 1 < len(self.tasks) and self._stop_requested():
                raise Stopped(task + 1, 0)

    def steps(self, task: int) -> int:
        """Optimizer steps of `task` (the method may scale the per-task budget, as TiC's Oracle does)."""
        return self.method.steps_for_task(task, self.steps_per_task)

    def _offset(self, task: int) -> int:
        return sum(self.steps(t) for t in range(task))

    def _batches(self, task: int, steps: int, purpose: int = 0) -> StepBatches:
        buffer_items = self.buffer.items()
        new = self.tasks[task]
        if self.method.data_mode == "union":  # TiC's cumulative regimes: new and replayed data as one pool
            new, buffer_items = np.concatenate([new, buffer_items]), buffer_items[:0]
        elif self.method.data_mode == "memory":  # GDumb: only what the buffer holds once this task is in it
            new, buffer_items = self.buffer.items_with(new), buffer_items[:0]
        counts = split_batch(self.run.optim.batch_size, self.mixture, len(buffer_items), len(self.pool))
        sources = {"update": new, "buffer": buffer_items, "pretraining": self.pool}
        return StepBatches(self.readers, sources, counts, self.run.seed, task, steps, self.tokenizer,
                           image_size(self.model), purpose, augment=self.run.augment)

    def _loader(self, task: int, start_step: int) -> torch.utils.data.DataLoader:
        # Each rank reads only its slice of every batch.
        batches = self._batches(task, self.steps(task)).shard(self.placement.rank, self.placement.world_size)
        # Its own generator: a loader otherwise draws its workers' base seed from the global generator, one draw
        # per loader, so a resumed run (one more loader) would checkpoint a global RNG state one draw ahead of an
        # uninterrupted run's: the same weights, but not the same checkpoint bytes. Batches never use the seed.
        return torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(start_step, len(batches)),
                                           num_workers=self.run.workers, generator=torch.Generator().manual_seed(0),
                                           pin_memory=self.run.pin_memory and self.placement.device.type == "cuda")

    def _context(self, task: int) -> TaskContext:
        # Methods' own draws (Fisher estimation, ...) use a random stream disjoint from training's. They are
        # whole batches on every rank, so every rank computes the same method state.
        def batches(n: int):
            extra = self._batches(task, n, purpose=1)
            return (self._to_device(extra[step]) for step in range(n))

        return TaskContext(task, len(self.tasks), self.steps(task), batches)

    def _wrap(self) -> torch.nn.Module:
        """The module that trains: the model, or under torchrun the model in DistributedDataParallel.

        A new wrapper is built at each position a run can resume from (task start, checkpoint): DDP regroups
        its gradient buckets after its first step, and with more than two ranks the order in which a ring
        all-reduce adds up an element can depend on where the element sits in its bucket. Wrapping at the same
        steps keeps the buckets, and so the sums, of a resumed run the same as the uninterrupted run's.
        """
        if not self.placement.distributed:
            return self.model
        device_ids = [self.placement.device.index] if self.placement.device.type == "cuda" else None
        # A ViT CLIP has no running statistics; a ResNet tower's BatchNorm statistics are broadcast from rank 0
        # before every forward, so all ranks (and the checkpoint) hold the same ones.
        return DistributedDataParallel(self.model, device_ids=device_ids,
                                       forward_sync_buffers=any(map(is_batchnorm, self.model.modules())))

    def _autocast(self):
        if self.run.precision == "bf16":
            return torch.autocast(self.placement.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.placement.device.type == "cpu":
            return batch
        return {k: v.to(self.placement.device, non_blocking=True) for k, v in batch.items()}

    def _train_task(self, task: int, start_step: int) -> None:
        steps, offset = self.steps(task), self._offset(task)
        train_mode(self.model)
        bar = progress(self._loader(task, start_step), desc=f"task {task + 1}/{len(self.tasks)}", total=steps,
                       initial=start_step, unit="step", mode=None if self.placement.primary else "off", mininterval=5.0)
        params = self.method.trainable_parameters()
        unlogged: list[tuple[int, torch.Tensor, float]] = []
        for step, batch in enumerate(bar, start=start_step):
            if step == start_step or step % self.run.checkpoint_every == 0:
                network = self._wrap()
            lr = lr_at(step, steps, self.run.optim, task)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            # 1) forward and the method's loss (under torchrun: this rank's slice of the step's batch)
            batch = self._to_device(batch)
            with self._autocast(), distributed.global_batch(self.placement):
                out = network(batch["images"], batch["texts"])
                loss = self.method.loss(batch, out)
            # 2) backward (DDP averages the gradients of all ranks), clip, step
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.run.optim.clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, self.run.optim.clip_grad_norm)
            self.optimizer.step()
            with torch.no_grad():  # open_clip caps the temperature at 100
                self.model.logit_scale.clamp_(0, math.log(100))
            self.method.after_step()
            # 3) log at each checkpoint and at the task's end (reading the loss makes the loop wait for the
            #    device, so it is read then, for all steps since), and checkpoint
            unlogged.append((offset + step, loss.detach(), lr))
            faults.reached("step")
            if (step + 1) % self.run.checkpoint_every == 0 or step + 1 == steps:
                self._log(unlogged, bar)
                unlogged = []
            if step + 1 == steps:
                continue
            on_grid = (step + 1) % self.run.checkpoint_every == 0
            if on_grid:
                self._save(task, step + 1)
            if self._stop_requested():  # a scheduler wants the machine back: checkpoint here and stop
                if not on_grid:
                    self._log(unlogged, bar)
                    self._save(task, step + 1)
                raise Stopped(task, step + 1)

    def _stop_requested(self) -> bool:
        """Whether a stop was asked for (`clipflux.stopping`), agreed by every rank."""
        return distributed.any_rank(stopping.requested(), self.placement)

    def _log(self, unlogged: list[tuple[int, torch.Tensor, float]], bar: Progress) -> None:
        """Log the loss (rank 0: the mean over ranks) and learning rate of each (global step, loss, lr)."""
        losses = distributed.mean(torch.stack([loss for _, loss, _ in unlogged]), self.placement)
        if not self.placement.primary:
            return
        for (global_step, _, lr), loss in zip(unlogged, losses):
            self.log_scalar("train/loss", loss, global_step)
            self.log_scalar("train/lr", lr, global_step)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)


def _to_device(value: Any, device: torch.device) -> Any:
    """Every tensor in a nest of dicts, lists and tuples moved to `device` (a method state loaded on the CPU)."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value
