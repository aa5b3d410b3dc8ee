"""End to end: `dvc repro` on tiny settings in a temporary clone records every run in the embedded MongoDB
(config, lineage, every metric value exactly as computed); the results / compare / lineage commands read
them back; Omniboard shows them in headless Chromium."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from test_pipeline import TINY, _merge
from test_tracking import _listening_hosts

from clipflux.tracking import server
from clipflux.tracking.store import embedded_store

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
SMALLER = {"world": {"scale": 0.05}, "pretrain": {"samples": 256}, "train": {"samples_per_task": 64}}
SCREENSHOTS = Path(tempfile.gettempdir())
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000"]  # the runs list's first columns are read at this width


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPFLUX_MONGO", "DVC_"))}
    # Omniboard is installed once per checkout (git-ignored), not once per temporary clone.
    return dict(env, PATH=f"{BIN}{os.pathsep}{env['PATH']}", TQDM_DISABLE="1",
                CLIPFLUX_OMNIBOARD_DIR=str(REPO / ".clipflux" / "omniboard"))


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A clone of the working tree that ran `dvc repro`, with its embedded server started for the checks."""
    root = tmp_path_factory.mktemp("tracked")
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in (n for n in listed if n and (REPO / n).is_file()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    params = _merge(_merge(yaml.safe_load((root / "params.yaml").read_text()), TINY), SMALLER)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], root)
    _run(["git", "add", "-A"], root)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "clone"], root)
    # Only what the checks read, not every experiment: two FiF experiments, for Omniboard's compare view.
    _run(["dvc", "repro", "evaluate@finetune", "evaluate@lora"], root)
    assert not server.status(root).running  # each stage held the embedded server only while it ran
    _run(["clipflux", "mongo", "start"], root)
    yield root
    _run(["clipflux", "mongo", "stop"], root)


@pytest.fixture(scope="module")
def db(project):
    client = embedded_store(server.status(project).port).client()
    yield client["clipflux"]
    client.close()


def _runs(db) -> dict[str, dict]:
    return {doc["meta"]["dvc_stage"]: doc for doc in db.runs.find()}


def _pairs(entries: list[dict]) -> set[tuple[str, str]]:
    return {(e["path"], e["md5"]) for e in entries}


def test_every_run_lands_with_config_lineage_and_exact_metrics(project, db):
    runs = _runs(db)
    assert set(runs) == {"pretrain", "train@finetune", "evaluate_base", "evaluate@finetune", "train@lora",
                         "evaluate@lora"}
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    manifests = {p.parent.name: hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in (project / "data/shards").glob("*/manifest.json")}
    for stage, doc in runs.items():
        local = project / "runs" / doc["meta"]["stage"] / str(doc["_id"])
        assert doc["status"] == "COMPLETED"
        assert doc["config"] == json.loads((local / "config.json").read_text())
        lineage = doc["info"]["lineage"]
        assert lineage["git"]["commit"] == head and lineage["git"]["dirty"] is False, lineage["git"]["changed"]
        # The inputs and outputs carry the very hashes DVC wrote to dvc.lock for this stage.
        assert _pairs(lineage["dvc"]["deps"]) == _pairs(lock[stage]["deps"]), stage
        assert _pairs(lineage["outputs"]) == _pairs(lock[stage]["outs"]), stage
        assert {name: m["sha256"] for name, m in lineage["data"].items()} == manifests
        assert doc["info"]["environment"]["threads"] == doc["config"][doc["meta"]["stage"]]["threads"]
        stored = {m["name"]: m for m in db.metrics.find({"run_id": doc["_id"]})}
        for name, metric in json.loads((local / "metrics.json").read_text()).items():
            assert (stored[name]["steps"], stored[name]["values"]) == (metric["steps"], metric["values"]), name
    assert {"pretrain", "build_stream@fif_random", "preprocess", "download"} <= \
        {s["stage"] for s in runs["train@finetune"]["info"]["lineage"]["dvc"]["upstream"]}

    # Evaluation: every logged value is exactly the one the stage computed and wrote to eval.json.
    evaluation = json.loads((project / "reports/experiments/finetune/eval.json").read_text())
    stored = {m["name"]: dict(zip(m["steps"], m["values"])) for m in db.metrics.find({"run_id": runs["evaluate@finetune"]["_id"]})}
    for row in evaluation["rows"]:
        task = row["after_task"]
        for key in ("A_KA", "A_ZS", "GM"):
            assert stored[f"eval/{key}"][task] == row[key]
        for dataset, values in row["metrics"].items():
            for metric, value in values.items():
                assert stored[f"eval/{dataset}/{metric}"][task] == value
    assert len(stored["eval/A_KA"]) == len(evaluation["rows"]) == 3  # base model + 2 tasks
    assert runs["train@finetune"]["info"]["metrics"] and db.metrics.count_documents(
        {"run_id": runs["train@finetune"]["_id"], "name": "train/loss"}) == 1


