"""VeRA: frozen random low-rank matrices shared by all layers, with trainable scaling vectors per layer.

Kopiczko et al., "VeRA: Vector-based Random Matrix Adaptation", ICLR 2024 (arXiv 2310.11454), with
Fomo-in-Flux's hyperparameters (Roth, Udandarao et al., NeurIPS 2024 D&B, arXiv 2408.14471). The adapter
code is in `clipflux.methods.adapters`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipflux.methods.adapters import AdapterFactory, AdapterMethod, AdapterParams, Target, VeRADelta
from clipflux.methods.base import register


@dataclass(frozen=True)
class VeRAParams(AdapterParams):
    """`AdapterParams` plus `d_init`, the initial value of the scaling vector d (the paper's 0.1)."""

    d_init: float


@register("vera")
class VeRA(AdapterMethod):
    """VeRA on the chosen blocks; evaluated with the adapters merged into the weights."""

    Params = VeRAParams

    def factory(self, found: list[Target], generator: torch.Generator) -> AdapterFactory:
        p = self.params
        rank = p.rank * max(t.kernel for t in found)  # a k x k conv's adapter has rank r*k (vera.py:229-244)
        rows = max(stop - start for t in found for start, stop in t.ranges)
        cols = max(t.shape()[1] for t in found)
        # One pair of random matrices for the whole model, sliced to each layer's shape (the paper's sharing).
        shared_a, shared_b = torch.empty(rank, cols), torch.empty(rows, rank)
        torch.nn.init.kaiming_uniform_(shared_a, a=5 ** 0.5, generator=generator)
        torch.nn.init.kaiming_uniform_(shared_b, a=5 ** 0.5, generator=generator)
        return lambda rows, cols, kernel, weight: VeRADelta(shared_a, shared_b, rows, cols, p.rank * kernel,
                                                            p.scale, p.d_init)
