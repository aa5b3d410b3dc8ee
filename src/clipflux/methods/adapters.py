"""Low-rank adapters (LoRA, DoRA, VeRA) on open_clip's towers, placed as Fomo-in-Flux places them, and merging
them for evaluation.

Written by hand on `torch.nn.utils.parametrize` rather than with `peft`: open_clip's attention is
`nn.MultiheadAttention`, whose q, k and v projections are one packed `in_proj_weight` (3d x d) read directly
by `F.multi_head_attention_forward`. peft (0.21) supports that module for LoRA only, always adapts q, k, v
and `out_proj` together (no key/value-only adapters), refuses DoRA on it, has no VeRA for it, and swaps
merged weights in and out around every forward call. A parametrization instead makes `in_proj_weight` (or
any Linear's or Conv2d's `weight`) a function of the frozen original and the adapter, so every reader of the
attribute sees the adapted weight, and merging is just evaluating that function once.

Where the adapters go (`targets`) follows FiF's code (continual_lib/lora.py:79-172; dora.py and vera.py run
the same loop): in a ResNet image tower, every Conv2d of the residual stages; in a transformer block, the
packed in_proj and the MLP's `c_proj`. A Conv2d's (out, in, k, k) weight is adapted as its (out*k, in*k)
matrix view, with rank r*k, as loralib's ConvLoRA and FiF's LoRA_Conv2d do (lora.py:201-265:
delta = scale * (B A).view(out, in, k, k), A of (r*k, in*k), B of (out*k, r*k)).

Each adapted weight gets one `Adapted` parametrization holding one adapter per row range of its matrix (for
the packed in_proj: one each for q, k, v, or only k and v). An adapter maps the frozen rows W to adapted rows:

- LoRA (Hu et al., arXiv 2106.09685): W + s * B A, with B = 0 at the start.
- DoRA (Liu et al., arXiv 2402.09353): m * V / ||V||, V = W + s * B A, one norm per output feature (a row of a
  Linear's weight; an output channel, k rows of the matrix view, of a conv), m initialised to ||W||; the norm
  is detached in the backward pass as the paper recommends (Sec. 4.3). FiF's DoRA_Conv2d (dora.py:199-278)
  cannot run: it adds the (out*k, in*k) update to the 4-D weight without a view (a shape error for 3x3
  kernels, a wrong broadcast for 1x1) and sets its (out*k, 1) magnitude to an (out, k, k) norm. clipflux keeps
  its A and B shapes and takes the paper's magnitude per output channel (as peft does for convolutions).
- VeRA (Kopiczko et al., arXiv 2310.11454): W + s * diag(b) B diag(d) A, with A and B frozen random
  matrices shared by all layers (sliced to each shape, drawn from a seed) and only b (zeros) and d (d_init)
  trained; on a conv, d has r*k and b out*k entries, as in FiF's VeRA_Conv2d (vera.py:202-287).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch.nn.utils import parametrize

from clipflux.config import ConfigError
from clipflux.methods.base import Method
from clipflux.methods.select import SHARED, Tower, is_resnet, resblocks
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
    """m * V / ||V|| per output feature, V = W + scale * B A (magnitude m starts at ||W||, so the start is W).

    An output feature is `group` consecutive rows: 1 for a Linear's weight, k for the matrix view of a k x k
    conv's weight (its output channel's in*k*k entries).
    """

    def __init__(self, rows: int, cols: int, rank: int, scale: float, generator: torch.Generator,
                 weight: torch.Tensor, group: int = 1):
        super().__init__(rows, cols, rank, scale, generator)
        self.group = group
        self.magnitude = torch.nn.Parameter(weight.detach().reshape(rows // group, -1).norm(dim=1).clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        direction = super().forward(weight)
        norm = direction.reshape(self.magnitude.shape[0], -1).norm(dim=1).detach()
        return direction * (self.magnitude / norm).repeat_interleave(self.group).unsqueeze(1)


class VeRADelta(torch.nn.Module):
    """W + scale * diag(b) B diag(d) A with frozen shared A, B (non-persistent: regenerated from the seed)."""

    def __init__(self, shared_a: torch.Tensor, shared_b: torch.Tensor, rows: int, cols: int, rank: int,
                 scale: float, d_init: float):
        super().__init__()
        self.scale = scale
        self.register_buffer("vera_A", shared_a[:rank, :cols], persistent=False)
        self.register_buffer("vera_B", shared_b[:rows, :rank], persistent=False)
        self.vera_d = torch.nn.Parameter(torch.full((rank,), float(d_init)))
        self.vera_b = torch.nn.Parameter(torch.zeros(rows))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        delta = (self.vera_b.unsqueeze(1) * self.vera_B) @ (self.vera_d.unsqueeze(1) * self.vera_A)
        return weight + self.scale * delta


class Adapted(torch.nn.Module):
    """A parametrization: adapters on row ranges of a weight's matrix of `rows` rows (the weight itself, or a
    conv's (out*k, in*k) view); other rows pass through unchanged."""

    def __init__(self, ranges: list[tuple[int, int]], adapters: list[torch.nn.Module], rows: int):
        super().__init__()
        self.ranges = ranges
        self.adapters = torch.nn.ModuleList(adapters)
        self.rows = rows

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        matrix = weight.reshape(self.rows, -1)
        pieces, position = [], 0
        for (start, stop), adapter in zip(self.ranges, self.adapters):
            if position < start:
                pieces.append(matrix[position:start])
            pieces.append(adapter(matrix[start:stop]))
            position = stop
        if position < self.rows:
            pieces.append(matrix[position:])
        return torch.cat(pieces).reshape(weight.shape)


