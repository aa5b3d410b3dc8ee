"""Locked-image tuning: the image tower is frozen; the text tower and the temperature train.

Zhai et al., "LiT: Zero-Shot Transfer with Locked-image text Tuning", CVPR 2022 (arXiv 2111.07991); the
`freeze_features` variant of Fomo-in-Flux (Roth, Udandarao et al., NeurIPS 2024 D&B, arXiv 2408.14471).
"""

from __future__ import annotations

from clipflux.methods.base import register
from clipflux.methods.select import SelectiveTuning, tower_of


@register("locked_image")
class LockedImage(SelectiveTuning):
    """Freeze every parameter under `visual.`; the shared `logit_scale` keeps training."""

    def selects(self, name: str) -> bool:
        return tower_of(name) != "image"
