"""Weight snapshots that methods keep (anchors, EMA, merges, teachers), and which parameters train.

A snapshot is a plain `{name: tensor}` dict of the model's state, detached and cloned, so that later
training never changes it and `torch.save` writes it as it was.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

StateDict = dict[str, torch.Tensor]


def snapshot(model: torch.nn.Module) -> StateDict:
    """A detached clone of the model's whole state (parameters and persistent buffers)."""
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def copy_model(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of the model without its gradients (deepcopy would copy `.grad` too)."""
    copied = copy.deepcopy(model)
    for param in copied.parameters():
        param.grad = None
    return copied


def with_weights(model: torch.nn.Module, state: StateDict) -> torch.nn.Module:
    """A copy of `model` holding the weights `state` (the model itself is left as it is)."""
    copied = copy_model(model)
    copied.load_state_dict(state)
    return copied


def load_weights_(model: torch.nn.Module, state: StateDict) -> None:
    """Overwrite the model's weights in place with `state` (keeping its parameter objects)."""
    with torch.no_grad():
        for name, value in model.state_dict().items():
            value.copy_(state[name])


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters that train, by name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def clone_tensors(tensors: dict[str, Any] | None) -> dict[str, Any] | None:
    """Clone every tensor of a flat dict, other values as they are (None stays None).

    What `state_dict`/`load_state_dict` hand over, so a saved state never aliases a tensor that training
    goes on changing.
    """
    if tensors is None:
        return None
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}
