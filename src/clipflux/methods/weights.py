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


def trainable_values(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached clones of the trainable parameters, by name (an anchor)."""
    return {name: p.detach().clone() for name, p in trainable(model).items()}


def clone_tensors(tensors: dict[str, Any] | None) -> dict[str, Any] | None:
    """Clone every tensor of a flat dict, other values as they are (None stays None).

    What `state_dict`/`load_state_dict` hand over, so a saved state never aliases a tensor that training
    goes on changing.
    """
    if tensors is None:
        return None
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}


def quadratic_penalty(model: torch.nn.Module, weights: dict[str, torch.Tensor] | None,
                      anchor: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """sum_i weight_i * (theta_i - anchor_i)^2 over the trainable parameters (0 while there are no weights).

    The importance-weighted pull towards an anchor that EWC (Fisher) and SI (path integral) share.
    """
    if weights is None:
        return torch.zeros(())
    return sum(((weights[n] * (p - anchor[n]) ** 2).sum() for n, p in trainable(model).items()), torch.zeros(()))

