"""`clipflux download` and `clipflux import`: real datasets into data/external/ (tracked by data.dvc)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clipflux.data import layouts
from clipflux.data.catalog import FIF_CATALOG, load_catalog
from clipflux.data.download import download_dataset, is_complete
from clipflux.data.importers import DatasetImportError, ImportSpec, write_dataset
from clipflux.data.timesteps import from_id_lists, from_specs

COMMANDS = ("download", "import")
DOWNLOADS = Path("data/external/fif")
SHARDS = Path("data/external/shards")


def add_parsers(sub) -> None:
    """Add the `download` and `import` subcommands."""
    dl = sub.add_parser("download", help="fetch catalog datasets (resumable, verified) into data/external/fif")
    dl.add_argument("names", nargs="*", help="dataset names (see --list); 'all' for every one")
    dl.add_argument("--catalog", type=Path, default=FIF_CATALOG)
    dl.add_argument("--out", type=Path, default=DOWNLOADS)
    dl.add_argument("--list", action="store_true", help="list the catalog's datasets and what is downloaded")
    dl.add_argument("--strict", action="store_true", help="refuse archives without a sha256 in the catalog")
    dl.add_argument("--no-extract", action="store_true", help="keep the archive as a tar (train from it unpacked)")

    imp = sub.add_parser("import", help="write a dataset as clipflux shards + manifest (data/external/shards/<name>)")
    layout = imp.add_subparsers(dest="layout", required=True)
    fif = layout.add_parser("fif", help="a dataset fetched by `clipflux download`, with FiF's annotations")
    fif.add_argument("name")
    fif.add_argument("--catalog", type=Path, default=FIF_CATALOG)
    fif.add_argument("--downloads", type=Path, default=DOWNLOADS)
    folder = layout.add_parser("imagefolder", help="<root>/[<split>/]<class>/<image>, a folder or a tar")
    folder.add_argument("root", type=Path)
    table = layout.add_parser("table", help="a CSV/JSON/JSON-lines table of image paths with captions or classes")
    table.add_argument("table", type=Path)
    table.add_argument("--images", type=Path, required=True, help="folder or tar the image paths are relative to")
    shards = layout.add_parser("webdataset", help="webdataset shards (jpg/png + txt/json): files or URLs")
    shards.add_argument("urls", nargs="+")
    for p in (folder, table, shards):
        p.add_argument("--name", required=True, help="the dataset's name (its key in data.external)")
        p.add_argument("--role", required=True, choices=["adaptation", "evaluation", "pretraining", "tic"])
        p.add_argument("--task", required=True, choices=["classification", "retrieval", "captions"])
        p.add_argument("--split", help="the split these samples form (imagefolder: omit for <split>/ folders)")
        p.add_argument("--classes", type=Path, help="class names: a JSON list (label order) or folder -> name")
        p.add_argument("--template", action="append", help="zero-shot prompt with {} (repeatable)")
        p.add_argument("--shift", default="imported", help="one line on what the dataset stands for")
        p.add_argument("--steps", help="TiC time steps, in order, comma-separated: 2014-2016,2017,... or 2017-03,...")
        p.add_argument("--time-field", default="timestamp", help="the metadata field holding each sample's time")
        p.add_argument("--step-ids", type=Path, help="TiC-style id lists: a folder of <step>.npy|txt|json")
        p.add_argument("--id-field", default="uid", help="the metadata field the id lists refer to")
    for p in (fif, folder, table, shards):
        p.add_argument("--out", type=Path, default=SHARDS)
        p.add_argument("--image-size", type=int, default=224)
        p.add_argument("--image-format", choices=["jpg", "png"], default="jpg")
        p.add_argument("--shard-size", type=int, default=1000)


def run(args: argparse.Namespace) -> None:
    if args.command == "download":
        _download(args)
    else:
        manifest = _import(args)
        counts = ", ".join(f"{s}={info['count']}" for s, info in manifest["splits"].items())
        print(f"imported {manifest['name']} ({manifest['role']}, {manifest['task']}, {len(manifest['classes'])} classes): "
              f"{counts} -> {args.out / manifest['name']}")
        print(f"use it: add `{manifest['name']}: {args.out / manifest['name']}` under data.external in params.yaml, "
              f"then `dvc add data/external` to track it")


def _download(args: argparse.Namespace) -> None:
    catalog = load_catalog(args.catalog)
    if args.list or not args.names:
        for name, e in sorted(catalog.datasets.items(), key=lambda kv: kv[0].lower()):
            state = "downloaded" if is_complete(args.out / name) else "-"
            print(f"{name:22s} {e.role:10s} {e.task:14s} {state:10s} {e.license or 'license: not verified, see ' + str(e.source or e.fif_module)}")
        return
    names = sorted(catalog.datasets) if args.names == ["all"] else args.names
    for name in names:
        entry = catalog.entry(name)
        download_dataset(entry, args.out, catalog.repository, extract=not args.no_extract, strict=args.strict)


def _classes(path: Path | None):
    return json.loads(path.read_text()) if path else None


def _import(args: argparse.Namespace) -> dict:
    size = dict(image_size=args.image_size, image_format=args.image_format, shard_size=args.shard_size)
    if args.layout == "fif":
        return import_fif(args.name, args.catalog, args.downloads, args.out, **size)
    steps = None
    if args.step_ids:
        steps = from_id_lists(args.step_ids, args.id_field, args.steps.split(",") if args.steps else None)
    elif args.steps:
        steps = from_specs(args.steps.split(","), args.time_field)
    classes = _classes(args.classes)
    if args.layout == "imagefolder":
        names, splits = layouts.imagefolder(args.root, args.split, classes)
        source = str(args.root)
    else:
        if not args.split:
            raise DatasetImportError(f"import {args.layout}: --split is required (the split these samples form)")
        if args.layout == "table":
            names, samples = layouts.table(args.table, args.images, classes)
            source = str(args.table)
        else:
            names, samples = classes or [], layouts.webdataset(args.urls, classes)
            source = " ".join(args.urls)
        splits = {args.split: samples}
    templates = tuple(args.template or ["a photo of a {}."])
    spec = ImportSpec(args.name, args.role, args.task, tuple(names) if args.task != "captions" else (), templates,
                      args.shift, time_steps=steps, **size)
    return write_dataset(spec, splits, args.out / args.name, source)


def import_fif(name: str, catalog_path: Path, downloads: Path, out: Path, **size) -> dict:
    """Import a FiF dataset fetched by `clipflux download`: its annotations, class names and primer.

    Images are read from the unpacked archive, or straight from the tar when downloaded with --no-extract.
    """
    entry = load_catalog(catalog_path).entry(name)
    folder = downloads / name
    if not is_complete(folder):
        raise DatasetImportError(f"{name}: {folder} is not a finished download; run `clipflux download {name}` first")
    data = folder / "data"
    images = data / f"{name}.tar" if (data / f"{name}.tar").is_file() else data / name if (data / name).is_dir() else data
    classes = _classes(folder / "annotations" / Path(entry.classes).name) if entry.classes else None
    if entry.sort_classes:
        classes = sorted(classes, key=str.lower)
    splits, names = {}, classes
    for split in entry.splits:
        names, splits[split] = layouts.table(folder / "annotations" / Path(entry.annotations[split]).name, images, classes)
        if not entry.classes:  # captions only (MSCOCO, Flickr30k): no classes to keep
            for sample in splits[split]:
                sample.classname = None
    spec = ImportSpec(name, entry.role, entry.task, tuple(names or ()) if entry.classes else (), (entry.primer,),
                      entry.title, **size)
    return write_dataset(spec, splits, out / name, f"FiF {entry.title}: {entry.url}")
