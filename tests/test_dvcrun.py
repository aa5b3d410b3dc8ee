"""DVC's YAML writes through `clipflux.dvcrun` are atomic: a process killed while DVC writes dvc.lock leaves the
old lock whole (DVC alone leaves half a file)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}
OLD = "schema: '2.0'\nstages:\n  a:\n    cmd: true\n"


def _killed_while_dumping(path, atomic: bool) -> subprocess.CompletedProcess:
    """A process that has DVC write `path` with a dumper that is SIGKILLed halfway through."""
    script = textwrap.dedent(f"""
        import os, signal
        from clipflux import dvcrun
        from dvc.utils.serialize import _yaml
        if {atomic}:
            dvcrun.install()

        def dumper(data, stream):
            stream.write("schema: '2.0'\\nstages:\\n  a:\\n")
            stream.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        _yaml._dump_data({str(path)!r}, {{"x": 1}}, dumper=dumper)
    """)
    return subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("atomic", [False, True])
def test_a_kill_while_dvc_writes_its_lock_leaves_the_old_lock_only_through_dvcrun(tmp_path, atomic):
    lock = tmp_path / "dvc.lock"
    lock.write_text(OLD)
    proc = _killed_while_dumping(lock, atomic)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    if atomic:
        assert lock.read_text() == OLD
    else:  # DVC's own writing: the kill left a truncated lock, which is what dvcrun prevents
        assert lock.read_text() == "schema: '2.0'\nstages:\n  a:\n"


def test_dvcrun_is_dvcs_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "clipflux.dvcrun", "version"], env=ENV, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0 and "DVC version" in proc.stdout, proc.stderr