def test_results_compare_and_lineage_read_the_runs_back(project, db):
    runs = _runs(db)
    evaluate, train, pretrain = (runs[s]["_id"] for s in ("evaluate@finetune", "train@finetune", "pretrain"))
    last = {m["name"].split("/")[1]: m["values"][-1]
            for m in db.metrics.find({"run_id": evaluate, "name": {"$in": ["eval/A_KA", "eval/A_ZS", "eval/GM"]}})}

    results = json.loads(_run(["clipflux", "results", str(evaluate), "--json"], project))
    assert results["final"] == last and [r["task"] for r in results["trajectory"]] == [0, 1, 2]
    assert json.loads(_run(["clipflux", "results", str(train), "--json"], project))["evaluated_by"] == [evaluate]
    assert "final  A_KA" in _run(["clipflux", "results", str(evaluate)], project)

    rows = json.loads(_run(["clipflux", "compare", "method=finetune", "train.seed=0", "--json"], project))
    assert [(r["run"], r["A_KA"], r["GM"]) for r in rows] == [(evaluate, last["A_KA"], last["GM"])]
    assert [r["run"] for r in json.loads(_run(["clipflux", "compare", "method=lora", "--json"], project))] == \
        [runs["evaluate@lora"]["_id"]]
    assert json.loads(_run(["clipflux", "compare", "method=ewc", "--json"], project)) == []

    tree = json.loads(_run(["clipflux", "lineage", "reports/experiments/finetune/metrics.json", "--json"], project))
    assert tree["run"]["run"] == evaluate
    upstream = {u["path"]: u for u in tree["run"]["upstream"]}
    assert upstream["models/finetune"]["run"]["run"] == train
    train_inputs = {u["path"]: u for u in upstream["models/finetune"]["run"]["upstream"]}
    assert train_inputs["models/base.pt"]["run"]["run"] == pretrain
    shards = train_inputs["data/shards"]["stage"]  # not a tracked run: dvc.lock down to the raw data
    assert shards["stage"] == "preprocess" and shards["deps"][0]["stage"]["stage"] == "download"
    text = _run(["clipflux", "lineage", str(evaluate)], project)
    assert f"commit {runs['pretrain']['info']['lineage']['git']['commit']} (clean)" in text


def _port(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def _wait(check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {check.__name__}")


@pytest.fixture(scope="module")
def omniboard(project):
    """`clipflux omniboard` serving the clone's runs (installs Omniboard on first use); yields its URL."""
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists() and shutil.which("npm")):
        pytest.skip("chromium, chromium-driver and npm are needed (./run.sh test installs them)")
    log = project / "omniboard.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["clipflux", "omniboard", "--port", str(server.free_port())], cwd=project,
                                env=_env(), stdout=out, stderr=subprocess.STDOUT)

    def url():
        assert proc.poll() is None, log.read_text()[-3000:]
        return next((line.split(" at ")[-1] for line in log.read_text().splitlines() if "serves the runs" in line), None)
    address = None
    try:
        address = _wait(url, timeout=600)  # the first use runs `npm ci`
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if address:  # node went with it: nothing listens on Omniboard's port any more
            assert _wait(lambda: not _listening_hosts(_port(address)), timeout=15)


