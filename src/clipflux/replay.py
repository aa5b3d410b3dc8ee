"""The data mixture of FiF: each batch split into new (update) data, a replay buffer and pretraining data.

Sampling is a pure function of (seed, task, step, source): every source is read in seeded random
permutations, one per pass, so the samples of any step can be recomputed without replaying the run.
"""

from __future__ import annotations

import numpy as np

from clipflux.config import MixtureConfig

# A source is an (N, 2) int array of (dataset id, sample index) pairs.
SOURCES = ("update", "buffer", "pretraining")


def split_batch(batch_size: int, mixture: MixtureConfig, buffer_size: int, pool_size: int) -> dict[str, int]:
    """How many samples of a batch come from each source.

    The empty buffer's share goes to update data (FiF's first task), as does the pretraining share when
    no pretraining pool is available. The counts always sum to `batch_size`.
    """
    n_buffer = int(round(batch_size * mixture.buffer)) if buffer_size > 0 else 0
    n_pretraining = int(round(batch_size * mixture.pretraining)) if pool_size > 0 else 0
    n_buffer = min(n_buffer, batch_size - 1)
    n_pretraining = min(n_pretraining, batch_size - 1 - n_buffer)
    return {"update": batch_size - n_buffer - n_pretraining, "buffer": n_buffer, "pretraining": n_pretraining}


def draw(items: np.ndarray, count: int, step: int, seed: int, task: int, source: int, purpose: int = 0) -> np.ndarray:
    """The `count` items a source contributes at `step`: consecutive positions of its seeded passes.

    Position p of the task's sequence is item `perm_e[p % N]` of pass `e = p // N`, where `perm_e` is a
    permutation drawn from a generator derived from (seed, task, source, e) — and `purpose` when it is
    not 0 (training), so a method's extra draws never coincide with training's. Cycling through passes
    is how FiF gives each task exactly its number of samples whatever the task's size.
    """
    n = len(items)
    if count == 0 or n == 0:
        return items[:0]
    positions = np.arange(step * count, (step + 1) * count)
    out = np.empty((count,) + items.shape[1:], dtype=items.dtype)
    for epoch in np.unique(positions // n):
        key = [seed, task, source, int(epoch)] + ([purpose] if purpose else [])
        perm = np.random.default_rng(key).permutation(n)
        mask = positions // n == epoch
        out[mask] = items[perm[positions[mask] % n]]
    return out


class Buffer:
    """A replay buffer of earlier tasks' samples. Policy "all" keeps every sample (FiF's default)."""

    def __init__(self) -> None:
        self.per_task: list[np.ndarray] = []

    def add_task(self, items: np.ndarray) -> None:
        """Add the samples of a finished task."""
        self.per_task.append(np.asarray(items))

    def items(self) -> np.ndarray:
        """Every item the buffer holds now."""
        return np.concatenate(self.per_task) if self.per_task else np.empty((0, 2), dtype=np.int64)

    def state_dict(self) -> dict:
        return {"per_task": [a.copy() for a in self.per_task]}

    def load_state_dict(self, state: dict) -> None:
        self.per_task = [np.asarray(a) for a in state["per_task"]]
