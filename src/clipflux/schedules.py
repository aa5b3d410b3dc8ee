"""Learning-rate schedules over a stream of tasks: each a pure function of (task, step), so a resumed run needs no
scheduler state and continues exactly.

`OptimConfig.schedule` chooses one (all share the linear warmup, `warmup_of`):

- `cosine` (the default): cosine decay to the floor, restarted every task (open_clip's phase; see `lr_at`).
- `constant`: the peak after the warmup (FiF's `none`, which has no warmup), with an optional linear cooldown
  to zero over the last `cooldown_share` of each task (warmup-stable-decay).
- `rsqrt`: FiF's inverse square root, restarted every task, with its cooldown.
- `rsqrt_with_recovery`: the inverse square root across the stream: each task after the first warms up to a
  lower peak, set by `recovery` (FiF's `recovery_mode`: autoregressive, continued or recovered).
- `cosine_with_recovery`: the cosine restarted every task, each later task's peak where one cosine over all tasks
  so far would be (`recovery: autoregressive`; other modes restart at the full peak, as in FiF).
- `cosine_with_dynamic_recovery`: after the recovered warmup, the cosine of one schedule over every task so far.

The FiF schedules are transcribed from continual_lib/utils/base_continual_learner.py (upstream 3e123d9):
`rsqrt` :344-364, `rsqrt_recovered` :366-410, `cosine_with_linear_warmup_recovered` :412-439,
`cosine_with_linear_warmup_recovered_dynamic` :441-466, `cosine_with_linear_warmup` :315-342. FiF builds a
fresh `LambdaLR` at every task's start (`begin_task`, :218-233), so its `step` is the step within the task and
`self.task` the task; `scheduler_steps` is the task's steps. FiF's `cosine_lr_mul` is `min_lr_share` here (the
floor of the cosines and the rsqrt's warmup_init_lr), `warmup_perc` is `warmup_share` and `cooldown_perc` is
`cooldown_share`. Their formulas are kept as FiF evaluates them, including two quirks: the cosines' phase runs
one step ahead of `cosine`'s (their last step is at the floor), and `recovered`'s warmup target counts the
earlier tasks' steps twice (:402 passes t x (S - C - W) to `f_mul`, which adds it again).
"""

from __future__ import annotations

import math

from clipflux.config import ConfigError, OptimConfig


def warmup_of(task: int, steps: int, optim: OptimConfig) -> int:
    """Warmup steps of `task` (of `steps` steps): `warmup_steps`, or ceil(share x steps) as FiF computes it
    (base_continual_learner.py:322-324), with `warmup_after_first` as the share of every task after the first
    (TiC warms up only its first step: scripts/run_medium_basic_sequential.sh:46)."""
    share = optim.warmup_share
    if task > 0 and optim.warmup_after_first is not None:
        share = optim.warmup_after_first
    return optim.warmup_steps if share is None else math.ceil(share * steps)


def cooldown_of(steps: int, optim: OptimConfig) -> int:
    """Cooldown steps at the end of each task: ceil(cooldown_share x steps), FiF's (:352-353); 0 without one."""
    return 0 if optim.cooldown_share is None else math.ceil(optim.cooldown_share * steps)


