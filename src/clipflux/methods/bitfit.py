"""BitFit: only the bias terms train.

Ben Zaken et al., "BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked
Language-models", ACL 2022 (arXiv 2106.10199), as used in Fomo-in-Flux (Roth, Udandarao et al., NeurIPS 2024
D&B, arXiv 2408.14471): every parameter whose name contains "bias" (attention, MLP and LayerNorm biases of
both towers), optionally the temperature.
"""

from __future__ import annotations

from dataclasses import dataclass

from clipflux.methods.base import register
from clipflux.methods.select import SHARED, SelectiveTuning


@dataclass(frozen=True)
class BitFitParams:
    """`tune_logit_scale`: also train the temperature (FiF's flag, off by default)."""

    tune_logit_scale: bool


@register("bitfit")
class BitFit(SelectiveTuning):
    """Train the biases only."""

    Params = BitFitParams

    def selects(self, name: str) -> bool:
        if name in SHARED:
            return self.params.tune_logit_scale
        return "bias" in name
