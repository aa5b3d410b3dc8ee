"""Tracking against the real embedded MongoDB server (SecantusDB as a process): runs land exactly, a server
killed mid-run loses nothing after `clipflux tracking upload`, credentials are stored nowhere, both servers
bind to 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bson import BSON
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from clipflux.tracking import observers, run_tracked, server
from clipflux.tracking.lineage import upstream_from_lock
from clipflux.tracking import omniboard
from clipflux.tracking.omniboard import TOOLS
from clipflux.tracking.store import URL_ENV, embedded_store, redact
from clipflux.tracking.upload import upload

PASSWORD = "S3cr3t-Pw0rd-4711"


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """An empty clipflux project folder as the working directory, with no store configured."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    for name in (URL_ENV, "DVC_STAGE", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def live(project):
    """The project's embedded server, started as `clipflux mongo start` does; stopped afterwards."""
    status = server.start(project)
    yield status
    server.stop(project)


def _db(port: int, name: str = "clipflux"):
    return embedded_store(port).client()[name]


def _work(kill_at: int | None = None, pid: int | None = None, steps: int = 12):
    """A stand-in for training: logs a loss per step, flushes like the trainer, optionally kills the server."""
    def main(run):
        for step in range(steps):
            run.log_scalar("train/loss", 1.0 / (step + 3), step)
            run.log_scalar("train/lr", 1e-3 * step / 7, step)
            if step % 4 == 3:
                run.flush()  # the trainer's flush before a checkpoint
            if step == kill_at:
                os.kill(pid, signal.SIGKILL)
        print("trained", steps, "steps")
        return {"steps": steps}
    return main


def _local(project: Path, stage: str) -> Path:
    [folder] = [p.parent for p in (project / "runs" / stage).glob("[0-9]*/run.json")]
    return folder


def _assert_same_as_local(db, folder: Path) -> dict:
    """Exactly one run in the database for the local run in `folder`, with equal config, info and metrics."""
    run = json.loads((folder / "run.json").read_text())
    [doc] = list(db.runs.find({"meta.clipflux_uid": run["meta"]["clipflux_uid"]}))
    assert doc["status"] == run["status"] == "COMPLETED"
    assert doc["config"] == json.loads((folder / "config.json").read_text())
    info = json.loads((folder / "info.json").read_text())
    assert {k: v for k, v in doc["info"].items() if k != "metrics"} == {k: v for k, v in info.items() if k != "metrics"}
    local = json.loads((folder / "metrics.json").read_text())
    stored = {m["name"]: m for m in db.metrics.find({"run_id": doc["_id"]})}
    assert set(stored) == set(local)
    for name, metric in local.items():
        assert stored[name]["steps"] == metric["steps"] and stored[name]["values"] == metric["values"], name
    assert sorted(m["name"] for m in doc["info"]["metrics"]) == sorted(local)  # what Omniboard joins on
    return doc


def _listening_hosts(port: int) -> set[str]:
    """The local addresses of the sockets listening on `port` (from /proc/net/tcp and tcp6)."""
    hosts = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                hosts.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]) if len(address) == 8 else address)
    return hosts


def test_server_binds_loopback_and_start_stop_are_idempotent(live, project):
    assert _listening_hosts(live.port) == {"127.0.0.1"}
    assert server.start(project) == live  # already running: the same server
    assert server.status(project).running
    server.stop(project)
    assert not server.status(project).running
    assert (project / ".clipflux/mongo/data").is_dir()  # data stays for the next start


def test_a_run_holds_the_embedded_server_only_while_it_runs(project):
    result = run_tracked("train", {"train": {"seed": 5}}, _work(), runs_dir=project / "runs")
    assert result == {"steps": 12}
    assert not server.status(project).running  # started for the run, stopped after it
    with server.hold(project) as store:
        db = store.client()[store.db_name]
        doc = _assert_same_as_local(db, _local(project, "train"))
        db.client.close()
    assert doc["config"]["seed"] == 5  # Sacred seeds the global generators with the stage's seed
    assert doc["info"]["lineage"]["seeds"] == {"train/seed": 5}
    assert doc["captured_out"].endswith("trained 12 steps\n")