def check_schedule(task: int, steps: int, optim: OptimConfig, path: str = "optim") -> None:
    """Raise ConfigError, naming the key, where the schedule cannot run `task` of `steps` steps (where FiF's formulas
    divide by zero): the inverse square roots divide by the warmup, their recovery across tasks by the steps seen
    so far, and the cosine recoveries by the steps after the warmup."""
    warmup, cooldown = warmup_of(task, steps, optim), cooldown_of(steps, optim)
    if optim.schedule.startswith("rsqrt") and warmup == 0:
        raise ConfigError(f"{path}.schedule: {optim.schedule} needs a warmup (it decays as sqrt(warmup / step)); "
                          f"task {task} of {steps} steps has none: set warmup_share or warmup_steps")
    if optim.schedule == "rsqrt_with_recovery" and task:
        room = steps - cooldown - warmup
        if optim.recovery == "recovered" and room <= 0 or \
                optim.recovery == "continued" and (steps - cooldown) + (task - 1) * room <= 0:
            raise ConfigError(f"{path}.recovery: {optim.recovery} needs steps beyond warmup and cooldown; task "
                              f"{task} has {steps} steps, a warmup of {warmup} and a cooldown of {cooldown}")
    if optim.schedule in ("cosine_with_recovery", "cosine_with_dynamic_recovery") and warmup >= steps:
        raise ConfigError(f"{path}.schedule: {optim.schedule} needs steps after the warmup; task {task} has {steps} "
                          f"steps and a warmup of {warmup}")


def lr_at(step: int, steps: int, optim: OptimConfig, task: int = 0) -> float:
    """The learning rate at `step` (0-based, within the task) of `task`, each task `steps` steps long."""
    return _SCHEDULES[optim.schedule](task, step, steps, optim)


def _cosine(task: int, step: int, steps: int, optim: OptimConfig) -> float:
    """Linear warmup, then cosine decay from `lr` to `min_lr_share x lr`, restarted every task.

    The warmup is open_clip's and FiF's, lr x (step + 1) / warmup (base_continual_learner.py:326-332). The cosine
    is open_clip's, at the phase (step - warmup) / (steps - warmup), which TiC trains with; FiF's evaluates one
    step later, (step - warmup + 1) / (steps - warmup), so its last step is at the floor (:333-341): a documented
    deviation of one step in the phase. With a floor of 0 the values are bit-for-bit those of open_clip's
    `cosine_lr`, the schedule the base model is pretrained with.
    """
    warmup = warmup_of(task, steps, optim)
    if step < warmup:
        return optim.lr * (step + 1) / warmup
    floor = optim.lr * optim.min_lr_share
    done = (step - warmup) / max(1, steps - warmup)
    return floor + 0.5 * (optim.lr - floor) * (1.0 + math.cos(math.pi * done))


def _constant(task: int, step: int, steps: int, optim: OptimConfig) -> float:
    """Linear warmup, the peak, and a linear cooldown to zero over the last `cooldown_share` of the task (the
    cooldown as FiF's rsqrt ends, :359-360)."""
    warmup, cooldown = warmup_of(task, steps, optim), cooldown_of(steps, optim)
    if step < warmup:
        return optim.lr * (step + 1) / warmup
    if cooldown and step >= steps - cooldown:
        return optim.lr * (steps - step - 1) / cooldown
    return optim.lr


def _rsqrt(task: int, step: int, steps: int, optim: OptimConfig) -> float:
    """FiF's `rsqrt` (:344-364): warmup to `lr`, then floor + sqrt(warmup / step) x (lr - floor), the last
    `cooldown_share` of the task scaled down linearly to zero; restarted every task."""
    warmup, cooldown = warmup_of(task, steps, optim), cooldown_of(steps, optim)
    floor = optim.lr * optim.min_lr_share
    if step < warmup:
        return optim.lr * (step + 1) / warmup
    value = floor + math.sqrt(warmup / step) * (optim.lr - floor)
    if cooldown and step >= steps - cooldown:
        return value * (steps - step - 1) / cooldown
    return value


