"""Downloading catalog datasets from a real HTTP server on 127.0.0.1: a good download, a resumed one, a corrupted
one and a missing one; and the shipped FiF catalog itself."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile

import pytest
import yaml

from clipflux.data.catalog import FIF_CATALOG, load_catalog
from clipflux.data.download import MARKER, DownloadError, download_dataset, is_complete
from fileserver import FileServer


def _archive(name: str) -> bytes:
    """A small gzipped tar like FiF's: a top folder named after the dataset with a few files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for i in range(3):
            data = f"{name} image {i}\n".encode() + random.Random(f"{name}{i}").randbytes(30_000)  # incompressible
            info = tarfile.TarInfo(f"{name}/train/cat/{i}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _entry(server: FileServer, name: str, sha256: str | None) -> dict:
    return {"title": name, "fif_module": f"data_lib/{name.lower()}.py", "role": "adaptation", "task": "classification",
            "splits": ["train"], "primer": "A photo of a {}.", "classes": f"info/{name}_classnames.json",
            "annotations": {"train": f"info/{name}_train.json"}, "url": f"{server.url}/files/{name}.tar?dl=1",
            "sha256": sha256, "license": None, "source": None}


@pytest.fixture()
def served(tmp_path):
    """A file server with datasets GOOD (right sha256), BAD (wrong sha256), UNPINNED (no sha256) and MISSING
    (listed, not served), and their catalog."""
    archives = {name: _archive(name) for name in ("GOOD", "BAD", "UNPINNED")}
    files = {f"/files/{n}.tar": a for n, a in archives.items()}
    for name in ("GOOD", "BAD", "UNPINNED", "MISSING"):
        files[f"/repo/info/{name}_classnames.json"] = json.dumps(["cat"]).encode()
        files[f"/repo/info/{name}_train.json"] = json.dumps({f"{name}/train/cat/0.txt": {"target": 0}}).encode()
    with FileServer(files) as server:
        sha = {n: hashlib.sha256(a).hexdigest() for n, a in archives.items()}
        catalog = {"repository": f"{server.url}/repo/", "datasets": {
            "GOOD": _entry(server, "GOOD", sha["GOOD"]),
            "BAD": _entry(server, "BAD", "0" * 64),
            "UNPINNED": _entry(server, "UNPINNED", None),
            "MISSING": _entry(server, "MISSING", "1" * 64),
        }}
        path = tmp_path / "catalog.yaml"
        path.write_text(yaml.safe_dump(catalog))
        yield server, load_catalog(path), archives


def test_good_download_is_verified_unpacked_and_marked_complete(served, tmp_path):
    server, catalog, archives = served
    out = download_dataset(catalog.entry("GOOD"), tmp_path / "fif", catalog.repository, say=lambda m: None)
    assert out == tmp_path / "fif" / "GOOD" and is_complete(out)
    assert (out / "data/GOOD/train/cat/2.txt").read_bytes().startswith(b"GOOD image 2")
    assert json.loads((out / "annotations/GOOD_classnames.json").read_text()) == ["cat"]
    marker = json.loads((out / MARKER).read_text())
    assert marker["verified"] is True and marker["files"][0]["sha256"] == hashlib.sha256(archives["GOOD"]).hexdigest()
    assert sorted(p.name for p in (tmp_path / "fif").iterdir()) == ["GOOD"]  # no staging or temporary folder left

    # A second call finds it complete and fetches nothing.
    before = len(server.requests)
    download_dataset(catalog.entry("GOOD"), tmp_path / "fif", catalog.repository, say=lambda m: None)
    assert len(server.requests) == before


def test_interrupted_download_resumes_with_a_range_request(served, tmp_path):
    server, catalog, archives = served
    server.break_after["/files/GOOD.tar"] = 10_000
    with pytest.raises(DownloadError, match=r"GOOD: .*/files/GOOD.tar.*transfer broke off after 10000 bytes"):
        download_dataset(catalog.entry("GOOD"), tmp_path / "fif", catalog.repository, say=lambda m: None)
    assert not (tmp_path / "fif" / "GOOD").exists()  # nothing that looks like a dataset
    assert (tmp_path / "fif/.GOOD.download/GOOD.tar.part").stat().st_size == 10_000

    download_dataset(catalog.entry("GOOD"), tmp_path / "fif", catalog.repository, say=lambda m: None)
    archive_requests = [(r, s) for p, r, s in server.requests if p == "/files/GOOD.tar"]
    assert archive_requests == [(None, 200), ("bytes=10000-", 206)]
    assert is_complete(tmp_path / "fif" / "GOOD")
    assert json.loads((tmp_path / "fif/GOOD" / MARKER).read_text())["verified"] is True


def test_a_server_that_ignores_range_restarts_the_file(served, tmp_path):
    server, catalog, _ = served
    server.break_after["/files/GOOD.tar"] = 10_000
    server.ignore_range.add("/files/GOOD.tar")
    with pytest.raises(DownloadError):
        download_dataset(catalog.entry("GOOD"), tmp_path / "fif", catalog.repository, say=lambda m: None)
    download_dataset(catalog.entry("GOOD"), tmp_path / "fif", catalog.repository, say=lambda m: None)
    assert json.loads((tmp_path / "fif/GOOD" / MARKER).read_text())["verified"] is True


def test_corrupted_download_fails_and_leaves_nothing_complete(served, tmp_path):
    _, catalog, archives = served
    got = hashlib.sha256(archives["BAD"]).hexdigest()
    with pytest.raises(DownloadError, match=rf"BAD: http://127.0.0.1:\d+/files/BAD.tar\?dl=1: checksum mismatch: sha256 {got}, expected 0{{64}}"):
        download_dataset(catalog.entry("BAD"), tmp_path / "fif", catalog.repository, say=lambda m: None)
    assert not (tmp_path / "fif" / "BAD").exists() and not is_complete(tmp_path / "fif" / "BAD")
    assert not list((tmp_path / "fif").rglob("*.tar*")), "the corrupt file must not stay around to be resumed"


def test_missing_file_names_dataset_url_and_status(served, tmp_path):
    _, catalog, _ = served
    with pytest.raises(DownloadError, match=r"MISSING: http://127.0.0.1:\d+/files/MISSING.tar\?dl=1: HTTP 404"):
        download_dataset(catalog.entry("MISSING"), tmp_path / "fif", catalog.repository, say=lambda m: None)
    assert not (tmp_path / "fif" / "MISSING").exists()


def test_unreachable_server_is_a_clear_error(served, tmp_path):
    _, catalog, _ = served
    entry = catalog.entry("GOOD")
    dead = type(entry)(**{**entry.__dict__, "url": "http://127.0.0.1:9/GOOD.tar"})
    with pytest.raises(DownloadError, match=r"GOOD: http://127.0.0.1:9/GOOD.tar: cannot connect"):
        download_dataset(dead, tmp_path / "fif", catalog.repository, say=lambda m: None)


def test_unpinned_download_is_kept_but_marked_unverified_and_strict_refuses_it(served, tmp_path):
    server, catalog, archives = served
    with pytest.raises(DownloadError, match="UNPINNED: .*no expected sha256.*--strict"):
        download_dataset(catalog.entry("UNPINNED"), tmp_path / "fif", catalog.repository, strict=True, say=lambda m: None)
    assert not server.requests  # refused before fetching anything
    said = []
    out = download_dataset(catalog.entry("UNPINNED"), tmp_path / "fif", catalog.repository, say=said.append)
    marker = json.loads((out / MARKER).read_text())
    assert marker["verified"] is False and marker["files"][0] == {
        "file": "UNPINNED.tar", "url": catalog.entry("UNPINNED").url,
        "sha256": hashlib.sha256(archives["UNPINNED"]).hexdigest(), "verified": False}
    assert any("unverified" in line for line in said)


def test_a_folder_without_marker_is_not_taken_for_a_download(served, tmp_path):
    _, catalog, _ = served
    (tmp_path / "fif" / "GOOD").mkdir(parents=True)
    with pytest.raises(DownloadError, match="no completion marker"):
        download_dataset(catalog.entry("GOOD"), tmp_path / "fif", catalog.repository, say=lambda m: None)


def test_fif_catalog_lists_the_63_datasets_with_fifs_roles():
    catalog = load_catalog(FIF_CATALOG)
    entries = catalog.datasets.values()
    assert len(catalog.datasets) == 63
    adaptation = [e for e in entries if e.role == "adaptation"]
    evaluation = [e for e in entries if e.role == "evaluation"]
    # FiF's A_KA: 40 classification + 1 retrieval; A_ZS: 20 classification + 2 retrieval.
    assert (len(adaptation), sum(e.task == "retrieval" for e in adaptation)) == (41, 1)
    assert (len(evaluation), sum(e.task == "retrieval" for e in evaluation)) == (22, 2)
    assert all(e.splits == ["test"] for e in evaluation) and all(e.splits == ["train", "test"] for e in adaptation)
    assert catalog.entry("CIFAR100").primer == "A photo of a {}." and catalog.entry("MSCOCO").classes is None
    assert all(e.url.startswith("https://") for e in entries)
    with pytest.raises(KeyError, match="known datasets: AI2DIAGRAMS"):
        catalog.entry("CIFAR1000")
