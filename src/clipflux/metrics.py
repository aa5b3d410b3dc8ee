"""The study's metrics, as pure functions of scores in percent.

**FiF** (`results_from_wandb_xid.py`): A_KA is the mean over adaptation datasets and A_ZS the mean over
evaluation-only datasets of each dataset's score, its accuracy for classification and its Recall@5 for
retrieval, so every dataset weighs the same ((40 x acc + 1 x R@5) / 41 with FiF's 41 adaptation datasets);
GM = sqrt(A_KA x A_ZS).

**TiC** (Garg et al. 2024, section 2.3): E[i][j] is the score on time step j after training on step i.
Scores are accuracy for classification and
Recall@1 for retrieval, as TiC reports them. In-domain is the mean of the diagonal, backward transfer the mean below it (j < i) and forward transfer the
mean above it (j > i); all three are mean scores, in [0, 100]. Their signed counterparts as GEM defines them
(Lopez-Paz & Ranzato 2017) are added: BWT = mean_j (E[T-1][j] - E[j][j]) over j < T-1 (negative when the
model forgets) and FWT = mean_j (E[j-1][j] - base[j]) over j >= 1 (negative when training on the past
hurts the next step compared with the model before the stream).

**Forgetting** (Chaudhry et al. 2018): per dataset, the best score of any earlier evaluation minus the
final score.

**Seeds**: an experiment repeated over seeds reports each number's mean over seeds and, as its spread, the
sample standard deviation (n - 1 in the denominator); see `aggregate_metrics`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

HEADLINE = {  # the one score per dataset that each protocol averages
    "fif": {"classification": "acc", "retrieval": "R@5"},
    "tic": {"classification": "acc", "retrieval": "R@1"},
}


def headline_metric(task: str, protocol: str = "fif") -> str:
    """The metric that stands for a dataset: accuracy for classification; Recall@5 (FiF) or Recall@1 (TiC)
    for retrieval."""
    if protocol not in HEADLINE or task not in HEADLINE[protocol]:
        raise ValueError(f"no headline metric for task {task!r} under protocol {protocol!r}; "
                         f"known: {sorted(HEADLINE['fif'])} under {sorted(HEADLINE)}")
    return HEADLINE[protocol][task]


def headline(task: str, metrics: Mapping[str, float], protocol: str = "fif") -> float:
    """A dataset's score for A_KA / A_ZS (FiF) or for TiC's matrix: see `headline_metric`."""
    return metrics[headline_metric(task, protocol)]


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def fif_scores(scores: Mapping[str, float], roles: Mapping[str, str]) -> dict[str, float]:
    """A_KA, A_ZS and GM from per-dataset scores in percent.

    Args:
        scores: dataset -> its score (accuracy or R@5) in [0, 100].
        roles: dataset -> "adaptation" or "evaluation".

    Returns:
        A_KA when there are adaptation datasets, A_ZS when there are evaluation-only ones, GM when both.
    """
    ka = [s for d, s in scores.items() if roles[d] == "adaptation"]
    zs = [s for d, s in scores.items() if roles[d] == "evaluation"]
    out = {}
    if ka:
        out["A_KA"] = _mean(ka)
    if zs:
        out["A_ZS"] = _mean(zs)
    if ka and zs:
        out["GM"] = math.sqrt(out["A_KA"] * out["A_ZS"])
    return out


def forgetting(history: Sequence[float]) -> float:
    """The best earlier score minus the final one (0 for a single evaluation; negative when the end is best)."""
    if not history:
        raise ValueError("forgetting needs at least one score")
    return max(history[:-1]) - history[-1] if len(history) > 1 else 0.0


def forgetting_per_dataset(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Forgetting of every dataset over a sequence of evaluations (dataset -> score, the final one last)."""
    return {name: forgetting([row[name] for row in rows]) for name in rows[-1]}


def _square(matrix: Sequence[Sequence[float]]) -> list[list[float]]:
    rows = [list(map(float, r)) for r in matrix]
    if not rows or any(len(r) != len(rows) for r in rows):
        raise ValueError(f"E must be a non-empty square matrix (steps x steps), got rows of {[len(r) for r in rows]}")
    return rows


