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


def blocked_permutation(rng: np.random.Generator, blocks: np.ndarray) -> np.ndarray:
    """A random order that keeps each block's items together: blocks in random order, items shuffled within.

    This is webdataset's shard shuffling plus a shuffle buffer of one shard, as a pure function of the generator.
    """
    order = np.argsort(blocks, kind="stable")
    ids, starts = np.unique(blocks[order], return_index=True)
    groups = np.split(order, starts[1:])
    return np.concatenate([rng.permutation(groups[g]) for g in rng.permutation(len(ids))])


def draw(items: np.ndarray, count: int, step: int, seed: int, task: int, source: int, purpose: int = 0,
         blocks: np.ndarray | None = None) -> np.ndarray:
    """The `count` items a source contributes at `step`: consecutive positions of its seeded passes.

    Position p of the task's sequence is item `perm_e[p % N]` of pass `e = p // N`, where `perm_e` is a
    permutation drawn from a generator derived from (seed, task, source, e) — and `purpose` when it is
    not 0 (training), so a method's extra draws never coincide with training's. Cycling through passes
    is how FiF gives each task exactly its number of samples whatever the task's size. With `blocks` (the
    shard of each item, for sources that are streamed rather than read at random), each pass is a
    `blocked_permutation`, so consecutive steps read one shard after another.
    """
    n = len(items)
    if count == 0 or n == 0:
        return items[:0]
    positions = np.arange(step * count, (step + 1) * count)
    out = np.empty((count,) + items.shape[1:], dtype=items.dtype)
    for epoch in np.unique(positions // n):
        key = [seed, task, source, int(epoch)] + ([purpose] if purpose else [])
        rng = np.random.default_rng(key)
        perm = rng.permutation(n) if blocks is None else blocked_permutation(rng, blocks)
        mask = positions // n == epoch
        out[mask] = items[perm[positions[mask] % n]]
    return out


POLICIES = ("all", "none", "reservoir", "exp", "equal")


def allocation(policy: str, capacity: int, sizes: list[int]) -> list[int]:
    """How many samples of each past task (oldest first) the buffer holds.

    - "all": everything (FiF's default; TiC's Cumulative-All).
    - "none": nothing (TiC's Sequential).
    - "equal": the capacity split equally over past tasks (TiC's Cumulative-Equal; remainder to the newest).
    - "exp": the newest past task gets half the capacity, the one before a quarter, ... and the oldest what
      is left, so old data halves at every step (TiC's Cumulative-Exp).
    - "reservoir": not per task (see `Buffer`); returned as "all" here.
    Every count is capped by the task's size.
    """
    n = len(sizes)
    if policy in ("all", "reservoir") or n == 0:
        return list(sizes)
    if policy == "none":
        return [0] * n
    if policy == "equal":
        base, extra = divmod(capacity, n)
        shares = [base + (1 if t >= n - extra else 0) for t in range(n)]
    elif policy == "exp":
        shares = [capacity >> (n - t) for t in range(n)]  # newest: D/2, then D/4, ...
        shares[0] = capacity - sum(shares[1:])  # the oldest takes the rest, so the total is D
    else:
        raise ValueError(f"buffer policy {policy!r}: choose one of {POLICIES}")
    return [min(share, size) for share, size in zip(shares, sizes)]


class Buffer:
    """A replay buffer of earlier tasks' samples under a policy (see `allocation`).

    Each past task's samples are kept in a fixed seeded order, and a policy keeps a prefix of it, so
    shrinking a task's share keeps a subset of what was kept before. "reservoir" keeps a uniform sample of
    `capacity` items over all past data: every item gets a seeded random key and the smallest keys stay
    (bottom-k sampling, which draws from the same distribution as reservoir sampling).

    Args:
        policy: one of `POLICIES`.
        capacity: the buffer size D (ignored by "all" and "none").
        seed: derives each task's order, with the task index.
    """

    def __init__(self, policy: str = "all", capacity: int = 0, seed: int = 0) -> None:
        if policy not in POLICIES:
            raise ValueError(f"buffer policy {policy!r}: choose one of {POLICIES}")
        self.policy, self.capacity, self.seed = policy, capacity, seed
        self.per_task: list[np.ndarray] = []

    def add_task(self, items: np.ndarray) -> None:
        """Add the samples of a finished task (in the task's own seeded order)."""
        order = np.random.default_rng([self.seed, len(self.per_task), 7919]).permutation(len(items))
        self.per_task.append(np.asarray(items)[order])

    def held(self) -> list[np.ndarray]:
        """The items held from each past task, oldest first."""
        if self.policy == "reservoir":
            keys = [np.random.default_rng([self.seed, t, 104729]).random(len(a)) for t, a in enumerate(self.per_task)]
            flat = np.concatenate(keys) if keys else np.empty(0)
            cut = np.sort(flat)[self.capacity - 1] if 0 < self.capacity < len(flat) else np.inf
            return [a[k <= cut] for a, k in zip(self.per_task, keys)]
        counts = allocation(self.policy, self.capacity, [len(a) for a in self.per_task])
        return [a[:k] for a, k in zip(self.per_task, counts)]

    def items(self) -> np.ndarray:
        """Every item the buffer holds now."""
        held = self.held()
        return np.concatenate(held) if held else np.empty((0, 2), dtype=np.int64)

    def state_dict(self) -> dict:
        return {"per_task": [a.copy() for a in self.per_task]}

    def load_state_dict(self, state: dict) -> None:
        self.per_task = [np.asarray(a) for a in state["per_task"]]
