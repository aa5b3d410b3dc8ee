"""Process and file discipline for runs that machines kill: no orphans, one writer per checkpoint folder.

- `die_with_parent`: the kernel kills this process when the process that started it dies (Linux's
  `PR_SET_PDEATHSIG`), so a stage killed with SIGKILL, or a `dvc repro` killed with it, takes its training
  processes along. It survives `exec`, so `clipflux.launch` sets it before it becomes the stage, and every
  torchrun worker sets it against its agent (`distributed.start`).
- `exclusive`: an exclusive `flock` on `<folder>.lock`, beside a run's checkpoint folder (not in the DVC output).
  The kernel releases it when the holder dies, however it dies, so a crash never leaves a stale lock; a second
  writer stops at once naming the holder (host, pid, since when), or waits when asked to. `flock` works across
  machines on NFS (Linux emulates it with POSIX locks there).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import socket
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from clipflux.errors import UserError

PR_SET_PDEATHSIG = 1
WAIT_ENV = "CLIPFLUX_WAIT_FOR_LOCK"  # set (to 1): a second writer waits for the lock instead of stopping


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies; False where that is not supported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        return False
    if os.getppid() == 1:  # the parent died before the request: nothing will signal us
        os.kill(os.getpid(), sig)
    return True


class LockedError(UserError):
    """Another process holds the checkpoint folder's lock."""


def lock_path(folder: str | Path) -> Path:
    """The lock file of a checkpoint folder: beside it, so that it is no part of the folder's DVC output."""
    folder = Path(folder)
    return folder.with_name(folder.name + ".lock")


def holder(folder: str | Path) -> dict | None:
    """Who holds (or last held) the folder's lock: {"host", "pid", "since", "command"}, or None."""
    try:
        return json.loads(lock_path(folder).read_text() or "null")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _describe(who: dict | None) -> str:
    if not who:
        return "another process"
    return f"pid {who['pid']} on {who['host']} since {who['since']} ({who.get('command', '?')})"


@contextmanager
def exclusive(folder: str | Path, wait: bool | None = None, poll_s: float = 2.0) -> Iterator[None]:
    """Hold the exclusive lock of a checkpoint folder for the block.

    Args:
        folder: the checkpoint folder (it need not exist).
        wait: wait for the holder to finish instead of stopping (default: `CLIPFLUX_WAIT_FOR_LOCK` set).
        poll_s: seconds between attempts while waiting.

    Raises:
        LockedError: another process holds it and `wait` is false; the message names the holder.
    """
    if wait is None:
        wait = os.environ.get(WAIT_ENV, "") not in ("", "0")
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                who = _describe(holder(folder))
                if not wait:
                    raise LockedError(f"{folder} is being written by {who}: stop that run, or set {WAIT_ENV}=1 "
                                      "to wait for it") from None
                if not announced:
                    print(f"clipflux: waiting for {folder}, held by {who}", file=sys.stderr)
                    announced = True
                time.sleep(poll_s)
        record = {"host": socket.gethostname(), "pid": os.getpid(),
                  "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the record stays as "last held by"
