"""LNFit: only the normalisation layers train.

Tuning only LayerNorm gain and bias, as in Fomo-in-Flux's `lnfit` (Roth, Udandarao et al., NeurIPS 2024 D&B,
arXiv 2408.14471), after De Min et al., "On the Effectiveness of LayerNorm Tuning for Continual Learning in
Vision Transformers", ICCV-W 2023 (arXiv 2308.09610): the gain and bias of every normalisation layer of both
towers (a ViT's `ln_pre`, `ln_1`, `ln_2`, `ln_post`; the text tower's, with `ln_final`; a ResNet image
tower's BatchNorm layers, whose running statistics then keep updating as they train), optionally the
temperature.
"""

from __future__ import annotations

import torch

from clipflux.methods.base import register
from clipflux.methods.select import SubsetTuning

NORMS = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm)


def norm_parameters(model: torch.nn.Module) -> set[str]:
    """Names of the parameters of every normalisation layer of the model."""
    return {f"{module_name}.{name}" if module_name else name
            for module_name, module in model.named_modules() if isinstance(module, NORMS)
            for name, _ in module.named_parameters(recurse=False)}


@register("lnfit")
class LNFit(SubsetTuning):
    """Train the normalisation layers' parameters only."""

    def setup(self, model: torch.nn.Module) -> None:
        self.norms = norm_parameters(model)
        super().setup(model)

    def in_subset(self, name: str) -> bool:
        return name in self.norms
