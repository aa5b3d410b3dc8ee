"""Model-merging operators: pure functions on state dicts (`{name: tensor}`), returning a new state dict.

The operators Fomo-in-Flux compares (Roth, Udandarao et al., NeurIPS 2024 D&B, arXiv 2408.14471;
`continual_lib/merge.py`):

- `interpolate`: (1 - alpha) a + alpha b, WiSE-FT (Wortsman et al., CVPR 2022, arXiv 2109.01903) and
  PAINT (Ilharco et al., NeurIPS 2022, arXiv 2208.05592).
- `slerp`: spherical interpolation per tensor (Shoemake 1985), linear when the two are nearly parallel.
- `task_arithmetic`: base + scale * sum of task vectors (Ilharco et al., ICLR 2023, arXiv 2212.04089).
- `ties`: trim each task vector to its largest-magnitude `density` fraction, elect a sign per entry by
  total mass, average the entries that agree with it (Yadav et al., NeurIPS 2023, arXiv 2306.01708).
- `dare_ties`: drop each task-vector entry with probability 1 - density and rescale the rest by 1/density
  (Yu et al., ICML 2024, arXiv 2311.03099), then TIES's sign election and disjoint mean.

- `breadcrumbs_ties`: drop each task vector's largest-magnitude `top_drop` and smallest-magnitude 1 - density
  fractions (outliers and noise), then TIES's sign election and disjoint mean (Davari & Belilovsky, ECCV 2024,
  arXiv 2312.06795; FiF `merge.py:721-803`).
- `magmax`: per entry, the task-vector value of largest magnitude (Marczak et al., ECCV 2024, arXiv 2407.06322;
  FiF `merge.py:489-541`).
- `model_stock`: per tensor, the average of the two models pulled towards the base by a ratio from the angle
  between their task vectors, 2 cos / (cos + 1) (Jang et al., ECCV 2024, arXiv 2403.19522; FiF
  `merge.py:867-952`).
- `tall_masks`: task arithmetic kept only where at least `min_tasks` tasks' TALL masks agree that the entry
  matters to them (Wang et al., ICML 2024, arXiv 2405.07813; FiF `merge.py:955-1046`).
- `random_merge`: per entry, the task-vector value of a model drawn uniformly (FiF `merge.py:1049-1092`).

`weighted_average` is the interpolation of many models (FiF's `Interpolation` over a list, merge.py:303-385),
with `weights_of` FiF's weightings of task checkpoints, uniform to exponential (offline_merge.py:101-156).

LiNeS (Wang et al., ICLR 2025, arXiv 2410.17146; FiF `merge.py:217-301`) scales a merged task vector layer by
layer instead of by one factor: `lines_scaling` gives the per-entry factors to pass as `scale` to the operators
that merge task vectors.

Task vectors are taken over every floating-point entry; TIES trims over the whole flattened model, as the
TIES reference and FiF do. Non-floating entries (integer buffers) are copied from the base.
"""

from __future__ import annotations

import math
import re
from typing import Literal, Union

import numpy as np
import torch

StateDict = dict[str, torch.Tensor]
Operator = Literal["interpolation", "slerp", "task_arithmetic", "ties", "dare_ties", "breadcrumbs_ties", "magmax",
                   "model_stock", "tall_masks", "random"]
# A merged task vector's factor: one number, or one per entry (`lines_scaling`).
Scale = Union[float, torch.Tensor]


def _check_keys(*states: StateDict) -> None:
    keys = set(states[0])
    for state in states[1:]:
        if set(state) != keys:
            raise ValueError(f"cannot merge state dicts with different keys: {sorted(keys ^ set(state))[:5]}")


def _floating(state: StateDict) -> list[str]:
    return [k for k in state if torch.is_floating_point(state[k])]


