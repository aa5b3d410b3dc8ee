"""Low-rank adapters (LoRA, DoRA, VeRA) on open_clip's transformer blocks, and merging them for evaluation.

Written by hand on `torch.nn.utils.parametrize` rather than with `peft`: open_clip's attention is
`nn.MultiheadAttention`, whose q, k and v projections are one packed `in_proj_weight` (3d x d) read directly
by `F.multi_head_attention_forward`, and whose `out_proj.forward` is never called. peft (0.21) supports that
module for LoRA only, always adapts q, k, v and `out_proj` together (no key/value-only adapters), refuses
DoRA on it, has no VeRA for it, and swaps merged weights in and out around every forward call. A
parametrization instead makes `in_proj_weight` (or any Linear's `weight`) a function of the frozen
original and the adapter, so every reader of the attribute sees the adapted weight, and merging is just
evaluating that function once.

Each adapted weight gets one `Adapted` parametrization holding one adapter per row range (for the packed
in_proj: one each for q, k, v, or only k and v). An adapter maps the frozen rows W to adapted rows:

- LoRA (Hu et al., arXiv 2106.09685): W + s * B A, with B = 0 at the start.
- DoRA (Liu et al., arXiv 2402.09353): m * V / ||V||, V = W + s * B A, row norms (one per output feature),
  m initialised to ||W||; the norm is detached in the backward pass as the paper recommends (Sec. 4.3).
- VeRA (Kopiczko et al., arXiv 2310.11454): W + s * diag(b) B diag(d) A, with A and B frozen random
  matrices shared by all layers (sliced to each shape, drawn from a seed) and only b (zeros) and d (d_init)
  trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn.utils import parametrize

from clipflux.config import ConfigError
from clipflux.methods.base import Method
from clipflux.methods.select import SHARED, Tower, resblocks
from clipflux.methods.weights import copy_model


class LoRADelta(torch.nn.Module):
    """W + scale * B A (B starts at zero, so the adapted weight starts equal to W)."""

    def __init__(self, rows: int, cols: int, rank: int, scale: float, generator: torch.Generator):
        super().__init__()
        self.scale = scale
        self.lora_A = torch.nn.Parameter(torch.empty(rank, cols))
        self.lora_B = torch.nn.Parameter(torch.zeros(rows, rank))
        torch.nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scale * (self.lora_B @ self.lora_A)


class DoRADelta(LoRADelta):
    """m * V / ||V|| per row, V = W + scale * B A (magnitude m starts at ||W||, so the start is W)."""

    def __init__(self, rows: int, cols: int, rank: int, scale: float, generator: torch.Generator,
                 weight: torch.Tensor):
        super().__init__(rows, cols, rank, scale, generator)
        self.magnitude = torch.nn.Parameter(weight.detach().norm(dim=1).clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        direction = super().forward(weight)
        return direction * (self.magnitude / direction.norm(dim=1).detach()).unsqueeze(1)


class VeRADelta(torch.nn.Module):
    """W + scale * diag(b) B diag(d) A with frozen shared A, B (non-persistent: regenerated from the seed)."""

    def __init__(self, shared_a: torch.Tensor, shared_b: torch.Tensor, rows: int, cols: int, scale: float,
                 d_init: float):
        super().__init__()
        self.scale = scale
        self.register_buffer("vera_A", shared_a[:, :cols], persistent=False)
        self.register_buffer("vera_B", shared_b[:rows], persistent=False)
        self.vera_d = torch.nn.Parameter(torch.full((shared_a.shape[0],), float(d_init)))
        self.vera_b = torch.nn.Parameter(torch.zeros(rows))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        delta = (self.vera_b.unsqueeze(1) * self.vera_B) @ (self.vera_d.unsqueeze(1) * self.vera_A)
        return weight + self.scale * delta


class Adapted(torch.nn.Module):
    """A parametrization: adapters on row ranges of a weight; other rows pass through unchanged."""

    def __init__(self, ranges: list[tuple[int, int]], adapters: list[torch.nn.Module]):
        super().__init__()
        self.ranges = ranges
        self.adapters = torch.nn.ModuleList(adapters)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        pieces, position = [], 0
        for (start, stop), adapter in zip(self.ranges, self.adapters):
            if position < start:
                pieces.append(weight[position:start])
            pieces.append(adapter(weight[start:stop]))
            position = stop
        if position < weight.shape[0]:
            pieces.append(weight[position:])
        return torch.cat(pieces)


# A factory makes the adapter of one row block: (rows, cols, frozen rows of the weight) -> module.
AdapterFactory = Callable[[int, int, torch.Tensor], torch.nn.Module]


@dataclass(frozen=True)
class Target:
    """One weight to adapt: `module.<attr>`, on these row ranges."""

    module: torch.nn.Module
    attr: str
    ranges: list[tuple[int, int]]


def targets(model: torch.nn.Module, towers: list[Tower], blocks: dict[Tower, list[int]],
            kv_only: bool) -> list[Target]:
    """The weights to adapt: in each chosen block, k and v of the packed in_proj (`kv_only`), or q, k, v,
    `out_proj`, and the MLP's `c_fc` and `c_proj`; in a ResNet's attention pool, `k_proj` and `v_proj`, or
    `q_proj`, `k_proj`, `v_proj` and `c_proj`."""
    found = []
    for tower in towers:
        for block in resblocks(model, tower, blocks[tower]):
            if hasattr(block, "q_proj"):  # open_clip's AttentionPool2d: separate q, k, v and output Linears
                names = ("k_proj", "v_proj") if kv_only else ("q_proj", "k_proj", "v_proj", "c_proj")
                found += [Target(getattr(block, n), "weight", [(0, getattr(block, n).weight.shape[0])]) for n in names]
                continue
            attn = block.attn
            if not isinstance(attn, torch.nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
                raise TypeError(f"expected nn.MultiheadAttention with a packed in_proj, got {type(attn).__name__}")
            d = attn.embed_dim
            qkv = [(0, d), (d, 2 * d), (2 * d, 3 * d)]
            found.append(Target(attn, "in_proj_weight", qkv[1:] if kv_only else qkv))
            if not kv_only:
                for linear in (attn.out_proj, block.mlp.c_fc, block.mlp.c_proj):
                    found.append(Target(linear, "weight", [(0, linear.weight.shape[0])]))
    return found


def attach(found: list[Target], factory: AdapterFactory) -> None:
    """Register an `Adapted` parametrization on every target; the original weights are frozen."""
    for target in found:
        weight = getattr(target.module, target.attr)
        adapters = [factory(stop - start, weight.shape[1], weight[start:stop]) for start, stop in target.ranges]
        adapted = Adapted(target.ranges, adapters).to(weight.device, weight.dtype)
        parametrize.register_parametrization(target.module, target.attr, adapted)
        getattr(target.module.parametrizations, target.attr).original.requires_grad_(False)


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state with every adapted weight evaluated once, under the plain (unadapted) names."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if ".parametrizations." not in k}
    with torch.no_grad():
        for prefix, module in model.named_modules():
            if parametrize.is_parametrized(module):
                for attr in module.parametrizations:
                    state[f"{prefix}.{attr}" if prefix else attr] = getattr(module, attr).detach().clone()
    return state


@dataclass(frozen=True)
class AdapterParams:
    """Hyperparameters shared by LoRA, DoRA and VeRA (FiF's names in brackets).

    Attributes:
        rank: rank r of the update [rank].
        scale: multiplies the update, W + scale * update [scale]; the `alpha / r` of other codebases.
        towers: which towers get adapters ("image", "text"); a tower not listed stays frozen.
        image_blocks, text_blocks: indices of the adapted residual blocks; empty = every block
            [backbone_block_idcs, head_block_idcs].
        kv_only: adapt only the key and value projections of attention; otherwise q, k, v, `out_proj` and
            the MLP's `c_fc` and `c_proj` [kv_only; FiF's flag narrows only the packed in_proj, keeping
            adapters on `out_proj` and `c_proj`, and its name filter never adapts `c_fc`].
        tune_logit_scale: also train the temperature [tune_logit_scale].
        seed: seed of the adapters' random initialisation.
    """

    rank: int
    scale: float
    towers: list[Tower]
    image_blocks: list[int]
    text_blocks: list[int]
    kv_only: bool
    tune_logit_scale: bool
    seed: int

    def validate(self, path: str) -> None:
        if self.rank <= 0:
            raise ConfigError(f"{path}.rank: must be > 0, got {self.rank}")
        if not self.towers or len(set(self.towers)) != len(self.towers):
            raise ConfigError(f"{path}.towers: list each of 'image', 'text' at most once, got {self.towers}")


class AdapterMethod(Method):
    """Frozen base weights plus trainable adapters; evaluation uses a copy with the adapters merged in.

    Subclasses implement `factory`; their Params extend `AdapterParams`. The adapters are parameters of the
    model, so the trainer's checkpoints carry them; nothing else changes during training (VeRA's frozen
    random matrices are regenerated from the seed, not saved).
    """

    Params = AdapterParams

    def factory(self, found: list[Target], generator: torch.Generator) -> AdapterFactory:
        """The adapter maker for these targets, drawing its random initialisation from `generator`."""
        raise NotImplementedError

    def setup(self, model: torch.nn.Module) -> None:
        super().setup(model)
        self._plain = copy_model(model)  # an unadapted shell to hold merged weights
        for name, param in model.named_parameters():
            param.requires_grad_(self.params.tune_logit_scale and name in SHARED)
        p = self.params
        found = targets(model, p.towers, {"image": p.image_blocks, "text": p.text_blocks}, p.kv_only)
        attach(found, self.factory(found, torch.Generator().manual_seed(p.seed)))

    def eval_model(self) -> torch.nn.Module:
        merged = copy_model(self._plain)
        merged.load_state_dict(merged_state_dict(self.model))
        return merged
