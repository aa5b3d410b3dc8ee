"""Importers on fixtures built here (an ImageFolder tree, a CSV and a FiF-style JSON table, webdataset shards),
each result read like the synthetic world's shards and trained on for a few steps; TiC time splits."""

from __future__ import annotations

import csv
import io
import json
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from clipflux.config import MixtureConfig, ModelConfig, OptimConfig, RunConfig
from clipflux.data import layouts
from clipflux.data.importers import DatasetImportError, ImportSpec, write_dataset
from clipflux.data.loader import index_items, stream_tasks
from clipflux.data.pipeline import load_datasets, open_dataset, preprocess
from clipflux.data.shards import ShardReader, sha256_file
from clipflux.data.timesteps import TimeStepError, from_id_lists, from_specs, parse_time, yearly
from clipflux.methods import build_method
from clipflux.models import create_model, state_sha256
from clipflux.streams import resolve
from clipflux.train import Trainer

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def _image(colour: str, i: int, fmt: str = "PNG") -> bytes:
    """A small image of varied size with a coloured square on grey."""
    w, h = 40 + 7 * (i % 3), 30 + 5 * (i % 4)
    img = Image.new("RGB", (w, h), (128, 128, 128))
    img.paste(COLOURS[colour], (4 + i % 5, 3, 4 + i % 5 + w // 2, 3 + h // 2))
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    # ImageFolder: <split>/<class>/<image>, and the same tree as a tar
    for split, n in (("train", 6), ("test", 3)):
        for colour in COLOURS:
            folder = root / "folder" / split / colour
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i:03d}.png").write_bytes(_image(colour, i))
    with tarfile.open(root / "folder.tar", "w") as tar:
        tar.add(root / "folder", arcname="folder")
    # a CSV of paths, captions, classes and timestamps; a FiF annotation file (path -> target, captions)
    (root / "images").mkdir()
    rows = []
    for i in range(12):
        colour = list(COLOURS)[i % 3]
        (root / "images" / f"{i}.jpg").write_bytes(_image(colour, i, "JPEG"))
        rows.append({"path": f"{i}.jpg", "caption": f"a {colour} square, number {i}", "classname": colour,
                     "timestamp": f"{2014 + i // 2}-0{1 + i % 9}-15"})
    with open(root / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (root / "fif.json").write_text(json.dumps({f"{i}.jpg": {"target": i % 3, "default_caption": None,
                                                            "synthetic_merged_caption": [f"caption {i}", "other"]}
                                               for i in range(6)}))
    # webdataset shards as img2dataset writes them: jpg + txt + json (with a DataComp-like uid and a timestamp)
    (root / "wds").mkdir()
    for shard in range(2):
        with wds.TarWriter(str(root / "wds" / f"{shard:05d}.tar")) as sink:
            for i in range(10):
                n = shard * 10 + i
                colour = list(COLOURS)[n % 3]
                sink.write({"__key__": f"{shard:05d}{i:04d}", "jpg": _image(colour, n, "JPEG"),
                            "txt": f"a photo of a {colour} thing", "json": {"uid": f"{n:032x}", "year": 2014 + n % 6,
                                                                            "url": f"http://example.invalid/{n}.jpg"}})
    return root


def _spec(name, role, task, classes=(), **kw):
    return ImportSpec(name, role, task, tuple(classes), ("a photo of a {} square.",), image_size=32,
                      image_format=kw.pop("image_format", "jpg"), shard_size=8, **kw)


def test_imagefolder_writes_the_world_format(fixtures, tmp_path):
    classes, splits = layouts.imagefolder(fixtures / "folder")
    assert classes == ["blue", "green", "red"] and sorted(splits) == ["test", "train"]
    manifest = write_dataset(_spec("colours_real", "adaptation", "classification", classes, image_format="png"),
                             splits, tmp_path / "colours_real", "fixture")
    assert manifest["splits"]["train"]["count"] == 18 and manifest["splits"]["train"]["class_counts"] == {
        "blue": 6, "green": 6, "red": 6}
    assert [s["file"] for s in manifest["splits"]["train"]["shards"]] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    reader = ShardReader(tmp_path / "colours_real", "train")  # verifies every shard's sha256
    sample = reader.read(0)
    assert sample["png"].shape == (32, 32, 3) and sample["txt"] == "a photo of a blue square."
    assert sample["json"] == {"label": 0, "classname": "blue", "meta": {"source": "train/blue/000.png"}}
    assert sample["key"] == "colours_real-train-00000000" and reader.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    # FiF's tar mode: the same tree read straight from the tar gives byte-identical shards.
    _, from_tar = layouts.imagefolder(fixtures / "folder.tar")
    again = write_dataset(_spec("colours_real", "adaptation", "classification", classes, image_format="png"),
                          from_tar, tmp_path / "again" / "colours_real", "fixture")
    assert [s["sha256"] for s in again["splits"]["train"]["shards"]] == [s["sha256"] for s in manifest["splits"]["train"]["shards"]]


def test_tables_csv_and_fif_annotations(fixtures, tmp_path):
    classes, samples = layouts.table(fixtures / "table.csv", fixtures / "images")
    manifest = write_dataset(_spec("csv_set", "evaluation", "retrieval", classes), {"test": samples},
                             tmp_path / "csv_set", "fixture")
    reader = ShardReader(tmp_path / "csv_set", "test")
    assert manifest["splits"]["test"]["count"] == 12 and reader.read(4)["txt"] == "a green square, number 4"
    assert reader.read(4)["json"]["meta"] == {"source": "4.jpg", "timestamp": "2016-05-15"}
    # FiF's annotation files: class indices into the class-name list, captions from the generated ones
    classes, samples = layouts.table(fixtures / "fif.json", fixtures / "images", ["red", "green", "blue"])
    write_dataset(_spec("fif_set", "adaptation", "classification", classes), {"train": samples}, tmp_path / "fif_set", "x")
    sample = ShardReader(tmp_path / "fif_set", "train").read(1)
    assert sample["txt"] == "caption 1" and sample["json"]["classname"] == "green"
    assert sample["json"]["meta"]["captions"] == ["caption 1", "other"]


def test_webdataset_shards_become_a_pretraining_pool(fixtures, tmp_path):
    urls = sorted(str(p) for p in (fixtures / "wds").glob("*.tar"))
    manifest = write_dataset(_spec("laion_like", "pretraining", "captions"), {"train": layouts.webdataset(urls)},
                             tmp_path / "laion_like", "fixture")
    reader = ShardReader(tmp_path / "laion_like", "train")
    assert len(reader) == 20 and manifest["classes"] == []
    sample = reader.read(13)
    assert sample["txt"] == "a photo of a green thing" and sample["json"]["label"] == -1
    assert sample["json"]["meta"]["uid"] == f"{13:032x}" and sample["json"]["meta"]["key"] == "000010003"


def test_bad_inputs_fail_clearly_and_leave_nothing(fixtures, tmp_path):
    classes, samples = layouts.table(fixtures / "table.csv", fixtures / "images")
    with pytest.raises(DatasetImportError, match=r"bad: 0.jpg: class 'red' is not among the 2 classes"):
        write_dataset(_spec("bad", "adaptation", "classification", ["blue", "green"]), {"train": samples},
                      tmp_path / "bad", "x")
    assert not (tmp_path / "bad").exists() and not list(tmp_path.iterdir())
    with pytest.raises(DatasetImportError, match="use letters, digits"):
        _spec("bad.name", "adaptation", "classification", ["a"])


def test_time_steps_from_timestamps_and_id_lists(fixtures, tmp_path):
    assert parse_time(2017) == (2017, 0) and parse_time("2017-03-15T10:00:00") == (2017, 3)
    assert parse_time(1_500_000_000) == (2017, 7)
    steps = yearly("2014-2016", 2018)
    assert steps.names == ["2014-2016", "2017", "2018"]
    assert [steps.step_of({"timestamp": t}) for t in (2014, "2016-12", 2017, "2018-01-01", 2019)] == [0, 0, 1, 2, None]
    months = from_specs(["2014-01..2015-12", "2016-01", "2016-02"])
    assert [months.step_of({"timestamp": t}) for t in ("2015-07", "2016-01-31", "2016-02", "2016-03")] == [0, 1, 2, None]
    with pytest.raises(TimeStepError, match="time order"):
        from_specs(["2017", "2014-2016"])

    # A TiC pool from a timestamp field: classes are the steps, each sample carries its time step.
    _, samples = layouts.table(fixtures / "table.csv", fixtures / "images")
    manifest = write_dataset(_spec("tic_real", "tic", "captions", time_steps=from_specs(["2014-2015", "2016", "2017"])),
                             {"train": samples}, tmp_path / "tic_real", "fixture")
    reader = ShardReader(tmp_path / "tic_real", "train")
    assert manifest["classes"] == ["2014-2015", "2016", "2017"] and manifest["splits"]["train"]["skipped"] == 4
    assert reader.labels.tolist() == [0, 0, 0, 0, 1, 1, 2, 2]
    assert [reader.read(i)["json"]["meta"]["time_step"] for i in range(8)] == reader.labels.tolist()

    # TiC-style id lists: one file per step; DataComp's .npy of two uint64 per uid, or text.
    lists = tmp_path / "ids"
    lists.mkdir()
    uids = np.array([(0, n) for n in range(0, 10)], dtype="u8,u8")
    np.save(lists / "2014.npy", uids)
    (lists / "2015.txt").write_text("\n".join(f"{n:032x}" for n in range(10, 15)))
    steps = from_id_lists(lists)
    urls = sorted(str(p) for p in (fixtures / "wds").glob("*.tar"))
    manifest = write_dataset(_spec("tic_ids", "tic", "retrieval", time_steps=steps),
                             {"test": layouts.webdataset(urls)}, tmp_path / "tic_ids", "fixture")
    reader = ShardReader(tmp_path / "tic_ids", "test")
    assert manifest["splits"]["test"]["count"] == 15 and manifest["splits"]["test"]["skipped"] == 5
    assert [reader.read(i)["json"]["meta"]["time_step"] for i in (0, 9, 10, 14)] == [0, 0, 1, 1]


def test_imported_datasets_train_through_the_index(fixtures, tmp_path):
    """Each import, joined to a study by `data.external`, is streamed, replayed from and trained on for a few steps."""
    ext = tmp_path / "external"
    classes, splits = layouts.imagefolder(fixtures / "folder")
    write_dataset(_spec("colours_real", "adaptation", "classification", classes), splits, ext / "colours_real", "f")
    classes, samples = layouts.table(fixtures / "table.csv", fixtures / "images")
    write_dataset(_spec("csv_set", "adaptation", "classification", classes), {"train": samples}, ext / "csv_set", "f")
    urls = sorted(str(p) for p in (fixtures / "wds").glob("*.tar"))
    write_dataset(_spec("laion_like", "pretraining", "captions"), {"train": layouts.webdataset(urls)},
                  ext / "laion_like", "f")
    (tmp_path / "raw").mkdir()
    external = {name: str(ext / name) for name in ("colours_real", "csv_set", "laion_like")}
    preprocess(tmp_path / "raw", tmp_path / "shards", 64, external)
    manifests = load_datasets(tmp_path / "shards")
    assert {n: m["role"] for n, m in manifests.items()} == {"colours_real": "adaptation", "csv_set": "adaptation",
                                                            "laion_like": "pretraining"}

    adaptation = {d: open_dataset(tmp_path / "shards", d, "train") for d in ("colours_real", "csv_set")}
    keys = {name: {c: [k for k, lab in zip(r.keys, r.labels) if manifests[name]["classes"][lab] == c]
                   for c in manifests[name]["classes"]} for name, r in adaptation.items()}
    stream = ["colours_real+++red", "csv_set+++blue", "colours_real+++green", "csv_set+++red"]
    readers, tasks = stream_tasks(tmp_path / "shards", {"tasks": resolve(stream, 2, keys)})  # as the train stage
    readers.append(open_dataset(tmp_path / "shards", "laion_like", "train"))
    torch.manual_seed(0)
    model, tokenizer = create_model(ModelConfig(name="clipflux-tiny"))
    before = state_sha256(model.state_dict())
    optim = OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=1, clip_grad_norm=1.0, batch_size=8)
    run = RunConfig(seed=0, checkpoint_every=2, optim=optim)
    losses = []
    trainer = Trainer(model, build_method("finetune", None), tokenizer, readers, tasks, index_items(2, readers[2]),
                      run, 3, tmp_path / "ckpt", lambda k, v, s: losses.append(v) if k == "train/loss" else None,
                      {"x": 1}, mixture=MixtureConfig(0.5, 0.25, 0.25))
    trainer.fit()
    assert len(losses) == 6 and all(np.isfinite(losses)) and state_sha256(model.state_dict()) != before

    # A changed import is noticed: the index holds its manifest's sha256.
    (ext / "csv_set" / "manifest.json").write_text((ext / "csv_set" / "manifest.json").read_text().replace("imported", "edited"))
    with pytest.raises(Exception, match="manifest.json changed since preprocess"):
        open_dataset(tmp_path / "shards", "csv_set", "train")
    assert sha256_file(ext / "colours_real" / "train-000000.tar")
