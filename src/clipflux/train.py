"""The task loop. The trainer owns the optimizer, the schedule, clipping and checkpoints; methods plug in.

Pretraining is the same loop with one task whose update data is the captioned pool.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from clipflux import checkpoint, faults
from clipflux.config import BufferConfig, MixtureConfig, OptimConfig
from clipflux.data.loader import StepBatches
from clipflux.data.shards import ShardReader
from clipflux.methods import Method, TaskContext
from clipflux.models import image_size
from clipflux.replay import Buffer, split_batch

LogScalar = Callable[[str, float, int], None]


@dataclass(frozen=True)
class Loop:
    """Everything that fixes the sequence of batches and updates (and so must match on resume)."""

    seed: int
    steps_per_task: int
    optim: OptimConfig
    mixture: MixtureConfig
    checkpoint_every: int
    keep_checkpoints: int = 2
    workers: int = 0
    buffer: BufferConfig = BufferConfig()


def lr_at(step: int, steps: int, optim: OptimConfig) -> float:
    """Learning rate at `step` of a task: linear warmup, then cosine decay to zero (restarted every task)."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    progress = (step - optim.warmup_steps) / max(1, steps - optim.warmup_steps)
    return 0.5 * optim.lr * (1.0 + math.cos(math.pi * progress))


