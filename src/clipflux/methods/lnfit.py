"""LNFit: only the LayerNorms train.

Tuning only LayerNorm gain and bias, as in Fomo-in-Flux's `lnfit` (Roth, Udandarao et al., NeurIPS 2024 D&B,
arXiv 2408.14471), after De Min et al., "On the Effectiveness of LayerNorm Tuning for Continual Learning in
Vision Transformers", ICCV-W 2023 (arXiv 2308.09610): every parameter whose name contains "ln_", as FiF
selects them (continual_lib/lnfit.py:27, 44): a ViT's `ln_pre`, `ln_1`, `ln_2`, `ln_post` and the text
tower's, with `ln_final`; optionally the temperature. A ResNet image tower has no LayerNorm, so by default
it stays frozen, BatchNorm statistics included.

Option (not in FiF): `batchnorm` also trains the BatchNorm affine parameters (gain and bias) of a ResNet
image tower. Their running statistics stay frozen: the layers stop tracking them (`track_running_stats`
off), and the trainer keeps them in eval mode (`clipflux.train.train_mode`), so they normalise with the
pretrained statistics in training as in evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipflux.methods.base import register
from clipflux.methods.select import SubsetParams, SubsetTuning
from clipflux.models import is_batchnorm


@dataclass(frozen=True)
class LNFitParams(SubsetParams):
    """`SubsetParams` plus `batchnorm`: also train BatchNorm affine parameters, with their running
    statistics frozen (off by default, as FiF, which trains only the `ln_` parameters)."""

    batchnorm: bool = False


def batchnorm_parameters(model: torch.nn.Module) -> set[str]:
    """Names of the affine parameters of every BatchNorm layer of the model."""
    return {f"{module_name}.{name}" if module_name else name
            for module_name, module in model.named_modules() if is_batchnorm(module)
            for name, _ in module.named_parameters(recurse=False)}


@register("lnfit")
class LNFit(SubsetTuning):
    """Train the LayerNorms' parameters only (and, with `batchnorm`, BatchNorm's affine parameters)."""

    Params = LNFitParams

    def setup(self, model: torch.nn.Module) -> None:
        self.batchnorms = batchnorm_parameters(model) if self.params.batchnorm else set()
        super().setup(model)
        if self.params.batchnorm:
            for module in model.modules():
                if is_batchnorm(module):
                    module.track_running_stats = False  # the statistics stay as pretrained

    def in_subset(self, name: str) -> bool:
        return "ln_" in name or name in self.batchnorms
