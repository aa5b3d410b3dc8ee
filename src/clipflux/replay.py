"""The data mixture of FiF: each batch split into new (update) data, a replay buffer and pretraining data.

Sampling is a pure function of (seed, task, step, source): every source is read in seeded random
permutations, one per pass, so the samples of any step can be recomputed without replaying the run.
"""

from __future__ import annotations

import numpy as np

from clipflux.config import MixtureConfig

# A source is an (N, 2) int array of (dataset id, sample index) pairs.
SOURCES = ("update", "buffer", "pretraining")


# The order in which FiF hands out a batch's remainder: its data_mixture's keys as continualfomo_default.yaml lists them.
FIF_ORDER = ("pretraining", "update", "buffer")


def split_batch(batch_size: int, mixture: MixtureConfig, buffer_size: int, pool_size: int) -> dict[str, int]:
    """How many samples of a batch come from each source, as FiF splits it.

    Each source gets floor(batch x share), and what is left goes one sample at a time to the sources in FiF's
    key order (FiF main.py:21-55, `calculate_individual_batch_sizes`; only to sources with a share, where FiF
    would also give a sample to a source with share 0). While the buffer is empty (the first task) its share
    is split between update and pretraining data, the odd sample to update data (FiF utils/training.py:196-207);
    without pretraining data all of it goes to update data. With no pretraining pool available its share goes
    to update data. The counts always sum to `batch_size`, with at least one update sample.
    """
    shares = {"pretraining": mixture.pretraining if pool_size > 0 else 0.0, "buffer": mixture.buffer,
              "update": mixture.update + (0.0 if pool_size > 0 else mixture.pretraining)}
    counts = {key: int(batch_size * shares[key]) for key in FIF_ORDER}
    left = batch_size - sum(counts.values())
    while left > 0:
        for key in (k for k in FIF_ORDER if shares[k] > 0):
            if left == 0:
                break
            counts[key] += 1
            left -= 1
    if buffer_size == 0:  # the first task: nothing to replay yet
        moved, counts["buffer"] = counts["buffer"], 0
        to_pool = moved // 2 if counts["pretraining"] > 0 else 0
        counts["pretraining"] += to_pool
        counts["update"] += moved - to_pool
    if counts["update"] == 0:  # a tiny batch: one new sample per step at least
        largest = max(("pretraining", "buffer"), key=counts.get)
        counts[largest] -= 1
        counts["update"] = 1
    return {"update": counts["update"], "buffer": counts["buffer"], "pretraining": counts["pretraining"]}


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
        self.per_task.append(self._ordered(items, len(self.per_task)))

    def _ordered(self, items: np.ndarray, task: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, task, 7919]).permutation(len(items))
        return np.asarray(items)[order]

    def items_with(self, items: np.ndarray) -> np.ndarray:
        """What the buffer would hold with the samples of one more task added (the buffer itself unchanged):
        GDumb's memory while it trains on the task."""
        ahead = Buffer(self.policy, self.capacity, self.seed)
        ahead.per_task = self.per_task + [self._ordered(items, len(self.per_task))]
        return ahead.items()

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
