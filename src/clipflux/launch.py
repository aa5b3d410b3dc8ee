"""`python -m clipflux.launch N SCRIPT [ARGS ...]`: run a heavy stage's script (pretrain, train, evaluate) on N
processes per node, here or as a Slurm job, as params.yaml's `launcher` says.

Here (`launcher.kind: local`, the default): N > 1 hands over to torchrun (`python -m torch.distributed.run
--standalone`, with this interpreter, so nothing depends on PATH), one process per rank (`clipflux.distributed`
reads its environment). N = 1 runs the script directly, as rank 0 of 1: no torchrun agent (2 s less per stage on
the 2-core machine, and no parent process to outlive a killed run). Either way this process is replaced (exec), so
signals reach the stage, and it first asks the kernel to kill it when its parent (`dvc repro`, a shell, a batch
script) dies: a killed `dvc repro` leaves no stage running (`processes.die_with_parent` survives the exec;
torchrun's workers set it against their agent in `distributed.start`).

On Slurm (`launcher.kind: slurm`): the stage becomes a job with the resources of `launcher.slurm` (and the
stage's overrides in `launcher.stages`), and this process waits for it (`clipflux.slurm`). Inside the job, each
node runs `python -m clipflux.launch --node N SCRIPT ...`: torchrun joining the job's rendezvous when the job has
several nodes, else the same command as here.

The stage is named by its script (`stages/<stage>.py`). The launcher is no dependency of the stage: where it runs
never changes what it writes.
"""

import os
import signal
import sys
from pathlib import Path

from clipflux.errors import reported
from clipflux.processes import die_with_parent


def command(nproc: int, script: str, args: list[str]) -> list[str]:
    """The command that runs `script` on `nproc` processes of this node."""
    if nproc < 1:
        raise SystemExit(f"clipflux.launch: nproc must be a positive integer, got {nproc}")
    if nproc == 1:
        return [sys.executable, script, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), script,
            *args]


def main(argv: list[str]) -> None:
    node = bool(argv) and argv[0] == "--node"  # one node of a Slurm job
    argv = argv[1:] if node else argv
    if len(argv) < 2 or not argv[0].isdigit():
        raise SystemExit("usage: python -m clipflux.launch [--node] NPROC SCRIPT [ARGS ...]")
    nproc, script, args = int(argv[0]), argv[1], argv[2:]
    cmd = command(nproc, script, args)
    if node:
        from clipflux.slurm import node_command

        cmd = node_command(nproc, script, args) or cmd
    elif Path("params.yaml").exists():
        from clipflux.config import load_params

        launcher = load_params().launcher
        if launcher.kind == "slurm":
            from clipflux import slurm

            stage = Path(script).stem
            die_with_parent(signal.SIGTERM)  # `slurm.run` cancels the job on SIGTERM
            raise SystemExit(slurm.run(stage, launcher.slurm_for(stage), nproc, script, args))
    die_with_parent()
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    reported(lambda: main(sys.argv[1:]), prog="clipflux.launch")
