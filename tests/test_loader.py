"""Training batches with FiF's RandomResizedCrop: a pure function of (seed, task, step, sample)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from clipflux.data.loader import CROP_RATIO, CROP_SCALE, StepBatches, crop_box, index_items, random_resized_crops
from clipflux.data.shards import ShardReader
from clipflux.models import to_input


def _batches(shards, augment: str, items: np.ndarray | None = None, seed: int = 0, task: int = 0) -> StepBatches:
    reader = ShardReader(shards / "novel_shapes", "train")
    items = index_items(0, reader) if items is None else items
    sources = {"update": items, "buffer": items[:0], "pretraining": items[:0]}
    return StepBatches([reader], sources, {"update": 8, "buffer": 0, "pretraining": 0}, seed, task, 10,
                       tokenizer=lambda texts: torch.zeros(len(texts), 4, dtype=torch.long), image_size=32,
                       augment=augment)


@given(seed=st.integers(0, 2**32 - 1), height=st.integers(8, 256), width=st.integers(8, 256))
def test_crop_boxes_lie_in_the_image_with_fifs_scale_and_ratio(seed, height, width):
    top, left, h, w = crop_box(np.random.default_rng(seed), height, width)
    assert 0 <= top and top + h <= height and 0 <= left and left + w <= width and h > 0 and w > 0
    if (h, w) != (height, width) and (top, left) != ((height - h) // 2, (width - w) // 2):  # not the fallback
        # rounding of each side moves the area and the ratio by at most half a pixel per side
        assert CROP_SCALE[0] * height * width - (h + w) <= h * w <= CROP_SCALE[1] * height * width + (h + w)
        assert math.log(CROP_RATIO[0]) - 1 / min(h, w) <= math.log(w / h) <= math.log(CROP_RATIO[1]) + 1 / min(h, w)


def test_crops_keep_at_least_nine_tenths_of_the_image():
    """FiF's scale (0.9, 1): a 32-px image loses at most 4 px of a side, so counted and related objects stay."""
    boxes = [crop_box(np.random.default_rng(seed), 32, 32) for seed in range(2000)]
    assert min(h * w for _, _, h, w in boxes) >= 0.9 * 32 * 32 - 32
    assert min(min(h, w) for _, _, h, w in boxes) >= 28
    assert len({box for box in boxes}) > 50  # and they do vary


def test_the_whole_image_as_box_is_the_plain_input(tiny_shards):
    images = np.stack([_batches(tiny_shards, "none").readers[0].read(i, ("png",))["png"] for i in range(4)])
    whole = random_resized_crops(images, [(0, 0, 32, 32)] * 4, 32)
    assert torch.allclose(whole, to_input(images, 32), atol=1e-5)


def test_augmentation_is_deterministic_and_differs_across_steps(tiny_shards):
    one_item = index_items(0, ShardReader(tiny_shards / "novel_shapes", "train"))[:1]  # every sample: one image
    a = _batches(tiny_shards, "random_resized_crop", one_item)
    b = _batches(tiny_shards, "random_resized_crop", one_item)
    plain = _batches(tiny_shards, "none", one_item)
    assert torch.equal(a[3]["images"], b[3]["images"]), "same (seed, task, step): same crops"
    crops = a[3]["images"]
    assert len({tuple(x.flatten().tolist()) for x in crops}) > 1, "each sample of a batch has its own crop"
    assert not torch.equal(a[3]["images"], a[4]["images"]), "another step: other crops of the same images"
    assert not torch.equal(a[3]["images"], _batches(tiny_shards, "random_resized_crop", one_item, task=1)[3]["images"])
    assert not torch.equal(a[3]["images"], _batches(tiny_shards, "random_resized_crop", one_item, seed=1)[3]["images"])
    assert torch.equal(plain[3]["images"], plain[4]["images"]), "without augmentation the image is as stored"
    assert torch.equal(a[3]["items"], plain[3]["items"]), "augmentation leaves the sampling alone"


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_slices_are_the_whole_batch_crops(tiny_shards, world_size):
    whole = _batches(tiny_shards, "random_resized_crop")
    for rank in range(world_size):
        sliced = whole.shard(rank, world_size)[5]["images"]
        assert torch.equal(sliced, whole[5]["images"][rank::world_size])


def test_unknown_augmentation_is_refused(tiny_shards):
    with pytest.raises(ValueError, match="augment: 'flip'"):
        _batches(tiny_shards, "flip")


@pytest.mark.parametrize("world_size", [1, 2])
def test_every_row_names_the_source_it_was_drawn_from(tiny_shards, world_size):
    """`sources` gives each row's index in SOURCES: update rows first, then buffer, then pretraining, as `items`
    lays them out, and each rank's slice keeps its rows' origin."""
    reader = ShardReader(tiny_shards / "novel_shapes", "train")
    items = index_items(0, reader)
    new, old, pool = items[:10], items[10:20], np.stack([np.ones(5, dtype=np.int64), np.arange(5)], axis=1)
    batches = StepBatches([reader, reader], {"update": new, "buffer": old, "pretraining": pool},
                          {"update": 4, "buffer": 2, "pretraining": 2}, 0, 0, 3,
                          tokenizer=lambda texts: torch.zeros(len(texts), 4, dtype=torch.long), image_size=32)
    for rank in range(world_size):
        batch = batches.shard(rank, world_size)[1]
        whole = torch.as_tensor(batches.items(1))[rank::world_size]
        assert torch.equal(batch["items"], whole)
        expected = torch.tensor([0] * 4 + [1] * 2 + [2] * 2)[rank::world_size]
        assert torch.equal(batch["sources"], expected)
        origin = {0: new, 1: old, 2: pool}
        for (dataset, index), source in zip(batch["items"].tolist(), batch["sources"].tolist()):
            assert [dataset, index] in origin[source].tolist()
