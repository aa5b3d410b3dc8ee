"""LNFit: only the normalisation layers train.

Tuning only LayerNorm gain and bias, as in Fomo-in-Flux's `lnfit` (Roth, Udandarao et al., NeurIPS 2024 D&B,
arXiv 2408.14471), after De Min et al., "On the Effectiveness of LayerNorm Tuning for Continual Learning in
Vision Transformers", ICCV-W 2023 (arXiv 2308.09610): every `ln_*` parameter of both towers (`ln_pre`,
`ln_1`, `ln_2`, `ln_post`, `ln_final`), optionally the temperature.
"""

from __future__ import annotations

from dataclasses import dataclass

from clipflux.methods.base import register
from clipflux.methods.select import SHARED, SelectiveTuning


@dataclass(frozen=True)
class LNFitParams:
    """`tune_logit_scale`: also train the temperature (FiF's flag, off by default)."""

    tune_logit_scale: bool


@register("lnfit")
class LNFit(SelectiveTuning):
    """Train the LayerNorm parameters only."""

    Params = LNFitParams

    def selects(self, name: str) -> bool:
        if name in SHARED:
            return self.params.tune_logit_scale
        return any(part.startswith("ln_") for part in name.split("."))
