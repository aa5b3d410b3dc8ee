"""Learning-rate schedules across tasks: FiF's formulas exactly, and the shapes they promise (warmup, decay,
cooldown, recovery over task boundaries)."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from clipflux.config import ConfigError, OptimConfig
from clipflux.schedules import check_schedule, cooldown_of, lr_at, warmup_of

BASE = OptimConfig(lr=1e-3, weight_decay=0.2, warmup_steps=0, clip_grad_norm=1.0, batch_size=8, warmup_share=0.1,
                   min_lr_share=0.001)
MODES = ("autoregressive", "continued", "recovered")
FIF_NAMES = {"rsqrt": "rsqrt", "rsqrt_with_recovery": "rsqrt_with_recovery",
             "cosine_with_recovery": "cosine_with_linear_warmup_and_recovery",
             "cosine_with_dynamic_recovery": "cosine_with_linear_warmup_and_dynamic_recovery"}


class FiF:
    """FiF's scheduler lambdas, copied from continual_lib/utils/base_continual_learner.py:315-466 (upstream 3e123d9)
    with `self.args.experiment.scheduler/optimizer` as attributes; the value is the learning rate (FiF's lambda times
    its lr). Only `np` was kept where FiF uses it."""

    def __init__(self, task, scheduler_steps, lr, warmup_perc, cooldown_perc, cosine_lr_mul, recovery_mode):
        self.task = task
        self.args = SimpleNamespace(experiment=SimpleNamespace(
            optimizer=SimpleNamespace(lr=lr),
            scheduler=SimpleNamespace(warmup_perc=warmup_perc, cooldown_perc=cooldown_perc,
                                      cosine_lr_mul=cosine_lr_mul, recovery_mode=recovery_mode)))
        self.scheduler_steps = scheduler_steps

    def lr(self, name, step):
        return getattr(self, name)(step) * self.args.experiment.optimizer.lr

    def cosine_with_linear_warmup(self, step, custom_steps=None, norm=True):
        scheduler_steps = self.scheduler_steps
        if custom_steps:
            scheduler_steps = custom_steps
        norm_steps = step
        if norm:
            norm_steps = step % scheduler_steps
        warm_steps = int(np.ceil(self.args.experiment.scheduler.warmup_perc * scheduler_steps))
        if warm_steps and norm_steps < warm_steps:
            warm_epoch = norm_steps % warm_steps
            lrval = self.args.experiment.optimizer.lr * (warm_epoch + 1) / warm_steps
        else:
            e = (norm_steps - warm_steps) + 1
            es = scheduler_steps - warm_steps
            mul = 0.5 * (1 + np.cos(np.pi * e / es))
            min_lr = self.args.experiment.optimizer.lr * self.args.experiment.scheduler.cosine_lr_mul
            lrval = min_lr + mul * (self.args.experiment.optimizer.lr - min_lr)
        return lrval * 1 / self.args.experiment.optimizer.lr

    def rsqrt(self, step):
        scheduler_steps = self.scheduler_steps
        norm_steps = step % scheduler_steps
        warmup_init_lr = self.args.experiment.optimizer.lr * self.args.experiment.scheduler.cosine_lr_mul
        warmup_steps = self.args.experiment.scheduler.warmup_perc
        if self.args.experiment.scheduler.warmup_perc < 1:
            warmup_steps = int(np.ceil(self.args.experiment.scheduler.warmup_perc * scheduler_steps))
        cooldown_steps = self.args.experiment.scheduler.cooldown_perc
        if self.args.experiment.scheduler.cooldown_perc < 1:
            cooldown_steps = int(np.ceil(self.args.experiment.scheduler.cooldown_perc * scheduler_steps))
        cooldown_start = scheduler_steps - cooldown_steps
        if warmup_steps and norm_steps < warmup_steps:
            lrval = self.args.experiment.optimizer.lr * (norm_steps + 1) / warmup_steps
        elif cooldown_steps and norm_steps >= cooldown_start:
            cool_epoch = (norm_steps - cooldown_start) % cooldown_steps
            mul = warmup_steps ** 0.5 / (norm_steps) ** 0.5
            ref_lr = warmup_init_lr + mul * (self.args.experiment.optimizer.lr - warmup_init_lr)
            lrval = (ref_lr * (cooldown_steps - cool_epoch - 1) / cooldown_steps)
        else:
            mul = warmup_steps ** 0.5 / (norm_steps) ** 0.5
            lrval = warmup_init_lr + mul * (self.args.experiment.optimizer.lr - warmup_init_lr)
        return lrval / self.args.experiment.optimizer.lr

    def rsqrt_with_recovery(self, step):
        scheduler_steps = self.scheduler_steps
        norm_steps = step % scheduler_steps
        warmup_steps = self.args.experiment.scheduler.warmup_perc
        if self.args.experiment.scheduler.warmup_perc < 1:
            warmup_steps = int(np.ceil(self.args.experiment.scheduler.warmup_perc * scheduler_steps))
        cooldown_steps = self.args.experiment.scheduler.cooldown_perc
        if self.args.experiment.scheduler.cooldown_perc < 1:
            cooldown_steps = int(np.ceil(self.args.experiment.scheduler.cooldown_perc * scheduler_steps))
        cooldown_start = scheduler_steps - cooldown_steps
        warmup_init_lr = self.args.experiment.optimizer.lr * self.args.experiment.scheduler.cosine_lr_mul
        vmul = 1
        if self.task:
            if self.args.experiment.scheduler.recovery_mode == 'continued':
                seen_steps = (self.task) * (scheduler_steps - cooldown_steps)
                seen_steps -= (self.task - 1) * warmup_steps
                vmul = warmup_steps ** 0.5 / (seen_steps) ** 0.5
            elif self.args.experiment.scheduler.recovery_mode == 'autoregressive':
                seen_steps = (self.task) * (scheduler_steps) + warmup_steps
                vmul = ((self.task + 1) * warmup_steps) ** 0.5 / (seen_steps) ** 0.5
        base_lr = warmup_init_lr + vmul * (self.args.experiment.optimizer.lr - warmup_init_lr)
        if self.args.experiment.scheduler.recovery_mode != 'recovered':
            f_mul = lambda warmup_steps, norm_steps: warmup_steps ** 0.5 / norm_steps ** 0.5  # noqa: E731
        else:
            f_mul = lambda warmup_steps, norm_steps: warmup_steps ** 0.5 / (  # noqa: E731
                norm_steps + self.task * (scheduler_steps - cooldown_steps - warmup_steps)) ** 0.5
        if warmup_steps and norm_steps < warmup_steps:
            if self.args.experiment.scheduler.recovery_mode == 'recovered' and self.task:
                vmul = f_mul(warmup_steps, self.task * (scheduler_steps - cooldown_steps - warmup_steps))
                base_lr = warmup_init_lr + vmul * (self.args.experiment.optimizer.lr - warmup_init_lr)
            lrval = (base_lr * (norm_steps + 1) / warmup_steps)
        elif cooldown_steps and norm_steps >= cooldown_start:
            cool_epoch = (norm_steps - cooldown_start) % cooldown_steps
            vmul = f_mul(warmup_steps, norm_steps)
            ref_lr = warmup_init_lr + vmul * (base_lr - warmup_init_lr)
            lrval = (ref_lr * (cooldown_steps - cool_epoch - 1) / cooldown_steps)
        else:
            vmul = f_mul(warmup_steps, norm_steps)
            lrval = warmup_init_lr + vmul * (base_lr - warmup_init_lr)
        return lrval / self.args.experiment.optimizer.lr

    def _recovered_base(self, scheduler_steps, warm_steps):
        min_lr = self.args.experiment.optimizer.lr * self.args.experiment.scheduler.cosine_lr_mul
        vmul = 1
        if self.task:
            if self.args.experiment.scheduler.recovery_mode == 'autoregressive':
                e = self.task * (scheduler_steps - warm_steps) + 1
                es = (self.task + 1) * (scheduler_steps - warm_steps)
                vmul = 0.5 * (1 + np.cos(np.pi * e / es))
        return min_lr, min_lr + vmul * (self.args.experiment.optimizer.lr - min_lr)

    def cosine_with_linear_warmup_and_recovery(self, step, dynamic=False):
        scheduler_steps = self.scheduler_steps
        norm_steps = step % scheduler_steps
        warm_steps = int(np.ceil(self.args.experiment.scheduler.warmup_perc * scheduler_steps))
        min_lr, base_lr = self._recovered_base(scheduler_steps, warm_steps)
        if warm_steps and norm_steps < warm_steps:
            warm_epoch = norm_steps % warm_steps
            lrval = base_lr * (warm_epoch + 1) / warm_steps
        elif dynamic:  # the only line in which FiF's dynamic variant differs (:461-463)
            lrval = self.cosine_with_linear_warmup(self.task * scheduler_steps + norm_steps,
                                                   scheduler_steps * (self.task + 1),
                                                   norm=False) * self.args.experiment.optimizer.lr
        else:
            e = (norm_steps - warm_steps) + 1
            es = scheduler_steps - warm_steps
            vmul = 0.5 * (1 + np.cos(np.pi * e / es))
            lrval = min_lr + vmul * (base_lr - min_lr)
        return lrval / self.args.experiment.optimizer.lr

    def cosine_with_linear_warmup_and_dynamic_recovery(self, step):
        return self.cosine_with_linear_warmup_and_recovery(step, dynamic=True)


def _optim(schedule: str, warmup: float, cooldown: float | None, floor: float, mode: str, lr: float = 1e-3):
    return dataclasses.replace(BASE, lr=lr, schedule=schedule, warmup_share=warmup, min_lr_share=floor,
                               recovery=mode, cooldown_share=cooldown if schedule.startswith("rsqrt") else None)


@given(schedule=st.sampled_from(sorted(FIF_NAMES)), mode=st.sampled_from(MODES), steps=st.integers(4, 400),
       warmup=st.floats(0.01, 0.4), cooldown=st.one_of(st.just(0.0), st.floats(0.01, 0.4)),
       floor=st.floats(0.0, 0.1), lr=st.floats(1e-6, 1.0), task=st.integers(0, 8), data=st.data())
def test_every_fif_schedule_is_fifs_formula(schedule, mode, steps, warmup, cooldown, floor, lr, task, data):
    optim = _optim(schedule, warmup, cooldown, floor, mode, lr)
    assume(steps - warmup_of(task, steps, optim) - cooldown_of(steps, optim) > 0)
    step = data.draw(st.integers(0, steps - 1))
    fif = FiF(task, steps, lr, warmup, cooldown, floor, mode)
    assert lr_at(step, steps, optim, task) == pytest.approx(fif.lr(FIF_NAMES[schedule], step), rel=1e-12, abs=1e-15)


@given(mode=st.sampled_from(MODES), steps=st.integers(4, 400), warmup=st.floats(0.01, 0.4), floor=st.floats(0, 0.1))
def test_recovery_schedules_are_their_plain_schedule_on_the_first_task(mode, steps, warmup, floor):
    """Recovery only changes tasks after the first: there rsqrt_with_recovery is rsqrt, and the cosine recoveries are
    FiF's cosine_with_linear_warmup."""
    fif = FiF(0, steps, 1.0, warmup, 0.0, floor, mode)
    for step in range(steps):
        assert lr_at(step, steps, _optim("rsqrt_with_recovery", warmup, None, floor, mode), 0) == \
            pytest.approx(lr_at(step, steps, _optim("rsqrt", warmup, None, floor, mode), 0), rel=1e-12)
        for schedule in ("cosine_with_recovery", "cosine_with_dynamic_recovery"):
            assert lr_at(step, steps, _optim(schedule, warmup, None, floor, mode, 1.0), 0) == \
                pytest.approx(fif.cosine_with_linear_warmup(step), rel=1e-12, abs=1e-15)


