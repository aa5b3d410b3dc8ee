"""Batches as a pure function of the step: a map-style dataset whose item `s` is the whole batch of step s.

Because a batch depends only on (seed, task, step), a `DataLoader` over `range(start, steps)` with any
number of workers yields exactly the batches the uninterrupted run saw, which makes resume exact. Under
data-parallel training each rank reads its own slice of every batch (`shard`): the ranks' slices are disjoint
and together the whole batch, so the ranks share out every data source of the task without overlap.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clipflux.data.pipeline import open_dataset
from clipflux.data.shards import ShardReader
from clipflux.models import MEAN, STD, to_input
from clipflux.replay import SOURCES, draw

# FiF's training augmentation, torchvision's RandomResizedCrop with scale (0.9, 1.0), ratio (0.75, 1.3333) and
# bicubic resizing (data_lib/__init__.py:447-455; configs/experiment/continualfomo_default.yaml:26-28).
CROP_SCALE = (0.9, 1.0)
CROP_RATIO = (0.75, 1.3333)
AUGMENT_KEY = 0x617567  # "aug": the crops' generators are apart from the sampling's (`replay.draw`)


class StepBatches(torch.utils.data.Dataset):
    """The batches of one task.

    Args:
        readers: shard readers by dataset id (the ids used in the items arrays).
        sources: items per source name ("update", "buffer", "pretraining"), each (N, 2) (dataset id, index).
        counts: samples per batch from each source (see `replay.split_batch`).
        seed, task: what the sampling is derived from.
        purpose: 0 for training; another number for a method's own draws (a disjoint random stream).
        tokenizer: turns captions into token ids.
        image_size: the model's input resolution.
        augment: "none", or "random_resized_crop": FiF's crop of every training image (update, buffer and
            pretraining data alike, as FiF's buffer and pretraining loaders use the train transforms too:
            experiment_lib/continual_learning_experiment.py:341-358, utils/training.py:224-228), drawn from
            (seed, task, step, purpose, position in the batch): the same on resume and on any number of ranks.

    Attributes:
        rank, world_size: item `s` is this rank's slice of the batch of step s (0 of 1: all of it; see `shard`).
    """

    def __init__(self, readers: list[ShardReader], sources: dict[str, np.ndarray], counts: dict[str, int],
                 seed: int, task: int, steps: int, tokenizer, image_size: int, purpose: int = 0,
                 augment: str = "none"):
        if augment not in ("none", "random_resized_crop"):
            raise ValueError(f"augment: {augment!r} is not 'none' or 'random_resized_crop'")
        self.readers, self.sources, self.counts = readers, sources, counts
        self.seed, self.task, self.steps = seed, task, steps
        self.tokenizer, self.image_size, self.purpose, self.augment = tokenizer, image_size, purpose, augment
        self.blocks = {name: shard_blocks(readers, items) for name, items in sources.items()}  # streamed sources
        self.rank, self.world_size = 0, 1

    def shard(self, rank: int, world_size: int) -> "StepBatches":
        """The same batches as read by `rank` of `world_size`: every `world_size`-th sample from position `rank`.

        Striding (rather than cutting into blocks) gives every rank an almost equal share of each source of
        the mixture. The batch size must be divisible by `world_size`, so that every slice is as large.
        """
        sharded = copy.copy(self)
        sharded.rank, sharded.world_size = rank, world_size
        return sharded

    def __len__(self) -> int:
        return self.steps

    def items(self, step: int) -> np.ndarray:
        """The (dataset id, index) pairs of the batch of `step`, update data first."""
        parts = [draw(self.sources[name], self.counts[name], step, self.seed, self.task, i, self.purpose,
                      self.blocks[name]) for i, name in enumerate(SOURCES)]
        return np.concatenate(parts)

    def source_of_rows(self) -> np.ndarray:
        """Per row of a whole batch, the index in `SOURCES` of the source it comes from (the same every step)."""
        rows = [self.counts[name] if len(self.sources[name]) else 0 for name in SOURCES]  # as `draw` gives them
        return np.repeat(np.arange(len(SOURCES)), rows)

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        everything = self.items(step)
        positions = np.arange(len(everything))[self.rank::self.world_size]
        items = everything[positions]
        samples = [self.readers[d].read(int(i), ("png", "txt")) for d, i in items]
        images = np.stack([s["png"] for s in samples])
        if self.augment == "random_resized_crop":
            height, width = images.shape[1:3]
            boxes = [crop_box(np.random.default_rng([self.seed, self.task, step, self.purpose, AUGMENT_KEY, int(p)]),
                              height, width) for p in positions]
            pixels = random_resized_crops(images, boxes, self.image_size)
        else:
            pixels = to_input(images, self.image_size)
        return {
            "images": pixels,
            "texts": self.tokenizer([s["txt"] for s in samples]),
            "items": torch.as_tensor(items),
            "sources": torch.as_tensor(self.source_of_rows()[positions]),  # index in SOURCES, per row
        }


def crop_box(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float] = CROP_SCALE,
             ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop, drawn as torchvision's `RandomResizedCrop.get_params` draws
    it (area share in `scale`, log-uniform aspect ratio in `ratio`, 10 tries, then the largest central crop of
    an allowed ratio), from `rng` instead of torch's global generator."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    if width / height < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crops(images: np.ndarray, boxes: list[tuple[int, int, int, int]], size: int) -> torch.Tensor:
    """uint8 NHWC images, each cut to its (top, left, height, width) box and resized to `size` x `size`
    (bicubic, as `models.to_input` resizes) -> normalised float NCHW."""
    crops = []
    for image, (top, left, h, w) in zip(images, boxes):
        x = torch.as_tensor(image[top:top + h, left:left + w]).permute(2, 0, 1)[None].float().div_(255.0)
        crops.append(F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False))
    return (torch.cat(crops).clamp_(0, 1) - MEAN) / STD


def shard_blocks(readers: list, items: np.ndarray) -> np.ndarray | None:
    """The block of each item for a source with streamed datasets (their shard, per dataset), else None.

    Sources read only from local shards (random access) get None and keep plain permutations.
    """
    streamed = {int(d) for d in np.unique(items[:, 0]) if getattr(readers[int(d)], "blocks", None) is not None}
    if not streamed:
        return None
    shard = np.zeros(len(items), dtype=np.int64)
    for d in streamed:
        mask = items[:, 0] == d
        shard[mask] = readers[d].blocks[items[mask, 1]]
    return items[:, 0].astype(np.int64) * (1 << 32) + shard


def index_items(reader_id: int, reader: ShardReader, keys: list[str] | None = None) -> np.ndarray:
    """(N, 2) items (reader id, sample index) for the given keys of a reader (all of them by default)."""
    if keys is None:
        indices = np.arange(len(reader))
    else:
        position = {k: i for i, k in enumerate(reader.keys)}
        missing = [k for k in keys if k not in position]
        if missing:
            raise KeyError(f"{reader.shard_dir}: {len(missing)} stream keys not in the shards, e.g. {missing[0]!r}")
        indices = np.array([position[k] for k in keys], dtype=np.int64)
    return np.stack([np.full(len(indices), reader_id, dtype=np.int64), indices], axis=1)


def stream_tasks(shards: str | Path, stream: dict) -> tuple[list[ShardReader], list[np.ndarray]]:
    """One train-split reader per dataset of a resolved stream (sorted by name) and each task's (N, 2) items.

    Args:
        shards: the shards folder.
        stream: a stream file written by build_stream (`tasks`: per task, sample keys per dataset).
    """
    datasets = sorted({d for task in stream["tasks"] for d in task["samples"]})
    readers = [open_dataset(shards, d, "train") for d in datasets]
    tasks = [np.concatenate([index_items(i, readers[i], task["samples"][d])
                             for i, d in enumerate(datasets) if d in task["samples"]])
             for task in stream["tasks"]]
    return readers, tasks
