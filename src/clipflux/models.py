"""Models: open_clip architectures (custom ones as JSON configs in `configs/models/`) and their weights.

Pretrained weights (`model.pretrained`, see `load_pretrained`) come from a checkpoint file in any format
open_clip reads (a state dict, a training checkpoint with "state_dict", safetensors), or from an open_clip weight
tag of the architecture: found in `model.cache_dir` (the hub's cache layout, as open_clip downloads it), else
downloaded from the hub when the network allows. Offline and not cached, the error names the file to provide.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from clipflux.config import ModelConfig
from clipflux.errors import UserError

READS = ("configs/models",)  # read by create_model: a dependency of every stage importing this module
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "models"
MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)


def register_configs(config_dir: str | Path = CONFIG_DIR) -> None:
    """Make the JSON architectures in `config_dir` known to open_clip by their file names."""
    open_clip.add_model_config(Path(config_dir))


def create_model(cfg: ModelConfig) -> tuple[open_clip.CLIP, open_clip.tokenizer.SimpleTokenizer]:
    """Build the model and its tokenizer, with random weights (pretrained weights load separately).

    Raises:
        ValueError: when `cfg.name` is neither a shipped nor an open_clip architecture.
    """
    register_configs()
    known = open_clip.list_models()
    if cfg.name not in known:
        raise ValueError(f"model.name: {cfg.name!r} is not an open_clip architecture; add configs/models/{cfg.name}.json or choose one of {known[:8]}...")
    with _quiet_root_logger():  # open_clip warns "No pretrained weights loaded": clipflux loads them itself
        model = open_clip.create_model(cfg.name, pretrained=None, device="cpu")
    return model, open_clip.get_tokenizer(cfg.name)


@contextlib.contextmanager
def _quiet_root_logger():
    """Silence warnings on the root logger (where open_clip's factory logs) for the duration."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class PretrainedError(UserError, RuntimeError):
    """Pretrained weights cannot be found or fetched; the message says which file to provide."""


def weights_source(name: str, tag: str) -> str:
    """Where open_clip fetches weight tag `tag` of architecture `name`: a hub file or a URL."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if cfg.get("hf_hub"):
        repo, _, file = cfg["hf_hub"].rpartition("/")  # "org/name/" or "org/name/file"
        file = file or "open_clip_pytorch_model.bin (or open_clip_model.safetensors)"
        return f"{file} of the Hugging Face hub repository {repo} (https://huggingface.co/{repo})"
    return cfg.get("url", "?")


def load_pretrained(model: torch.nn.Module, cfg: ModelConfig) -> str:
    """Load `cfg.pretrained` into `model` (built by `create_model(cfg)`); returns where the weights came from.

    Raises:
        PretrainedError: the file does not exist and is no weight tag of the architecture, or the tag's weights
            are neither cached in `cfg.cache_dir` nor downloadable; the message names the file to provide.
    """
    path = Path(cfg.pretrained)
    if path.is_file():
        open_clip.load_checkpoint(model, str(path))
        return str(path)
    tags = open_clip.list_pretrained_tags_by_model(cfg.name)
    if cfg.pretrained not in tags:
        raise PretrainedError(f"model.pretrained: {cfg.pretrained!r} is neither a checkpoint file nor a weight tag of "
                              f"{cfg.name} (its tags: {tags or 'none'})")
    try:
        source = open_clip.create_model(cfg.name, pretrained=cfg.pretrained, cache_dir=cfg.cache_dir, device="cpu")
    except Exception as e:  # the hub's and urllib's errors when offline; name what to provide instead
        raise PretrainedError(
            f"model.pretrained: cannot load {cfg.name} weights {cfg.pretrained!r}: not in the cache "
            f"({cfg.cache_dir or 'open_clip default'}) and not downloadable here ({type(e).__name__}). Provide the file: "
            f"{weights_source(cfg.name, cfg.pretrained)}; download it where the network allows and set "
            f"model.pretrained to its path (or put it in model.cache_dir as the hub caches it)") from None
    model.load_state_dict(source.state_dict())
    return f"{cfg.name} {cfg.pretrained} ({cfg.cache_dir or 'open_clip cache'})"


def architecture(name: str) -> dict | None:
    """The open_clip config of architecture `name` (towers, widths, depths): part of a run's recorded
    parameters, so a checkpoint is never resumed into a changed `configs/models/<name>.json`."""
    register_configs()
    return open_clip.get_model_config(name)


def is_batchnorm(module: torch.nn.Module) -> bool:
    """A BatchNorm layer (a ResNet image tower has them; a ViT CLIP has none)."""
    return isinstance(module, torch.nn.modules.batchnorm._BatchNorm)


def image_size(model: open_clip.CLIP) -> int:
    """The side length the vision tower expects."""
    size = model.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def to_input(images: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 NHWC images -> normalised float NCHW at the model's resolution."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp_(0, 1)
    return (x - MEAN) / STD


def initial_model(cfg: ModelConfig, seed: int) -> tuple[open_clip.CLIP, open_clip.tokenizer.SimpleTokenizer]:
    """`create_model` with its random initialisation drawn from `seed` (the global generator is left as it was):
    the same seed gives bit-identical weights, as TiC's runs from random initialisation need."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(cfg)


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Write a state dict atomically: temporary file, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(model.state_dict(), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_weights(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load a state dict written by `save_weights` (or an open_clip checkpoint's "state_dict")."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in state:
        state = {k.removeprefix("module."): v for k, v in state["state_dict"].items()}
    model.load_state_dict(state)
    return model


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """A hash of a state dict's names, dtypes, shapes and bytes: equal iff the weights are bit-identical."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