# A factory makes the adapter of one row block: (rows, cols, kernel, frozen rows of the matrix) -> module,
# where kernel is k for a k x k conv (rank r*k, an output channel is k rows) and 1 for a matrix.
AdapterFactory = Callable[[int, int, int, torch.Tensor], torch.nn.Module]


@dataclass(frozen=True)
class Target:
    """One weight to adapt, `module.<attr>`, on these row ranges of its matrix: the weight itself, or for a
    k x k conv (`kernel` = k) the (out*k, in*k) view of its (out, in, k, k) weight."""

    module: torch.nn.Module
    attr: str
    ranges: list[tuple[int, int]]
    kernel: int = 1

    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the adapted matrix."""
        weight = getattr(self.module, self.attr)
        return weight.shape[0] * self.kernel, weight[0].numel() // self.kernel


def _conv_target(conv: torch.nn.Conv2d) -> Target:
    k = conv.kernel_size[0]
    if conv.kernel_size != (k, k):
        raise TypeError(f"conv adapters need a square kernel, got {conv.kernel_size}")
    return Target(conv, "weight", [(0, conv.out_channels * k)], kernel=k)


def _block_targets(block: torch.nn.Module, kv_only: bool) -> list[Target]:
    attn = block.attn
    if not isinstance(attn, torch.nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
        raise TypeError(f"expected nn.MultiheadAttention with a packed in_proj, got {type(attn).__name__}")
    d = attn.embed_dim
    qkv = [(0, d), (d, 2 * d), (2 * d, 3 * d)]
    c_proj = block.mlp.c_proj
    return [Target(attn, "in_proj_weight", qkv[1:] if kv_only else qkv),
            Target(c_proj, "weight", [(0, c_proj.weight.shape[0])])]


def targets(model: torch.nn.Module, towers: list[Tower], blocks: dict[Tower, list[int]],
            kv_only: bool) -> list[Target]:
    """The weights to adapt in the chosen blocks of each tower, where FiF's code puts adapters
    (continual_lib/lora.py:79-172, the same loop in dora.py and vera.py):

    - a ResNet image tower (`layer1`..`layer4`, see `resblocks`): every Conv2d of the chosen stages, the
      bottleneck convs and the downsample convs (lora.py:92-108); not the stem convs and not the attention
      pool, which lie outside FiF's block separators (backbones/__init__.py:75-80). `kv_only` does not apply.
    - a transformer block (the text tower; a ViT image tower's blocks, never its patch embedding `conv1`):
      attention's packed in_proj on q, k and v, or on k and v with `kv_only` (FiF's LoRA_MHA, lora.py:154-172),
      and the MLP's `c_proj` (LoRA_Linear, lora.py:110-127). Not `c_fc`: FiF's filter skips every Linear whose
      name contains "fc" (lora.py:113). Not `out_proj`: FiF puts a LoRA_Linear on it, but LoRA_MHA hands the
      raw `out_proj.weight` to `multi_head_attention_forward` (lora.py:439, 452), so that adapter never acts.
    """
    found = []
    for tower in towers:
        for block in resblocks(model, tower, blocks[tower]):
            if tower == "image" and is_resnet(model):
                found += [_conv_target(m) for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
            else:
                found += _block_targets(block, kv_only)
    return found


def attach(found: list[Target], factory: AdapterFactory) -> None:
    """Register an `Adapted` parametrization on every target; the original weights are frozen."""
    for target in found:
        weight = getattr(target.module, target.attr)
        rows, cols = target.shape()
        matrix = weight.detach().reshape(rows, cols)
        adapters = [factory(stop - start, cols, target.kernel, matrix[start:stop]) for start, stop in target.ranges]
        adapted = Adapted(target.ranges, adapters, rows).to(weight.device, weight.dtype)
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
        image_blocks, text_blocks: indices of the adapted blocks, a transformer's residual blocks or a ResNet
            image tower's stages `layer1`..`layer4`; empty = every block [backbone_block_idcs, head_block_idcs].
        kv_only: adapt only the key and value rows of attention's packed in_proj; otherwise q, k and v. The
            MLP's `c_proj` and a ResNet's convs are adapted either way [kv_only; FiF's flag narrows only
            LoRA_MHA]. See `targets` for where adapters go.
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
    random matrices are regenerated from the seed, not saved). The unadapted shell that receives the merged
    weights lives on the host (`host_state`): FiF has no such copy, it evaluates the adapted model itself, so
    the shell must cost no accelerator memory.
    """

    Params = AdapterParams
    host_state: ClassVar[tuple[str, ...]] = ("_plain",)

    def factory(self, found: list[Target], generator: torch.Generator) -> AdapterFactory:
        """The adapter maker for these targets, drawing its random initialisation from `generator`."""
        raise NotImplementedError

    def setup(self, model: torch.nn.Module) -> None:
        super().setup(model)
        self._plain = copy_model(model).cpu()  # an unadapted shell to hold merged weights
        for name, param in model.named_parameters():
            param.requires_grad_(self.params.tune_logit_scale and name in SHARED)
        p = self.params
        found = targets(model, p.towers, {"image": p.image_blocks, "text": p.text_blocks}, p.kv_only)
        attach(found, self.factory(found, torch.Generator().manual_seed(p.seed)))

    def eval_model(self) -> torch.nn.Module:
        merged = copy_model(self._plain)
        merged.load_state_dict(merged_state_dict(self.model))
        return merged.to(next(self.model.parameters()).device)
