"""Chaos: kill the whole process tree of `dvc repro` with SIGKILL at random moments, rerun it after each kill, and
compare the end result with an uninterrupted run.

    ./run.sh python benchmarks/chaos.py --kills 20 --seed 0                      # the quick setting's two experiments
    ./run.sh python benchmarks/chaos.py --targets report --set-default           # the whole default study (long)

Two fresh clones of this commit (the chaos clone at the reference's commit, also when HEAD has moved since): `reference` runs `dvc repro <targets>` once; `chaos` runs it under a driver that
spreads `--kills` kills over the stages (seeded: each kill picks a stage, still to run, and a moment in it from the
reference's duration of that stage; the last stretch of a training stage, where it finishes, gets its share) and
kills the session (dvc, the shell, the stage, any torchrun worker) with SIGKILL, then looks for survivors. Once
the kills are spent, `dvc repro` runs to the end. Then it compares every output hash of the two dvc.lock files and
checks the tracking stores of the chaos clone (`runs/` and its MongoDB): among the current runs (those no later run
of the same stage and config `replaced_by`), every training step logged once and one completed run per stage and
seed; no run left RUNNING. It prints a table: kills per stage, reruns, outputs
identical or not; the exit status is 0 only when everything holds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
QUICK = {"world.scale": 0.3, "pretrain.samples": 20000, "train.samples_per_task": 1024,
         "streams.tic.samples_per_task": 2048}
QUICK_TARGETS = ["evaluate@finetune", "evaluate@tic_cumulative_all"]
STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def clone(into: Path, overrides: dict, commit: str | None = None) -> None:
    """A fresh clone of this repository (at `commit`, else HEAD) with `overrides` applied to its params.yaml."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(into)], check=True)
    if commit:
        subprocess.run(["git", "checkout", "-q", commit], cwd=into, check=True)
    params = yaml.safe_load((into / "params.yaml").read_text())
    for key, value in overrides.items():
        node = params
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    (into / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


class Repro:
    """One `dvc repro` in a session of its own, its output followed line by line."""

    def __init__(self, root: Path, targets: list[str], log):
        # The clone's own code: the environment's editable install would otherwise import this checkout's src/,
        # whatever the clone's commit (PYTHONPATH comes before the install's path).
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "TQDM_DISABLE": "1",
               "PYTHONPATH": str(Path(root).resolve() / "src")}
        # As `./run.sh repro` runs it: DVC with dvc.lock written atomically (clipflux.dvcrun).
        self.proc = subprocess.Popen([sys.executable, "-m", "clipflux.dvcrun", "repro", *targets], cwd=root, env=env,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.stage, self.started, self.finished = None, time.monotonic(), []
        self.log = log
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.log.write(line)
            match = STAGE_LINE.search(line)
            if match:
                self.stage, self.started = match.group(1), time.monotonic()
            elif line.startswith("Updating lock file") and self.stage:
                self.finished.append(self.stage)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._reader.join(timeout=10)

    def wait(self) -> int:
        code = self.proc.wait()
        self._reader.join(timeout=10)
        return code


def survivors(root: Path) -> list[str]:
    """Processes still working in the clone: anything whose working directory is in it (the stages, torchrun's
    workers, and the embedded MongoDB server a stage started, with its watcher)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            state = (entry / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if state != "Z" and cwd.is_relative_to(root):
            found.append(f"{entry.name}: {cmd[:120]}")
    return found


def stage_durations(log: Path) -> dict[str, float]:
    """Seconds per stage of a finished run, from its timestamped log (`t=<s>` lines written by `run_reference`)."""
    durations, current, start = {}, None, 0.0
    for line in log.read_text().splitlines():
        if line.startswith("#t="):
            t, _, rest = line[3:].partition(" ")
            match = STAGE_LINE.search(rest)
            if match or rest.startswith("Updating lock file"):
                if current is not None:
                    durations[current] = float(t) - start
                    current = None
                if match:
                    current, start = match.group(1), float(t)
    return durations


def run_reference(root: Path, targets: list[str], log_path: Path) -> float:
    start = time.monotonic()

    class Stamped:
        def __init__(self, f):
            self.f = f

        def write(self, line):
            self.f.write(f"#t={time.monotonic() - start:.2f} {line}")
            self.f.flush()

    with open(log_path, "w") as f:
        code = Repro(root, targets, Stamped(f)).wait()
    if code:
        raise SystemExit(f"chaos: the reference run failed ({code}); see {log_path}")
    return time.monotonic() - start


def schedule(durations: dict[str, float], kills: int, rng: random.Random) -> list[tuple[str, float]]:
    """(stage, seconds into it) for each kill: every stage at least once where there are enough kills, then the
    rest by duration; one kill of each training stage in its last tenth (its finishing)."""
    stages = [s for s, d in durations.items() if d > 0.5]
    plan = [(s, rng.uniform(0.05, 0.95) * durations[s]) for s in stages[:kills]]
    trains = [s for s in stages if s.startswith(("train@", "pretrain"))]
    for s in rng.sample(trains, min(len(trains), max(0, kills - len(plan)))):
        plan.append((s, rng.uniform(0.9, 1.0) * durations[s]))
    weights = [durations[s] for s in stages]
    while len(plan) < kills:
        s = rng.choices(stages, weights)[0]
        plan.append((s, rng.uniform(0.05, 1.0) * durations[s]))
    order = {s: i for i, s in enumerate(stages)}
    return sorted(plan, key=lambda p: (order[p[0]], p[1]))


def outputs(lock: Path) -> dict[str, str]:
    """{output path: md5} of every stage in a dvc.lock."""
    found = {}
    for stage in yaml.safe_load(lock.read_text())["stages"].values():
        for out in stage.get("outs", []):
            found[out["path"]] = out["md5"]
    return found


def tracking_check(root: Path) -> list[str]:
    """What is wrong with the chaos clone's runs: a RUNNING run, a stage/seed without exactly one current completed
    run, a training step logged twice or missing among the current runs (those no later run `replaced_by`: a stage
    DVC reran because it was killed before recording it)."""
    problems, completed, steps = [], Counter(), defaultdict(Counter)
    for run_json in sorted((root / "runs").glob("*/[0-9]*/run.json")):
        run = json.loads(run_json.read_text())
        config = json.loads((run_json.parent / "config.json").read_text())
        key = (run["meta"].get("dvc_stage"), config.get("seed_index"))
        if run["status"] == "RUNNING":
            problems.append(f"{run_json.parent}: still RUNNING")
        if run.get("replaced_by") is not None:
            continue
        completed[key] += run["status"] == "COMPLETED"
        metrics_json = run_json.parent / "metrics.json"  # absent when killed before its first metric
        metrics = json.loads(metrics_json.read_text() or "{}") if metrics_json.exists() else {}
        if run_json.parts[-3] in ("pretrain", "train"):
            steps[key].update(metrics.get("train/loss", {}).get("steps", []))
    for key, n in completed.items():
        if n != 1:
            problems.append(f"{key}: {n} completed runs")
    for key, counter in steps.items():
        twice = sorted(s for s, n in counter.items() if n > 1)
        missing = sorted(set(range(max(counter) + 1)) - set(counter)) if counter else []
        if twice or missing:
            problems.append(f"{key}: steps logged twice {twice[:5]}, missing {missing[:5]}")
    return problems


def database_check(root: Path) -> list[str]:
    """What is wrong in the chaos clone's MongoDB against its `runs/`: a run missing, twice or RUNNING, or a
    training run whose logged steps differ from the local copy's."""
    from clipflux.tracking import server

    problems = []
    with server.hold(root) as store:
        db = store.client()[store.db_name]
        for run_json in sorted((root / "runs").glob("*/[0-9]*/run.json")):
            local = json.loads(run_json.read_text())
            docs = list(db.runs.find({"meta.clipflux_uid": local["meta"]["clipflux_uid"]}))
            if len(docs) != 1:
                problems.append(f"{run_json.parent}: {len(docs)} runs in MongoDB")
                continue
            if docs[0]["status"] != local["status"] or docs[0]["status"] == "RUNNING":
                problems.append(f"{run_json.parent}: {docs[0]['status']} in MongoDB, {local['status']} in runs/")
            metrics_json = run_json.parent / "metrics.json"
            metrics = json.loads(metrics_json.read_text() or "{}") if metrics_json.exists() else {}
            for metric in db.metrics.find({"run_id": docs[0]["_id"], "name": "train/loss"}):
                if metric["steps"] != metrics.get("train/loss", {}).get("steps"):
                    problems.append(f"{run_json.parent}: train/loss steps differ from MongoDB's")
        db.client.close()
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", nargs="+", help=f"dvc repro targets (default: {' '.join(QUICK_TARGETS)})")
    parser.add_argument("--set-default", action="store_true", help="the default params instead of the quick setting")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/clipflux-chaos"))
    parser.add_argument("--check-only", action="store_true",
                        help="only compare and check a finished chaos run in --workdir (kills read from chaos.log)")
    parser.add_argument("--reuse-reference", action="store_true",
                        help="keep a finished reference run in --workdir (from an earlier call) instead of rerunning it")
    args = parser.parse_args()
    targets = args.targets or QUICK_TARGETS
    overrides = {} if args.set_default else QUICK
    reference, chaos = args.workdir / "reference", args.workdir / "chaos"
    done = args.workdir / "reference.seconds"
    if not (args.reuse_reference and done.exists()):
        subprocess.run(["rm", "-rf", str(args.workdir)], check=True)
        args.workdir.mkdir(parents=True)
        clone(reference, overrides)
        print(f"chaos: reference run of {' '.join(targets)} in {reference}", flush=True)
        done.write_text(str(run_reference(reference, targets, args.workdir / "reference.log")))
    seconds = float(done.read_text())
    if args.check_only:
        return report(args, reference, chaos, seconds, targets)
    subprocess.run(["rm", "-rf", str(chaos)], check=True)
    clone(chaos, overrides, _commit(reference, full=True))  # the reference's code, whatever HEAD is now
    print(f"chaos: chaos run at {_commit(chaos)} (reference at {_commit(reference)})", flush=True)
    durations = stage_durations(args.workdir / "reference.log")
    print(f"chaos: reference took {seconds:.0f} s; stages: "
          + ", ".join(f"{s} {d:.0f} s" for s, d in durations.items()), flush=True)

    rng = random.Random(args.seed)
    plan = schedule(durations, args.kills, rng)
    kills, reruns, orphans, landed = Counter(), 0, [], []
    start = time.monotonic()
    with open(args.workdir / "chaos.log", "w") as log:
        for stage, at in plan:
            repro = Repro(chaos, targets, log)
            reruns += 1
            while repro.proc.poll() is None and not (repro.stage == stage and time.monotonic() - repro.started >= at):
                if stage in repro.finished:  # the stage finished sooner than in the reference: kill it now
                    break
                time.sleep(0.05)
            if repro.proc.poll() is not None:
                if repro.proc.returncode == 0:
                    break  # nothing left to kill
                raise SystemExit(f"chaos: dvc repro failed on its own ({repro.proc.returncode}); see chaos.log")
            where = repro.stage or "(dvc)"
            repro.kill()
            kills[where] += 1
            landed.append((where, round(time.monotonic() - repro.started, 1)))
            log.write(f"### SIGKILL in {where} after {landed[-1][1]} s\n")
            deadline = time.monotonic() + 20  # the server's watcher stops it within a few seconds
            while survivors(chaos) and time.monotonic() < deadline:
                time.sleep(0.5)
            left = survivors(chaos)
            if left:
                orphans.extend(left)
                log.write("".join(f"### left behind: {line}\n" for line in left))
                for line in left:
                    os.kill(int(line.split(":")[0]), signal.SIGKILL)
        final = Repro(chaos, targets, log)
        reruns += 1
        code = final.wait()
    if code:
        raise SystemExit(f"chaos: the last dvc repro failed ({code}); see {args.workdir / 'chaos.log'}")
    chaos_seconds = time.monotonic() - start

    (args.workdir / "chaos.seconds").write_text(f"{chaos_seconds}")
    report(args, reference, chaos, seconds, targets)


def report(args, reference: Path, chaos: Path, seconds: float, targets: list[str]) -> None:
    """Compare the two clones, check the chaos clone's stores, print the table; exit 1 if anything differs."""
    durations = stage_durations(args.workdir / "reference.log")
    log = (args.workdir / "chaos.log").read_text()
    kills = Counter(m.group(1) for m in re.finditer(r"^### SIGKILL in (\S+) after", log, re.M))
    reruns = sum(kills.values()) + 1
    chaos_seconds = float((args.workdir / "chaos.seconds").read_text())
    orphans = re.findall(r"^### left behind: (.*)$", log, re.M)
    ran = {p for p, s in _stage_outs(reference / "dvc.lock").items() if s in durations}  # the stages that ran
    ref_outs, chaos_outs = outputs(reference / "dvc.lock"), outputs(chaos / "dvc.lock")
    ref_outs = {p: md5 for p, md5 in ref_outs.items() if p in ran}
    differ = sorted(p for p in ref_outs if ref_outs[p] != chaos_outs.get(p))
    committed = yaml.safe_load(subprocess.run(["git", "show", "HEAD:dvc.lock"], cwd=reference, capture_output=True,
                                              text=True, check=True).stdout)
    committed_outs = {o["path"]: o["md5"] for s in committed["stages"].values() for o in s.get("outs", [])}
    results = [p for p in ref_outs if p.startswith(("models/", "reports/"))]
    same_as_committed = [p for p in results if committed_outs.get(p) == ref_outs[p]]
    subprocess.run([str(Path(sys.executable).parent / "clipflux"), "tracking", "upload"], cwd=chaos, check=False,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(Path(chaos).resolve() / "src")})
    # (runs written while the database was down or killed)
    problems = tracking_check(chaos) + database_check(chaos)
    print(f"\nchaos: {sum(kills.values())} kills, {reruns} runs of dvc repro, {chaos_seconds:.0f} s "
          f"(uninterrupted: {seconds:.0f} s), seed {args.seed}\n")
    print("| stage | kills | outputs identical |")
    print("|---|---:|---|")
    for stage in durations:
        outs = [p for p, s in _stage_outs(reference / "dvc.lock").items() if s == stage]
        same = all(p not in differ for p in outs)
        print(f"| {stage} | {kills.get(stage, 0)} | {'yes' if same else 'NO: ' + ', '.join(p for p in outs if p in differ)} |")
    if kills.get("(dvc)"):
        print(f"| (between stages) | {kills['(dvc)']} | |")
    print(f"\noutputs compared: {len(ref_outs)}, differing: {len(differ)} {differ}")
    print(f"models/ and reports/ outputs of the reference equal to the committed dvc.lock's: "
          f"{len(same_as_committed)} of {len(results)}")
    print(f"processes left behind after a kill: {len(orphans)} {orphans[:3]}")
    print("tracking stores (runs/ and MongoDB): "
          + ("every step once, one completed run per stage and seed, none RUNNING" if not problems else str(problems)))
    sys.exit(1 if differ or orphans or problems else 0)


def _commit(root: Path, full: bool = False) -> str:
    return subprocess.run(["git", "rev-parse", *([] if full else ["--short"]), "HEAD"], cwd=root, capture_output=True,
                          text=True).stdout.strip()


def _stage_outs(lock: Path) -> dict[str, str]:
    found = {}
    for name, stage in yaml.safe_load(lock.read_text())["stages"].items():
        for out in stage.get("outs", []):
            found[out["path"]] = name
    return found


if __name__ == "__main__":
    main()
