"""dvc.yaml's code dependencies are the ones the import graph derives, and DVC sees a change to any of them."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
from pathlib import Path

import grimp
import pytest
import yaml

from clipflux import stagedeps

from conftest import REPO


def test_every_stage_lists_exactly_the_code_it_imports():
    wrong = [r for r in stagedeps.check(REPO) if r.missing or r.stale]
    assert not wrong, "run `clipflux stage-deps --write`: " + "; ".join(
        f"{r.stage} missing {list(r.missing)} stale {list(r.stale)}" for r in wrong)


def test_derivation_follows_imports_inside_functions():
    """A module imported only inside a function of a module a stage imports is still that stage's dependency."""
    graph = grimp.build_graph("clipflux")
    seen = 0
    for script, _ in stagedeps.stages(REPO).values():
        files = stagedeps.derive(REPO, script, graph)
        for path in (f for f in files if f.endswith(".py")):
            tree = ast.parse((REPO / path).read_text())
            inner = {n.module for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for n in ast.walk(f)
                     if isinstance(n, ast.ImportFrom) and n.level == 0 and (n.module or "").startswith("clipflux.")}
            for module in inner & set(graph.modules):
                seen += 1
                assert stagedeps._module_file(REPO, module).relative_to(REPO).as_posix() in files, (script, module)
    assert seen, "no stage module imports clipflux inside a function: the test checks nothing"


def test_modules_that_read_project_files_declare_them():
    """A stage module that builds a path from its own location reads a project file: it must say which (READS)."""
    graph = grimp.build_graph("clipflux")
    reachable = set().union(*(stagedeps.derive(REPO, script, graph) for script, _ in stagedeps.stages(REPO).values()))
    for path in sorted(p for p in reachable if p.endswith(".py")):
        text = (REPO / path).read_text()
        if "Path(__file__)" in text:
            assert "\nREADS = " in text, f"{path} reads a project file but declares no READS"


def _indirect_file(script: Path, graph) -> str:
    """A src/ file the stage depends on although its script does not import it directly."""
    direct = stagedeps._imports(ast.parse((REPO / script).read_text()), set(graph.modules))
    direct_files = {stagedeps._module_file(REPO, m).relative_to(REPO).as_posix() for m in direct}
    candidates = sorted(f for f in stagedeps.derive(REPO, script, graph)
                        if f.startswith("src/") and f.endswith(".py") and not f.endswith("__init__.py")
                        and f not in direct_files)
    return candidates[len(candidates) // 2]


@pytest.mark.e2e
def test_dvc_status_sees_a_change_to_a_file_a_stage_imports_only_indirectly(tmp_path):
    """In a copy whose stages only record their code dependencies, editing one indirectly imported file per
    stage makes `dvc status` name that file as a modified dependency of that stage."""
    copy = tmp_path / "copy"
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    for name in tracked:
        if (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    pipeline = yaml.safe_load((copy / "dvc.yaml").read_text())
    for stage in pipeline["stages"].values():  # keep the code dependencies only; record them, run nothing
        body = stage.get("do", stage)
        body["cmd"] = "true"
        body["deps"] = [d for d in body["deps"] if d.startswith(("src/", "stages/", "configs/"))]
        for key in ("outs", "metrics", "params"):
            body.pop(key, None)
    pipeline.pop("plots", None)
    (copy / "dvc.yaml").write_text(yaml.safe_dump(pipeline))
    (copy / "dvc.lock").unlink(missing_ok=True)
    (copy / "data.dvc").unlink(missing_ok=True)  # the imported-data folder: not code
    for command in (["git", "init", "-q"], ["dvc", "init", "-q", "-f"], ["dvc", "repro", "-q"]):
        subprocess.run(command, cwd=copy, check=True, capture_output=True)
    assert json.loads(subprocess.run(["dvc", "status", "--json"], cwd=copy, capture_output=True, text=True,
                                     check=True).stdout) == {}
    # Byte code appears or not depending on how Python ran: it is no part of a folder dependency (.dvcignore).
    (copy / "src/clipflux/methods/__pycache__").mkdir()
    (copy / "src/clipflux/methods/__pycache__/base.cpython-311.pyc").write_bytes(b"\x00" * 64)
    assert json.loads(subprocess.run(["dvc", "status", "--json"], cwd=copy, capture_output=True, text=True,
                                     check=True).stdout) == {}

    graph = grimp.build_graph("clipflux")
    edited = {name: _indirect_file(script, graph) for name, (script, _) in stagedeps.stages(REPO).items()}
    for path in set(edited.values()):
        with open(copy / path, "a") as f:
            f.write("# an edit\n")
    status = json.loads(subprocess.run(["dvc", "status", "--json"], cwd=copy, capture_output=True, text=True,
                                       check=True).stdout)
    for name, path in edited.items():
        changed = [stage for stage in status if stage.split("@")[0] == name]
        assert changed, f"{name}: editing {path} left it up to date"
        for stage in changed:
            deps = {k: v for change in status[stage] for k, v in change.get("changed deps", {}).items()}
            covering = [d for d in deps if path == d or path.startswith(d + "/")]
            assert covering and all(deps[d] == "modified" for d in covering), (stage, path, deps)
