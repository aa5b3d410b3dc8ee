"""The synthetic world: every dataset by name, and how one split of a dataset is generated.

`generate_world` writes it to data/raw (the download stage). The FiF-style datasets (a captioned pretraining
pool, adaptation datasets, evaluation-only datasets) are defined in `clipflux.data.fif`, the TiC-style
time-ordered world in `clipflux.data.tic`; what a dataset is, in `clipflux.data.spec`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from clipflux.config import WorldConfig
from clipflux.data import fif, tic
from clipflux.data.pipeline import write_json
from clipflux.data.spec import DatasetSpec, sample_rng


def build_world() -> dict[str, DatasetSpec]:
    """Every dataset of the embedded default, by name: the FiF-style world and the TiC-style world."""
    specs = fif.datasets() + tic.datasets()
    return {s.name: s for s in specs}


def generate(spec: DatasetSpec, split: str, count: int, size: int, seed: int) -> tuple[np.ndarray, list[dict]]:
    """Generate one split of one dataset.

    Args:
        spec: the dataset.
        split: "train" or "test".
        count: samples per class when the dataset has classes, else samples in all.
        size: image side in pixels.
        seed: the world seed.

    Returns:
        Images as a (N, size, size, 3) uint8 array and one record per image (key, caption, label, class
        name and generator metadata), in a fixed order (class-major when the dataset has classes).
    """
    labels = [c for c in range(len(spec.classes)) for _ in range(count)] if spec.classes else [-1] * count
    images = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    records = []
    for index, label in enumerate(labels):
        image, caption, label, meta = spec.make(size, label, split, sample_rng(seed, spec.name, split, index))
        images[index] = image
        records.append(
            {
                "key": f"{spec.name}-{split}-{index:06d}",
                "caption": caption,
                "label": label,
                "classname": spec.classes[label] if label >= 0 else None,
                "meta": meta,
            }
        )
    return images, records


def _counts(cfg: WorldConfig, spec: DatasetSpec, split: str) -> int:
    """Samples per class (or in all, for unlabelled sets) of one split, from the world's counts."""
    if spec.role == "pretraining":
        return max(1, round(cfg.pool_size * cfg.scale))
    per_class = cfg.train_per_class if split == "train" else cfg.test_per_class
    return max(1, round(per_class * cfg.scale * spec.size_factor * (1 if spec.classes else 8)))


def generate_world(cfg: WorldConfig, raw_dir: str | Path, progress: bool = True) -> list[str]:
    """Generate every dataset of the synthetic world into `raw_dir` (the download stage).

    Args:
        cfg: the `world` section of params.
        raw_dir: the output folder; replaced as a whole.
        progress: show a progress bar per dataset.

    Returns:
        The dataset names, in generation order.
    """
    raw_dir = Path(raw_dir)
    if raw_dir.exists():
        shutil.rmtree(raw_dir)
    names = []
    for spec in build_world().values():
        out = raw_dir / spec.name
        out.mkdir(parents=True)
        write_json(out / "card.json", spec.card())
        for split in spec.splits:
            count = _counts(cfg, spec, split)
            images, records = generate(spec, split, count, cfg.image_size, cfg.seed)
            np.save(out / f"{split}.npy", images)
            with open(out / f"{split}.jsonl", "w") as f:
                f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in records)
            if progress:
                print(f"download: {spec.name}/{split}: {len(records)} samples", flush=True)
        names.append(spec.name)
    return names
