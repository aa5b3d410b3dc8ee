"""The embedded MongoDB-compatible server: SecantusDB, run as a separate process on 127.0.0.1.

SecantusDB is GPL-2.0, so clipflux never imports it: it only starts its executable `secantusd-py`. The
server keeps its data in `.clipflux/mongo/data` (git-ignored) and its pid and port in
`.clipflux/mongo/server.json`. Started by `clipflux mongo start`, it runs until `clipflux mongo stop`;
started by a stage or a command (`hold`), it stops when the last process holding it lets go, and a detached
watcher (`watch`) stops it when every holder has died without letting go (a SIGKILLed stage), so a killed
`dvc repro` leaves no server behind either.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from clipflux.tracking.store import (URL_ENV, Store, StoreError, configured_url, embedded_store, external_store,
                                   state_dir)

HOST = "127.0.0.1"
EXECUTABLE = "secantusd-py"
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ServerStatus:
    """What `clipflux mongo status` reports.

    Attributes:
        running: the recorded process is alive and answers on its port.
        pid, port: of the recorded process (None when none was ever started).
        folder: `.clipflux/mongo` of this project.
    """

    running: bool
    pid: int | None
    port: int | None
    folder: Path

    def describe(self) -> str:
        if self.running:
            return f"running: mongodb://{HOST}:{self.port}/ (pid {self.pid}, data in {self.folder / 'data'})"
        return f"stopped (data in {self.folder / 'data'})"


def mongo_dir(root: Path) -> Path:
    """The embedded server's folder: data, log, pid/port record."""
    return state_dir(root) / "mongo"


