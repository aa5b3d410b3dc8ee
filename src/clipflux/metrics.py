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
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

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
