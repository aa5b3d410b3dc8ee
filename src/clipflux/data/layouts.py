"""Common dataset layouts, read as `Sample`s for `clipflux.data.importers.write_dataset`.

- `imagefolder`: `<root>/<class>/<image>` (one split) or `<root>/<split>/<class>/<image>`, from a folder or
  straight from a tar archive (FiF's tar mode: nothing is unpacked).
- `table`: a CSV, JSON or JSON-lines list of image paths with captions and/or classes (and any other columns,
  kept as metadata), or FiF's annotation files (`{path: {"target", "default_caption", ...}}`).
- `webdataset`: existing webdataset shards (LAION / DataComp / CC as img2dataset writes them: `jpg` or `png`
  with `txt` and/or `json`), local or at a URL, read as a stream.

Every reader yields samples in a fixed order (sorted paths, rows as listed, shards and members as given).
"""

from __future__ import annotations

import csv
import json
import tarfile
import urllib.request
from pathlib import Path
from typing import BinaryIO, Iterator

from clipflux.data.importers import DatasetImportError, Sample

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".gif", ".tif", ".tiff")
SPLIT_NAMES = ("train", "test", "val", "validation")
PATH_COLUMNS = ("path", "image", "filepath", "file", "filename", "image_path")
CAPTION_COLUMNS = ("caption", "text", "title")
CLASS_COLUMNS = ("classname", "class", "label", "target")


# -- where images are read from ---------------------------------------------------------------------


class ImageStore:
    """Image bytes by relative path, from a folder or from inside a tar archive (read in place).

    In a tar, a path is also found under the archive's single top folder (FiF's tars hold `<NAME>/...`).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._tar = None
        if self.root.is_file():
            self._tar = tarfile.open(self.root)
            self._members = {m.name: m for m in self._tar.getmembers() if m.isfile()}
            tops = {name.split("/", 1)[0] for name in self._members}
            self._top = tops.pop() + "/" if len(tops) == 1 else ""

    def paths(self) -> list[str]:
        """Every image's relative path, sorted."""
        if self._tar is None:
            return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*")
                          if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        names = [n.removeprefix(self._top) for n in self._members]
        return sorted(n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES)

    def read(self, path: str) -> bytes:
        if self._tar is None:
            return (self.root / path).read_bytes()
        member = self._members.get(path) or self._members.get(self._top + path)
        if member is None:
            raise DatasetImportError(f"{self.root}: no member {path!r}")
        return self._tar.extractfile(member).read()

    def reader(self, path: str):
        return lambda: self.read(path)


# -- ImageFolder ------------------------------------------------------------------------------------


def class_map(folders: list[str], classes: list[str] | dict[str, str] | None) -> dict[str, str]:
    """Folder name -> class name: the folder names, a list naming the sorted folders, or an explicit mapping."""
    if classes is None:
        return {f: f for f in folders}
    if isinstance(classes, dict):
        missing = [f for f in folders if f not in classes]
        if missing:
            raise DatasetImportError(f"class folders {missing[:5]} are not in the class-name mapping")
        return {f: classes[f] for f in folders}
    if len(classes) != len(folders):
        raise DatasetImportError(f"{len(folders)} class folders but {len(classes)} class names")
    return dict(zip(folders, classes))


def imagefolder(root: str | Path, split: str | None = None,
                classes: list[str] | dict[str, str] | None = None) -> tuple[list[str], dict[str, list[Sample]]]:
    """An ImageFolder tree (a folder or a tar): (class names in label order, split -> samples).

    Args:
        root: the folder or tar archive.
        split: the split name when `root` holds class folders directly; None when it holds split folders
            (train, test, val or validation), each with class folders.
        classes: class names for the sorted class folders (a list), or folder -> name; default: folder names.
    """
    store = ImageStore(root)
    by_split: dict[str, list[tuple[str, str]]] = {}
    for path in store.paths():
        parts = Path(path).parts
        if split is not None and len(parts) == 2:
            by_split.setdefault(split, []).append((parts[0], path))
        elif split is None and len(parts) == 3 and parts[0] in SPLIT_NAMES:
            by_split.setdefault(parts[0], []).append((parts[1], path))
    if not by_split:
        layout = "<class>/<image>" if split else "<split>/<class>/<image> with splits " + "/".join(SPLIT_NAMES)
        raise DatasetImportError(f"{root}: no images in the layout {layout}")
    folders = sorted({folder for items in by_split.values() for folder, _ in items})
    names = class_map(folders, classes)
    samples = {s: [Sample(path, store.reader(path), classname=names[folder]) for folder, path in items]
               for s, items in sorted(by_split.items())}
    return [names[f] for f in folders], samples


# -- tables -----------------------------------------------------------------------------------------


