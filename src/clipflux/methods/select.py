"""Which parameters belong to which tower and block of an open_clip CLIP, and methods that train a subset.

In open_clip's `CLIP`, the image tower lives under `visual.`; `logit_scale` (and `logit_bias`) are shared by
both towers; everything else (token embedding, text transformer, `ln_final`, `text_projection`) is the text
tower. Parameter-selective methods freeze everything but a named subset, so no gradient is ever computed
for the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from clipflux.methods.base import Method

Tower = Literal["image", "text"]
SHARED = ("logit_scale", "logit_bias")


def tower_of(name: str) -> Tower | None:
    """The tower a parameter name belongs to, or None for the shared temperature (and bias)."""
    if name in SHARED:
        return None
    return "image" if name.startswith("visual.") else "text"


def transformer_of(model: torch.nn.Module, tower: Tower) -> torch.nn.Module:
    """The residual transformer of a tower (`model.visual.transformer` or `model.transformer`)."""
    if tower == "image":
        return model.visual.transformer
    return model.text.transformer if hasattr(model, "text") else model.transformer


# The residual stages of open_clip's `ModifiedResNet` (CLIP's RN50): FiF's block separators of a ResNet
# image tower (backbones/__init__.py:75-80, "clip_rn50": ["layer1", "layer2", "layer3", "layer4"]).
RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


def is_resnet(model: torch.nn.Module) -> bool:
    """Whether the image tower is a ResNet (open_clip's `ModifiedResNet`) rather than a transformer."""
    return hasattr(model.visual, RESNET_STAGES[0])


def resblocks(model: torch.nn.Module, tower: Tower, indices: list[int]) -> list[torch.nn.Module]:
    """The residual blocks of a tower with the given indices (all of them when `indices` is empty), as FiF's
    `backbone_block_idcs` / `head_block_idcs` index its block separators: the blocks of a transformer
    (`transformer.resblocks.i`), or the four residual stages `layer1`..`layer4` of a ResNet image tower.

    Raises:
        ValueError: an index is outside the tower's depth.
    """
    if tower == "image" and is_resnet(model):
        blocks = [getattr(model.visual, name) for name in RESNET_STAGES]
    else:
        blocks = list(transformer_of(model, tower).resblocks)
    bad = [i for i in indices if not -len(blocks) <= i < len(blocks)]
    if bad:
        raise ValueError(f"{tower} tower has {len(blocks)} blocks; block indices {bad} do not exist")
    return [blocks[i] for i in indices] if indices else blocks


class SelectiveTuning(Method):
    """Train only the parameters that `selects(name)` accepts; freeze all others (`requires_grad=False`)."""

    def selects(self, name: str) -> bool:
        raise NotImplementedError

    def setup(self, model: torch.nn.Module) -> None:
        super().setup(model)
        chosen = 0
        for name, param in model.named_parameters():
            param.requires_grad_(self.selects(name))
            chosen += param.requires_grad
        if not chosen:
            raise ValueError(f"method {self.name!r} selects no parameter of this model")


@dataclass(frozen=True)
class SubsetParams:
    """`tune_logit_scale`: also train the temperature (FiF's flag for BitFit and LNFit, off by default)."""

    tune_logit_scale: bool


class SubsetTuning(SelectiveTuning):
    """Train a subset of each tower's parameters (`in_subset`), and the temperature only if asked."""

    Params = SubsetParams

    def in_subset(self, name: str) -> bool:
        raise NotImplementedError

    def selects(self, name: str) -> bool:
        return self.params.tune_logit_scale if name in SHARED else self.in_subset(name)

