"""Omniboard, Sacred's web dashboard, installed on first use and served on 127.0.0.1 only.

`clipflux omniboard` installs npm `omniboard@2.16.1` (exact dependency tree from `tools/omniboard/
package-lock.json`) into `.clipflux/omniboard/` (git-ignored), lays out the runs list (`configure`), and
serves the runs database. Omniboard has no host option, so node preloads `tools/omniboard/preload.js`, which
makes every listening socket bind to 127.0.0.1. The database URL reaches node through its environment (never
its command line, which `ps` shows) and Omniboard's output is relayed through `redact`.

The layout: the columns a researcher compares come first (`COLUMNS`: the run's name, experiment, method,
stream, mixture, seed, then A_KA / A_ZS / GM / forgetting and TiC's transfer, rounded to what the evaluation
resolves, from the evaluate run's `info.summary`), and comparing evaluate runs plots A_KA / A_ZS / GM over
the tasks (`PLOTTED`). Omniboard keeps both in MongoDB only in part: its custom columns are documents of
`omniboard.custom.columns`, but the order and visibility of the columns, and the metrics a plot selects, are
state of the browser (localStorage, `react-localstorage`, key `<db>|RunsTable|1` and
`<db>|MetricsPlotView|default`; web/src/components/RunsTable/runsTable.js, MetricsPlotView/metricsPlotView.js).
So `configure` also writes `clipflux-defaults.js` next to Omniboard's `index.html` and one script tag into
it: the script seeds that state in a browser that has none, or whose seed came from other defaults. What a
user changes afterwards stays theirs; Omniboard's "Reset Cache" brings the defaults back.
"""

from __future__ import annotations

import dataclasses
import filecmp
import hashlib
import json
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
_LISTENING = re.compile(r"listening on port (\d+)")


@dataclasses.dataclass(frozen=True)
class Column:
    """A column of Omniboard's runs list: its key (the header is the key, capitalised at "_"), where a run
    keeps its value (`path`: a custom column's path in the run document; Omniboard's own columns: None or
    their source), its width in pixels, and whether it shows before the user asks for it."""

    key: str
    path: str | None
    width: int
    shown: bool = True
    custom: bool = True


def _own(key: str, width: int, shown: bool = True, path: str | None = None) -> Column:
    return Column(key, path, width, shown, custom=False)


_SUMMARY = "info.summary"  # what the evaluate stage rounds for this table (clipflux.jobs.evaluate.run_summary)
COLUMNS = (  # in order; the first ones fill 1400 px
    _own("_id", 56), _own("experiment_name", 150, path="experiment.name"),
    # Not named "experiment": Omniboard would shadow the run's own `experiment` (name, sources) with the column.
    Column("experiment_key", "config.experiment", 120), Column("method", "config.method", 100),
    Column("stream", "config.stream", 90), Column("mixture", "config.mixture", 150),
    Column("seed", "config.seed_index", 56),
    Column("A-KA", f"{_SUMMARY}.A_KA", 70), Column("A-ZS", f"{_SUMMARY}.A_ZS", 70), Column("GM", f"{_SUMMARY}.GM", 64),
    Column("forgetting", f"{_SUMMARY}.forgetting", 96),
    Column("backward_cls", f"{_SUMMARY}.tic_cls.backward", 112), Column("forward_cls", f"{_SUMMARY}.tic_cls.forward", 104),
    Column("backward_ret", f"{_SUMMARY}.tic_ret.backward", 112), Column("forward_ret", f"{_SUMMARY}.tic_ret.forward", 104),
    Column("steps_per_task", "config.steps_per_task", 120), _own("status", 100), _own("duration", 100),
    # A killed or requeued run and the run that resumed it; a run written while MongoDB was down (tracking.upload).
    Column("continues", "info.resumed_from.run_id", 96), Column("resumed_by", "resumed_by", 104),
    Column("uploaded_from", "meta.uploaded_from", 200),
    Column("in_domain_cls", f"{_SUMMARY}.tic_cls.in_domain", 116, shown=False),
    Column("in_domain_ret", f"{_SUMMARY}.tic_ret.in_domain", 116, shown=False),
    Column("dvc_stage", "meta.dvc_stage", 140, shown=False),
    _own("hostname", 150, False, "host.hostname"), _own("format", 150, False), _own("command", 150, False),
    _own("start_time", 150, False), _own("stop_time", 150, False), _own("heartbeat", 150, False),
    _own("result", 150, False), _own("resources", 150, False), _own("tags", 250, False, "omniboard.tags"),
    _own("notes", 250, False, "omniboard.notes"),
)
# Plotted first when runs are compared: evaluate runs' trajectory over the tasks (the step is the task), TiC's
# headline scores per time step, a train run's loss per step. Every other metric stays one click away.
PLOTTED = ("eval/A_KA", "eval/A_ZS", "eval/GM", "eval/tic_cls/acc", "eval/tic_ret/R@1", "train/loss")
OLD_METRIC_COLUMNS = ("A_KA", "A_ZS", "GM")  # earlier clipflux's unrounded metric columns, now `info.summary`
DB_KEY = "default"  # the key Omniboard gives the one database of MONGO_URI
DEFAULTS_SCRIPT = "clipflux-defaults.js"


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