def _task(optim, steps, task):
    return [lr_at(s, steps, optim, task) for s in range(steps)]


@given(steps=st.integers(4, 300), warmup=st.floats(0.01, 0.4), cooldown=st.one_of(st.none(), st.floats(0.01, 0.4)))
def test_constant_warms_up_holds_the_peak_and_cools_down_to_zero(steps, warmup, cooldown):
    optim = dataclasses.replace(BASE, schedule="constant", warmup_share=warmup, cooldown_share=cooldown)
    w, c = warmup_of(0, steps, optim), cooldown_of(steps, optim)
    assume(w + c <= steps)
    values = _task(optim, steps, 0)
    assert all(a < b for a, b in zip(values[:w], values[1:w])) and values[w - 1] == pytest.approx(optim.lr)
    assert values[w:steps - c] == [optim.lr] * (steps - c - w)  # the peak itself, held
    cool = values[steps - c:]
    assert all(a > b for a, b in zip(cool, cool[1:])) and (not cool or cool[-1] == 0.0)


@given(steps=st.integers(4, 300), warmup=st.floats(0.01, 0.4), cooldown=st.floats(0.01, 0.4), floor=st.floats(0, 0.1))
def test_rsqrt_peaks_at_the_end_of_warmup_then_decays_and_cools_down(steps, warmup, cooldown, floor):
    optim = _optim("rsqrt", warmup, cooldown, floor, "autoregressive")
    w, c = warmup_of(0, steps, optim), cooldown_of(steps, optim)
    assume(steps - w - c > 0)
    values = _task(optim, steps, 0)
    assert values[w - 1] == pytest.approx(optim.lr) and values[w] == pytest.approx(optim.lr)  # sqrt(W / W) = 1
    assert max(values) == pytest.approx(optim.lr)
    decay = values[w:steps - c]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert values[-1] == 0.0
    # rsqrt restarts: every task is the same
    assert _task(optim, steps, 3) == values