class Trainer:
    """Trains a model over tasks with an update method, checkpointing so that any interruption resumes exactly.

    Args:
        model: the model (updated in place).
        method: the update method, not yet set up.
        tokenizer: open_clip tokenizer of the model.
        readers: shard readers; the dataset ids in item arrays index this list.
        tasks: per task, the (dataset id, index) items of its new data.
        pool: items of the pretraining pool (for the mixture's pretraining share); may be empty.
        loop: the loop settings.
        ckpt_dir: where full-state checkpoints go.
        log_scalar: metric sink, e.g. a Sacred run's `log_scalar`.
        fingerprint: the parameters that fix the run; a checkpoint written with others is refused.
        run_id: the tracking run's {"id", "uid"}, stored in checkpoints so a resumed run can name (and
            truncate, see `tracking.resume`) the run it continues.
        flush: makes every metric logged so far durable in the tracking store; called before each
            checkpoint, so a run killed later has lost no metric older than its newest checkpoint.

    Attributes:
        resumed_from: after `resume` found a checkpoint: {"run_id", "run_uid", "task", "step", "global_step"}.
    """

    def __init__(self, model: torch.nn.Module, method: Method, tokenizer: Any, readers: list[ShardReader],
                 tasks: list[np.ndarray], pool: np.ndarray, loop: Loop, ckpt_dir: str | Path,
                 log_scalar: LogScalar, fingerprint: dict[str, Any], run_id: Any = None,
                 flush: Callable[[], None] | None = None):
        self.model, self.method, self.tokenizer = model, method, tokenizer
        self.readers, self.tasks, self.pool, self.loop = readers, tasks, pool, loop
        self.ckpt_dir, self.log_scalar, self.fingerprint = Path(ckpt_dir), log_scalar, fingerprint
        self.run_id, self.flush = run_id, flush
        self.resumed_from: dict[str, Any] | None = None
        policy, size = method.buffer_policy() or (loop.buffer.policy, loop.buffer.size)
        self.buffer = Buffer(policy, size, loop.seed)
        self.method.setup(model)
        self.optimizer: torch.optim.Optimizer | None = None

    # -- state ---------------------------------------------------------------------------------------

    def _state(self, task: int, step: int) -> dict[str, Any]:
        # The learning rate is a pure function of the step (`lr_at`) and batches a pure function of
        # (seed, task, step), so (task, step) is the whole scheduler and data-loader position. There is no
        # grad scaler on the CPU/bf16 path. RNG states are kept for methods that draw from global generators.
        return {
            "task": task,
            "step": step,
            "run_id": self.run_id,
            "fingerprint": self.fingerprint,
            "model": self.model.state_dict(),
            # A task starts with a fresh optimizer, so a task-boundary checkpoint (step 0) needs none: a
            # third of the size of a mid-task one (AdamW keeps two moments per parameter).
            "optimizer": self.optimizer.state_dict() if self.optimizer and step > 0 else None,
            "method": self.method.state_dict(),
            "buffer": self.buffer.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        }

    def _save(self, task: int, step: int) -> None:
        if self.flush:
            self.flush()
        checkpoint.save(self.ckpt_dir, task, step, self._state(task, step), keep=self.loop.keep_checkpoints)

    def _restore(self, state: dict[str, Any]) -> tuple[int, int]:
        checkpoint.check_fingerprint(state["fingerprint"], self.fingerprint)
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.buffer.load_state_dict(state["buffer"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        task, step = state["task"], state["step"]
        origin = state["run_id"] or {}
        self.resumed_from = {"run_id": origin.get("id"), "run_uid": origin.get("uid"), "task": task, "step": step,
                             "global_step": self._offset(task) + step}
        if step > 0:  # mid-task: the optimizer of this task exists already
            self._new_optimizer()
            self.optimizer.load_state_dict(state["optimizer"])
        return task, step

    def _new_optimizer(self) -> None:
        params = self.method.trainable_parameters()
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]  # biases, norms, logit scale: no weight decay (open_clip)
        groups = [{"params": decay, "weight_decay": self.loop.optim.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=self.loop.optim.lr)

    # -- loop ----------------------------------------------------------------------------------------

    def resume(self) -> dict[str, Any] | None:
        """Load the newest valid checkpoint, if any; returns where it resumes from (also `resumed_from`).

        Raises:
            CheckpointError: the checkpoint of an unfinished run was written with other parameters.
        """
        state = checkpoint.load_latest(self.ckpt_dir)
        if state and state["task"] >= len(self.tasks) and state["fingerprint"] != self.fingerprint:
            # A finished run with other parameters is history, not something to resume: start over.
            checkpoint.clear(self.ckpt_dir)
            state = None
        self._position = self._restore(state) if state else (0, 0)
        return self.resumed_from

    def fit(self, on_task_end: Callable[[int, torch.nn.Module], None] | None = None) -> None:
        """Run every remaining task, from the newest valid checkpoint if there is one."""
        if not hasattr(self, "_position"):
            self.resume()
        start_task, start_step = self._position
        for task in range(start_task, len(self.tasks)):
            context = self._context(task)
            if start_step == 0:
                self.method.begin_task(context)
                self._new_optimizer()
            self._train_task(task, start_step)
            self.method.end_task(context)
            self.buffer.add_task(self.tasks[task])
            if on_task_end:
                on_task_end(task, self.method.eval_model())
            faults.reached("task-end")
            self._save(task + 1, 0)
            start_step = 0

    def steps(self, task: int) -> int:
        """Optimizer steps of `task` (the method may scale the per-task budget, as TiC's Oracle does)."""
        return self.method.steps_for_task(task, self.loop.steps_per_task)

    def _offset(self, task: int) -> int:
        return sum(self.steps(t) for t in range(task))

    def _batches(self, task: int, steps: int, purpose: int = 0) -> StepBatches:
        buffer_items = self.buffer.items()
        new = self.tasks[task]
        if self.method.data_mode == "union":  # TiC's cumulative regimes: new and replayed data as one pool
            new, buffer_items = np.concatenate([new, buffer_items]), buffer_items[:0]
        counts = split_batch(self.loop.optim.batch_size, self.loop.mixture, len(buffer_items), len(self.pool))
        sources = {"update": new, "buffer": buffer_items, "pretraining": self.pool}
        return StepBatches(self.readers, sources, counts, self.loop.seed, task, steps, self.tokenizer,
                           image_size(self.model), purpose)

    def _loader(self, task: int, start_step: int) -> torch.utils.data.DataLoader:
        batches = self._batches(task, self.steps(task))
        return torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(start_step, len(batches)),
                                           num_workers=self.loop.workers)

    def _context(self, task: int) -> TaskContext:
        # Methods' own draws (Fisher estimation, ...) use a random stream disjoint from training's.
        def batches(n: int):
            extra = self._batches(task, n, purpose=1)
            return (extra[step] for step in range(n))

        return TaskContext(task, len(self.tasks), self.steps(task), batches)

    def _train_task(self, task: int, start_step: int) -> None:
        steps, offset = self.steps(task), self._offset(task)
        self.model.train()
        bar = tqdm(self._loader(task, start_step), total=steps, initial=start_step,
                   desc=f"task {task + 1}/{len(self.tasks)}", unit="step", mininterval=5.0)
        for step, batch in enumerate(bar, start=start_step):
            lr = lr_at(step, steps, self.loop.optim)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            # 1) forward and the method's loss
            out = self.model(batch["images"], batch["texts"])
            loss = self.method.loss(batch, out)
            # 2) backward, clip, step
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.loop.optim.clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.method.trainable_parameters(), self.loop.optim.clip_grad_norm)
            self.optimizer.step()
            with torch.no_grad():  # open_clip caps the temperature at 100
                self.model.logit_scale.clamp_(0, math.log(100))
            self.method.after_step()
            # 3) log and checkpoint
            global_step = offset + step
            self.log_scalar("train/loss", loss.item(), global_step)
            self.log_scalar("train/lr", lr, global_step)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            faults.reached("step")
            if (step + 1) % self.loop.checkpoint_every == 0 and step + 1 < steps:
                self._save(task, step + 1)
