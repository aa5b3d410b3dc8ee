"""A heavy stage as a Slurm job: `clipflux.launch` submits it with `sbatch --wait` when `launcher.kind` is slurm.

The job (the batch script `batch_script` writes) runs one srun task per node; each starts the stage's `nproc`
ranks through torchrun (`node_command`), rendezvousing at the batch host (rank 0's node, which writes the
checkpoints and outputs, into the project folder as a local run does: on a cluster it is on a shared file system).
The submitting process waits for the job's final state (through requeues), copies the job's log to its own output
(so `dvc repro` shows the stage as if it ran here), returns the job's exit status, and cancels the job when it is
itself stopped; DVC then records the outputs as always.

Time limits and preemption (`clipflux.stopping`): `--signal=B:USR1@<signal_seconds>` reaches the batch shell,
whose trap creates the stage's stop file; the stage checkpoints at the end of its step and exits with
`stopping.REQUEUE_EXIT`, and the batch script then requeues the job (`scontrol requeue`), which resumes from
that checkpoint. A job killed without warning
(a node failure, `scancel`) resumes from its last periodic checkpoint when run again.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from clipflux.config import SlurmConfig
from clipflux.stopping import REQUEUE_EXIT, STOP_FILE_ENV

LOG_DIR = Path(".clipflux") / "slurm"  # under the project (or DVC experiment) folder: batch scripts and logs


def job_name(stage: str, args: list[str]) -> str:
    """`clipflux-<stage>[-<experiment>]`: what `squeue` shows."""
    name = f"clipflux-{stage}"
    if "--experiment" in args[:-1]:
        name += "-" + args[args.index("--experiment") + 1]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def batch_script(name: str, cfg: SlurmConfig, nproc: int, script: str, args: list[str], log_dir: Path,
                 python: str = sys.executable) -> str:
    """The sbatch script of a stage: resources from `cfg`, one srun task per node, each running `nproc` ranks."""
    options = [f"--job-name={name}", f"--nodes={cfg.nodes}", "--ntasks-per-node=1",
               f"--cpus-per-task={cfg.cpus_per_task}", f"--time={cfg.sbatch_time}", "--requeue", "--open-mode=append",
               f"--output={log_dir.resolve()}/{name}-%j.log", f"--chdir={Path.cwd()}", "--export=ALL"]
    if cfg.gpus_per_node:
        options.append(f"--gpus-per-node={cfg.gpus_per_node}")
    if cfg.partition:
        options.append(f"--partition={cfg.partition}")
    if cfg.account:
        options.append(f"--account={cfg.account}")
    if cfg.signal_seconds:
        options.append(f"--signal=B:USR1@{cfg.signal_seconds}")
    options += cfg.options
    stage = shlex.join([python, "-m", "clipflux.launch", "--node", str(nproc), script, *args])
    header = "\n".join(f"#SBATCH {shlex.quote(o)}" for o in options)
    return f"""#!/bin/bash
{header}
# Written by clipflux.slurm for `{name}`; rerun by `dvc repro` (or submit it yourself: `sbatch <this file>`).
set -u
echo "clipflux: job $SLURM_JOB_ID on $SLURM_JOB_NODELIST (restart ${{SLURM_RESTART_COUNT:-0}})"
export {STOP_FILE_ENV}="{log_dir.resolve()}/{name}-$SLURM_JOB_ID.stop"
rm -f "${STOP_FILE_ENV}"
# Slurm's warning before the time limit, or a preemption's SIGTERM: the stage checkpoints after its step.
trap 'echo "clipflux: stop requested"; touch "${STOP_FILE_ENV}"' USR1 TERM
export MASTER_ADDR="$(hostname)" MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
srun --kill-on-bad-exit=1 --ntasks-per-node=1 --cpus-per-task={cfg.cpus_per_task} {stage} &
pid=$!
while :; do  # a trapped signal interrupts `wait`; wait again until srun is done
    wait $pid; status=$?
    kill -0 $pid 2>/dev/null || break