def tic_scores(matrix: Sequence[Sequence[float]], base: Sequence[float] | None = None) -> dict[str, float]:
    """TiC's in-domain, backward and forward transfer of an evaluation matrix, and GEM's BWT and FWT.

    Args:
        matrix: E as a list of lists, E[i][j] = score on time step j after training on step i (T x T).
        base: the scores on every time step before the first training step (the model the stream starts
            from); needed for FWT only.

    Returns:
        "in_domain" always; "backward", "forward" and "bwt" when T > 1; "fwt" when T > 1 and `base` is given.
    """
    e = _square(matrix)
    t = len(e)
    out = {"in_domain": _mean([e[i][i] for i in range(t)])}
    if t > 1:
        out["backward"] = _mean([e[i][j] for i in range(t) for j in range(i)])
        out["forward"] = _mean([e[i][j] for i in range(t) for j in range(i + 1, t)])
        out["bwt"] = _mean([e[t - 1][j] - e[j][j] for j in range(t - 1)])
        if base is not None:
            if len(base) != t:
                raise ValueError(f"base has {len(base)} scores for {t} time steps")
            out["fwt"] = _mean([e[j - 1][j] - float(base[j]) for j in range(1, t)])
    return out


# -- several seeds -------------------------------------------------------------------------------------


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def sample_std(values: Sequence[float]) -> float:
    """The sample standard deviation (n - 1 in the denominator) of two or more values."""
    if len(values) < 2:
        raise ValueError(f"a sample standard deviation needs at least two values, got {len(values)}")
    if all(v == values[0] for v in values):
        return 0.0  # exactly: the mean of equal floats can be off in the last bit
    mean = _mean(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


_DROP = object()  # a leaf left out of a tree


def _aligned(trees: Sequence[Any], reduce: Callable[[list[float]], Any], other: Callable[[list], Any]) -> Any:
    """Walk equally shaped trees of dicts and lists together; numbers go to `reduce`, anything else to `other`."""
    first = trees[0]
    if isinstance(first, Mapping):
        keys = dict.fromkeys(k for t in trees for k in t)
        out = {k: _aligned([t[k] for t in trees if k in t], reduce, other) for k in keys}
        return {k: v for k, v in out.items() if v is not _DROP}
    if isinstance(first, (list, tuple)):
        if any(len(t) != len(first) for t in trees):
            raise ValueError(f"seeds disagree on the length of a list: {sorted({len(t) for t in trees})}")
        column_values = [_aligned(list(column), reduce, other) for column in zip(*trees)]
        return [None if v is _DROP else v for v in column_values]
    if all(_is_number(t) for t in trees):
        return reduce(list(trees))
    return other(list(trees))


def seed_mean(trees: Sequence[Any]) -> Any:
    """The mean over seeds of every number in equally shaped trees (one per seed) of dicts and lists.

    A number that every seed has the same keeps its value and type (task indices, sizes, steps); any other
    leaf (names, flags) is taken from the first seed. A dict key missing in some seeds is averaged over the
    seeds that have it.
    """
    if not trees:
        raise ValueError("no seeds to average")
    return _aligned(trees, lambda v: v[0] if all(x == v[0] for x in v) else _mean(v), lambda v: v[0])


def seed_std(trees: Sequence[Any]) -> Any:
    """The sample standard deviation over seeds of every number in `seed_mean`'s trees (n - 1 in the
    denominator; 0.0 where all seeds agree); leaves that are not numbers, and numbers that fewer than two
    seeds have, are left out (None inside lists, to keep positions)."""
    if len(trees) < 2:
        raise ValueError(f"a spread over seeds needs at least two seeds, got {len(trees)}")
    return _aligned(trees, lambda v: sample_std(v) if len(v) > 1 else _DROP, lambda v: _DROP)


STD_KEYS = {"final": ("A_KA", "A_ZS", "GM"), "forgetting": ("mean_adaptation", "mean_evaluation"), "tic": None}


def round_tree(tree: Any, digits: int = 4) -> Any:
    """Every float in a tree of dicts and lists rounded to `digits` (other leaves as they are)."""
    if isinstance(tree, Mapping):
        return {k: round_tree(v, digits) for k, v in tree.items()}
    if isinstance(tree, list):
        return [round_tree(v, digits) for v in tree]
    return round(tree, digits) if isinstance(tree, float) else tree


def _with_std(values: Mapping[str, Any], spread: Mapping[str, Any], keys: Sequence[str] | None,
              digits: int) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        out[key] = value
        if (keys is None or key in keys) and _is_number(spread.get(key)):
            out[f"{key}_std"] = round(spread[key], digits)
    return out


def aggregate_metrics(per_seed: Sequence[Mapping[str, Any]], digits: int = 4) -> dict[str, Any]:
    """One experiment's DVC metrics (`metrics.json`) over seeds: each seed's metrics in `summarize`'s format in,
    the same structure out with every number the mean over seeds (rounded to `digits`).

    With more than one seed, the final A_KA / A_ZS / GM, the mean forgetting per group and every TiC number
    get a sibling `<key>_std` right after them (the sample standard deviation over seeds), and "seeds": N
    is added. With one seed the result is that seed's metrics unchanged (metrics.json stays byte-identical).
    """
    if len(per_seed) == 1:
        return dict(per_seed[0])
    mean, std = round_tree(seed_mean(per_seed), digits), seed_std(per_seed)
    out: dict[str, Any] = {}
    for section, values in mean.items():
        if section not in STD_KEYS:
            out[section] = values
        elif section == "tic":
            out[section] = {name: _with_std(v, std[section].get(name, {}), None, digits) for name, v in values.items()}
        else:
            out[section] = _with_std(values, std.get(section, {}), STD_KEYS[section], digits)
    return out | {"seeds": len(per_seed)}


def headline_metrics(experiment: str, scores: Mapping[str, Any]) -> dict[str, Any]:
    """The experiment's DVC metrics (`metrics.json`): its headline numbers under its own name, so that every
    experiment's columns in `dvc exp show` / `dvc metrics diff` are unique short keys (`finetune.GM`).

    FiF: the final A_KA, A_ZS, GM and `forgetting`, the mean forgetting over the adaptation datasets. TiC: each
    dataset's in-domain, backward and forward transfer (`tic_ret.backward`). Over several seeds each number's
    `_std` follows it and `seeds` is added. The full record (`scores`, `aggregate_metrics`' output: every task,
    every dataset's forgetting, GEM's BWT / FWT) is the experiment's `scores.json`.
    """
    out: dict[str, Any] = {}
    final, spread = scores.get("final", {}), scores.get("forgetting", {})
    for key in ("A_KA", "A_ZS", "GM"):
        out.update({k: final[k] for k in (key, f"{key}_std") if k in final})
    out.update({k.replace("mean_adaptation", "forgetting"): spread[k]
                for k in ("mean_adaptation", "mean_adaptation_std") if k in spread})
    for dataset, values in scores.get("tic", {}).items():
        out.update({f"{dataset}.{k}": values[k] for key in ("in_domain", "backward", "forward")
                    for k in (key, f"{key}_std") if k in values})
    if "seeds" in scores:
        out["seeds"] = scores["seeds"]
    return {experiment: out}


def display_decimals(sizes: Sequence[int], per_mean: int | None = None) -> int:
    """The decimals a mean score (in percent) over datasets of `sizes` samples resolves: one more sample right in
    the largest dataset moves the mean by 100 / (datasets x largest size); shown to the first decimal that
    step reaches, between 0 and 4. `per_mean`: how many datasets the mean averages (default: all)."""
    sizes = [s for s in sizes if s > 0]
    if not sizes:
        return 1
    step = 100.0 / ((per_mean or len(sizes)) * max(sizes))
    return max(0, min(4, math.ceil(-math.log10(step) - 1e-9)))
