"""BitFit: only the bias terms train.

Ben Zaken et al., "BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked
Language-models", ACL 2022 (arXiv 2106.10199), as used in Fomo-in-Flux (Roth, Udandarao et al., NeurIPS 2024
D&B, arXiv 2408.14471): every parameter whose name contains "bias" (attention, MLP and LayerNorm biases of
both towers), optionally the temperature.
"""

from __future__ import annotations

from clipflux.methods.base import register
from clipflux.methods.select import SubsetTuning


@register("bitfit")
class BitFit(SubsetTuning):
    """Train the biases only."""

    def in_subset(self, name: str) -> bool:
        return "bias" in name
