"""End to end on imported data, then shared: a tiny study on datasets imported with `clipflux import` (an
ImageFolder adaptation set, a CSV evaluation-only set, a webdataset replay pool, all tracked by data.dvc) runs
with `dvc repro`; every output is pushed to a directory remote and to an S3-compatible server on 127.0.0.1
(moto); a fresh clone pulls them, finds `dvc status` clean and `dvc repro` has nothing to recompute."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import webdataset as wds
import yaml
from PIL import Image

from conftest import copy_repository

BIN = Path(sys.executable).parent
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]


def _image(colour: str, i: int) -> bytes:
    img = Image.new("RGB", (36 + i % 3, 32), (120 + i, 120, 120))
    img.paste(COLOURS[colour], (6 + i % 4, 6, 24, 24))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _run(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", TQDM_DISABLE="1", CLIPFLUX_MONGO_URL="off",
               **(env or {}))
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _inputs(root: Path) -> None:
    """Raw inputs as a user has them: an ImageFolder tree, a CSV with images, webdataset shards."""
    for split, n in (("train", 8), ("test", 4)):
        for colour in COLOURS:
            (root / "folder" / split / colour).mkdir(parents=True)
            for i in range(n):
                (root / "folder" / split / colour / f"{i}.png").write_bytes(_image(colour, i))
    (root / "images").mkdir()
    with open(root / "eval.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "classname"])
        for i in range(12):
            colour = list(COLOURS)[i % 3]
            (root / "images" / f"{i}.png").write_bytes(_image(colour, i + 3))
            writer.writerow([f"{i}.png", colour])
    (root / "wds").mkdir()
    with wds.TarWriter(str(root / "wds" / "00000.tar")) as sink:
        for i in range(40):
            colour = list(COLOURS)[i % 3]
            sink.write({"__key__": f"{i:09d}", "png": _image(colour, i), "txt": f"a {colour} square",
                        "json": {"uid": f"{i:032x}"}})


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """The repository's files in a fresh git repository, with three imported datasets and a tiny study on them."""
    root = tmp_path_factory.mktemp("study")
    copy_repository(root)
    inputs = tmp_path_factory.mktemp("inputs")
    _inputs(inputs)
    common = ["--image-size", "32", "--image-format", "png", "--shard-size", "16"]
    _run(["clipflux", "import", "imagefolder", str(inputs / "folder"), "--name", "colours_real", "--role", "adaptation",
          "--task", "classification", "--template", "a photo of a {} square."] + common, root)
    _run(["clipflux", "import", "table", str(inputs / "eval.csv"), "--images", str(inputs / "images"), "--name",
          "colours_eval", "--role", "evaluation", "--task", "classification", "--split", "test"] + common, root)
    _run(["clipflux", "import", "webdataset", str(inputs / "wds" / "00000.tar"), "--name", "pool_real", "--role",
          "pretraining", "--task", "captions", "--split", "train"] + common, root)

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"] = {"world": False, "pool": "pool_real",
                      "external": {n: f"data/external/shards/{n}" for n in ("colours_real", "colours_eval", "pool_real")}}
    params["pretrain"].update(samples=64, checkpoint_every=1, optim=dict(params["pretrain"]["optim"], batch_size=32))
    params["train"].update(samples_per_task=32, checkpoint_every=1, optim=dict(params["train"]["optim"], batch_size=16))
    params["streams"] = {"real": {"file": "streams/real.json", "num_tasks": 2}}
    params["experiments"] = {"finetune": {"method": "finetune", "stream": "real",
                                          "mixture": {"update": 0.5, "buffer": 0.25, "pretraining": 0.25}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "streams" / "real.json").write_text(json.dumps([f"colours_real+++{c}" for c in ("red", "blue", "green")]))
    _run(["git", "init", "-q"], root)
    _run(["dvc", "add", "-q", "data/external"], root)
    _run(["git", "add", "-A"], root)
    _run(GIT + ["commit", "-qm", "study on imported data"], root)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
def test_study_on_imported_data_is_shared_through_dvc_remotes(study, tmp_path):
    from moto.server import ThreadedMotoServer

    out = _run(["dvc", "repro"], study)
    for stage in ("download", "preprocess", "build_stream@real", "pretrain", "train@finetune", "evaluate@finetune"):
        assert f"Running stage '{stage}'" in out
    metrics = json.loads((study / "reports/experiments/finetune/metrics.json").read_text())
    assert set(metrics["finetune"]) >= {"A_KA", "A_ZS", "GM", "forgetting"}
    evaluation = json.loads((study / "reports/experiments/finetune/eval.json").read_text())
    assert {"colours_real", "colours_eval"} <= set(json.dumps(evaluation).replace('"', " ").split())
    _run(["git", "add", "-A"], study)
    _run(GIT + ["commit", "-qm", "run"], study)

    port = _free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    try:
        s3_env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
        import boto3

        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", **{
            "aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-east-1"}
        ).create_bucket(Bucket="clipflux")
        remote_dir = tmp_path / "remote"
        _run(["dvc", "remote", "add", "-d", "shared", str(remote_dir)], study)
        _run(["dvc", "remote", "add", "s3", "s3://clipflux/store"], study)
        _run(["dvc", "remote", "modify", "s3", "endpointurl", f"http://127.0.0.1:{port}"], study)
        _run(["git", "add", "-A"], study)
        _run(GIT + ["commit", "-qm", "remotes"], study)
        _run(["dvc", "push", "-r", "shared"], study)
        _run(["dvc", "push", "-r", "s3"], study, s3_env)

        for remote in ("shared", "s3"):
            clone = tmp_path / f"clone-{remote}"
            _run(["git", "clone", "-q", str(study), str(clone)], tmp_path)
            assert not (clone / "models").exists() and not (clone / "data/external/shards").exists()
            _run(["dvc", "pull", "-r", remote], clone, s3_env)
            status = _run(["dvc", "status"], clone)
            assert "Data and pipelines are up to date." in status, status
            again = _run(["dvc", "repro"], clone, s3_env)
            assert "Running stage" not in again, again
            assert (clone / "checkpoints/finetune").is_dir() and (clone / "models/finetune/seed_0/task_002.pt").is_file()
    finally:
        moto.stop()
