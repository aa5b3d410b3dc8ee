"""The trainer on real shards: it learns, checkpoints, and resumes bit-identically."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipflux.config import MixtureConfig, ModelConfig, OptimConfig, RunConfig
from clipflux.data.loader import index_items
from clipflux.data.shards import ShardReader
from clipflux.methods import build_method
from clipflux.models import create_model, state_sha256
from clipflux.schedules import lr_at
from clipflux.train import Trainer

OPTIM = OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=2, clip_grad_norm=1.0, batch_size=8)
# FiF's schedule and weight decay with TiC's AdamW, no clipping and no warmup after the first task.
FIF_TIC = OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=0, clip_grad_norm=0.0, batch_size=8, warmup_share=0.4,
                      warmup_after_first=0.0, min_lr_share=0.001, weight_decay_on="all", beta2=0.98, eps=1e-6)
# A schedule across the stream: FiF's rsqrt with recovery (task 1 continues task 0's decay) and a cooldown.
RSQRT = OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=0, clip_grad_norm=1.0, batch_size=8, warmup_share=0.4,
                    min_lr_share=0.001, schedule="rsqrt_with_recovery", recovery="continued", cooldown_share=0.2)


class Interrupt(Exception):
    pass


def _trainer(shards, ckpt_dir, log, mixture=MixtureConfig(0.5, 0.25, 0.25), workers=0, precision="fp32",
             optim=OPTIM, augment="none"):
    readers = [ShardReader(shards / "novel_shapes", "train"), ShardReader(shards / "pool", "train")]
    items = index_items(0, readers[0])
    tasks = [items[: len(items) // 2], items[len(items) // 2:]]
    torch.manual_seed(0)
    model, tokenizer = create_model(ModelConfig(name="clipflux-tiny"))
    run = RunConfig(seed=3, checkpoint_every=2, optim=optim, workers=workers, precision=precision, augment=augment)
    return Trainer(model, build_method("finetune", None), tokenizer, readers, tasks, index_items(1, readers[1]),
                   run, 5, ckpt_dir, log, fingerprint={"seed": 3}, mixture=mixture)


def test_training_lowers_the_loss_and_logs_every_step(tiny_shards, tmp_path):
    logged = []
    trainer = _trainer(tiny_shards, tmp_path, lambda k, v, s: logged.append((k, v, s)))
    before = state_sha256(trainer.model.state_dict())
    trainer.fit()
    losses = [v for k, v, s in logged if k == "train/loss"]
    assert [s for k, v, s in logged if k == "train/loss"] == list(range(10))
    assert all(np.isfinite(losses))
    assert state_sha256(trainer.model.state_dict()) != before


@pytest.mark.parametrize(("kill_at", "precision", "options"),
                         [(1, "fp32", {}), (3, "fp32", {}), (5, "fp32", {}), (8, "fp32", {}), (5, "bf16", {}),
                          (3, "fp32", {"optim": FIF_TIC, "augment": "random_resized_crop"}),
                          (7, "fp32", {"optim": FIF_TIC, "augment": "random_resized_crop"}),
                          (6, "fp32", {"optim": RSQRT})])
def test_resume_is_bit_identical(tiny_shards, tmp_path, kill_at, precision, options):
    """Interrupting after `kill_at` steps and rerunning gives the uninterrupted run's weights and losses (also
    with a schedule that differs between tasks, and with FiF's training augmentation)."""
    reference_log = []
    reference = _trainer(tiny_shards, tmp_path / "ref", lambda k, v, s: reference_log.append((k, v, s)),
                         precision=precision, **options)
    reference.fit()

    seen = []

    def log_then_die(key, value, step):
        seen.append((key, value, step))
        if key == "train/lr" and step + 1 == kill_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        _trainer(tiny_shards, tmp_path / "run", log_then_die, precision=precision, **options).fit()
    resumed_log = []
    resumed = _trainer(tiny_shards, tmp_path / "run", lambda k, v, s: resumed_log.append((k, v, s)),
                       precision=precision, **options)
    resumed.fit()
    assert state_sha256(resumed.model.state_dict()) == state_sha256(reference.model.state_dict())
    merged = {(k, s): v for k, v, s in seen + resumed_log}
    assert merged == {(k, s): v for k, v, s in reference_log}
    # The final checkpoint (DVC caches it) is the same file: a resume leaves no trace, not even in the RNG states.
    final = sorted((tmp_path / "ref").glob("ckpt-*.pt"))[-1]
    assert final.read_bytes() == (tmp_path / "run" / final.name).read_bytes()