def configure(db: Any, folder: Path) -> None:
    """Write clipflux's runs-list layout: its custom columns into the database (earlier clipflux's metric
    columns out), and the browser defaults into Omniboard's web folder (`write_defaults`)."""
    db["omniboard.metric.columns"].delete_many({"name": {"$in": list(OLD_METRIC_COLUMNS)}})
    for column in (c for c in COLUMNS if c.custom):
        db["omniboard.custom.columns"].update_one({"name": column.key},
                                                  {"$set": {"name": column.key, "config_path": column.path}},
                                                  upsert=True)
    config_keys = sorted({k for doc in db.runs.find({}, {"config": 1}) for k in (doc.get("config") or {})})
    write_defaults(folder, browser_defaults(list(db["omniboard.metric.columns"].find()),
                                            list(db["omniboard.custom.columns"].find()), config_keys))


def _header(key: str) -> str:
    """Omniboard's header for a column key (web/src/components/Helpers/utils.js `capitalize`)."""
    return " ".join(part[:1].upper() + part[1:] for part in key.split("_"))


def browser_defaults(metric_columns: list[dict], custom_columns: list[dict], config_keys: list[str]) -> dict:
    """The localStorage entries that give a fresh browser clipflux's layout: the runs list's state (as
    RunsTable's `stateFilterKeys` hold it) and the plots' default metric selection.

    Args:
        metric_columns, custom_columns: the database's column documents (a user's own ones are shown last).
        config_keys: the top-level config keys of the runs (Omniboard's `c_<key>` columns, hidden).
    """
    ours = {c.key for c in COLUMNS}
    extra = [Column(c["name"], c["name"], 150, custom=False) for c in metric_columns if c["name"] not in ours] + \
        [Column(c["name"], c["config_path"], 150) for c in custom_columns if c["name"] not in ours]
    config = [_own(f"c_{k}", 150, False, f"config.{k}") for k in config_keys]
    columns = [c for c in COLUMNS if c.shown] + extra + [c for c in COLUMNS if not c.shown] + config
    table = {
        "columnOrder": [c.key for c in columns],
        "dropdownOptions": [{"label": _header(c.key), "value": c.key, "selected": c.shown} for c in columns],
        "columnWidths": {c.key: c.width for c in columns},
        "columnNameMap": {c.key: c.path for c in columns if c.path},
        "metricAndCustomColumns": [{"name": c["name"], "value": c["name"]} for c in metric_columns] +
                                  [{"name": c["name"], "value": c["config_path"]} for c in custom_columns],
        "sort": {},
    }
    plot = {"metricNameOptions": [{"label": m, "value": m, "selected": True} for m in PLOTTED]}
    # The compare view's plot has no database key (MetricsCompareView passes none): "undefined|...".
    return {f"{DB_KEY}|RunsTable|1": table, f"{DB_KEY}|MetricsPlotView|default": plot,
            "undefined|MetricsPlotView|default": plot}


def write_defaults(folder: Path, defaults: dict) -> None:
    """Write `clipflux-defaults.js` (seeding `defaults` into localStorage) into Omniboard's web folder and load
    it from index.html before Omniboard's own script; both writes are atomic and idempotent."""
    web = entry_point(folder).parents[1] / "web" / "build"
    version = hashlib.sha256(json.dumps(defaults, sort_keys=True).encode()).hexdigest()[:16]
    script = (f"// Written by clipflux (clipflux.tracking.omniboard.configure) each time it starts Omniboard.\n"
              f"(function (defaults, version) {{\n"
              f"  try {{\n"
              f"    var fresh = localStorage.getItem('clipflux|defaults') !== version;\n"
              f"    Object.keys(defaults).forEach(function (key) {{\n"
              f"      if (fresh || localStorage.getItem(key) === null) localStorage.setItem(key, JSON.stringify(defaults[key]));\n"
              f"    }});\n"
              f"    localStorage.setItem('clipflux|defaults', version);\n"
              f"  }} catch (e) {{ /* no localStorage: Omniboard's own defaults */ }}\n"
              f"}})({json.dumps(defaults)}, {json.dumps(version)});\n")
    _atomic_write(web / DEFAULTS_SCRIPT, script)
    index = web / "index.html"
    html = index.read_text()
    tag = f'<script type="text/javascript" src="/{DEFAULTS_SCRIPT}"></script>'
    if tag not in html:
        main = html.index('<script type="text/javascript" src="/static/js/main')
        _atomic_write(index, html[:main] + tag + html[main:])


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
