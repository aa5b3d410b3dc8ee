"""Stage dependencies derived from the code, so that dvc.yaml cannot miss a change that alters a stage's output.

A stage's code dependencies are its script plus every module of `clipflux` the script can import, transitively
and including imports inside functions (the import graph is grimp's), plus the packages around them (their
`__init__.py` runs on import), plus the project files those modules read (`READS`, a module-level tuple of
paths relative to the repository root, declared next to the code that reads them). `clipflux stage-deps`
compares that set with the `src/` and `configs/` entries of every stage in dvc.yaml and, with `--write`,
rewrites those entries (everything else in dvc.yaml, comments included, is left as it is).

A folder entry stands for every file in it: the derived list names a folder only when every module in it is a
dependency, and an entry is wrong both when it misses a dependency and when it covers a file the stage never
imports (a stale entry reruns a stage for nothing).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

PACKAGE = "clipflux"
TRACKED = ("src/", "configs/")  # the dvc.yaml entries this module owns; the rest (data, params files) stays hand-written


@dataclass(frozen=True)
class StageCheck:
    """One stage's derived code dependencies against the ones dvc.yaml lists."""

    stage: str
    derived: tuple[str, ...]  # minimal list: files, or folders whose every file is derived
    listed: tuple[str, ...]
    missing: tuple[str, ...]  # derived files no listed entry covers
    stale: tuple[str, ...]  # listed entries that cover a file the stage does not depend on


def _module_file(root: Path, module: str) -> Path:
    base = root / "src" / Path(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _imports(tree: ast.AST, known: set[str]) -> set[str]:
    """The project modules an AST imports anywhere (functions included)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def _reads(root: Path, module: str) -> set[str]:
    """The project files a module declares it reads (`READS = ("configs/models", ...)`)."""
    for node in ast.parse(_module_file(root, module).read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "READS" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def _close(modules: set[str], graph) -> set[str]:
    """Modules plus everything they import and every package around them, to a fixed point."""
    todo, seen = list(modules), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += graph.find_modules_directly_imported_by(module)
    return seen


def derive(root: Path, script: Path, graph=None) -> set[str]:
    """Every project file (repository-relative) the stage script `script` depends on, itself included."""
    import grimp

    graph = graph or grimp.build_graph(PACKAGE)
    modules = _close(_imports(ast.parse((root / script).read_text()), set(graph.modules)), graph)
    files = {str(script)} | {_module_file(root, m).relative_to(root).as_posix() for m in modules}
    for module in modules:
        for entry in _reads(root, module):
            files |= _project_files(root, entry)
    return files


def _project_files(root: Path, entry: str) -> set[str]:
    """The tracked files under one dvc.yaml entry (a file or a folder)."""
    path = root / entry
    if path.is_dir():
        return {p.relative_to(root).as_posix() for p in path.rglob("*") if p.is_file()
                and "__pycache__" not in p.parts}
    return {entry}


def minimal(root: Path, files: set[str]) -> list[str]:
    """`files` with each folder of `src/` or `configs/` that they fill completely named once."""
    entries = set(files)
    for file in sorted(files, key=lambda f: -f.count("/")):
        parent = str(Path(file).parent)
        while parent.startswith(TRACKED) and parent != "src/" + PACKAGE:  # never the whole package
            if not _project_files(root, parent) <= files:
                break
            entries = {e for e in entries if not e.startswith(parent + "/")} | {parent}
            parent = str(Path(parent).parent)
    return sorted(entries)


def stages(root: Path) -> dict[str, tuple[Path, list[str]]]:
    """{stage name in dvc.yaml: (its script, its literal deps)} (a foreach stage once, by its name)."""
    found = {}
    for name, stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)
        script = re.search(r"stages/\w+\.py", body["cmd"])
        if script:
            found[name] = (Path(script.group(0)), [d for d in body.get("deps", []) if isinstance(d, str)])
    return found


def check(root: Path) -> list[StageCheck]:
    """Derived against listed code dependencies for every stage of dvc.yaml."""
    import grimp

    graph = grimp.build_graph(PACKAGE)
    results = []
    for name, (script, deps) in stages(root).items():
        files = derive(root, script, graph)
        listed = [d for d in deps if d.startswith(TRACKED)]
        covered = set().union(*(_project_files(root, d) for d in listed)) if listed else set()
        code = {f for f in files if f.startswith(TRACKED)}
        stale = [d for d in listed if not _project_files(root, d) <= files]
        results.append(StageCheck(name, tuple(minimal(root, code)), tuple(listed), tuple(sorted(code - covered)),
                                  tuple(stale)))
    return results


def write(root: Path, results: list[StageCheck]) -> None:
    """Replace each stage's `src/` and `configs/` entries in dvc.yaml with the derived list, after its script."""
    lines = (root / "dvc.yaml").read_text().splitlines(keepends=True)
    derived = {r.stage: r.derived for r in results}
    out, stage = [], None
    for line in lines:
        top = re.match(r"^  (\w+):", line)
        if top:
            stage = top.group(1)
        entry = re.match(r"^(\s+)- ((?:src|configs)/\S+)\s*$", line)
        if stage in derived and entry:
            continue  # dropped: the derived list replaces it
        out.append(line)
        script = re.match(r"^(\s+)- stages/\w+\.py\s*$", line)
        if stage in derived and script:
            out += [f"{script.group(1)}- {path}\n" for path in derived[stage]]
    (root / "dvc.yaml").write_text("".join(out))
