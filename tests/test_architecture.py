"""The architecture contracts of pyproject.toml ([tool.importlinter]) hold, and break when the layering does."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path, src: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(src), "PATH": str(LINT.parent)})


def test_the_import_contracts_hold():
    proc = _lint(REPO, REPO / "src")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "broken" not in proc.stdout.lower().replace("0 broken", "")


def test_a_cycle_and_an_upward_import_break_the_contracts(tmp_path):
    """config importing the methods breaks the leaf rule and closes a cycle (methods import config)."""
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO / "src" / "clipflux", tmp_path / "src" / "clipflux",
                    ignore=shutil.ignore_patterns("__pycache__"))
    config = tmp_path / "src" / "clipflux" / "config.py"
    config.write_text(config.read_text() + "\nimport clipflux.methods  # noqa\n")
    proc = _lint(tmp_path, tmp_path / "src")
    assert proc.returncode == 1
    assert "config imports only errors: reading params.yaml loads nothing else of clipflux (nor torch) BROKEN" in " ".join(
        proc.stdout.split())
    assert "no import cycles between the modules and packages of clipflux BROKEN" in " ".join(proc.stdout.split())