def test_server_killed_mid_run_loses_nothing_after_upload(live, project, capfd):
    result = run_tracked("train", {"train": {"seed": 0}}, _work(kill_at=5, pid=live.pid),
                         runs_dir=project / "runs")
    assert result == {"steps": 12}  # training went on
    assert "clipflux tracking upload" in capfd.readouterr().err
    folder = _local(project, "train")
    assert len(json.loads((folder / "metrics.json").read_text())["train/loss"]["values"]) == 12

    restarted = server.start(project)
    db = _db(restarted.port)
    report = upload(db, project / "runs")
    assert [what for _, _, what in report] in (["added"], ["completed"])  # lost whole, or kept in part
    _assert_same_as_local(db, folder)
    assert [what for _, _, what in upload(db, project / "runs")] == ["in sync"]  # again: nothing changes
    assert db.runs.count_documents({}) == 1 and db.metrics.count_documents({}) == 2


def test_unreachable_store_keeps_the_run_and_upload_adds_it_once(live, project, monkeypatch):
    closed = server.free_port()
    monkeypatch.setenv(URL_ENV, f"mongodb://127.0.0.1:{closed}/")
    run_tracked("evaluate", {"evaluate": {"seed": 1}}, _work(steps=3), runs_dir=project / "runs")
    run_tracked("evaluate", {"evaluate": {"seed": 2}}, _work(steps=4), runs_dir=project / "runs")
    db = _db(live.port)
    assert db.runs.count_documents({}) == 0
    assert [what for _, _, what in upload(db, project / "runs")] == ["added", "added"]
    assert [what for _, _, what in upload(db, project / "runs")] == ["in sync", "in sync"]
    assert sorted(d["_id"] for d in db.runs.find()) == [1, 2]
    for folder in sorted((project / "runs/evaluate").glob("[0-9]*")):
        _assert_same_as_local(db, folder)


def _everything_stored(db) -> bytes:
    return b"".join(BSON.encode(doc) for name in db.list_collection_names() for doc in db[name].find())


def test_a_url_with_a_password_appears_nowhere_in_the_stored_run(live, project, monkeypatch):
    admin = embedded_store(live.port).client()
    admin.admin.command("createUser", "clipuser", pwd=PASSWORD, roles=[{"role": "readWrite", "db": "secretdb"}])
    url = f"mongodb://clipuser:{PASSWORD}@127.0.0.1:{live.port}/secretdb?authSource=admin"
    monkeypatch.setenv(URL_ENV, url)

    def main(run):
        print(f"connecting to {os.environ[URL_ENV]}")  # careless user code: the filter must catch it
        run.log_scalar("train/loss", 0.5, 0)
        run.info["note"] = f"db={os.environ[URL_ENV]}"
        return {"url": os.environ[URL_ENV]}

    with pytest.raises(OperationFailure):  # a wrong password is refused, so the right one is really used
        MongoClient(url.replace(PASSWORD, "wrong"), serverSelectionTimeoutMS=2000).secretdb.runs.find_one()
    run_tracked("train", {"train": {"seed": 0}}, main, runs_dir=project / "runs")
    db = admin["secretdb"]
    [doc] = list(db.runs.find())
    assert doc["status"] == "COMPLETED" and "connecting to ***" in doc["captured_out"]
    assert doc["info"]["note"] == "db=***" and doc["result"] == {"url": "***"}
    stored = _everything_stored(db) + _everything_stored(admin["clipflux"])
    stored += b"".join(p.read_bytes() for p in (project / "runs").rglob("*") if p.is_file())
    stored += (project / ".clipflux/mongo/server.log").read_bytes()
    for secret in (PASSWORD, url, f"clipuser:{PASSWORD}"):
        assert secret.encode() not in stored
    admin.close()