def _rsqrt_with_recovery(task: int, step: int, steps: int, optim: OptimConfig) -> float:
    """FiF's `rsqrt_with_recovery` (:366-410). Task t > 0 warms up to a lower peak `base` instead of `lr`:

    - autoregressive: sqrt((t + 1) W / (t S + W)) of the way from the floor to `lr` (:390-392);
    - continued: sqrt(W / (t (S - C) - (t - 1) W)), where one rsqrt over the steps so far would be (:386-389);
    - recovered: the peak stays `lr` after the warmup, but the decay continues the earlier tasks'
      (sqrt(W / (step + t (S - C - W)))), and the warmup rises to that curve's value (:397-403).

    After the warmup: floor + mul x (base - floor), mul = sqrt(W / step) (or recovered's), with the cooldown.
    """
    warmup, cooldown = warmup_of(task, steps, optim), cooldown_of(steps, optim)
    floor, mode = optim.lr * optim.min_lr_share, optim.recovery
    mul = 1.0
    if task and mode == "continued":
        mul = math.sqrt(warmup / (task * (steps - cooldown) - (task - 1) * warmup))
    elif task and mode == "autoregressive":
        mul = math.sqrt((task + 1) * warmup / (task * steps + warmup))
    base = floor + mul * (optim.lr - floor)
    offset = task * (steps - cooldown - warmup) if mode == "recovered" else 0

    def decay(n: int) -> float:  # FiF's f_mul
        return math.sqrt(warmup / (n + offset))

    if step < warmup:
        if mode == "recovered" and task:
            base = floor + decay(offset) * (optim.lr - floor)  # FiF passes the offset and f_mul adds it again
        return base * (step + 1) / warmup
    value = floor + decay(step) * (base - floor)
    if cooldown and step >= steps - cooldown:
        return value * (steps - step - 1) / cooldown
    return value


def _recovered_peak(task: int, steps: int, warmup: int, optim: OptimConfig) -> float:
    """The peak of task t under FiF's cosine recovery (:422-429): with `autoregressive`, where a cosine over the
    (t + 1) tasks' post-warmup steps is after t of them; otherwise `lr`."""
    floor = optim.lr * optim.min_lr_share
    if not task or optim.recovery != "autoregressive":
        return optim.lr
    done = (task * (steps - warmup) + 1) / ((task + 1) * (steps - warmup))
    return floor + 0.5 * (1 + math.cos(math.pi * done)) * (optim.lr - floor)


def _cosine_with_recovery(task: int, step: int, steps: int, optim: OptimConfig) -> float:
    """FiF's `cosine_with_linear_warmup_and_recovery` (:412-439): warmup to the recovered peak, then FiF's cosine
    from it to the floor over the task."""
    warmup = warmup_of(task, steps, optim)
    base = _recovered_peak(task, steps, warmup, optim)
    if step < warmup:
        return base * (step + 1) / warmup
    floor = optim.lr * optim.min_lr_share
    done = (step - warmup + 1) / max(1, steps - warmup)
    return floor + 0.5 * (1 + math.cos(math.pi * done)) * (base - floor)


def _cosine_with_dynamic_recovery(task: int, step: int, steps: int, optim: OptimConfig) -> float:
    """FiF's `cosine_with_linear_warmup_and_dynamic_recovery` (:441-466): warmup to the recovered peak, then
    FiF's warmup-cosine over all (t + 1) tasks so far, at the stream's step t S + step."""
    warmup = warmup_of(task, steps, optim)
    if step < warmup:
        return _recovered_peak(task, steps, warmup, optim) * (step + 1) / warmup
    total, at = (task + 1) * steps, task * steps + step
    total_warmup = optim.warmup_steps if optim.warmup_share is None else math.ceil(optim.warmup_share * total)
    if at < total_warmup:
        return optim.lr * (at + 1) / total_warmup
    floor = optim.lr * optim.min_lr_share
    done = (at - total_warmup + 1) / max(1, total - total_warmup)
    return floor + 0.5 * (1 + math.cos(math.pi * done)) * (optim.lr - floor)


_SCHEDULES = {
    "cosine": _cosine,
    "constant": _constant,
    "rsqrt": _rsqrt,
    "rsqrt_with_recovery": _rsqrt_with_recovery,
    "cosine_with_recovery": _cosine_with_recovery,
    "cosine_with_dynamic_recovery": _cosine_with_dynamic_recovery,
}
