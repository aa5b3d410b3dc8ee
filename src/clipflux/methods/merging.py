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

Task vectors are taken over every floating-point entry; TIES trims over the whole flattened model, as the
TIES reference and FiF do. Non-floating entries (integer buffers) are copied from the base.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

StateDict = dict[str, torch.Tensor]
Operator = Literal["interpolation", "slerp", "task_arithmetic", "ties", "dare_ties"]


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


def task_arithmetic(models: list[StateDict], base: StateDict, scale: float) -> StateDict:
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


def ties(models: list[StateDict], base: StateDict, density: float, scale: float) -> StateDict:
    """TIES-merging: trim to `density`, elect signs, disjoint mean; base + scale * merged task vector."""
    trimmed = trim(task_vectors(models, base), density)
    return _add_to_base(base, scale * disjoint_mean(trimmed, elect_sign(trimmed)))


def dare(vectors: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Drop each entry with probability 1 - density and divide the kept ones by density."""
    if density >= 1.0:
        return vectors.clone()
    keep = torch.rand(vectors.shape, generator=generator, dtype=torch.float64) < density
    return torch.where(keep, vectors / density, torch.zeros_like(vectors))


def dare_ties(models: list[StateDict], base: StateDict, density: float, scale: float,
              generator: torch.Generator) -> StateDict:
    """DARE-TIES: random drop and rescale (from `generator`), then TIES's sign election and disjoint mean."""
    dropped = dare(task_vectors(models, base), density, generator)
    return _add_to_base(base, scale * disjoint_mean(dropped, elect_sign(dropped)))