def test_redact_hides_the_configured_credentials_and_any_url_userinfo(monkeypatch):
    monkeypatch.setenv(URL_ENV, f"mongodb://u:{PASSWORD}@db.example:27017/x")
    assert PASSWORD not in redact(f"see mongodb://u:{PASSWORD}@db.example:27017/x and {PASSWORD}")
    assert redact("mongodb://someone:else@h/") == "mongodb://***@h/"  # any URL's credentials


def test_captured_output_is_bounded_and_progress_bars_collapse():
    text = "".join(f"line {i}\n" for i in range(3 * observers.MAX_OUTPUT_LINES)) + "50%\r100%\n"
    out = observers.bounded_output(text)
    assert out.startswith(observers.DROPPED) and out.endswith("line 5999\n100%\n")
    assert len(out.splitlines()) == observers.MAX_OUTPUT_LINES + 1
    assert observers.bounded_output(out + "more\n").count(observers.DROPPED) == 1  # reapplied every heartbeat
    assert len(observers.bounded_output("x" * (3 * observers.MAX_OUTPUT_CHARS))) <= \
        observers.MAX_OUTPUT_CHARS + len(observers.DROPPED)


def test_upstream_from_lock_walks_to_the_raw_data():
    lock = {
        "download": {"deps": [], "params": {"params.yaml": {"world.seed": 0}}, "outs": [{"path": "data/raw", "md5": "r"}]},
        "preprocess": {"deps": [{"path": "data/raw", "md5": "r"}], "outs": [{"path": "data/shards", "md5": "s"}]},
        "report": {"deps": [{"path": "reports/x", "md5": "x"}], "outs": [{"path": "reports/y", "md5": "y"}]},
    }
    chain = upstream_from_lock(lock, ["data/shards", "models/base.pt"])
    assert [s["stage"] for s in chain] == ["preprocess", "download"]
    assert chain[1]["params"] == {"world": {"seed": 0}}


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_omniboard_preload_binds_every_listen_to_loopback():
    script = ("const http = require('http'); const net = require('net');"
              "const a = http.createServer().listen(0, '0.0.0.0', () => {"
              " const b = net.createServer().listen({port: 0, host: '::'}, () => {"
              "  const c = net.createServer().listen(0, () => {"
              "   console.log(JSON.stringify([a, b, c].map(s => s.address().address))); process.exit(0); }); }); });")
    out = subprocess.run(["node", "-r", str(TOOLS / "preload.js"), "-e", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert json.loads(out) == ["127.0.0.1"] * 3


def test_omniboard_layout_puts_the_compared_columns_first_and_keeps_the_rest_on_request():
    ours = [{"name": c.key, "config_path": c.path} for c in omniboard.COLUMNS if c.custom]
    custom = ours + [{"name": "my_column", "config_path": "config.train.optim.lr"}]
    metric = [{"name": "best_loss", "metric_name": "train/loss", "extrema": "min"}]
    defaults = omniboard.browser_defaults(metric, custom, ["experiment", "train"])
    table = defaults["default|RunsTable|1"]
    order, shown = table["columnOrder"], [o["value"] for o in table["dropdownOptions"] if o["selected"]]
    assert order[:10] == ["_id", "experiment_name", "experiment_key", "method", "stream", "mixture", "seed", "A-KA",
                          "A-ZS", "GM"]
    assert [o["value"] for o in table["dropdownOptions"]] == order and shown == order[:len(shown)]
    assert {"best_loss", "my_column", "continues", "uploaded_from"} <= set(shown)
    assert not {"hostname", "format", "command", "c_experiment", "c_train"} & set(shown)
    assert order[-2:] == ["c_experiment", "c_train"]  # every config key is one click away
    # At 1400 px, beside the selection and expander cells (about 80 px), A_KA, A_ZS and GM are in view.
    assert sum(table["columnWidths"][k] for k in order[:order.index("GM") + 1]) <= 1400 - 80
    names = table["columnNameMap"]
    assert names["A-KA"] == "info.summary.A_KA" and names["experiment_name"] == "experiment.name"
    assert names["c_train"] == "config.train" and names["my_column"] == "config.train.optim.lr"
    # What Omniboard itself derives from the column documents (runsTable.js `_getLatestMetricAndCustomColumns`).
    assert table["metricAndCustomColumns"] == [{"name": "best_loss", "value": "best_loss"}] + \
        [{"name": c["name"], "value": c["config_path"]} for c in custom]
    for key in ("default|MetricsPlotView|default", "undefined|MetricsPlotView|default"):
        assert [o["value"] for o in defaults[key]["metricNameOptions"]][:3] == ["eval/A_KA", "eval/A_ZS", "eval/GM"]


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_omniboard_defaults_seed_a_fresh_browser_and_leave_a_users_layout_alone(tmp_path):
    web = tmp_path / "node_modules/omniboard/web/build"
    web.mkdir(parents=True)
    main = '<script type="text/javascript" src="/static/js/main.0f449cd6.js"></script>'
    (web / "index.html").write_text(f"<html><body><div id=root></div>{main}</body></html>")
    omniboard.write_defaults(tmp_path, {"k": {"columnOrder": ["a"]}})
    omniboard.write_defaults(tmp_path, {"k": {"columnOrder": ["a"]}})
    html = (web / "index.html").read_text()
    assert html.count("clipflux-defaults.js") == 1 and html.index("clipflux-defaults.js") < html.index(main)

    def browser(store: dict) -> dict:  # run the script as the page would, on a localStorage holding `store`
        script = ("const store = " + json.dumps(store) + ";"
                  "global.localStorage = {getItem: k => (k in store ? store[k] : null), setItem: (k, v) => { store[k] = v; }};"
                  f"require({json.dumps(str(web / 'clipflux-defaults.js'))});"
                  "console.log(JSON.stringify(store));")
        out = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=60, check=True).stdout
        return json.loads(out)

    fresh = browser({})
    assert json.loads(fresh["k"]) == {"columnOrder": ["a"]}
    mine = dict(fresh, k=json.dumps({"columnOrder": ["b", "a"]}))
    assert browser(mine)["k"] == mine["k"]  # the user's own order stays
    omniboard.write_defaults(tmp_path, {"k": {"columnOrder": ["a", "c"]}})
    assert json.loads(browser(mine)["k"]) == {"columnOrder": ["a", "c"]}  # new defaults from clipflux replace it


def test_a_resumed_run_truncates_the_run_it_continues_in_both_stores(live, project):
    # The first run logged steps 0-11, flushed them all and died; the next run into the same checkpoint folder
    # resumes from step 6: it finds the first in the stores (checkpoints hold no run identity), and the first
    # run's entries at steps >= 6 leave both stores, so the two runs hold each step once.
    first: dict = {}

    def killed(run):
        first["uid"], first["id"] = run.uid, run.id
        _work()(run)
        raise RuntimeError("killed after step 11")

    def resumed(run):
        run.continues({"task": 0, "step": 6, "global_step": 6})
        for step in range(6, 12):
            run.log_scalar("train/loss", 1.0 / (step + 3), step)
        return {"resumed_by": run.id}

    with pytest.raises(RuntimeError):
        run_tracked("train", {"seed": 0}, killed, checkpoints="checkpoints/x/seed_0")
    run_tracked("train", {"seed": 0}, lambda run: run.continues({"task": 0, "step": 6, "global_step": 6}) or {},
                checkpoints="checkpoints/y/seed_0")  # another folder: continues nothing
    second = run_tracked("train", {"seed": 0}, resumed, checkpoints="checkpoints/x/seed_0")["resumed_by"]
    db = _db(live.port)
    old = db.runs.find_one({"meta.clipflux_uid": first["uid"]})
    assert old["status"] == "INTERRUPTED" and old["resumed_by"] == second
    for metric in db.metrics.find({"run_id": old["_id"]}):
        assert metric["steps"] == list(range(6)) and len(metric["values"]) == len(metric["timestamps"]) == 6
    [folder] = [p.parent for p in (project / "runs/train").glob("*/run.json")
                if json.loads(p.read_text())["meta"]["clipflux_uid"] == first["uid"]]
    local = json.loads((folder / "metrics.json").read_text())
    assert {name: m["steps"] for name, m in local.items()} == {"train/loss": list(range(6)), "train/lr": list(range(6))}
    assert json.loads((folder / "run.json").read_text())["status"] == "INTERRUPTED"
    new = db.runs.find_one({"_id": second})
    assert new["info"]["resumed_from"]["run_uid"] == first["uid"] and new["info"]["resumed_from"]["run_id"] == first["id"]
    other = db.runs.find_one({"meta.checkpoints": "checkpoints/y/seed_0"})
    assert other["info"]["resumed_from"]["run_uid"] is None
    [loss] = list(db.metrics.find({"run_id": second, "name": "train/loss"}))
    assert loss["steps"] == list(range(6, 12))


def _die_in_a_run(project: Path, checkpoints: str, steps: int = 5) -> subprocess.CompletedProcess:
    """A stage process that logs `steps` steps, flushes them and is killed with SIGKILL inside its run."""
    script = (
        "import os, signal\n"
        "from clipflux.tracking import run_tracked\n"
        "def main(run):\n"
        f"    for step in range({steps}):\n"
        "        run.log_scalar('train/loss', 1.0 / (step + 3), step)\n"
        "    run.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        f"run_tracked('train', {{'seed': 0}}, main, checkpoints={checkpoints!r})\n")
    return subprocess.run([sys.executable, "-c", script], cwd=project, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})


def test_a_killed_run_shows_as_dead_and_a_fresh_start_supersedes_it_in_both_stores(live, project):
    """Killed before its first checkpoint, a run cannot say so itself: the next run (and `clipflux tracking
    upload`) marks it INTERRUPTED because its process is gone; the next run of the same folder starts afresh
    and drops the dead run's entries, so the stores hold each step once."""
    proc = _die_in_a_run(project, "checkpoints/x/seed_0")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    folder = _local(project, "train")
    assert json.loads((folder / "run.json").read_text())["status"] == "RUNNING"
    db = _db(live.port)
    assert db.runs.find_one()["status"] == "RUNNING"
    report = upload(db, project / "runs")
    assert [what for _, _, what in report] != ["still running"]
    dead = json.loads((folder / "run.json").read_text())
    assert dead["status"] == "INTERRUPTED" and "killed" in dead["died"]

    def fresh(run):
        run.continues(None)  # what the trainer found: no checkpoint
        return _work(steps=6)(run)

    run_tracked("train", {"seed": 0}, fresh, checkpoints="checkpoints/x/seed_0")
    [old, new] = sorted(db.runs.find(), key=lambda d: d["_id"])
    assert old["status"] == "INTERRUPTED" and old["resumed_by"] == new["_id"]
    assert new["info"]["supersedes"] == old["_id"] and new["status"] == "COMPLETED"
    assert all(m["steps"] == [] for m in db.metrics.find({"run_id": old["_id"]}))
    assert [m["steps"] for m in db.metrics.find({"run_id": new["_id"], "name": "train/loss"})] == [list(range(6))]
    local = json.loads((folder / "metrics.json").read_text())
    assert local["train/loss"]["steps"] == []


def test_a_stage_run_again_with_the_same_config_replaces_its_earlier_run_in_both_stores(live, project):
    """DVC reruns a finished stage (killed before it recorded it, or its code changed): the new run replaces the
    earlier completed run of the same stage and config, which keeps its record; other configs are left alone."""
    run_tracked("train", {"seed": 0, "method": "ema"}, _work(steps=3), checkpoints="checkpoints/x/seed_0")
    run_tracked("train", {"seed": 0, "method": "lwf"}, _work(steps=3), checkpoints="checkpoints/y/seed_0")
    run_tracked("evaluate", {"seed": 0, "method": "ema"}, _work(steps=3))  # another stage, the same config
    run_tracked("train", {"seed": 0, "method": "ema"}, _work(steps=3), checkpoints="checkpoints/x/seed_0")
    db = _db(live.port)
    [first, other, evaluate, again] = sorted(db.runs.find(), key=lambda d: d["_id"])
    assert first["status"] == "COMPLETED" and first["replaced_by"] == again["_id"]
    assert again["info"]["replaces"] == [first["_id"]] and "replaced_by" not in again
    assert "replaced_by" not in other and "replaced_by" not in evaluate
    local = {json.loads(p.read_text())["meta"]["clipflux_uid"]: json.loads(p.read_text())
             for p in (project / "runs" / "train").glob("*/run.json")}
    assert local[first["meta"]["clipflux_uid"]]["replaced_by"] == again["_id"]
    assert [d for d in local.values() if "replaced_by" in d] == [local[first["meta"]["clipflux_uid"]]]
    db.runs.delete_many({})  # a database that missed it all: the upload carries the marks
    upload(db, project / "runs")
    assert db.runs.find_one({"meta.clipflux_uid": first["meta"]["clipflux_uid"]})["replaced_by"] == again["_id"]


def test_a_dead_run_is_buried_by_the_next_run_of_any_stage(live, project):
    _die_in_a_run(project, "checkpoints/x/seed_0")
    run_tracked("evaluate", {"seed": 1}, _work(steps=2))  # another stage: no checkpoints, nothing to supersede
    db = _db(live.port)
    dead = db.runs.find_one({"meta.stage": "train"})
    assert dead["status"] == "INTERRUPTED" and "killed" in dead["died"]
    assert json.loads((_local(project, "train") / "run.json").read_text())["status"] == "INTERRUPTED"


def test_server_killed_during_upload_and_upload_again_leaves_every_run_once(live, project, monkeypatch):
    """The server dies (SIGKILL) right after upload wrote its first run; after it is back, upload again: every
    run complete, none twice."""
    from pymongo import monitoring

    closed = server.free_port()
    monkeypatch.setenv(URL_ENV, f"mongodb://127.0.0.1:{closed}/")
    for seed in range(3):
        run_tracked("evaluate", {"evaluate": {"seed": seed}}, _work(steps=3 + seed), runs_dir=project / "runs")

    class KillAfterFirstWrite(monitoring.CommandListener):
        def started(self, event):
            pass

        def succeeded(self, event):
            if event.command_name in ("update", "insert") and server.status(project).running:
                os.kill(live.pid, signal.SIGKILL)

        def failed(self, event):
            pass

    client = MongoClient(f"mongodb://127.0.0.1:{live.port}/", serverSelectionTimeoutMS=2000,
                         event_listeners=[KillAfterFirstWrite()])
    with pytest.raises(Exception):
        upload(client["clipflux"], project / "runs")
    client.close()
    restarted = server.start(project)
    db = _db(restarted.port)
    assert [what for _, _, what in upload(db, project / "runs")].count("in sync") < 3  # the rest came now
    assert [what for _, _, what in upload(db, project / "runs")] == ["in sync"] * 3
    assert db.runs.count_documents({}) == 3
    for folder in sorted((project / "runs/evaluate").glob("[0-9]*")):
        _assert_same_as_local(db, folder)


def test_a_server_started_by_a_killed_stage_stops_by_itself(project):
    """A stage holding the embedded server it started is killed with SIGKILL and cannot let go: the server's
    watcher stops it once no live process holds it, so a killed `dvc repro` leaves no server running."""
    proc = _die_in_a_run(project, "checkpoints/x/seed_0")
    assert proc.returncode == -signal.SIGKILL
    pid = json.loads((project / ".clipflux/mongo/server.json").read_text())["pid"]
    deadline = time.monotonic() + 30
    while (server.status(project).running or server._alive(pid)) and time.monotonic() < deadline:
        time.sleep(0.2)  # the server stops answering a moment before its process has exited
    assert not server.status(project).running and not server._alive(pid)


def _evaluate_doc(run_id: int, experiment: str, seed: int, result: dict) -> dict:
    return {"_id": run_id, "status": "COMPLETED", "meta": {"stage": "evaluate", "dvc_stage": f"evaluate@{experiment}"},
            "config": {"experiment": experiment, "method": experiment.split("_")[0], "seed_index": seed},
            "result": result}


def test_compare_shows_tic_transfer_groups_seeds_sorts_and_writes_csv(live, project):
    """`clipflux compare` on FiF and TiC evaluate runs in a real server: TiC rows carry in-domain / backward /
    forward per dataset, --group gives each experiment's mean and sd over seeds, --sort orders, --format csv
    parses back to the same values."""
    import csv
    import io

    from clipflux.tracking import query

    db = _db(live.port)
    tic = {"tic_ret": {"in_domain": 7.5, "backward": 6.5, "forward": 2.5, "bwt": 0.1, "fwt": 0.2}}
    db.runs.insert_many([_evaluate_doc(1, "finetune", 0, {"A_KA": 30.0}), _evaluate_doc(2, "finetune", 1, {}),
                         dict(_evaluate_doc(4, "finetune", 0, {}), config={"experiment": "finetune", "lr": 1}),
                         _evaluate_doc(3, "tic_lwf", 0, tic)])
    db.metrics.insert_many([{"run_id": r, "name": f"eval/{k}", "steps": [0, 4], "values": [10.0, v]}
                            for r, values in ((1, {"A_KA": 30.0, "GM": 40.0}), (2, {"A_KA": 34.0, "GM": 44.0}))
                            for k, v in values.items()])
    rows = query.compare(db, {})
    assert [r["run"] for r in rows] == [1, 2, 3, 4] and list(rows[0]) == list(rows[2])  # one set of columns
    assert rows[0]["config"] == rows[1]["config"] != rows[3]["config"]  # seeds share a setting; another lr does not
    assert rows[2]["tic_ret.in_domain"] == 7.5 and rows[2]["tic_ret.forward"] == 2.5 and rows[2]["A_KA"] is None
    assert rows[0]["tic_ret.backward"] is None and rows[1]["A_KA"] == 34.0 and rows[1]["seed"] == 1
    grouped = {r["experiment"]: r for r in query.group_seeds(rows[:3])}
    assert len(query.group_seeds(rows)) == 3  # run 4 (another lr) is a setting of its own
    assert grouped["finetune"]["A_KA"] == 32.0 and grouped["finetune"]["n"] == 2
    assert grouped["finetune"]["A_KA sd"] == pytest.approx(2 ** 0.5 * 2)
    assert grouped["tic_lwf"]["tic_ret.backward"] == 6.5 and grouped["tic_lwf"]["runs"] == "3"
    assert [r["run"] for r in query.sort_rows(rows, "-A_KA")] == [2, 1, 3, 4]  # missing values last
    with pytest.raises(ValueError, match="no column 'nope'"):
        query.sort_rows(rows, "nope")
    parsed = list(csv.DictReader(io.StringIO(query.csv_text(rows))))
    assert float(parsed[1]["GM"]) == 44.0 and float(parsed[2]["tic_ret.in_domain"]) == 7.5 and parsed[2]["GM"] == ""


def test_compare_shows_a_resumed_run_as_one_row_naming_its_parts(live, project):
    """A train run killed twice and resumed (runs 11 -> 12 -> 13) and a run replaced by a rerun (14 by 15) are
    two rows, 13 (continuing 11 and 12) and 15; --history shows all five."""
    from clipflux.tracking import query

    db = _db(live.port)
    db.runs.delete_many({})

    def doc(run_id, **extra):
        return {"_id": run_id, "status": extra.pop("status", "COMPLETED"), "meta": {"stage": "train"},
                "config": {"experiment": "finetune", "seed_index": 0}, "info": extra.pop("info", {}), **extra}

    db.runs.insert_many([doc(11, status="INTERRUPTED", resumed_by=12),
                         doc(12, status="INTERRUPTED", resumed_by=13, info={"resumed_from": {"run_id": 11}}),
                         doc(13, info={"resumed_from": {"run_id": 12, "step": 8}}),
                         doc(14, replaced_by=15), doc(15)])
    rows = query.compare(db, {}, stage="train")
    assert [(r["run"], r["status"], r["continues"]) for r in rows] == [(13, "COMPLETED", "11,12"), (15, "COMPLETED", None)]
    assert [r["run"] for r in query.compare(db, {}, stage="train", history=True)] == [11, 12, 13, 14, 15]


def _run_node(run_id: int, stage: str, upstream: list, seed: int = 0) -> dict:
    return {"run": run_id, "stage": stage, "status": "COMPLETED", "commit": "abc123", "dirty": False,
            "config": {"seed": seed}, "inputs": [], "outputs": [{"path": f"out{run_id}", "md5": f"m{run_id}"}],
            "data": {"digits": "f" * 64}, "environment": {"host": "h", "device": "cpu", "threads": 2},
            "upstream": upstream}


def test_lineage_prints_each_artifact_once_and_states_its_provenance():
    """data/shards reached along two paths is expanded once; the repeat points back; the statement names the runs,
    the commit, the seeds, the data manifest and the hardware."""
    from clipflux.tracking.trace import render, statement

    shards = {"path": "data/shards", "md5": "s1", "stage": {"stage": "preprocess", "params": {}, "deps": [
        {"path": "data/raw", "md5": "r1", "stage": {"stage": "download", "params": {"world.seed": 0}, "deps": []}}]}}
    pretrain = _run_node(1, "pretrain", [dict(shards)], seed=3)
    train = _run_node(2, "train@finetune", [{"path": "models/base.pt", "md5": "b1", "run": pretrain}, dict(shards)])
    train["slurm"] = {"job_id": "4711", "job_name": "clipflux-train-finetune", "nodes": "gpu[01-04]",
                      "num_nodes": "4", "cpus_per_task": "64", "gpus_per_node": "8", "restarts": "1"}
    evaluate = _run_node(3, "evaluate@finetune", [{"path": "models/finetune", "md5": "f1", "run": train},
                                                  {"path": "models/base.pt", "md5": "b1", "run": pretrain}, dict(shards)])
    tree = {"file": "reports/experiments/finetune/metrics.json", "md5": "x", "run": evaluate}
    text = render(tree)
    assert text.count("stage preprocess") == 1 and text.count("stage download") == 1
    assert text.count("run 1  pretrain  COMPLETED") == 1
    assert text.count("job     Slurm job 4711 (clipflux-train-finetune) on gpu[01-04]: 4 node(s), 64 CPUs per node, "
                      "GPUs 8 per node, requeued 1 time(s)") == 1  # the train run only: the others ran here
    assert text.count("← data/shards  md5 s1  (shown above)") == 2
    assert text.count("← models/base.pt  md5 b1  (shown above)") == 1
    paragraph = statement(tree)
    assert "3 tracked run(s)" in paragraph and "pretrain (run 1)" in paragraph and "commit abc123" in paragraph
    assert "pretrain seed 3" in paragraph and "digits (manifest sha256 ffffffffffff)" in paragraph
    assert "download, preprocess" in paragraph and "h (cpu, 2 threads)" in paragraph
