"""FLOPs of one training step as Fomo-in-Flux counts them: 2 per multiply-add of matrix products, convolutions
and attention, nothing else (`torch.utils.flop_counter.FlopCounterMode`, which FiF's `flops_computation.py:19,336`
wraps around each step; open_clip's `docs/model_profile.csv` counts the same way: ViT-B/32 at 224 px is 8.82
GFLOPs per sample for the image tower and 5.96 for the text tower).

The count comes from fvcore's trace of the step (the model's forward and the method's loss) with gradients
enabled: under `no_grad` the fused attention path of `nn.MultiheadAttention` would hide the attention
projections. This module's handlers count the matrix products, convolutions and attention
(`aten::scaled_dot_product_attention`, which fvcore skips; and the fused attention that a frozen model in eval
mode runs without gradients, LwF's teacher, which `FlopCounterMode` cannot see into); fvcore's other handlers
(normalisations, pooling, upsampling) are switched off, as `FlopCounterMode` has no formula for them.
Elementwise work is not counted, as in `FlopCounterMode`.

The backward pass is not traced, so it is derived from the same trace, as autograd executes it: every
bilinear operation (linear, matmul, convolution) costs its forward FLOPs once more for each operand whose
gradient autograd computes, that is each operand that requires grad. So a frozen parameter costs no weight
gradient, an activation gradient flows back only as far as the earliest trainable parameter, and a frozen
tower costs its forward only. Attention's backward is counted as torch's fused kernels run it (and as
`torch.utils.flop_counter` counts it): the scores recomputed plus four products, when any of q, k, v
requires grad.

An adapter that forms its weight as W + s B A (clipflux's LoRA, as FiF's) makes that weight require grad,
so it pays the full weight-gradient product of W, then the small products for B and A: that is what runs.
"""

from __future__ import annotations

import warnings
from collections import Counter
from math import prod
from typing import Any, Callable

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import (addmm_flop_jit, bmm_flop_jit, conv_flop_jit, einsum_flop_jit, get_shape,
                                   linear_flop_jit, matmul_flop_jit)

Handle = Callable[[list[Any], list[Any]], Counter]
# FiF's unit: FlopCounterMode counts 2 FLOPs per multiply-add (torch/utils/flop_counter.py: mm_flop = 2 * m * n * k);
# fvcore's handlers below return multiply-adds.
FLOPS_PER_MAC = 2
# Module scopes of the traced step (see `count_step`): the image tower, the rest of the CLIP (text tower,
# projections, temperature), and what the loss adds outside the model (similarities, LwF's teacher forward).
PARTS = {"image": "model.visual", "text": "model", "other": ""}


def _requires_grad(value: torch._C.Value) -> bool:
    kind = value.type()
    return isinstance(kind, torch._C.TensorType) and bool(kind.requires_grad())


def _bilinear(op: str, forward: Callable, operands: Callable[[list[Any]], list[Any]]) -> Handle:
    """A handler counting the forward and, per operand that requires grad, the same again for its gradient."""

    def handle(inputs: list[Any], outputs: list[Any]) -> Counter:
        counted = forward(inputs, outputs)  # multiply-adds: a number, or a Counter (fvcore's convolution)
        flops = FLOPS_PER_MAC * int(sum(counted.values()) if isinstance(counted, Counter) else counted)
        grads = sum(_requires_grad(v) for v in operands(inputs))
        return Counter({f"forward/{op}": flops, f"backward/{op}": flops * grads})

    return handle


def _attention(inputs: list[Any], outputs: list[Any]) -> Counter:
    """aten::scaled_dot_product_attention(q, k, v, ...): scores Q K^T and output P V; backward as fused kernels."""
    (*batch, length, dim), (*_, keys, _), (*_, _, value_dim) = (get_shape(v) for v in inputs[:3])
    scores = FLOPS_PER_MAC * prod(batch) * length * keys * dim
    mixing = FLOPS_PER_MAC * prod(batch) * length * keys * value_dim
    trains = any(_requires_grad(v) for v in inputs[:3])
    # backward: recomputed scores, dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q
    backward = 3 * scores + 2 * mixing if trains else 0
    return Counter({"forward/attention": scores + mixing, "backward/attention": backward})


def _fused_attention(inputs: list[Any], outputs: list[Any]) -> Counter:
    """aten::_native_multi_head_attention (inference only): projections of q, k, v and out, and attention."""
    (*batch, length, dim), (*_, keys, _) = get_shape(inputs[0]), get_shape(inputs[1])
    tokens, key_tokens = prod(batch) * length, prod(batch) * keys
    projections = (tokens + 2 * key_tokens) * dim * dim + tokens * dim * dim
    return Counter({"forward/attention": FLOPS_PER_MAC * (projections + 2 * prod(batch) * length * keys * dim)})


HANDLES: dict[str, Handle] = {
    "aten::linear": _bilinear("linear", linear_flop_jit, lambda i: i[:2]),
    "aten::addmm": _bilinear("linear", addmm_flop_jit, lambda i: i[1:3]),
    "aten::matmul": _bilinear("matmul", matmul_flop_jit, lambda i: i[:2]),
    "aten::mm": _bilinear("matmul", matmul_flop_jit, lambda i: i[:2]),
    "aten::bmm": _bilinear("matmul", bmm_flop_jit, lambda i: i[:2]),
    "aten::einsum": _bilinear("matmul", einsum_flop_jit, lambda i: list(i[1].node().inputs())),
    "aten::_convolution": _bilinear("convolution", conv_flop_jit, lambda i: i[:2]),
    "aten::scaled_dot_product_attention": _attention,
    "aten::_native_multi_head_attention": _fused_attention,
}


def count_step(step: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> Counter:
    """FLOPs of one training step in FiF's unit (see the module docstring), by "phase/part/operator".

    Args:
        step: a module whose forward runs the model (registered as its submodule `model`) and returns the loss.
        inputs: its forward's inputs.

    Returns:
        Counts for phases "forward" and "backward", parts "image" (`model.visual`), "text" (the rest of the
        model) and "other" (the loss and anything it runs outside the model), operators "linear", "matmul",
        "convolution" and "attention", e.g. "backward/image/linear".
    """
    # only these handlers: fvcore's for normalisations, pooling and upsampling go, as FlopCounterMode has none
    analysis = FlopCountAnalysis(step, inputs).clear_op_handles().set_op_handle(**HANDLES)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python values in the graph
        scoped = analysis.by_module_and_operator()
    inclusive = {part: Counter(scoped.get(scope, {})) for part, scope in PARTS.items()}
    exclusive = {"image": inclusive["image"], "text": inclusive["text"] - inclusive["image"],
                 "other": inclusive["other"] - inclusive["text"]}
    counts = Counter()
    for part, ops in exclusive.items():
        for key, value in ops.items():
            phase, _, op = key.rpartition("/")
            counts[f"{phase}/{part}/{op}"] += value
    return counts