@given(steps=st.integers(10, 300), warmup=st.floats(0.02, 0.3), cooldown=st.one_of(st.just(0.0), st.floats(0.01, 0.3)),
       floor=st.floats(0, 0.1), tasks=st.integers(2, 8))
def test_rsqrt_recovery_peaks_fall_over_task_boundaries(steps, warmup, cooldown, floor, tasks):
    """Autoregressive and continued: each later task warms up to a lower peak, the value FiF's formula gives;
    every task ends its cooldown at zero. Recovered: the decay after the warmup continues where the earlier tasks'
    left off, sqrt(W / (n + t (S - C - W)))."""
    for mode in MODES:
        optim = _optim("rsqrt_with_recovery", warmup, cooldown, floor, mode)
        w, c = warmup_of(0, steps, optim), cooldown_of(steps, optim)
        assume(steps - w - c > 0)
        low = optim.lr * floor
        peaks = [lr_at(w - 1, steps, optim, t) for t in range(tasks)]
        assert peaks[0] == pytest.approx(optim.lr)
        falling = peaks if mode != "recovered" else peaks[1:]  # recovered's first target can pass lr (FiF's quirk)
        assert all(a > b for a, b in zip(falling, falling[1:]))
        if mode == "autoregressive":
            for t, peak in enumerate(peaks):
                assert peak == pytest.approx(low + math.sqrt((t + 1) * w / (t * steps + w)) * (optim.lr - low))
        if mode == "recovered":
            for t in range(1, tasks):
                n = w + 1  # a step after the warmup and before the cooldown
                if n < steps - c:
                    expected = low + math.sqrt(w / (n + t * (steps - c - w))) * (optim.lr - low)
                    assert lr_at(n, steps, optim, t) == pytest.approx(expected)
        if c:
            assert all(lr_at(steps - 1, steps, optim, t) == 0.0 for t in range(tasks))


