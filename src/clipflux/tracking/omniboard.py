"""Omniboard, Sacred's web dashboard, installed on first use and served on 127.0.0.1 only.

`clipflux omniboard` installs npm `omniboard@2.16.1` (exact dependency tree from `tools/omniboard/
package-lock.json`) into `.clipflux/omniboard/` (git-ignored), adds A_KA / A_ZS / GM metric columns to the
runs list, and serves the runs database. Omniboard has no host option, so node preloads
`tools/omniboard/preload.js`, which makes every listening socket bind to 127.0.0.1. The database URL
reaches node through its environment (never its command line, which `ps` shows) and Omniboard's output is
relayed through `redact`.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from clipflux.tracking.store import Store, StoreError, redact, state_dir

VERSION = "2.16.1"
TOOLS = Path(__file__).resolve().parents[3] / "tools" / "omniboard"
DIR_ENV = "CLIPFLUX_OMNIBOARD_DIR"
METRIC_COLUMNS = [{"name": k, "metric_name": f"eval/{k}", "extrema": "last"} for k in ("A_KA", "A_ZS", "GM")]
# Not named "experiment": Omniboard would shadow the run's own `experiment` (name, sources) with the column.
CUSTOM_COLUMNS = [{"name": "dvc_stage", "config_path": "meta.dvc_stage"},
                  {"name": "experiment_key", "config_path": "config.experiment"}]
_LISTENING = re.compile(r"listening on port (\d+)")


def install_dir(root: Path) -> Path:
    """Where Omniboard is installed: CLIPFLUX_OMNIBOARD_DIR, else `.clipflux/omniboard`."""
    return Path(os.environ[DIR_ENV]) if os.environ.get(DIR_ENV) else state_dir(root) / "omniboard"


def entry_point(folder: Path) -> Path:
    """Omniboard's server script inside an install folder."""
    return folder / "node_modules" / "omniboard" / "dist" / "start.js"


def installed(folder: Path) -> bool:
    """Whether `folder` holds exactly the locked install."""
    lock = folder / "package-lock.json"
    return entry_point(folder).exists() and lock.exists() and filecmp.cmp(lock, TOOLS / "package-lock.json", shallow=False)


def install(folder: Path, log: Callable[[str], None] = print) -> Path:
    """Install Omniboard into `folder` with `npm ci` unless it is there already; returns its entry point."""
    if installed(folder):
        return entry_point(folder)
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise StoreError("Omniboard needs Node.js and npm (Debian: apt-get install -y nodejs npm)")
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(TOOLS / name, folder / name)
    log(f"installing omniboard@{VERSION} into {folder} (first use only, about a minute) ...")
    proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder,
                          capture_output=True, text=True)
    if proc.returncode != 0 or not entry_point(folder).exists():
        (folder / "package-lock.json").unlink(missing_ok=True)  # not a complete install: retry next time
        raise StoreError(f"npm ci failed in {folder}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return entry_point(folder)


def add_columns(db: Any) -> None:
    """Make A_KA, A_ZS, GM (last value logged) and the DVC stage and experiment columns of the runs list."""
    for column in METRIC_COLUMNS:
        db["omniboard.metric.columns"].update_one({"name": column["name"]}, {"$set": column}, upsert=True)
    for column in CUSTOM_COLUMNS:
        db["omniboard.custom.columns"].update_one({"name": column["name"]}, {"$set": column}, upsert=True)


def command(folder: Path) -> list[str]:
    """The node command line serving Omniboard from an install folder (holds no secret)."""
    return [shutil.which("node") or "node", "-r", str(TOOLS / "preload.js"), str(entry_point(folder))]


def environment(store: Store, port: int) -> dict[str, str]:
    """Omniboard's environment: the database URL (secret), the port, production mode."""
    env = {k: v for k, v in os.environ.items() if k != "OMNIBOARD_CONFIG"}
    env.update(MONGO_URI=store.url_with_database(), PORT=str(port), NODE_ENV="production")
    return env


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve(store: Store, folder: Path, port: int, on_ready: Callable[[str], None] | None = None) -> int:
    """Serve Omniboard on 127.0.0.1 in the foreground until interrupted; returns node's exit code.

    Args:
        store: the runs database.
        folder: the install folder.
        port: the port to ask for (Omniboard takes the next one when it is busy; the URL printed is the real one).
        on_ready: called with the URL once Omniboard listens.
    """
    proc = subprocess.Popen(command(folder), env=environment(store, port), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    # A SIGTERM to this process (a service manager, a test) must end node too, not orphan it.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        for line in proc.stdout:
            line = redact(line)
            sys.stdout.write(line)
            sys.stdout.flush()
            match = _LISTENING.search(line)
            if match:
                url = f"http://127.0.0.1:{match.group(1)}/sacred"
                print(f"clipflux: Omniboard serves the runs of {store} at {url}", flush=True)
                if on_ready:
                    on_ready(url)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