def interpolate(a: StateDict, b: StateDict, alpha: float) -> StateDict:
    """(1 - alpha) * a + alpha * b for every floating entry; alpha = 0 gives a, alpha = 1 gives b."""
    _check_keys(a, b)
    return {k: torch.lerp(a[k], b[k], alpha) if torch.is_floating_point(a[k]) else a[k].clone() for k in a}


def weighted_average(models: list[StateDict], weights: list[float]) -> StateDict:
    """sum_i w_i model_i for every floating entry, summed in model order as FiF's `Interpolation.merge` does
    (merge.py:383-385); the weights must sum to 1 (FiF's check, :171-174)."""
    _check_keys(*models)
    if len(weights) != len(models) or abs(sum(weights) - 1.0) >= 1e-6:
        raise ValueError(f"{len(models)} models need {len(models)} weights summing to 1, got {weights}")
    first = models[0]
    return {k: sum(w * m[k] for w, m in zip(weights, models)) if torch.is_floating_point(first[k])
            else first[k].clone() for k in first}


Weighting = Literal["uniform", "linear", "sqrt", "quadratic", "cubic", "fifth", "tenth", "exp", "log",
                    "reverse_linear", "reverse_sqrt", "reverse_quadratic", "reverse_cubic", "reverse_fifth",
                    "reverse_tenth", "reverse_exp", "reverse_log"]


def weights_of(weighting: Weighting, n: int) -> list[float]:
    """FiF's weights of n checkpoints, oldest first, normalised to sum 1 (offline_merge.py:101-156): uniform 1/n;
    linear i, sqrt i^1/2, quadratic i^2, cubic i^3, fifth i^5, tenth i^10, log log(i + 1) for i = 1..n; exp 2^i
    for i = 0..n-1; `reverse_` the same list reversed (the oldest weighted most)."""
    kind = weighting.removeprefix("reverse_")
    if kind == "uniform":
        return [1 / n] * n
    powers = {"quadratic": 2, "cubic": 3, "fifth": 5, "tenth": 10}
    if kind in powers:  # integer powers, then floats, as FiF computes them
        raw = np.array([i ** powers[kind] for i in range(1, n + 1)], dtype=float)
    else:
        i = np.arange(1, n + 1, dtype=float)
        raw = {"linear": np.linspace(1, n, n), "sqrt": np.sqrt(i), "exp": 2.0 ** np.arange(n),
               "log": np.log(i + 1)}[kind]
    weights = (raw / raw.sum()).tolist()
    return weights[::-1] if weighting.startswith("reverse_") else weights


def slerp(a: StateDict, b: StateDict, t: float, dot_threshold: float = 0.9995) -> StateDict:
    """Spherical interpolation from a (t = 0) to b (t = 1), tensor by tensor.

    Each tensor pair is treated as two vectors; the angle between their directions sets the weights
    sin((1 - t) w) / sin w and sin(t w) / sin w of the (unnormalised) tensors. Nearly parallel pairs
    (|cos| > dot_threshold) and zero tensors fall back to linear interpolation.
    """
    _check_keys(a, b)
    merged = {}
    for k in a:
        if not torch.is_floating_point(a[k]):
            merged[k] = a[k].clone()
            continue
        norms = a[k].norm() * b[k].norm()
        cos = float((a[k] * b[k]).sum() / norms) if norms > 0 else 1.0
        if abs(cos) > dot_threshold:
            merged[k] = torch.lerp(a[k], b[k], t)
            continue
        omega = math.acos(max(-1.0, min(1.0, cos)))
        wa, wb = math.sin((1 - t) * omega) / math.sin(omega), math.sin(t * omega) / math.sin(omega)
        merged[k] = wa * a[k] + wb * b[k]
    return merged


def task_vectors(models: list[StateDict], base: StateDict) -> torch.Tensor:
    """(n_models, n_entries): each model's floating entries minus the base's, flattened in base key order."""
    _check_keys(base, *models)
    keys = _floating(base)
    return torch.stack([torch.cat([(m[k] - base[k]).reshape(-1) for k in keys]) for m in models])


