"""Locked-text tuning: the text tower is frozen; the image tower and the temperature train.

The mirror image of LiT (Zhai et al., CVPR 2022, arXiv 2111.07991), as Fomo-in-Flux's `freeze_head`
variant (Roth, Udandarao et al., NeurIPS 2024 D&B, arXiv 2408.14471): the text encoder acts as a fixed head.
"""

from __future__ import annotations

from clipflux.methods.base import register
from clipflux.methods.select import SelectiveTuning, tower_of


@register("locked_text")
class LockedText(SelectiveTuning):
    """Freeze the text tower (token embedding, transformer, `ln_final`, projection); `logit_scale` trains."""

    def selects(self, name: str) -> bool:
        return tower_of(name) != "text"