def test_bf16_autocast_changes_the_numbers_but_still_learns(tiny_shards, tmp_path):
    logs = {}
    for precision in ("fp32", "bf16"):
        logs[precision] = []
        _trainer(tiny_shards, tmp_path / precision, lambda k, v, s: logs[precision].append((k, v, s)),
                 precision=precision).fit()
    fp32, bf16 = ([v for k, v, s in logs[p] if k == "train/loss"] for p in ("fp32", "bf16"))
    # bf16 rounding moves each step's loss a little, and the steps drift apart (up to 8 % by the tenth step with
    # FiF's schedule); on average the two runs see the same losses.
    assert fp32 != bf16 and np.allclose(fp32, bf16, rtol=0.1)
    assert abs(np.mean(fp32) - np.mean(bf16)) < 0.02 * np.mean(fp32)


def test_batches_are_the_same_with_dataloader_workers(tiny_shards, tmp_path):
    a, b = [], []
    _trainer(tiny_shards, tmp_path / "a", lambda k, v, s: a.append((k, v, s)), workers=0).fit()
    _trainer(tiny_shards, tmp_path / "b", lambda k, v, s: b.append((k, v, s)), workers=2).fit()
    assert a == b


def test_lr_schedule_warms_up_then_decays():
    lrs = [lr_at(s, 10, OPTIM) for s in range(10)]
    assert lrs[0] == pytest.approx(OPTIM.lr / 2) and lrs[1] == pytest.approx(OPTIM.lr)
    assert all(x >= y for x, y in zip(lrs[1:], lrs[2:]))


@pytest.mark.parametrize("optim", [FIF_TIC, RSQRT], ids=["cosine", "rsqrt_with_recovery"])
def test_each_task_follows_its_own_schedule(tiny_shards, tmp_path, optim):
    """The logged learning rate is `lr_at(step, steps, optim, task)`. Cosine: task 1 starts at the peak (no warmup
    after the first task), task 0 warms up over ceil(0.4 x 5) = 2 steps, and both end above FiF's floor. Rsqrt
    with recovery: task 1 warms up to a lower peak and each task's cooldown ends at zero."""
    logged = {}
    _trainer(tiny_shards, tmp_path, lambda k, v, s: logged.update({s: v}) if k == "train/lr" else None,
             optim=optim).fit()
    expected = [lr_at(s, 5, optim, task) for task in range(2) for s in range(5)]
    assert [logged[s] for s in range(10)] == expected
    if optim is FIF_TIC:
        assert expected[0] == FIF_TIC.lr / 2 and expected[5] == FIF_TIC.lr
        assert min(expected[2:]) > FIF_TIC.lr * FIF_TIC.min_lr_share
    else:
        assert expected[1] == RSQRT.lr and 0 < expected[6] < RSQRT.lr and expected[4] == expected[9] == 0.0


def test_augmentation_changes_training(tiny_shards, tmp_path):
    losses = {}
    for augment in ("none", "random_resized_crop"):
        log = []
        _trainer(tiny_shards, tmp_path / augment, lambda k, v, s: log.append(v) if k == "train/loss" else None,
                 augment=augment).fit()
        losses[augment] = log
    assert losses["none"] != losses["random_resized_crop"] and all(np.isfinite(losses["random_resized_crop"]))
