"""Importing real data: samples from any layout (`clipflux.data.layouts`) -> clipflux shards with a manifest.

The output is exactly what `preprocess` writes for the synthetic world, so every stage reads an imported
dataset like a generated one: `<out>/<split>-NNNNNN.tar` webdataset shards of `<key>.<jpg|png>`, `<key>.txt`
(the caption) and `<key>.json` (`{"label", "classname", "meta"}`), and `<out>/manifest.json` with the dataset
card (name, role, task, classes, templates, shift) and per split the sample count, per-class counts and a sha256
per shard.

Images are made square at `image_size` the way open_clip's evaluation transform does (shorter side resized
with bicubic filtering, then centre-cropped) and re-encoded (JPEG quality 95 by default, or PNG), as FiF keeps
224 px copies. Samples are written in the order the layout yields them (sorted paths, table rows, shard order),
with keys `<name>-<split>-NNNNNNNN`; the original path or key stays in `meta.source`. The same inputs give
byte-identical shards. The dataset is written into a temporary folder and renamed into place when complete.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal

from PIL import Image

from clipflux.config import NAME
from clipflux.data.shards import ShardWriter
from clipflux.data.timesteps import TimeSteps
from clipflux.errors import UserError

Role = Literal["adaptation", "evaluation", "pretraining", "tic"]
Task = Literal["classification", "retrieval", "captions"]


class DatasetImportError(UserError, ValueError):
    """The input cannot be imported; the message names the sample or file and what is wrong."""


@dataclass
class Sample:
    """One input sample, before normalisation.

    Attributes:
        source: where it came from (a path or a shard key); kept in `meta.source`.
        image: returns the image's bytes in any format Pillow reads.
        caption: its caption, or None (then the class name fills the dataset's first template, as FiF does).
        classname: its class (or retrieval topic), or None.
        meta: any other metadata (timestamps, uids, ...), kept in the json member.
    """

    source: str
    image: Callable[[], bytes]
    caption: str | None = None
    classname: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ImportSpec:
    """What the imported dataset is in a study, and how its images are stored.

    Attributes:
        name: the dataset's name (a folder name; letters, digits, '_' and '-').
        role: adaptation, evaluation (evaluation-only), pretraining (a replay pool) or tic (a TiC dataset).
        task: classification, retrieval or captions (a pool).
        classes: class names in label order (for a TiC pool: none, the time steps become the classes).
        templates: zero-shot prompt templates with `{}` for the class name.
        shift: one line on what the dataset stands for (its card says it).
        image_size: side of the square stored images.
        image_format: "jpg" or "png".
        shard_size: samples per shard.
        time_steps: TiC time steps; every sample gets `meta.time_step` (samples outside every step are left out).
    """

    name: str
    role: Role
    task: Task
    classes: tuple[str, ...] = ()
    templates: tuple[str, ...] = ("a photo of a {}.",)
    shift: str = "imported"
    image_size: int = 224
    image_format: Literal["jpg", "png"] = "jpg"
    shard_size: int = 1000
    time_steps: TimeSteps | None = None

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise DatasetImportError(f"dataset name {self.name!r}: use letters, digits, '_' and '-' only")
        if self.task == "classification" and not self.classes:
            raise DatasetImportError(f"{self.name}: a classification dataset needs its class names")
        if self.role == "tic" and self.time_steps is None:
            raise DatasetImportError(f"{self.name}: a TiC dataset needs time steps (a timestamp field or id lists)")

    def stream_classes(self) -> tuple[str, ...]:
        """The manifest's classes: the time steps of a TiC pool (streamed by step), else the class names."""
        if self.role == "tic" and self.task == "captions":
            return tuple(self.time_steps.names)
        return self.classes


def square_image(data: bytes, size: int, fmt: str) -> bytes:
    """The image resized (shorter side to `size`, bicubic), centre-cropped to size x size and re-encoded."""
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        scale = size / min(img.size)
        w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
        img = img.resize((w, h), Image.Resampling.BICUBIC)
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
        out = io.BytesIO()
        if fmt == "png":
            img.save(out, format="PNG", compress_level=6)
        else:
            img.save(out, format="JPEG", quality=95)
        return out.getvalue()


def _record(spec: ImportSpec, sample: Sample, classes: tuple[str, ...]) -> tuple[int, str | None, dict] | None:
    """(label, class name, meta) of a sample, or None when it falls outside every time step."""
    meta = dict(sample.meta, source=sample.source)
    classname = sample.classname
    if spec.time_steps is not None:
        step = spec.time_steps.step_of(meta)
        if step is None:
            return None
        meta["time_step"] = step
        if spec.task == "captions":  # a TiC pool: streamed by time step
            classname = spec.time_steps.names[step]
    if classname is None:
        if spec.task == "classification":
            raise DatasetImportError(f"{spec.name}: {sample.source}: a classification sample needs a class")
        return -1, None, meta
    if classname not in classes:
        raise DatasetImportError(f"{spec.name}: {sample.source}: class {classname!r} is not among the "
                           f"{len(classes)} classes (e.g. {list(classes[:5])})")
    return classes.index(classname), classname, meta


def _write_split(spec: ImportSpec, split: str, samples: Iterable[Sample], out: Path) -> dict:
    classes = spec.stream_classes()
    writer = ShardWriter(out, split, spec.shard_size)
    counts: Counter = Counter()
    written = skipped = 0
    for sample in samples:
        record = _record(spec, sample, classes)
        if record is None:
            skipped += 1
            continue
        label, classname, meta = record
        caption = sample.caption if sample.caption is not None else spec.templates[0].format(classname) if classname else None
        if caption is None:
            raise DatasetImportError(f"{spec.name}: {sample.source}: no caption and no class to make one from")
        try:
            image = square_image(sample.image(), spec.image_size, spec.image_format)
        except (OSError, ValueError) as e:
            raise DatasetImportError(f"{spec.name}: {sample.source}: cannot read the image ({e})") from None
        key = f"{spec.name}-{split}-{written:08d}"
        writer.add(key, spec.image_format, image, caption, {"label": label, "classname": classname, "meta": meta})
        written += 1
        if classname is not None:
            counts[classname] += 1
    if written == 0:
        raise DatasetImportError(f"{spec.name}: split {split!r} has no samples" + (f" ({skipped} outside every time step)" if skipped else ""))
    info = {"count": written, "class_counts": dict(sorted(counts.items())), "shards": writer.close()}
    if skipped:
        info["skipped"] = skipped  # outside every time step
    return info


def write_dataset(spec: ImportSpec, splits: dict[str, Iterable[Sample]], out_dir: str | Path, source: str) -> dict:
    """Write an imported dataset as shards plus manifest into `out_dir` (replaced only once complete).

    Args:
        spec: what the dataset is.
        splits: split name -> its samples.
        out_dir: the dataset's shard folder (e.g. data/external/shards/<name>).
        source: where the data came from, for the manifest.

    Returns:
        The manifest.

    Raises:
        DatasetImportError: naming the sample and the problem; nothing is left at `out_dir` then.
    """
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.importing")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        manifest = {"name": spec.name, "role": spec.role, "task": spec.task, "classes": list(spec.stream_classes()),
                    "templates": list(spec.templates), "shift": spec.shift, "source": source,
                    "splits": {split: _write_split(spec, split, samples, tmp) for split, samples in splits.items()}}
        if spec.time_steps is not None:
            manifest["time_steps"] = {"names": spec.time_steps.names, "field": spec.time_steps.key}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return manifest
