"""Downloading a catalog dataset: resumable, verified, and never half-written.

`download_dataset` fetches every file of a dataset (`CatalogEntry.files`) into a staging folder
`<root>/.<name>.download/`, each through `<file>.part`: an interrupted transfer leaves the `.part`, and the
next call asks the server for the rest (an HTTP Range request) instead of starting over; a server that ignores
the Range header is answered by starting over. A finished file is checked against its sha256: a mismatch
deletes it and fails. Only when every file is in place is the dataset assembled in `<root>/.<name>.tmp/`
(archives unpacked there), given its completion marker, and renamed to `<root>/<name>/` in one step. So
`<root>/<name>/` exists only complete, and `is_complete` checks the marker too.

An archive whose catalog sha256 is null cannot be verified: it is kept, its sha256 is recorded in the marker with
`"verified": false`, and a warning names it; `strict=True` refuses such datasets before downloading anything.
Side files (class names, annotations) have no sha256 in the catalog: they come from a repository URL pinned to a
commit, and the marker records the sha256 each one had.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from clipflux.data.catalog import CatalogEntry, RemoteFile
from clipflux.data.shards import sha256_file
from clipflux.errors import UserError

MARKER = ".clipflux-complete.json"
CHUNK = 1 << 20


class DownloadError(UserError, RuntimeError):
    """A dataset could not be fetched or verified; the message names the dataset, the URL and what failed."""


def fetch(url: str, dest: Path, sha256: str | None, timeout: float = 60.0) -> str:
    """Download `url` to `dest` through `dest.part`, resuming a partial `.part`; returns the file's sha256.

    Raises:
        DownloadError: the server refused (HTTP status), could not be reached, the transfer broke off (the
            `.part` is kept, to resume), or the file does not match `sha256` (the file is deleted).
    """
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not offset:  # 416: nothing left to send, the .part is whole
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{url}: cannot connect ({getattr(e, 'reason', e)})") from None
    else:
        with response:
            _receive(response, part, offset, url)
    digest = sha256_file(part)
    if sha256 is not None and digest != sha256:
        part.unlink()
        raise DownloadError(f"{url}: checksum mismatch: sha256 {digest}, expected {sha256}; the download was deleted")
    os.replace(part, dest)
    return digest


def _receive(response, part: Path, offset: int, url: str) -> None:
    """Append the response body to `part` (or rewrite it when the server ignored the Range request)."""
    resumed = offset > 0 and response.status == 206
    if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
        raise DownloadError(f"{url}: the server resumed at {response.headers.get('Content-Range')!r}, not at byte {offset}")
    start = written = offset if resumed else 0
    length = response.headers.get("Content-Length")
    with open(part, "ab" if resumed else "wb") as f:
        try:
            while block := response.read(CHUNK):
                f.write(block)
                written += len(block)
        except (http.client.IncompleteRead, OSError):
            pass  # judged by the byte count below
        finally:
            f.flush()
            os.fsync(f.fileno())
    if length is not None and written - start < int(length):
        raise DownloadError(f"{url}: transfer broke off after {written} bytes of {start + int(length)}; "
                            f"run the download again to resume")


def unpack(archive: Path, target: Path) -> None:
    """Unpack a tar (any compression) or zip archive into `target`, refusing members that leave it."""
    target.mkdir(parents=True, exist_ok=True)
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            root = target.resolve()
            for name in z.namelist():
                if not (target / name).resolve().is_relative_to(root):
                    raise DownloadError(f"{archive.name}: member {name!r} would be written outside the dataset folder")
            z.extractall(target)
    else:
        raise DownloadError(f"{archive.name}: neither a tar nor a zip archive")


def is_complete(folder: Path) -> bool:
    """Whether a dataset folder was finished by `download_dataset` (its completion marker is there)."""
    return (folder / MARKER).is_file()


def download_dataset(entry: CatalogEntry, root: str | Path, repository: str, extract: bool = True,
                     strict: bool = False, say: Callable[[str], None] = print) -> Path:
    """Fetch, verify and assemble one catalog dataset as `<root>/<name>/`.

    Layout: `data/` holds the unpacked archive (or, with `extract=False`, `<name>.tar` as downloaded, for
    training straight from the tar), `annotations/` the side files, and the completion marker records every
    file's URL, sha256 and whether it was verified.

    Args:
        entry: the catalog entry.
        root: where datasets land (e.g. data/external/fif, tracked by data.dvc).
        repository: the catalog's base URL for side files.
        extract: unpack the archive (FiF's default) or keep the tar.
        strict: refuse a dataset with files of unknown sha256.
        say: where progress and warnings go.

    Returns:
        The dataset folder. A folder already complete is returned as it is.

    Raises:
        DownloadError: naming the dataset, the URL and what failed.
    """
    root = Path(root)
    out = root / entry.name
    if is_complete(out):
        say(f"{entry.name}: already complete in {out}")
        return out
    if out.exists():
        raise DownloadError(f"{entry.name}: {out} exists but has no completion marker ({MARKER}); "
                            f"it is not a finished download: remove it and run again")
    files = entry.files(repository)
    if strict and entry.sha256 is None:
        raise DownloadError(f"{entry.name}: {entry.url}: no expected sha256 in the catalog, and --strict "
                            f"refuses unverified data; pin the sha256 in the catalog or drop --strict")
    staging = root / f".{entry.name}.download"
    record = []
    for f in files:
        say(f"{entry.name}: fetching {f.url}")
        try:
            digest = fetch(f.url, staging / f.name, f.sha256)
        except DownloadError as e:
            raise DownloadError(f"{entry.name}: {e}") from None
        record.append({"file": f.name, "url": f.url, "sha256": digest, "verified": f.sha256 is not None})
        if f.archive and f.sha256 is None:
            say(f"{entry.name}: warning: {f.name} is unverified (no sha256 in the catalog); it hashed to {digest}")
    _assemble(entry.name, files, staging, out, extract, record)
    shutil.rmtree(staging)
    return out


def _assemble(name: str, files: list[RemoteFile], staging: Path, out: Path, extract: bool, record: list[dict]) -> None:
    """Build the dataset folder from the staged files in a temporary folder, then rename it into place."""
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "annotations").mkdir(parents=True)
    for f in files:
        if f.archive and extract:
            try:
                unpack(staging / f.name, tmp / "data")
            except (tarfile.TarError, zipfile.BadZipFile, OSError) as e:
                shutil.rmtree(tmp)
                raise DownloadError(f"{name}: {f.url}: cannot unpack {f.name}: {e}") from None
        else:  # kept as downloaded: moved, not copied (an archive can be tens of GB)
            folder = tmp / ("data" if f.archive else "annotations")
            folder.mkdir(exist_ok=True)
            os.replace(staging / f.name, folder / f.name)
    archive_verified = all(r["verified"] for f, r in zip(files, record) if f.archive)
    marker = {"dataset": name, "extracted": extract, "verified": archive_verified, "files": record}
    (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    os.replace(tmp, out)
