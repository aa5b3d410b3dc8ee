"""What the benchmarks share: the machine line, in-memory batches, the bare open_clip loop, FLOPs and matmul peak.

Run the benchmarks from the repository root (`python benchmarks/<name>.py`); this folder is then on the path.
"""

from __future__ import annotations

import math
import os
import platform
import time
from contextlib import nullcontext
from typing import Sequence

import numpy as np
import open_clip
import torch
from torch.utils.flop_counter import FlopCounterMode

from clipflux.config import OptimConfig
from clipflux.models import image_size, to_input
from clipflux.schedules import lr_at

CAPTIONS = ("a red circle on a white background", "two blue squares", "a photo of a small green triangle",
            "a drawing of a yellow star in the corner")
# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, in FLOP/s.
DATASHEET_BF16_PEAK = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


def machine(device: torch.device) -> str:
    """One line: architecture, CPU or GPU name, cores, torch version, threads."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    return (f"machine: {platform.machine()} {where}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, device {device}")


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def memory_batches(model: torch.nn.Module, tokenizer, batch: int, count: int = 4, seed: int = 0,
                   device: torch.device = torch.device("cpu")) -> list[dict[str, torch.Tensor]]:
    """`count` distinct batches of random images and captions, ready for the model, in memory."""
    rng = np.random.default_rng(seed)
    size = image_size(model)
    out = []
    for _ in range(count):
        pixels = rng.integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)
        texts = tokenizer([CAPTIONS[i] for i in rng.integers(0, len(CAPTIONS), size=batch)])
        out.append({"images": to_input(pixels, size).to(device), "texts": texts.to(device),
                    "items": torch.zeros(batch, 2, dtype=torch.int64)})
    return out


def adamw(model: torch.nn.Module, optim: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW as open_clip builds it: no weight decay on biases, norms and the logit scale; fused on GPUs."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": optim.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=optim.lr, fused=True if device.type == "cuda" else None)


def autocast(precision: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def bare_open_clip_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list[dict],
                         steps: int, optim: OptimConfig, precision: str, device: torch.device) -> list[float]:
    """open_clip's `train_one_epoch` stripped to its core: lr schedule, autocast forward and ClipLoss, backward,
    gradient clipping, AdamW step, logit-scale clamp. Losses are read once at the end, as open_clip reads
    them only every `log_every_n_steps`."""
    loss_fn, losses = open_clip.ClipLoss(), []
    model.train()
    for step in range(steps):
        batch = batches[step % len(batches)]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, optim)
        with autocast(precision, device):
            image_features, text_features, logit_scale = model(batch["images"], batch["texts"])[:3]
            loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.clip_grad_norm)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.detach())
    return torch.stack(losses).tolist()


def train_step_flops(model: torch.nn.Module, batch: dict[str, torch.Tensor], precision: str,
                     device: torch.device) -> int:
    """FLOPs (2 per multiply-add) of one training step's forward and backward, counted by PyTorch's
    `FlopCounterMode` (matmuls, convolutions and attention; the optimizer's elementwise work is left out).
    To be replaced by `clipflux.budget`'s counts once it lands."""
    counter = FlopCounterMode(display=False)
    with counter:
        with autocast(precision, device):
            out = model(batch["images"], batch["texts"])
            loss = open_clip.ClipLoss()(*out[:3])
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> tuple[float, int]:
    """The best FLOP/s of square matmuls on this device and dtype over a few sizes: (FLOP/s, best size)."""
    best = (0.0, 0)
    for n in ((1024, 2048, 4096) if device.type == "cpu" else (4096, 8192, 16384)):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        a @ b  # warm-up
        sync(device)
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            runs += 1
            sync(device)
        rate = 2 * n ** 3 * runs / (time.perf_counter() - start)
        best = max(best, (rate, n))
    return best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def datasheet_peak(device: torch.device) -> float | None:
    """The vendor's dense bf16 peak of this GPU, when it is one we know."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in DATASHEET_BF16_PEAK.items() if key in name), None)