@given(steps=st.integers(10, 300), warmup=st.floats(0.02, 0.3), floor=st.floats(0, 0.1), tasks=st.integers(2, 8))
def test_cosine_recovery_peaks_follow_one_cosine_over_the_stream(steps, warmup, floor, tasks):
    """Autoregressive: task t's peak is where a cosine over the (t + 1) tasks' post-warmup steps is after t of them,
    so peaks fall task by task; the other modes restart at the full peak. Dynamic recovery ends every task where
    one cosine over all tasks so far ends: at the floor."""
    low = 1e-3 * floor
    for mode in MODES:
        optim = _optim("cosine_with_recovery", warmup, None, floor, mode)
        w = warmup_of(0, steps, optim)
        assume(w < steps)
        peaks = [lr_at(w - 1, steps, optim, t) for t in range(tasks)]
        if mode == "autoregressive":
            assert all(a > b for a, b in zip(peaks, peaks[1:]))
            done = [(t * (steps - w) + 1) / ((t + 1) * (steps - w)) for t in range(tasks)]
            assert peaks[1:] == pytest.approx([low + 0.5 * (1 + math.cos(math.pi * d)) * (optim.lr - low)
                                               for d in done[1:]])
        else:
            assert peaks == [optim.lr] * tasks
        dynamic = _optim("cosine_with_dynamic_recovery", warmup, None, floor, mode)
        for t in range(tasks):
            assert lr_at(steps - 1, steps, dynamic, t) == pytest.approx(low, abs=1e-15)


def test_rsqrt_without_warmup_or_room_to_recover_is_refused_naming_the_key():
    no_warmup = dataclasses.replace(BASE, schedule="rsqrt", warmup_share=None, warmup_steps=0)
    with pytest.raises(ConfigError, match=r"^train\.optim\.schedule: rsqrt needs a warmup"):
        check_schedule(0, 100, no_warmup, "train.optim")
    cramped = _optim("rsqrt_with_recovery", 0.5, 0.5, 0.0, "recovered")
    check_schedule(0, 10, cramped, "train.optim")  # the first task does not recover
    with pytest.raises(ConfigError, match=r"^train\.optim\.recovery: recovered needs steps beyond warmup and cool"):
        check_schedule(1, 10, cramped, "train.optim")
    check_schedule(1, 10, dataclasses.replace(cramped, recovery="autoregressive"), "train.optim")
    check_schedule(3, 10, dataclasses.replace(cramped, recovery="continued"), "train.optim")  # FiF's sqrt stays real
    with pytest.raises(ConfigError, match=r"^train\.optim\.recovery: continued needs steps"):
        check_schedule(5, 10, _optim("rsqrt_with_recovery", 0.5, 0.6, 0.0, "continued"), "train.optim")
    all_warmup = _optim("cosine_with_recovery", 0.99, None, 0.0, "autoregressive")
    with pytest.raises(ConfigError, match=r"^train\.optim\.schedule: cosine_with_recovery needs steps after"):
        check_schedule(1, 10, all_warmup, "train.optim")
    check_schedule(0, 10, dataclasses.replace(BASE, warmup_share=None), "train.optim")  # cosine needs no warmup
