"""`python -m clipflux.launch`: one process runs the stage script directly, several go through torchrun."""

import subprocess
import sys

import pytest

from clipflux.launch import command


def test_one_process_runs_the_script_without_torchrun():
    assert command(1, "stages/train.py", ["--x", "1"]) == [sys.executable, "stages/train.py", "--x", "1"]


def test_several_processes_go_through_torchrun():
    """torchrun of this interpreter (not the first `torchrun` on PATH, which a bare `.venv/bin/python` lacks)."""
    assert command(2, "stages/train.py", ["--x"]) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "stages/train.py", "--x"]


def test_zero_processes_is_refused():
    with pytest.raises(SystemExit, match="nproc must be a positive integer, got 0"):
        command(0, "stages/train.py", [])


def test_the_script_replaces_the_launcher(tmp_path):
    """exec: the script runs as the launcher's own process (its pid), with the arguments passed on."""
    script = tmp_path / "s.py"
    script.write_text("import os, sys; print(os.getpid(), sys.argv[1:])\n")
    proc = subprocess.Popen([sys.executable, "-m", "clipflux.launch", "1", str(script), "a", "b"],
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert out.split(maxsplit=1) == [str(proc.pid), "['a', 'b']\n"]