def _rows(table: Path) -> list[dict]:
    text = table.read_text()
    if table.suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    if table.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if isinstance(data, dict):  # FiF's annotation files: {path: {"target", "default_caption", "synthetic_merged_caption"}}
        return [dict(fields, path=path) for path, fields in data.items()]
    return data


def _pick(row: dict, columns: tuple[str, ...]):
    return next((row[c] for c in columns if row.get(c) not in (None, "")), None)


def _caption(row: dict) -> str | None:
    """The caption of a row; FiF's: its default caption, else its first generated one."""
    caption = _pick(row, CAPTION_COLUMNS + ("default_caption", "synthetic_merged_caption"))
    return caption[0] if isinstance(caption, list) else caption


def table(path: str | Path, images: str | Path, classes: list[str] | None = None) -> tuple[list[str], list[Sample]]:
    """A table of samples: (class names in label order, samples in row order).

    Columns: the image path (one of `PATH_COLUMNS`, relative to `images`, a folder or a tar), a caption
    (`CAPTION_COLUMNS`) and/or a class (`CLASS_COLUMNS`: a name, or an index into `classes`). Other columns go
    to the sample's metadata. Without `classes`, the class names are the sorted distinct names in the table.
    """
    path = Path(path)
    rows = _rows(path)
    store = ImageStore(images)
    raw_classes = [_pick(r, CLASS_COLUMNS) for r in rows]
    if classes is None:
        classes = sorted({str(c) for c in raw_classes if c is not None})
    samples = []
    for number, (row, cls) in enumerate(zip(rows, raw_classes)):
        image = _pick(row, PATH_COLUMNS)
        if image is None:
            raise DatasetImportError(f"{path}: row {number}: no image path (columns {list(PATH_COLUMNS)})")
        if isinstance(cls, int) or (isinstance(cls, str) and cls.isdigit() and cls not in classes):
            if not 0 <= int(cls) < len(classes):
                raise DatasetImportError(f"{path}: row {number}: class index {cls} outside the {len(classes)} classes")
            cls = classes[int(cls)]
        used = set(PATH_COLUMNS + CAPTION_COLUMNS + CLASS_COLUMNS + ("default_caption", "synthetic_merged_caption"))
        meta = {k: v for k, v in row.items() if k not in used}
        captions = row.get("synthetic_merged_caption")
        if isinstance(captions, list):
            meta["captions"] = captions
        samples.append(Sample(str(image), store.reader(str(image)), _caption(row), cls, meta))
    return classes, samples


# -- webdataset shards ------------------------------------------------------------------------------


def open_stream(url: str) -> BinaryIO:
    """A readable stream of a local file or a URL (http(s), s3, pipe:)."""
    if url.startswith(("http://", "https://")):
        return urllib.request.urlopen(url, timeout=120)
    if url.startswith("s3://"):
        import fsspec

        return fsspec.open(url, "rb").open()
    if url.startswith("pipe:"):
        import webdataset as wds

        return wds.gopen(url, "rb")
    return open(url, "rb")


def webdataset(urls: list[str], classes: list[str] | None = None) -> Iterator[Sample]:
    """The samples of webdataset shards, read as streams in the order given (members grouped by key).

    A sample's image is its jpg/jpeg/png/webp member, its caption the txt member (or json "caption"), its class
    json "classname" (or a "cls" member / json "label" indexing `classes`), and the rest of the json its metadata
    (with "key", the sample's key in its shard).
    """
    for url in urls:
        with open_stream(url) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            current, members = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                key = member.name[: len(member.name) - len(base)] + base.split(".", 1)[0]
                if key != current and current is not None:
                    yield _wds_sample(url, current, members, classes)
                    members = {}
                current = key
                members[base.split(".", 1)[1].lower() if "." in base else ""] = tar.extractfile(member).read()
            if current is not None:
                yield _wds_sample(url, current, members, classes)


def _wds_sample(url: str, key: str, members: dict[str, bytes], classes: list[str] | None) -> Sample:
    image_ext = next((e for e in ("jpg", "jpeg", "png", "webp") if e in members), None)
    if image_ext is None:
        raise DatasetImportError(f"{url}: sample {key!r} has no jpg/jpeg/png/webp member (it has {sorted(members)})")
    meta = json.loads(members["json"]) if "json" in members else {}
    caption = members["txt"].decode() if "txt" in members else meta.pop("caption", None)
    classname = meta.pop("classname", None)
    label = members["cls"].decode().strip() if "cls" in members else meta.pop("label", None)
    if classname is None and label is not None and classes:
        classname = classes[int(label)]
    data = members[image_ext]
    return Sample(f"{url}#{key}", lambda: data, caption, classname, dict(meta, key=key))
