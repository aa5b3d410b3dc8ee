"""DoRA: a LoRA update of the direction of each weight row, with a separately trained magnitude.

Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation", ICML 2024 (arXiv 2402.09353), with Fomo-in-Flux's
hyperparameters (Roth, Udandarao et al., NeurIPS 2024 D&B, arXiv 2408.14471). The adapter code, and how it
treats convolutions (FiF's own DoRA_Conv2d cannot run), is in `clipflux.methods.adapters`.
"""

from __future__ import annotations

import torch

from clipflux.methods.adapters import AdapterFactory, AdapterMethod, DoRADelta, Target
from clipflux.methods.base import register


@register("dora")
class DoRA(AdapterMethod):
    """DoRA on the chosen blocks; evaluated with the adapters merged into the weights."""

    def factory(self, found: list[Target], generator: torch.Generator) -> AdapterFactory:
        p = self.params
        # As LoRA on a k x k conv: rank r*k; its magnitude is per output channel, k rows of the matrix view.
        return lambda rows, cols, kernel, weight: DoRADelta(rows, cols, p.rank * kernel, p.scale, generator,
                                                            weight, group=kernel)