def test_omniboard_lays_out_the_runs_and_plots_the_trajectory_in_headless_chromium(project, db, omniboard):
    """At 1400 px the runs list's first columns name the experiment and show A_KA / A_ZS / GM rounded to what the
    evaluation resolves; comparing two evaluate runs plots A_KA / A_ZS / GM over the tasks, one line per run."""
    from selenium.webdriver.common.by import By

    assert _listening_hosts(_port(omniboard)) == {"127.0.0.1"}
    runs = _runs(db)
    evaluations = {name: runs[f"evaluate@{name}"] for name in ("finetune", "lora")}
    browser = _browser()
    try:
        browser.get(omniboard)
        cells = lambda: [c.text for c in browser.find_elements(By.CSS_SELECTOR, "[role=gridcell]")]  # noqa: E731

        def runs_listed():
            return {"pretrain", "train finetune", "evaluate finetune", "evaluate lora"} <= set(cells())
        _wait(runs_listed)
        width = browser.execute_script("return window.innerWidth")
        assert width <= 1400

        def visible_headers():  # the headers inside the window, left to right, no scrolling
            heads = browser.find_elements(By.CSS_SELECTOR, "[role=columnheader]")
            return [h.text for h in heads if h.text and 0 <= h.rect["x"] and h.rect["x"] + h.rect["width"] <= width]
        heads = _wait(visible_headers)
        assert heads[heads.index("Experiment Name"):][:9] == ["Experiment Name", "Experiment Key", "Method", "Stream", "Mixture", "Seed", "A-KA",
                             "A-ZS", "GM"], heads
        assert not {"Hostname", "Format", "Command"} & set(heads)
        for name, doc in evaluations.items():
            summary, digits = doc["info"]["summary"], doc["info"]["summary"]["decimals"]
            final = {m["name"]: m["values"][-1] for m in db.metrics.find({"run_id": doc["_id"]})}
            row = _row(browser, f"evaluate {name}")
            for header, key in (("A-KA", "A_KA"), ("A-ZS", "A_ZS"), ("GM", "GM")):
                text = row[header]
                assert float(text) == summary[key] == round(final[f"eval/{key}"], digits), (header, text)
                assert len(text.partition(".")[2]) <= digits < len(repr(final[f"eval/{key}"]).partition(".")[2])
            assert row["Experiment Key"] == name and row["Method"] == name and row["Seed"] == "0"
        browser.save_screenshot(str(SCREENSHOTS / "clipflux-omniboard-runs.png"))

        # Compare the two evaluate runs: the plot shows the trajectory, one line per run and metric.
        for name in evaluations:
            index = _row_index(browser, f"evaluate {name}")
            browser.find_element(By.CSS_SELECTOR, f"a[test-attr='cell-row_selection-{index}']").click()
        browser.find_element(By.XPATH, "//button[contains(., 'Compare')]").click()

        def traces():
            return browser.execute_script(
                "var p = document.querySelector('.modal .js-plotly-plot');"
                "return p && p.data ? p.data.filter(t => t.showlegend !== false).map(t => [t.name, t.x]) : null;")
        plotted = _wait(traces)
        expected = {f"{doc['_id']}-eval/{key}" for doc in evaluations.values() for key in ("A_KA", "A_ZS", "GM")}
        assert {name for name, _ in plotted} == expected
        assert all(list(x) == [0, 1, 2] for _, x in plotted)  # over the tasks: the base model, then tasks 1 and 2
        browser.save_screenshot(str(SCREENSHOTS / "clipflux-omniboard-compare.png"))
    finally:
        browser.quit()


def _body_rows(browser) -> list:
    from selenium.webdriver.common.by import By

    return [r for r in browser.find_elements(By.CSS_SELECTOR, "[role=row]")
            if not r.find_elements(By.CSS_SELECTOR, "[role=columnheader]")]


def _row_index(browser, name: str) -> int:
    """The index of the runs list's row whose name is `name` (newest run first)."""
    from selenium.webdriver.common.by import By

    texts = [[c.text for c in r.find_elements(By.CSS_SELECTOR, "[role=gridcell]")] for r in _body_rows(browser)]
    return next(i for i, t in enumerate(texts) if name in t)


def _row(browser, name: str) -> dict[str, str]:
    """The row named `name` as {header: cell text}, the cells matched to the headers by their position."""
    from selenium.webdriver.common.by import By

    heads = {round(h.rect["x"]): h.text for h in browser.find_elements(By.CSS_SELECTOR, "[role=columnheader]")}
    row = _body_rows(browser)[_row_index(browser, name)]
    return {heads[round(c.rect["x"])]: c.text for c in row.find_elements(By.CSS_SELECTOR, "[role=gridcell]")
            if round(c.rect["x"]) in heads}
