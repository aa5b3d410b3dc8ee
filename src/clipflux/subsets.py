"""Which samples an evaluation reads: FiF's class-balanced subsets, and the validation split.

**Subsets.** FiF evaluates during the stream on a class-balanced subset of each dataset
(`evaluation.validate_on_subset`, default 0.1): min(size, max(2 x classes, 300, fraction x size)) samples,
and on the full sets before the stream and after the last task. FiF draws the subset after reseeding
NumPy's global generator; here the generator derives from (seed, dataset) explicitly, and the quota per
class is filled level by level, so class counts never differ by more than one (unless a class runs out).

**Validation.** For hyperparameter search FiF's `validation_mode` splits each adaptation dataset's
training data (`train_val_split`, default 0.8) and evaluates on the held-out part, never on test data.
`validation_keys` is that split: a pure function of (seed, dataset, keys), stratified by class, which
`build_stream` uses to keep validation samples out of training and `evaluate` to evaluate on them.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import defaultdict
from typing import Hashable, Sequence

import numpy as np

SUBSET_FLOOR = 300  # FiF: at least 300 samples per dataset ...
PER_CLASS_FLOOR = 2  # ... and at least two per class
_SUBSET_PURPOSE = 1  # keeps subset draws apart from any other draw derived from (seed, dataset)


def subset_size(size: int, num_classes: int, fraction: float, floor: int = SUBSET_FLOOR) -> int:
    """FiF's subset size: min(size, max(2 x classes, floor, int(fraction x size)))."""
    return min(size, max(PER_CLASS_FLOOR * num_classes, floor, int(fraction * size)))


def class_quotas(counts: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Samples to take per class so that `size` are taken in all, as evenly as the class counts allow.

    Every class gets the same level, except classes with fewer samples (taken whole) and the remainder,
    which goes one each to randomly chosen classes.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if not 0 <= size <= counts.sum():
        raise ValueError(f"cannot take {size} samples from classes with {counts.sum()} in all")
    quota = np.zeros_like(counts)
    left = size
    while left > 0:
        open_ = np.flatnonzero(quota < counts)
        share = left // len(open_)
        if share == 0:
            quota[rng.choice(open_, left, replace=False)] += 1
            break
        add = np.minimum(share, counts[open_] - quota[open_])
        quota[open_] += add
        left -= int(add.sum())
    return quota


def class_balanced_subset(labels: Sequence[int] | np.ndarray, fraction: float, seed: int, dataset: str,
                          floor: int = SUBSET_FLOOR) -> np.ndarray:
    """FiF's evaluation subset of one dataset: sorted sample indices, class-balanced and seeded.

    Args:
        labels: the class of every sample (all equal, e.g. -1, for a retrieval set: then a random subset).
        fraction: FiF's `validate_on_subset`; 1 or more means every sample.
        seed: the evaluation seed.
        dataset: the dataset name; with `seed` it fixes the generator, so the subset is the same for every
            model state and every run, and differs between datasets.
        floor: the minimum subset size (FiF: 300).
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    size = subset_size(len(labels), len(classes), fraction, floor)
    if size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng([seed, zlib.crc32(dataset.encode()), _SUBSET_PURPOSE])
    quota = class_quotas(counts, size, rng)
    chosen = [rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen))


def evaluation_plan(num_states: int, fraction: float) -> list[bool]:
    """For each model state (base model, then after each task): evaluate on the full sets (True) or on subsets.

    As FiF: the full sets before the stream and after the last task, subsets in between (all full when
    `fraction` >= 1).
    """
    return [fraction >= 1 or i in (0, num_states - 1) for i in range(num_states)]


def _rank(seed: int, dataset: str, key: str) -> bytes:
    return hashlib.blake2b(f"{seed}\0{dataset}\0{key}".encode(), digest_size=16).digest()


def validation_keys(seed: int, dataset: str, keys: Sequence[str], labels: Sequence[Hashable] | None = None,
                    split: float = 0.8) -> set[str]:
    """The training keys of one dataset held out for validation (FiF's `validation_mode`).

    Within each class, keys are ordered by a hash of (seed, dataset, key) and the last round((1 - split) x n)
    of them are held out, keeping at least one key per class for training. The result depends on the keys as
    a set, not on their order, and a key's fate never depends on which other classes are present.

    Args:
        seed: the evaluation seed (`evaluate.seed`).
        dataset: the dataset name.
        keys: the keys of its training split.
        labels: the class of each key, to stratify by class; None treats all keys as one class.
        split: the share of each class that stays for training (FiF's `train_val_split`).

    Returns:
        The validation keys; training uses the others.
    """
    if not 0 < split < 1:
        raise ValueError(f"split must be in (0, 1), got {split}")
    if labels is not None and len(labels) != len(keys):
        raise ValueError(f"{len(keys)} keys but {len(labels)} labels")
    by_class: dict[Hashable, list[str]] = defaultdict(list)
    for i, key in enumerate(keys):
        by_class[None if labels is None else labels[i]].append(key)
    held: set[str] = set()
    for members in by_class.values():
        members = sorted(set(members), key=lambda k: _rank(seed, dataset, k))
        n_val = min(len(members) - 1, round((1 - split) * len(members)))
        held.update(members[len(members) - n_val:] if n_val > 0 else [])
    return held
