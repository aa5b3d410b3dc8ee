"""LNFit: only the normalisation layers train.

Tuning only LayerNorm gain and bias, as in Fomo-in-Flux's `lnfit` (Roth, Udandarao et al., NeurIPS 2024 D&B,
arXiv 2408.14471), after De Min et al., "On the Effectiveness of LayerNorm Tuning for Continual Learning in
Vision Transformers", ICCV-W 2023 (arXiv 2308.09610): every `ln_*` parameter of both towers (`ln_pre`,
`ln_1`, `ln_2`, `ln_post`, `ln_final`), optionally the temperature.
"""

from __future__ import annotations

from clipflux.methods.base import register
from clipflux.methods.select import SubsetTuning


@register("lnfit")
class LNFit(SubsetTuning):
    """Train the LayerNorm parameters only."""

    def in_subset(self, name: str) -> bool:
        return any(part.startswith("ln_") for part in name.split("."))