done
if [ $status -eq {REQUEUE_EXIT} ]; then
    echo "clipflux: stopped at a checkpoint; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID" && exit 0
fi
exit $status
"""


def node_command(nproc: int, script: str, args: list[str], env: dict[str, str] = os.environ) -> list[str] | None:
    """The command of one node of a multi-node job (torchrun joining the rendezvous at MASTER_ADDR:MASTER_PORT),
    or None for a one-node job (then the stage starts as `launch.command` starts it locally)."""
    nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    if nodes == 1:
        return None
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--node-rank",
            env["SLURM_NODEID"], "--nproc-per-node", str(nproc), "--master-addr", env["MASTER_ADDR"],
            "--master-port", env["MASTER_PORT"], "--max-restarts", "0", script, *args]


FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}  # a requeued job passes through PENDING again, never through these
REQUEUED_AFTER = {"NODE_FAIL", "PREEMPTED"}  # states a requeueable job may show briefly before Slurm requeues it
REQUEUE_GRACE = 300.0  # seconds such a state must last before it counts as the end


def run(stage: str, cfg: SlurmConfig, nproc: int, script: str, args: list[str], poll: float = 0.5) -> int:
    """Submit the stage as a job, copy its log here while it runs, and return its exit status once it ended
    (through any requeues).

    Stopping this process (SIGTERM, SIGINT, SIGHUP, or its parent's death) cancels the job.
    """
    name = job_name(stage, args)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    batch = LOG_DIR / f"{name}.sbatch"
    batch.write_text(batch_script(name, cfg, nproc, script, args, LOG_DIR))
    submitted = subprocess.run(["sbatch", "--parsable", str(batch)], capture_output=True, text=True)
    if submitted.returncode != 0:
        print(f"clipflux: sbatch refused the {stage} job: {submitted.stderr.strip()}", file=sys.stderr)
        return submitted.returncode
    job = submitted.stdout.strip().split(";")[0]
    log = LOG_DIR / f"{name}-{job}.log"
    print(f"clipflux: {stage} runs as Slurm job {job} ({name}; squeue -j {job}); log {log}", flush=True)

    def cancel(signum, frame):
        subprocess.run(["scancel", job], capture_output=True)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, cancel)
    offset, since = 0, None
    while True:  # `sbatch --wait` polls at up to 10 s intervals (a tiny stage waited 14 s for nothing)
        state = job_state(job)
        offset = _copy_new(log, offset)
        if state is None:
            break
        if state["JobState"] in REQUEUED_AFTER and state.get("Requeue") == "1":
            since = since or time.monotonic()
            if time.monotonic() - since < REQUEUE_GRACE:
                time.sleep(poll)
                continue
        elif state["JobState"] not in FINAL_STATES:
            since = None
        if state["JobState"] in FINAL_STATES:
            break
        time.sleep(poll)
    if state is None:
        print(f"clipflux: Slurm no longer knows job {job}; see its log {log}", file=sys.stderr)
        return 1
    code, _, sig = state.get("ExitCode", "1:0").partition(":")
    if state["JobState"] != "COMPLETED":
        print(f"clipflux: Slurm job {job} ended {state['JobState']} (exit {code}, signal {sig or 0}; {state.get('Reason')})",
              file=sys.stderr)
    return int(code) or (0 if state["JobState"] == "COMPLETED" else 1)


def job_state(job: str) -> dict[str, str] | None:
    """scontrol's KEY=VALUE fields of `job` (JobState, ExitCode, Restarts, ...), or None once Slurm forgot it."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.startswith("JobId="):
        return None
    return dict(word.split("=", 1) for word in out.stdout.split() if "=" in word)


def _copy_new(log: Path, offset: int) -> int:
    """Write what `log` gained since `offset` to stdout; returns the new offset."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return offset
    if chunk:
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
    return offset + len(chunk)
