"""A stop asked of a running stage: checkpoint at the end of the current step, exit, and resume there when run again.

A scheduler asks before it takes the machine away: Slurm signals a job `signal_seconds` before its time limit
(`--signal=B:USR1@S`), and the job's batch script (`clipflux.slurm`) then creates the file named by
CLIPFLUX_STOP_FILE. A process can also be sent SIGUSR1 itself (a run on one process, without torchrun).

The trainer polls `requested()` after every step (rank 0 only; the ranks agree through one collective, so they
all stop after the same step), writes a full-state checkpoint there and raises `Stopped`. The stage exits with
`REQUEUE_EXIT`; the batch script requeues the job on that status, and the requeued job resumes from that
checkpoint, continuing the same tracked run (`tracking.resume`), to the same final weights.
"""

from __future__ import annotations

import os
import signal
import threading

STOP_FILE_ENV = "CLIPFLUX_STOP_FILE"
REQUEUE_EXIT = 75  # EX_TEMPFAIL: stopped at a checkpoint, to be run again

_signalled = False


class Stopped(KeyboardInterrupt):
    """The stage stopped at a checkpoint because a stop was asked for (a KeyboardInterrupt, so that Sacred
    records the run as INTERRUPTED and the next run continues it)."""

    exit_status = REQUEUE_EXIT  # `errors.reported` ends the stage with it

    def __init__(self, task: int, step: int):
        super().__init__(f"stopped on request at task {task}, step {step}: checkpoint written, run it again "
                         f"to resume")
        self.task, self.step = task, step


def _on_signal(signum, frame) -> None:
    global _signalled
    _signalled = True


def listen() -> None:
    """Treat SIGUSR1 to this process as a stop request (idempotent; only the main thread may set handlers)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, _on_signal)


def requested() -> bool:
    """Whether a stop was asked for: SIGUSR1 received, or the file CLIPFLUX_STOP_FILE names exists."""
    if _signalled:
        return True
    path = os.environ.get(STOP_FILE_ENV)
    return bool(path) and os.path.exists(path)
