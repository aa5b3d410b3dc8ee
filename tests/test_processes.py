"""Process and file discipline: a process dies with its parent; one writer per checkpoint folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from clipflux.processes import LockedError, exclusive, holder, lock_path

from conftest import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead, only not yet reaped
        return f.read().split(")")[-1].split()[0] != "Z"


def _wait_for(path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)
    return path.read_text().strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_that_asked_to_die_with_its_parent_does_when_the_parent_is_killed(tmp_path):
    """The parent (a launcher) starts a child in a session of its own, as torchrun starts its workers, so
    killing the parent's process group would not reach it: only the death signal does."""
    child_pid = tmp_path / "child.pid"
    child = textwrap.dedent(f"""
        import os, time
        from clipflux.processes import die_with_parent
        die_with_parent()
        open({str(child_pid)!r}, "w").write(str(os.getpid()))
        time.sleep(600)
    """)
    parent = textwrap.dedent(f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", {child!r}], start_new_session=True)
        time.sleep(600)
    """)
    launcher = subprocess.Popen([sys.executable, "-c", parent], env=ENV)
    pid = int(_wait_for(child_pid))
    assert _alive(pid)
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the child outlived its parent"


def test_a_second_writer_stops_naming_the_holder_and_gets_the_lock_once_the_holder_is_killed(tmp_path):
    folder = tmp_path / "checkpoints" / "paint"
    held = tmp_path / "held"
    script = textwrap.dedent(f"""
        import time
        from clipflux.processes import exclusive
        with exclusive({str(folder)!r}):
            open({str(held)!r}, "w").write("yes")
            time.sleep(600)
    """)
    first = subprocess.Popen([sys.executable, "-c", script], env=ENV)
    try:
        _wait_for(held)
        with pytest.raises(LockedError, match=f"pid {first.pid} on .* since .*CLIPFLUX_WAIT_FOR_LOCK=1"):
            with exclusive(folder, wait=False):
                pass
        assert holder(folder)["pid"] == first.pid
    finally:
        first.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel releases the lock
        first.wait()
    with exclusive(folder, wait=False):
        assert holder(folder)["pid"] == os.getpid()
    assert lock_path(folder).parent == folder.parent and not folder.exists()  # beside, not inside the output


def test_a_waiting_writer_gets_the_lock_when_the_holder_finishes(tmp_path):
    folder = tmp_path / "ckpt"
    held, done = tmp_path / "held", tmp_path / "done"
    script = textwrap.dedent(f"""
        import time
        from clipflux.processes import exclusive
        with exclusive({str(folder)!r}):
            open({str(held)!r}, "w").write("yes")
            time.sleep(1.5)
            open({str(done)!r}, "w").write("yes")  # the holder's last act before it lets go
    """)
    first = subprocess.Popen([sys.executable, "-c", script], env=ENV)
    _wait_for(held)
    start = time.monotonic()
    with exclusive(folder, wait=True, poll_s=0.1):
        # only once the holder is done: the lock goes when its block ends (its process may still be exiting)
        assert done.exists()
    assert time.monotonic() - start > 0.3
    first.wait()


def test_a_second_train_stage_on_the_same_experiment_stops_at_once_naming_the_holder(tmp_path):
    """The stage takes the experiment's lock before it reads or writes anything: a run of the same experiment
    elsewhere (here: this test holding the lock) stops it with one line, exit status 2, nothing written."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    with exclusive(tmp_path / "checkpoints" / "finetune"):
        proc = subprocess.run(
            [sys.executable, str(REPO / "stages/train.py"), "--experiment", "finetune", "--shards", "shards",
             "--stream", "stream.json", "--base", "base.pt", "--out", "models/finetune", "--checkpoints",
             "checkpoints/finetune"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
            env={**ENV, "CLIPFLUX_MONGO_URL": "off"})
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"checkpoints/finetune is being written by pid {os.getpid()} on " in proc.stderr
    assert not (tmp_path / "models").exists() and sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "finetune.lock"]
