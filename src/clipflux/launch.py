"""`python -m clipflux.launch N SCRIPT [ARGS ...]`: run a stage script on N processes of this node.

N > 1 hands over to torchrun (`python -m torch.distributed.run --standalone`, with this interpreter, so nothing
depends on PATH), one process per rank (`clipflux.distributed` reads its environment).
N = 1 runs the script directly, as rank 0 of 1: no torchrun agent (2 s less per stage on the 2-core machine, and
no parent process to outlive a killed run). Either way this process is replaced (exec), so signals reach the stage,
and it first asks the kernel to kill it when its parent (`dvc repro`, a shell, a batch script) dies: a killed
`dvc repro` leaves no stage running (`processes.die_with_parent` survives the exec; torchrun's workers set it
against their agent in `distributed.start`).
"""

import os
import sys

from clipflux.processes import die_with_parent


def command(nproc: int, script: str, args: list[str]) -> list[str]:
    """The command that runs `script` on `nproc` processes."""
    if nproc < 1:
        raise SystemExit(f"clipflux.launch: nproc must be a positive integer, got {nproc}")
    if nproc == 1:
        return [sys.executable, script, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), script,
            *args]


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not argv[0].isdigit():
        raise SystemExit("usage: python -m clipflux.launch NPROC SCRIPT [ARGS ...]")
    cmd = command(int(argv[0]), argv[1], argv[2:])
    die_with_parent()
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