def executable() -> str:
    """Path of `secantusd-py`, next to this Python first (the project's .venv), else on PATH."""
    beside = Path(sys.executable).parent / EXECUTABLE
    found = str(beside) if beside.exists() else shutil.which(EXECUTABLE)
    if not found:
        raise StoreError(f"{EXECUTABLE} not found: install the project's environment (./run.sh setup), "
                         "or set CLIPFLUX_MONGO_URL to a MongoDB")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _read_record(folder: Path) -> dict:
    try:
        return json.loads((folder / "server.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_record(folder: Path, pid: int, port: int, owner: str) -> None:
    (folder / "server.json").write_text(json.dumps({"pid": pid, "port": port, "owner": owner}) + "\n")


def _is_our_process(pid: int, folder: Path) -> bool:
    """Whether `pid` is a live secantusd serving `folder` (guards against a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return EXECUTABLE in cmdline and str(folder / "data") in cmdline


def _answers(port: int, timeout_ms: int = 1000) -> bool:
    if not _port_open(port):
        return False
    client = embedded_store(port).client(timeout_ms)
    try:
        client.admin.command("ping")
        return True
    except Exception:
        return False
    finally:
        client.close()


def status(root: Path) -> ServerStatus:
    """The embedded server's state for the project at `root`."""
    folder = mongo_dir(root)
    record = _read_record(folder)
    pid, port = record.get("pid"), record.get("port")
    running = bool(pid and port and _is_our_process(pid, folder) and _answers(port))
    return ServerStatus(running, pid, port, folder)


@contextlib.contextmanager
def _start_lock(folder: Path) -> Iterator[None]:
    # Two stages starting at once (parallel experiments) must not start two servers on one data folder.
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def start(root: Path, port: int | None = None) -> ServerStatus:
    """Start the embedded server for `root` unless it runs already (`clipflux mongo start`); it then stays up
    until `stop`, whoever else uses it. Waits until it answers.

    Args:
        root: the project folder.
        port: the port to listen on; default: the one it had last time if free, else any free port.
    """
    with _start_lock(mongo_dir(root)):
        return _start_unlocked(root, port, owner="user")


def _start_unlocked(root: Path, port: int | None, owner: str) -> ServerStatus:
    folder = mongo_dir(root)
    now = status(root)
    if now.running:
        if owner == "user":
            _write_record(folder, now.pid, now.port, owner)
        return now
    if now.pid and _is_our_process(now.pid, folder):  # alive but not answering: replace it
        _terminate(now.pid)
    last = _read_record(folder).get("port")
    port = port or (last if last and not _port_open(last) else free_port())
    (folder / "data").mkdir(parents=True, exist_ok=True)
    config = folder / "secantusd.toml"
    config.write_text("# empty on purpose: clipflux passes every setting on the command line\n")
    cmd = [executable(), "--config", str(config), "--host", HOST, "--port", str(port),
           "--storage-path", str(folder / "data"), "--standalone", "--log-level", "WARNING"]
    with open(folder / "server.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    _write_record(folder, proc.pid, port, owner)
    if owner == "run":
        subprocess.Popen([sys.executable, "-c", f"from clipflux.tracking.server import watch; watch({str(root)!r}, "
                          f"{proc.pid})"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (folder / "server.log").read_text(errors="replace")[-2000:]
            raise StoreError(f"the embedded MongoDB server exited with code {proc.returncode}:\n{tail}")
        if _answers(port):
            return ServerStatus(True, proc.pid, port, folder)
        time.sleep(0.2)
    _terminate(proc.pid)
    raise StoreError(f"the embedded MongoDB server did not answer on {HOST}:{port} "
                     f"within {START_TIMEOUT_S:.0f} s (log: {folder / 'server.log'})")


def _terminate(pid: int, grace_s: float = 10.0, port: int | None = None) -> None:
    """SIGTERM, then SIGKILL after `grace_s`. With the server's `port`, each wait also opens and closes a
    connection to it: SecantusDB's stop closes its listening socket and joins the accepting thread for up to
    2 s (secantus/server.py `Server.stop`), and on Linux closing a socket does not wake a thread blocked in
    accept(); a connection does, so the server exits in about 0.3 s instead of 2.1 s."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        _reap(pid)
        if port:
            with contextlib.suppress(OSError):
                socket.create_connection((HOST, port), timeout=0.1).close()
        time.sleep(0.05 if port else 0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(pid)


def _reap(pid: int) -> None:
    # When this process started the server itself it must collect its exit status, or it lingers as a zombie.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(root: Path) -> ServerStatus:
    """Stop the embedded server of `root` (SIGTERM, then SIGKILL after 10 s); its data stays."""
    folder = mongo_dir(root)
    record = _read_record(folder)
    pid = record.get("pid")
    if pid and _is_our_process(pid, folder):
        _terminate(pid, port=record.get("port"))
    return ServerStatus(False, pid, record.get("port"), folder)


@contextlib.contextmanager
def hold(root: Path) -> Iterator[Store]:
    """Use the embedded server of `root` for a while: started if needed, stopped after if nobody else holds it.

    A server started by `clipflux mongo start` stays up until `clipflux mongo stop`; one started here (by a
    stage or a command) stops when the last process holding it lets go, so `dvc repro` leaves none behind.
    """
    folder = mongo_dir(root)
    lease = folder / "leases" / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"  # one per hold, nested holds included
    with _start_lock(folder):
        now = _start_unlocked(root, None, owner="run")
        lease.parent.mkdir(parents=True, exist_ok=True)
        lease.touch()
    try:
        yield embedded_store(now.port)
    finally:
        with _start_lock(folder):
            lease.unlink(missing_ok=True)
            holders = [p for p in lease.parent.iterdir() if _alive(int(p.name.split("-")[0]))]
            if not holders and _read_record(folder).get("owner") == "run":
                stop(root)


WATCH_S = 2.0


def _holders(folder: Path) -> list[Path]:
    leases = folder / "leases"
    return [p for p in leases.iterdir() if _alive(int(p.name.split("-")[0]))] if leases.exists() else []


def watch(root: str, server_pid: int) -> None:
    """Beside a server started for runs (in a process of its own): stop it once no live process holds it, e.g.
    when the stage holding it was killed with SIGKILL and could not let go. Ends when the server stops or is
    taken over by `clipflux mongo start`."""
    folder = mongo_dir(Path(root))
    while True:
        time.sleep(WATCH_S)
        with _start_lock(folder):
            record = _read_record(folder)
            if record.get("pid") != server_pid or record.get("owner") != "run" or not _alive(server_pid):
                return
            if not _holders(folder):
                for lease in (folder / "leases").glob("*"):  # the dead holders'
                    lease.unlink(missing_ok=True)
                stop(Path(root))
                return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has finished; it only waits for its parent to reap it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@contextlib.contextmanager
def open_store(root: Path) -> Iterator[Store | None]:
    """The store runs go to, for the duration of the block: the URL in CLIPFLUX_MONGO_URL, else the embedded
    server (held, see `hold`); None when MongoDB is turned off (CLIPFLUX_MONGO_URL=off)."""
    url = configured_url()
    if url == "off":
        yield None
    elif url:
        yield external_store(url)
    else:
        with hold(root) as store:
            yield store

