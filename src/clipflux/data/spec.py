"""What a dataset of the synthetic world is (`DatasetSpec`) and how one sample's generator is derived.

Every sample is a pure function of `(world seed, dataset, split, index)`: its generator is derived from
those four numbers, so datasets can be generated in any order, in parallel, or one sample at a time,
and always come out the same. The datasets themselves are defined in `clipflux.data.fif` (FiF-style) and
`clipflux.data.tic` (time-ordered), which import only this module; `clipflux.data.world` gathers them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

Role = Literal["pretraining", "adaptation", "evaluation", "tic"]
Task = Literal["captions", "classification", "retrieval"]
SPLIT_IDS = {"train": 0, "test": 1}
ROLE_SPLITS = {"pretraining": ("train",), "adaptation": ("train", "test"), "evaluation": ("test",)}

# A sample: (image, caption, class index or -1, extra metadata).
Sample = tuple[np.ndarray, str, int, dict]
Maker = Callable[[int, int, str, np.random.Generator], Sample]


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is: its role in the study, its classes, prompt templates and how to draw a sample.

    Attributes:
        name: the dataset's name (a folder under data/raw and data/shards).
        role: "pretraining" (the pool), "adaptation" (streamed, counts in A_KA), "evaluation" (evaluation
            only, counts in A_ZS) or "tic" (the time-ordered world).
        task: "captions" (pool), "classification" (zero-shot accuracy) or "retrieval" (image-caption
            recall; its classes, if any, are topics to stream by).
        classes: class names (or stream topics); empty for unlabelled caption sets.
        templates: zero-shot prompt templates with `{}` for the class name.
        shift: what kind of shift the dataset stands for (its dataset card says so).
        make: draws one sample: (image size, label, split, generator) -> (image, caption, label, meta).
        splits: which splits exist; by default from the role.
        size_factor: samples per split relative to the `world` counts (per class, or x8 when unlabelled).
    """

    name: str
    role: Role
    task: Task
    classes: tuple[str, ...]
    templates: tuple[str, ...]
    shift: str
    make: Maker
    splits: tuple[str, ...] = ()
    size_factor: float = 1.0

    def __post_init__(self) -> None:
        if not self.splits:
            object.__setattr__(self, "splits", ROLE_SPLITS[self.role])

    def card(self) -> dict:
        """The JSON-serialisable description of this dataset (its dataset card, without counts)."""
        return {
            "name": self.name,
            "role": self.role,
            "task": self.task,
            "classes": list(self.classes),
            "templates": list(self.templates),
            "shift": self.shift,
        }


def sample_rng(seed: int, dataset: str, split: str, index: int) -> np.random.Generator:
    """The generator of one sample, derived from (seed, dataset, split, index)."""
    return np.random.default_rng([seed, zlib.crc32(dataset.encode()), SPLIT_IDS[split], index])
