"""Checkpoints: atomic, verified by checksum, pruned, refused with other parameters."""

from __future__ import annotations

import pytest
import torch

from clipflux import checkpoint
from clipflux.checkpoint import CheckpointError


def test_latest_valid_checkpoint_is_loaded_and_old_ones_pruned(tmp_path):
    for step in range(4):
        checkpoint.save(tmp_path, 0, step, {"step": step, "w": torch.full((3,), float(step))}, keep=2)
    assert len(list(tmp_path.glob("ckpt-*.pt"))) == 2
    assert checkpoint.load_latest(tmp_path)["step"] == 3


def test_corrupt_or_truncated_newest_falls_back_to_previous(tmp_path, caplog):
    checkpoint.save(tmp_path, 0, 1, {"step": 1})
    newest = checkpoint.save(tmp_path, 0, 2, {"step": 2})
    newest.write_bytes(newest.read_bytes()[:-10])  # truncated
    assert checkpoint.load_latest(tmp_path)["step"] == 1
    assert "does not match its sha256" in caplog.text


def test_checkpoint_without_checksum_is_not_trusted(tmp_path):
    checkpoint.save(tmp_path, 0, 1, {"step": 1})
    newest = checkpoint.save(tmp_path, 0, 2, {"step": 2})
    newest.with_name(newest.name + ".sha256").unlink()  # killed between data and checksum
    assert checkpoint.load_latest(tmp_path)["step"] == 1


def test_empty_directory_has_no_checkpoint(tmp_path):
    assert checkpoint.load_latest(tmp_path / "none") is None


def test_fingerprint_mismatch_names_the_keys():
    with pytest.raises(CheckpointError, match="lr: checkpoint 0.1 vs now 0.2"):
        checkpoint.check_fingerprint({"lr": 0.1, "seed": 0}, {"lr": 0.2, "seed": 0})
    checkpoint.check_fingerprint({"lr": 0.1}, {"lr": 0.1})
