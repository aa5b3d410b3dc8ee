"""LoRA: a trainable low-rank update B A added to frozen projection and convolution weights.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022 (arXiv 2106.09685), with
Fomo-in-Flux's hyperparameters (Roth, Udandarao et al., NeurIPS 2024 D&B, arXiv 2408.14471). The adapter
code, and why it is not peft, is in `clipflux.methods.adapters`.
"""

from __future__ import annotations

import torch

from clipflux.methods.adapters import AdapterFactory, AdapterMethod, LoRADelta, Target
from clipflux.methods.base import register


@register("lora")
class LoRA(AdapterMethod):
    """LoRA on the chosen blocks; evaluated with the adapters merged into the weights."""

    def factory(self, found: list[Target], generator: torch.Generator) -> AdapterFactory:
        p = self.params
        # A k x k conv's adapter has rank r*k (FiF's LoRA_Conv2d, continual_lib/lora.py:215-224).
        return lambda rows, cols, kernel, weight: LoRADelta(rows, cols, p.rank * kernel, p.scale, generator)
