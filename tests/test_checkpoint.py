"""Checkpoints: atomic, verified by checksum, pruned, refused with other parameters."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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


def _finished_run(folder: checkpoint.Checkpoints, tasks: int) -> None:
    for task in range(1, tasks + 1):
        folder.weights_of(task).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"w": torch.full((2,), float(task))}, folder.weights_of(task))
        folder.save(task, 0, {"task": task, "step": 0, "fingerprint": {"lr": 0.1}})


def test_the_folder_lifecycle_hands_weights_over_and_keeps_only_the_final_state(tmp_path):
    folder = checkpoint.Checkpoints(tmp_path / "ckpt", keep=2)
    _finished_run(folder, 3)
    folder.begin(3, start_over=False)  # finished, weights still kept (not yet handed over): resumable as it is
    assert folder.resumable(3, {"lr": 0.1})["task"] == 3
    out = tmp_path / "out"
    folder.finish({out / "task_002.pt": 2, out / "task_003.pt": 3}, {out / "budget.json": "{}\n"})
    assert sorted(p.name for p in out.iterdir()) == ["budget.json", "task_002.pt", "task_003.pt"]
    assert torch.load(out / "task_002.pt")["w"].tolist() == [2.0, 2.0]
    assert not folder.weights.exists() and [p.name for p in folder.directory.glob("ckpt-*.pt")] == [
        "ckpt-0003-00000000.pt"]
    # A rerun of a finished run (DVC removed its outputs) trains again from the start.
    folder.begin(3, start_over=False)
    assert folder.resumable(3, {"lr": 0.1}) is None


def test_an_unfinished_run_is_kept_unless_starting_over_and_a_finished_one_with_other_params_is_history(tmp_path):
    folder = checkpoint.Checkpoints(tmp_path / "ckpt")
    _finished_run(folder, 2)
    folder.begin(5, start_over=False)  # 2 of 5 tasks: resumed
    assert folder.resumable(5, {"lr": 0.2})["task"] == 2  # the trainer refuses it, naming lr
    folder.begin(5, start_over=True)
    assert folder.resumable(5, {"lr": 0.1}) is None
    _finished_run(folder, 2)
    assert folder.resumable(2, {"lr": 0.2}) is None and not folder.directory.exists()


def test_weights_retired_by_a_finish_killed_before_deleting_them_are_removed_by_the_next_begin(tmp_path):
    folder = checkpoint.Checkpoints(tmp_path / "ckpt")
    _finished_run(folder, 2)
    folder.weights.rename(folder.directory / ".eval.retired")  # the finish's last rename, then SIGKILL
    folder.begin(2, start_over=False)  # the run was over: it trains again
    assert not folder.directory.exists()


class _Killed(Exception):
    pass


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 5), st.integers(1, 3))
def test_a_prune_killed_after_any_deletion_leaves_nothing_behind_after_the_next_save(deletions, keep):
    """A kill inside a prune (after `deletions` files went) leaves at worst a checkpoint without its checksum, never
    trusted, and the next save's prune leaves exactly the newest `keep` checkpoints with their checksums: what an
    uninterrupted run's folder holds (the chaos command found an orphan checksum before this order)."""
    import tempfile
    from pathlib import Path
    from unittest import mock

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for step in range(4):
            checkpoint.save(folder, 0, step, {"step": step}, keep=99)
        (folder / "ckpt-0000-00000099.pt.sha256").write_text("orphan left by a prune killed in the old order")
        real_unlink, done = Path.unlink, []

        def unlink_then_die(self, missing_ok=False):
            if len(done) == deletions:
                raise _Killed
            done.append(self)
            real_unlink(self, missing_ok=missing_ok)

        with mock.patch.object(Path, "unlink", unlink_then_die):
            try:
                checkpoint.prune(folder, keep)
            except _Killed:
                pass
        assert checkpoint.load_latest(folder)["step"] == 3
        checkpoint.save(folder, 0, 4, {"step": 4}, keep=keep)
        expected = {f"ckpt-0000-{s:08d}.pt{suffix}" for s in range(5 - keep, 5) for suffix in ("", ".sha256")}
        assert {p.name for p in folder.iterdir()} == expected