def _add_to_base(base: StateDict, flat: torch.Tensor) -> StateDict:
    merged, offset = {}, 0
    for k, value in base.items():
        if torch.is_floating_point(value):
            merged[k] = value + flat[offset:offset + value.numel()].view_as(value).to(value.dtype)
            offset += value.numel()
        else:
            merged[k] = value.clone()
    return merged


def task_arithmetic(models: list[StateDict], base: StateDict, scale: Scale) -> StateDict:
    """base + scale * sum_i (model_i - base); scale = 0 gives the base."""
    return _add_to_base(base, scale * task_vectors(models, base).sum(dim=0))


def trim(vectors: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ceil(density * n) largest-magnitude entries of each row, zero the rest."""
    keep = math.ceil(density * vectors.shape[1])
    trimmed = torch.zeros_like(vectors)
    if keep > 0:
        top = vectors.abs().topk(keep, dim=1).indices
        trimmed.scatter_(1, top, vectors.gather(1, top))
    return trimmed


def elect_sign(vectors: torch.Tensor) -> torch.Tensor:
    """+1 or -1 per entry: the sign of the summed values (ties go to the sign of the total mass)."""
    sign = torch.sign(vectors.sum(dim=0))
    majority = 1.0 if sign.sum() >= 0 else -1.0
    return torch.where(sign == 0, torch.full_like(sign, majority), sign)


def disjoint_mean(vectors: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Per entry, the mean of the nonzero values whose sign agrees with the elected one (0 if none)."""
    agree = (torch.sign(vectors) == sign.unsqueeze(0)) & (vectors != 0)
    count = agree.sum(dim=0).clamp(min=1)
    return (vectors * agree).sum(dim=0) / count


def ties(models: list[StateDict], base: StateDict, density: float, scale: Scale) -> StateDict:
    """TIES-merging: trim to `density`, elect signs, disjoint mean; base + scale * merged task vector."""
    trimmed = trim(task_vectors(models, base), density)
    return _add_to_base(base, scale * disjoint_mean(trimmed, elect_sign(trimmed)))


def dare(vectors: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Drop each entry with probability 1 - density and divide the kept ones by density."""
    if density >= 1.0:
        return vectors.clone()
    keep = torch.rand(vectors.shape, generator=generator, dtype=torch.float64) < density
    return torch.where(keep, vectors / density, torch.zeros_like(vectors))


def dare_ties(models: list[StateDict], base: StateDict, density: float, scale: Scale,
              generator: torch.Generator) -> StateDict:
    """DARE-TIES: random drop and rescale (from `generator`), then TIES's sign election and disjoint mean."""
    dropped = dare(task_vectors(models, base), density, generator)
    return _add_to_base(base, scale * disjoint_mean(dropped, elect_sign(dropped)))


def breadcrumbs(vectors: torch.Tensor, density: float, top_drop: float) -> torch.Tensor:
    """Per row, zero the entries below the magnitude of the int((1 - density) n)-th smallest and above that of the
    int(top_drop n)-th largest; entries equal to a threshold stay (FiF `merge.py:763-803`)."""
    n = vectors.shape[1]
    bottom, top = int((1.0 - density) * n), int(top_drop * n)
    if bottom + top >= n:
        raise ValueError(f"breadcrumbs: dropping {1.0 - density} and {top_drop} of {n} entries leaves none")
    magnitudes = vectors.abs()
    ordered = magnitudes.sort(dim=1).values
    low, high = ordered[:, bottom:bottom + 1], ordered[:, n - top - 1:n - top]
    return vectors * ((magnitudes >= low) & (magnitudes <= high))


def breadcrumbs_ties(models: list[StateDict], base: StateDict, density: float, top_drop: float,
                     scale: Scale) -> StateDict:
    """Breadcrumbs-TIES: drop both magnitude tails of each task vector, elect signs, disjoint mean."""
    kept = breadcrumbs(task_vectors(models, base), density, top_drop)
    return _add_to_base(base, scale * disjoint_mean(kept, elect_sign(kept)))


def magmax(models: list[StateDict], base: StateDict, scale: float) -> StateDict:
    """base + scale * (per entry, the task-vector value of largest magnitude; on a tie, the first model's)."""
    vectors = task_vectors(models, base)
    chosen = vectors.gather(0, vectors.abs().argmax(dim=0, keepdim=True))[0]
    return _add_to_base(base, scale * chosen)


def model_stock(a: StateDict, b: StateDict, base: StateDict, eps: float = 1e-8) -> StateDict:
    """Model Stock of two models: per tensor, with cos the cosine between a - base and b - base,
    ratio = 2 cos / (cos + 1) and merged = ratio (a + b) / 2 + (1 - ratio) base (FiF `merge.py:876-952`; its eps
    in both denominators)."""
    _check_keys(a, b, base)
    merged = {}
    for k in base:
        if not torch.is_floating_point(base[k]):
            merged[k] = base[k].clone()
            continue
        u, v = (a[k] - base[k]).double(), (b[k] - base[k]).double()
        cos = max(-1.0, min(1.0, float((u * v).sum() / (math.sqrt(float((u * u).sum() * (v * v).sum())) + eps))))
        ratio = 2.0 * cos / (cos + 1.0 + eps)
        merged[k] = (ratio * 0.5 * (a[k] + b[k]) + (1.0 - ratio) * base[k]).to(base[k].dtype)
    return merged


def tall_masks(models: list[StateDict], base: StateDict, scale: float, lam: float, min_tasks: int) -> StateDict:
    """TALL-mask consensus: the summed task vector tau, kept where at least `min_tasks` models' masks
    |theta_t - theta_0| > lam |theta_0 + tau - theta_t| hold; base + scale * the kept part."""
    vectors = task_vectors(models, base)
    summed = vectors.sum(dim=0)
    masks = vectors.abs() > lam * (summed.unsqueeze(0) - vectors).abs()  # |theta_0 + tau - theta_t| = |tau - tau_t|
    return _add_to_base(base, scale * summed * (masks.sum(dim=0) >= min_tasks))


def random_merge(models: list[StateDict], base: StateDict, scale: float, generator: torch.Generator) -> StateDict:
    """base + scale * (per entry, the task-vector value of a model drawn uniformly from `generator`)."""
    vectors = task_vectors(models, base)
    pick = torch.randint(0, vectors.shape[0], (1, vectors.shape[1]), generator=generator)
    return _add_to_base(base, scale * vectors.gather(0, pick)[0])


LinesShape = Literal["linear", "quadratic", "sqrt"]
_BLOCK = re.compile(r"\.resblocks\.(\d+)\.")


def lines_scaling(base: StateDict, alpha: float, beta: float, shape: LinesShape) -> torch.Tensor:
    """LiNeS's factor for every floating entry, in `task_vectors` order: alpha + beta (l / (L - 1))^p for an entry
    of residual block l of L (p = 1, 2 or 1/2 for linear, quadratic, sqrt), alpha for every other entry.

    Blocks are read from the keys, as FiF does (`.resblocks.<l>.`, L one more than the largest l of any tower):
    the first block gets alpha, the last alpha + beta. A convolutional tower (ResNet) has no such keys and gets
    alpha throughout, as in FiF.
    """
    layers = {k: int(m.group(1)) for k in base if (m := _BLOCK.search(k))}
    if not layers:
        raise ValueError("LiNeS needs transformer blocks (keys with '.resblocks.<l>.'); this model has none")
    span = max(1, max(layers.values()))  # L - 1
    power = {"linear": 1.0, "quadratic": 2.0, "sqrt": 0.5}[shape]
    factors = [alpha + beta * (layers[k] / span) ** power if k in layers else alpha for k in _floating(base)]
    return torch.cat([torch.full((base[k].numel(),), f, dtype=torch.float32)
                      for k, f in zip(_floating(base), factors)])
